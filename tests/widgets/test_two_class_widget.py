"""Segment, Tune and fine-tune with a 2-class model (background / cell, UNET2) in a real
napari viewer: one probability layer per class of the model, labels with cells."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import dock, segment, wait_idle

from napari_cellfocus.core.postprocess import postprocess
from napari_cellfocus.widgets import tune as tune_module
from napari_cellfocus.widgets._layers import labels_name, probability_layers, probability_name
from napari_cellfocus.widgets.segment import model_problem

LABELS = labels_name("nuclei")


@pytest.fixture(scope="module")
def tiny_unet2():
    """``(UNet, ModelInfo)`` with two classes, trained 150 steps on a 128 x 128 scene with
    the U-Net weight map (a few seconds on one CPU thread)."""
    import torch

    from napari_cellfocus.core.simulate import simulate_cells
    from napari_cellfocus.engine.train import TrainConfig, Trainer

    scene = simulate_cells(shape=(128, 128), seed=3)
    network = {"architecture": "unet", "in_channels": 1, "depth": 2, "width": 8}
    config = TrainConfig(
        n_classes=2, weights="unet", steps=150, batch_size=2, crop_size=64, lr=3e-3, seed=1
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer([scene.image], [scene.labels], config, network=network, device="cpu")
        return trainer.run()
    finally:
        torch.set_num_threads(threads)


def _probability_layers(viewer) -> set[str]:
    """Names of the plugin's probability layers of the 'nuclei' image."""
    return {layer.name for layer in probability_layers(viewer, "nuclei")}


def test_segment_with_a_two_class_model(viewer, qtbot, tiny_unet2):
    from napari_cellfocus.engine.segment import Segmenter

    assert tiny_unet2[1].classes == ["background", "cell"]
    assert model_problem(Segmenter(tiny_unet2, device="cpu")) is None
    widget = segment(viewer, qtbot, tiny_unet2)
    labels = viewer.layers[LABELS]
    assert int(np.asarray(labels.data).max()) >= 1 and widget.state.count >= 1
    assert _probability_layers(viewer) == {
        probability_name("nuclei", "background"),
        probability_name("nuclei", "cell"),
    }
    probs = widget.state.result.probs
    assert probs.shape == (2, 128, 128)
    np.testing.assert_allclose(
        np.asarray(viewer.layers[probability_name("nuclei", "cell")].data), probs[1]
    )


def test_tune_with_a_two_class_model(viewer, qtbot, tiny_unet2):
    """WT relabels the 2-class probabilities; γ2 and τ1 (no touching class) are greyed out."""
    segment(viewer, qtbot, tiny_unet2)
    tune = dock(viewer, "Tune")
    tune.set_method("wt")
    assert not tune.sliders["tau1"].isEnabled() and tune.sliders["tau0"].isEnabled()
    qtbot.wait(3 * tune_module.THROTTLE_MS)
    wait_idle(qtbot, tune)
    expected, count = postprocess(tune.state.result.probs, "wt", **tune.params())
    np.testing.assert_array_equal(viewer.layers[LABELS].data, expected)
    assert count >= 1
    tune.set_method("th")
    assert not tune.sliders["gamma2"].isEnabled() and tune.sliders["gamma1"].isEnabled()
    qtbot.wait(3 * tune_module.THROTTLE_MS)  # let the relabel the change started finish
    wait_idle(qtbot, tune)
    expected, _ = postprocess(tune.state.result.probs, "th", **tune.params())
    np.testing.assert_array_equal(viewer.layers[LABELS].data, expected)


def test_finetune_a_two_class_model(viewer, qtbot, tiny_unet2):
    """Two fine-tuning steps from the 2-class model in use: the run keeps two classes and
    the preview shows its two probability layers."""
    segment(viewer, qtbot, tiny_unet2)
    widget = dock(viewer, "Correct and fine-tune")
    widget.steps_spin.setValue(2)
    widget.preview_spin.setValue(0)
    widget.config_overrides = {"batch_size": 1, "crop_size": 64}
    widget.start()
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget._run["config"].n_classes == 2
    assert widget._run_classes() == ["background", "cell"]
    assert widget.last_progress.step == 2
    assert probability_name("nuclei", "touching") not in [layer.name for layer in viewer.layers]
    assert int(np.asarray(viewer.layers[LABELS].data).max()) >= 1
