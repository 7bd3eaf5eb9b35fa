"""Tune widget: sliders re-label the cached probabilities live, without running the model."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from widget_helpers import dock, errors_since, layer_snapshot, n_records, segment, wait_idle

from napari_cellfocus.core.postprocess import postprocess, search_thresholds
from napari_cellfocus.widgets import tune as tune_module
from napari_cellfocus.widgets._layers import labels_name


@pytest.fixture
def no_model_calls(monkeypatch):
    """Count every way the model could run (Segmenter and the engine's predictors)."""
    import napari_cellfocus.engine.predict as predict_module
    from napari_cellfocus.engine.segment import Segmenter

    calls = []

    def spy(name, original):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Segmenter, "iter_predict", spy("iter", Segmenter.iter_predict))
    monkeypatch.setattr(Segmenter, "predict", spy("predict", Segmenter.predict))
    monkeypatch.setattr(predict_module, "iter_predict", spy("engine", predict_module.iter_predict))
    return calls


def _segmented(viewer, qtbot, tiny_model):
    segment(viewer, qtbot, tiny_model)
    return dock(viewer, "Tune")


def test_slider_relabels_without_model_call(viewer, qtbot, tiny_model, no_model_calls):
    """Moving γ1 from 0.5 to 0.85 changes the labels layer to exactly
    TH(0.85, γ2) of the cached probabilities, and the model is not called."""
    tune = _segmented(viewer, qtbot, tiny_model)
    assert tune.method == "map"  # the tiny model stores no defaults: MAP
    tune.set_method("th")
    qtbot.wait(3 * tune_module.THROTTLE_MS)
    wait_idle(qtbot, tune)
    layer = viewer.layers[labels_name("nuclei")]
    before = np.array(layer.data)
    no_model_calls.clear()
    tune.sliders["gamma1"].setValue(0.85)
    qtbot.waitUntil(lambda: not np.array_equal(layer.data, before), timeout=10_000)
    wait_idle(qtbot, tune)
    assert no_model_calls == []
    probs = tune.state.result.probs
    expected, count = postprocess(probs, "th", gamma1=0.85, gamma2=0.1, min_size=16)
    np.testing.assert_array_equal(layer.data, expected)
    assert tune.state.count == count
    assert f"{count} cells" in tune.info.text()
    assert tune.last_relabel_ms is not None
    # the time shown runs from the move to the layer update: it includes the relabel
    assert tune.last_update_ms >= tune.last_relabel_ms
    assert f"labels updated in {tune.last_update_ms:.0f} ms" in tune.info.text()


def test_rapid_changes_are_throttled(viewer, qtbot, tiny_model, monkeypatch):
    """Slider updates are throttled, not debounced. Ten moves at once (no event in
    between) post-process once, with the last value. A drag of 16 moves 25 ms apart
    (about 0.4 s) shows labels while it goes on (the first relabel starts before the last
    move; a debounce would wait for the end), relabels fewer times than it moves (at most
    one per THROTTLE_MS, plus the first and the last), and the last relabel has the
    final value."""
    tune = _segmented(viewer, qtbot, tiny_model)
    tune.set_method("th")
    qtbot.wait(3 * tune_module.THROTTLE_MS)
    wait_idle(qtbot, tune)
    runs = []
    original = tune_module.relabel_job

    def counting(probs, spatial_dims, method, params, generation, cancel):
        runs.append((time.perf_counter(), dict(params)))
        return original(probs, spatial_dims, method, params, generation, cancel)

    def settle():
        qtbot.waitUntil(lambda: not tune.timer.isActive(), timeout=5_000)
        wait_idle(qtbot, tune)
        qtbot.wait(2 * tune_module.THROTTLE_MS)
        wait_idle(qtbot, tune)

    monkeypatch.setattr(tune_module, "relabel_job", counting)
    for value in np.linspace(0.3, 0.75, 10):
        tune.sliders["gamma1"].setValue(float(value))
    settle()
    assert len(runs) == 1
    assert runs[0][1]["gamma1"] == pytest.approx(0.75)

    runs.clear()
    values = np.round(np.linspace(0.2, 0.8, 16), 2)
    start = time.perf_counter()
    for value in values:
        tune.sliders["gamma1"].setValue(float(value))
        last_move = time.perf_counter()
        qtbot.wait(25)
    drag_s = last_move - start
    settle()
    assert runs[0][0] < last_move  # labels shown during the drag, not only after it
    # at most one per THROTTLE_MS of dragging, plus the first and the last (the drag takes
    # about 0.4 s: about 6 relabels for 16 moves; more on a busy machine, slower waits)
    assert 2 <= len(runs) <= drag_s / (tune_module.THROTTLE_MS / 1000) + 2
    assert runs[-1][1]["gamma1"] == pytest.approx(values[-1])


def test_method_switch_shows_its_parameters_and_relabels(viewer, qtbot, tiny_model):
    """WT shows τ0/τ1 (hides γ), MAP shows none; each gives its own labels."""
    tune = _segmented(viewer, qtbot, tiny_model)
    layer = viewer.layers[labels_name("nuclei")]
    probs = tune.state.result.probs
    tune.set_method("wt")
    assert not tune.sliders["tau0"].isHidden() and tune.sliders["gamma1"].isHidden()
    expected = postprocess(probs, "wt", tau0=0.4, tau1=0.9, min_size=16)[0]
    qtbot.waitUntil(lambda: np.array_equal(layer.data, expected), timeout=10_000)
    tune.set_method("map")
    assert all(s.isHidden() for s in tune.sliders.values())
    expected = postprocess(probs, "map", min_size=16)[0]
    qtbot.waitUntil(lambda: np.array_equal(layer.data, expected), timeout=10_000)
    assert tune.state.post_method == "map"
    seg = dock(viewer, "Segment")
    assert seg.post_label.text().startswith("MAP")


def test_optimise_thresholds_against_ground_truth(viewer, qtbot, tiny_model):
    """The search (objective PQ by default) finds the same best PQ as
    core.search_thresholds on the full grid, moves the sliders there, plots PQ against each
    threshold and re-labels with the best pair."""
    tune = _segmented(viewer, qtbot, tiny_model)
    assert tune.reference.currentText() == "ground truth"
    assert tune.objective == "pq"
    tune.optimise()
    wait_idle(qtbot, tune, "search_worker")
    gt = np.asarray(viewer.layers["ground truth"].data)
    probs = tune.state.result.probs
    direct = search_thresholds(probs, gt, method="th", objective="pq", min_size=16)
    out = tune.last_search
    assert out.best_score == pytest.approx(direct.best_score)
    assert out.best == pytest.approx(direct.best_params)
    np.testing.assert_allclose(out.scores, direct.scores)
    assert tune.sliders["gamma1"].value() == pytest.approx(out.best["gamma1"])
    assert tune.sliders["gamma2"].value() == pytest.approx(out.best["gamma2"])
    lines = tune.plot.line_data()
    assert len(lines) == 2
    assert lines[0][0] == pytest.approx(list(direct.grid["gamma1"]))
    assert max(lines[0][1]) == pytest.approx(direct.best_score)
    expected = postprocess(probs, "th", **out.best, min_size=16)[0]
    layer = viewer.layers[labels_name("nuclei")]
    qtbot.waitUntil(lambda: np.array_equal(layer.data, expected), timeout=10_000)
    assert f"Best PQ {direct.best_score:.3f}" in tune.search_info.text()
    assert tune.plot.ylabel == "PQ" and out.objective == "pq"
    # a new segmentation: the curve and the best values belonged to the old probabilities
    seg = tune.state
    seg.set_result(dataclasses.replace(seg.result, generation=seg.new_generation()))
    assert tune.plot.line_data() == [] and tune.search_info.text() == ""


def test_objective_box_drives_the_search(viewer, qtbot, tiny_model):
    """With "F1" chosen in the Objective box the search maximises F1: its scores and best
    pair are core.search_thresholds(objective="f1")'s, not the PQ ones, and the plot and
    the message say F1. Back on PQ, the next search gives the PQ scores again."""
    tune = _segmented(viewer, qtbot, tiny_model)
    gt = np.asarray(viewer.layers["ground truth"].data)
    probs = tune.state.result.probs
    tune.set_method("wt")
    tune.set_objective("f1")
    assert tune.objective == "f1"
    tune.optimise()
    wait_idle(qtbot, tune, "search_worker")
    f1 = search_thresholds(probs, gt, method="wt", objective="f1", min_size=16)
    pq = search_thresholds(probs, gt, method="wt", objective="pq", min_size=16)
    assert not np.allclose(f1.scores, pq.scores)
    out = tune.last_search
    assert out.objective == "f1" and out.method == "wt"
    np.testing.assert_allclose(out.scores, f1.scores)
    assert out.best == pytest.approx(f1.best_params)
    assert tune.plot.ylabel == "F1"
    assert tune.search_info.text().startswith(f"Best F1 {f1.best_score:.3f}")
    tune.set_objective("pq")
    tune.optimise()
    wait_idle(qtbot, tune, "search_worker")
    np.testing.assert_allclose(tune.last_search.scores, pq.scores)
    assert tune.last_search.best == pytest.approx(pq.best_params)
    # the sliders moved to the best pair start a relabel: let it land before teardown
    qtbot.waitUntil(
        lambda: tune.worker is None and not tune.timer.isActive() and not tune._pending,
        timeout=30_000,
    )


def test_optimise_needs_a_reference_of_the_same_shape(viewer, qtbot, tiny_model):
    """A reference of another shape: an error notification saying so, no layer changed."""
    tune = _segmented(viewer, qtbot, tiny_model)
    viewer.add_labels(np.ones((64, 64), np.int32), name="small")
    tune.reference.set_layer(viewer.layers["small"])
    before, start = layer_snapshot(viewer), n_records()
    tune.optimise()
    assert tune.search_worker is None
    errors = errors_since(start)
    assert len(errors) == 1 and "shape (64, 64)" in errors[0] and "(128, 128)" in errors[0]
    after = layer_snapshot(viewer)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_sliders_before_segmentation_do_nothing(make_napari_viewer, qtbot):
    """Without a segmentation the sliders only store the settings (no layer appears)."""
    viewer = make_napari_viewer()
    tune = dock(viewer, "Tune")
    tune.set_method("th")
    tune.sliders["gamma2"].setValue(0.3)
    qtbot.wait(3 * tune_module.THROTTLE_MS)
    assert len(viewer.layers) == 0
    assert tune.state.post_params["gamma2"] == pytest.approx(0.3)
