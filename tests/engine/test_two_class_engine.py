"""A real 2-class model (background / cell, the thesis' UNET2): config, training,
checkpoint, segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.train import TrainConfig, Trainer, target_and_weight

TINY2 = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 2,
    "depth": 3,
    "width": 8,
    "norm": "batch",
    "dims": 2,
}


@pytest.fixture(scope="module")
def scene():
    return simulate_cells(shape=(96, 96), seed=3, radius=(7, 10), density=0.3, photons=500)


@pytest.fixture(scope="module")
def unet2(scene, tmp_path_factory):
    """UNET2 trained 120 steps on the scene (U-Net weight map, 2 classes), saved; one thread."""
    out = tmp_path_factory.mktemp("unet2") / "unet2.pt"
    cfg = TrainConfig(
        n_classes=2, weights="unet", steps=120, batch_size=2, crop_size=96, lr=5e-3, seed=0
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer([scene.image], [scene.labels], cfg, network=TINY2, device="cpu", out=out).run()
    finally:
        torch.set_num_threads(threads)
    return out


def test_config_accepts_two_classes_and_rejects_youden_losses():
    assert TrainConfig(n_classes=2).n_classes == 2
    assert TrainConfig(n_classes=2, loss="jaccard").weight_scheme == "none"
    with pytest.raises(ValueError, match=r"'j4' needs n_classes=4 .* got 2"):
        TrainConfig(n_classes=2, loss="j4")
    with pytest.raises(ValueError, match=r"'j3' needs n_classes=3 .* got 2"):
        TrainConfig(n_classes=2, loss="j3")
    for bad in (1, 5, True):
        with pytest.raises(ValueError, match="n_classes must be 2, 3 or 4"):
            TrainConfig(n_classes=bad)


@pytest.mark.parametrize("weights", ["unet", "balance", "dwm", "saw", "overcrowding", "none"])
def test_targets_and_weights_of_a_two_class_run(scene, weights):
    target, weight = target_and_weight(scene.labels, TrainConfig(n_classes=2, weights=weights))
    assert set(np.unique(target)) == {0, 1}
    assert weight.shape == scene.labels.shape and np.all(np.isfinite(weight))


def test_two_class_model_trains_saves_and_segments(scene, unet2):
    _, info = load_checkpoint(unet2)
    assert info.classes == ["background", "cell"] and info.n_classes == 2
    assert info.network["out_channels"] == 2
    seg = Segmenter(unet2, device="cpu")
    assert seg.n_classes == 2
    for method in ("map", "th", "wt"):
        result = seg.segment(scene.image, method=method, diameter=None)
        assert result.probs.shape == (2, *scene.image.shape)
        np.testing.assert_allclose(result.probs.sum(axis=0), 1.0, atol=1e-4)
        assert result.count >= 1
        assert evaluate(scene.labels, result.labels)["f1"] > 0.5, method


def test_finetuning_a_two_class_model_needs_two_classes(scene, unet2):
    with pytest.raises(ValueError, match="predicts 2 classes but training asks for 3"):
        Trainer([scene.image], [scene.labels], TrainConfig(n_classes=3), init=unet2)
