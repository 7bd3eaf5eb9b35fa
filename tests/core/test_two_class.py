"""The 2-class scheme (background / cell, UNET2): target, weight maps, post-processing.

Hand-made inputs with hand-computed answers; the engine, CLI and widget sides are in
``engine/test_two_class_engine.py``, ``test_cli_two_class.py`` and
``widgets/test_two_class_widget.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellfocus.core import postprocess as pp
from napari_cellfocus.core.targets import class_target, two_class_from_instances
from napari_cellfocus.core.weights import weight_map


def _touching_pair() -> np.ndarray:
    """(5, 11) labels: cells 7 (cols 0-4) and 3 (cols 5-9) meet along cols 4|5, rows 0-3."""
    lab = np.zeros((5, 11), np.int32)
    lab[0:4, 0:5] = 7
    lab[0:4, 5:10] = 3
    return lab


#: eq. 4.1 with k = 2, min_count = 2: a cell pixel is touching when its 5 x 5 window holds
#: >= 2 pixels of the other cell, i.e. cols 3-4 (cell 7) and 5-6 (cell 3), every row 0-3;
#: the 2-class target makes them background.
EXPECTED_2 = np.array(
    [
        [1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.uint8,
)


def _probs(p_cell: np.ndarray) -> np.ndarray:
    """(2, Y, X) float32 probabilities from a P(cell) map."""
    p1 = np.asarray(p_cell, np.float32)
    return np.stack([1.0 - p1, p1])


def _two_blobs() -> np.ndarray:
    """(2, 10, 13): two 6 x 5 blobs of P(cell) 0.9, apart by one background column (6)."""
    p1 = np.full((10, 13), 0.1, np.float32)
    p1[2:8, 1:6] = 0.9
    p1[2:8, 7:12] = 0.9
    return _probs(p1)


def _dumbbell() -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping discs (radius 8, centres 14 px apart) as one P(cell) = 0.95 blob
    with no background between them, and the reference instances (split at the middle)."""
    yy, xx = np.mgrid[:30, :44]
    a = (yy - 15) ** 2 + (xx - 15) ** 2 <= 64
    b = (yy - 15) ** 2 + (xx - 29) ** 2 <= 64
    p1 = np.where(a | b, 0.95, 0.05).astype(np.float32)
    ref = np.where(a & (xx < 22), 1, 0) + np.where(b & (xx >= 22), 2, 0)
    return _probs(p1), ref.astype(np.int32)


# --------------------------------------------------------------------------- target
def test_two_class_target_by_hand():
    lab = _touching_pair()
    out = class_target(lab, n_classes=2)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, EXPECTED_2)
    # the 3-class target with class 2 merged into 0, whatever the label ids
    three = class_target(lab, n_classes=3)
    np.testing.assert_array_equal(out, np.where(three == 2, 0, three))
    np.testing.assert_array_equal(two_class_from_instances(np.where(lab == 7, 1, lab * 5)), out)
    # the touching cells stay apart: two components of the cell class
    from scipy import ndimage

    assert ndimage.label(out)[1] == 2


def test_class_target_rejects_other_class_counts():
    with pytest.raises(ValueError, match="n_classes must be 2, 3 or 4"):
        class_target(_touching_pair(), n_classes=1)


# --------------------------------------------------------------------------- weights
def test_balance_weights_on_the_two_class_target():
    lab = _touching_pair()
    w = weight_map("balance", lab, n_classes=2)
    n, n_cell = lab.size, int(EXPECTED_2.sum())  # 55 pixels, 24 of them cell
    np.testing.assert_allclose(w[EXPECTED_2 == 1], n / (2 * n_cell), rtol=1e-6)
    np.testing.assert_allclose(w[EXPECTED_2 == 0], n / (2 * (n - n_cell)), rtol=1e-6)
    assert w.mean() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match=r"class values 0\.\.1"):
        weight_map("balance", lab, n_classes=2, target=class_target(lab, 3))


def test_unet_weights_on_the_two_class_target():
    """w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) on target background, which now
    includes the touching pixels (d1 = 0 there, inside their own cell)."""
    lab, target = _touching_pair(), EXPECTED_2
    w0, sigma = 10.0, 2.0
    w = weight_map("unet", lab, target=target, w0=w0, sigma=sigma)
    wc_bg, wc_cell = 55 / (2 * 31), 55 / (2 * 24)

    def sep(d1: float, d2: float) -> float:
        return w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))

    assert w[0, 0] == pytest.approx(wc_cell, rel=1e-5)  # cell: class balance only
    assert w[1, 4] == pytest.approx(wc_bg + sep(0, 1), rel=1e-5)  # touching, next to cell 3
    assert w[1, 3] == pytest.approx(wc_bg + sep(0, 2), rel=1e-5)
    assert w[2, 6] == pytest.approx(wc_bg + sep(0, 2), rel=1e-5)  # symmetric, in cell 3
    assert w[4, 4] == pytest.approx(wc_bg + sep(1, np.sqrt(2)), rel=1e-5)  # below the cells
    # the 3-class target keeps its touching pixels out of the separation term
    w3 = weight_map("unet", lab, target=class_target(lab, 3), w0=w0, sigma=sigma)
    assert w3[1, 4] == pytest.approx(w3[1, 3])


@pytest.mark.parametrize("name", ["dwm", "saw", "w3"])
def test_other_weight_maps_take_the_two_class_target(name):
    lab = _touching_pair()
    w = weight_map(name, lab, target=class_target(lab, 2))
    assert w.shape == lab.shape and w.dtype == np.float32
    assert np.all(np.isfinite(w)) and w.min() > 0


# --------------------------------------------------------------------------- post-processing
@pytest.mark.parametrize("method", ["map", "th", "wt", "binary"])
def test_two_blobs_give_two_objects(method):
    labels, count = pp.postprocess(_two_blobs(), method, min_size=1)
    assert count == 2
    assert labels.dtype == np.int32
    assert set(np.unique(labels[2:8, 1:6])) == {1} and set(np.unique(labels[2:8, 7:12])) == {2}
    assert not labels[:, 6].any() and not labels[:2].any()


def test_map_and_th_rules_on_two_classes():
    p1 = np.array([[0.5, 0.51, 0.7, 0.3]], np.float32)[None].repeat(3, 1)  # (1, 3, 4)
    probs = _probs(p1[0])
    lab, n = pp.map_labels(probs, min_size=1)  # z1 > z0: the tie (0.5) is background
    assert n == 1 and lab[:, 0].max() == 0 and lab[:, 1:3].min() == 1 and lab[:, 3].max() == 0
    lab, n = pp.threshold_labels(probs, gamma1=0.7, min_size=1)  # z1 >= gamma1
    assert n == 1 and np.array_equal(np.flatnonzero(lab[0]), [2])
    for gamma2 in (0.0, 0.3, 1.0):  # no touching class: gamma2 has no effect
        again, _ = pp.threshold_labels(probs, gamma1=0.7, gamma2=gamma2, min_size=1)
        np.testing.assert_array_equal(again, lab)


def test_wt_splits_a_binary_clump_that_map_keeps_whole():
    probs, ref = _dumbbell()
    assert pp.map_labels(probs, min_size=1)[1] == 1
    lab, n = pp.watershed_labels(probs, min_size=1)
    assert n == 2
    score = pp.evaluate(ref, lab)
    assert score["f1"] == 1.0
    for tau1 in (0.1, 0.99):  # tau1 has no effect with two classes
        np.testing.assert_array_equal(pp.watershed_labels(probs, tau1=tau1, min_size=1)[0], lab)
    # tau0 sets the foreground: z0 < tau0, here z0 = 0.05 in the clump and 0.95 around it
    assert pp.watershed_labels(probs, tau0=0.01, min_size=1)[1] == 0


@pytest.mark.parametrize(("method", "inert"), [("th", "gamma2"), ("wt", "tau1")])
def test_search_thresholds_on_two_classes(method, inert, monkeypatch):
    """TH on the two blobs, WT on the clump only it can split: the best PQ is high."""
    if method == "th":
        probs = _two_blobs()
        ref = pp.map_labels(probs, min_size=1)[0]
    else:
        probs, ref = _dumbbell()
    calls = []
    original = pp.evaluate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pp, "evaluate", counting)
    found = pp.search_thresholds(probs, ref, method=method, min_size=1)
    grid = pp.default_grid(method)
    assert found.scores.shape == tuple(v.size for v in grid.values())
    axis = list(grid).index(inert)
    # the inert threshold changes nothing: each value of the other one is scored once
    first = np.take(found.scores, [0], axis=axis)
    np.testing.assert_array_equal(found.scores, np.broadcast_to(first, found.scores.shape))
    assert len(calls) == found.scores.shape[1 - axis]
    assert found.best_params[inert] == pytest.approx(float(np.median(grid[inert])), abs=0.03)
    assert found.best_score > 0.5


def test_cli_parameters_are_checked_on_a_two_class_map():
    from napari_cellfocus.cli_common import CliError
    from napari_cellfocus.cli_predict import post_params_from_args

    assert post_params_from_args([("tau0", "0.3")], "wt", n_classes=2) == {"tau0": 0.3}
    assert post_params_from_args([("gamma1", "0.6")], "th", n_classes=2) == {"gamma1": 0.6}
    with pytest.raises(CliError, match="gamma1"):
        post_params_from_args([("gamma1", "2")], "th", n_classes=2)
