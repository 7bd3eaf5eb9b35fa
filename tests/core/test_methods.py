"""The post-processing registry (core.methods): each method declared once, with the
parameters its function really takes, its search grid, and the docs table made from it."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_cellfocus.core import methods as registry
from napari_cellfocus.core import postprocess as pp
from napari_cellfocus.core.methods import (
    MIN_SIZE,
    POST_METHODS,
    Param,
    PostMethod,
    register_post_method,
    unregister_post_method,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def toy_labels(probs, level=0.5, min_size=16):
    """Cells: the face-connected components of P(cell) >= level, small ones removed."""
    lab, _ = ndimage.label(np.asarray(probs)[1] >= level)
    return pp.relabel_consecutive(pp.remove_small_objects(lab, min_size))


TOY = PostMethod(
    key="toy",
    label="TOY: cell map above a level",
    func=toy_labels,
    params=(Param("level", 0.5, help="P(cell) a pixel needs.", symbol="λ"), MIN_SIZE),
    summary="Cells where P(cell) >= λ.",
    grid={"level": (0.2, 0.4, 0.6, 0.8)},
    candidates={"level": (0.4, 0.6)},
)


def _two_blobs() -> np.ndarray:
    """3-class map: a blob with P(cell) 0.9 and one with 0.5, the rest background."""
    cell = np.zeros((20, 20), np.float32)
    cell[2:8, 2:8] = 0.9
    cell[12:18, 12:18] = 0.5
    return np.stack([1 - cell, cell, np.zeros_like(cell)])


def test_each_method_declares_its_functions_keywords_and_defaults():
    """The registry's parameters are the function's keywords, in order, with the same
    defaults: the widgets, the CLI and the search read them there, not the signature."""
    assert list(POST_METHODS)[:4] == ["map", "th", "wt", "binary"]
    for key, spec in POST_METHODS.items():
        sig = inspect.signature(spec.function).parameters
        keywords = {n: p.default for n, p in list(sig.items())[1:]}  # after the probabilities
        assert list(keywords) == list(spec.names), key
        assert keywords == spec.defaults(), key
        assert pp.METHODS[key] is spec.function


def test_the_built_in_grids_and_candidates_are_the_thesis_steps():
    """default_grid: steps of 0.1 (0.05 for gamma2 and the binary threshold); the
    choose_defaults candidates: MAP, TH on {0.4, 0.5, 0.6} x {0.1, 0.5}, WT on
    {0.3, 0.4, 0.5} x {0.8, 0.9}, in that order (the shipped model was chosen on them)."""
    tenths = np.round(np.arange(0.1, 0.91, 0.1), 2)
    np.testing.assert_allclose(pp.default_grid("th")["gamma1"], tenths)
    np.testing.assert_allclose(pp.default_grid("th")["gamma2"], np.arange(1, 11) * 0.05)
    np.testing.assert_allclose(pp.default_grid("wt")["tau1"], tenths)
    np.testing.assert_allclose(pp.default_grid("binary")["threshold"], np.arange(1, 20) * 0.05)
    with pytest.raises(ValueError, match="method"):
        pp.default_grid("map")
    expected = [("map", {})]
    expected += [("th", {"gamma1": a, "gamma2": b}) for a in (0.4, 0.5, 0.6) for b in (0.1, 0.5)]
    expected += [("wt", {"tau0": a, "tau1": b}) for a in (0.3, 0.4, 0.5) for b in (0.8, 0.9)]
    assert list(registry.candidate_settings()) == expected


def test_two_class_inert_parameters_come_from_the_registry():
    th, wt = POST_METHODS["th"], POST_METHODS["wt"]
    assert th.inert(2) == {"gamma2"} and wt.inert(2) == {"tau1"}
    assert th.inert(3) == set() and wt.inert(4) == set()


def test_apps_offer_map_th_wt_and_their_defaults():
    assert [m.key for m in registry.app_methods()] == ["map", "th", "wt"]
    assert registry.default_post_params() == {
        "min_size": 16,
        "gamma1": 0.5,
        "gamma2": 0.1,
        "tau0": 0.4,
        "tau1": 0.9,
    }


def test_docs_table_is_in_sync_with_the_registry():
    """docs/methods.md holds markdown_table() between its markers (run
    scripts/make_method_docs.py after changing the registry)."""
    text = DOC.read_text(encoding="utf-8")
    assert registry.replace_docs_section(text) == text
    table = registry.markdown_table()
    assert "| `th` |" in table and "`gamma2`" in table and "0.05 – 0.5 step 0.05" in table


def test_a_bad_entry_is_refused():
    with pytest.raises(ValueError, match="grid names"):
        PostMethod("bad", "BAD", toy_labels, (MIN_SIZE,), grid={"level": (0.5,)})
    with pytest.raises(ValueError, match="lower-case"):
        PostMethod("Bad", "BAD", toy_labels, (MIN_SIZE,))
    with pytest.raises(ValueError, match="registered already"):
        register_post_method(POST_METHODS["th"])
    with pytest.raises(ValueError, match="expected one of"):
        pp.postprocess(_two_blobs(), "toy")


def test_a_registered_method_is_dispatched_searched_tried_and_documented():
    """One registry entry makes a new method work in postprocess, search_thresholds (its
    own grid), the choose_defaults candidates and the docs table; unregistering removes
    it from all of them."""
    register_post_method(TOY)
    try:
        probs = _two_blobs()
        labels, count = pp.postprocess(probs, "toy", level=0.4, min_size=1)
        assert count == 2 and labels[5, 5] == 1 and labels[15, 15] == 2
        assert pp.postprocess(probs, "TOY", level=0.7, min_size=1)[1] == 1
        with pytest.raises(ValueError, match="unknown parameter"):
            pp.postprocess(probs, "toy", gamma1=0.5)
        # the reference holds only the brighter blob: level 0.6 and 0.8 find it alone
        ref = (probs[1] > 0.8).astype(np.int32)
        found = pp.search_thresholds(probs, ref, method="toy", objective="f1", min_size=1)
        np.testing.assert_allclose(found.scores, [2 / 3, 2 / 3, 1.0, 1.0])
        assert found.best_params["level"] in (0.6, 0.8) and found.best_score == 1.0
        assert ("toy", {"level": 0.4}) in registry.candidate_settings()
        assert "| `toy` |" in registry.markdown_table()
        assert "toy" in [m.key for m in registry.app_methods()]
    finally:
        unregister_post_method("toy")
    assert "toy" not in POST_METHODS and "toy" not in pp.METHODS
    assert "| `toy` |" not in registry.markdown_table()
