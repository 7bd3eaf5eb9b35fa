"""The model's scale and defaults: diameter normalisation in training, rescaled prediction,
and the post-processing defaults a checkpoint stores (used by API, CLI and widget)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.postprocess import postprocess
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.core.size import disc_area, median_diameter, rescale, resize
from napari_cellfocus.engine.checkpoint import (
    METADATA_HASH_KEY,
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
)
from napari_cellfocus.engine.networks import UNet
from napari_cellfocus.engine.predict import predict_probabilities
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.train import TrainConfig, Trainer

DEFAULTS = {
    "diameter": 20.0,
    "method": "wt",
    "post_params": {"tau0": 0.45, "tau1": 0.85},
    "min_size_fraction": 0.2,
}


@pytest.fixture(scope="module")
def scene():
    """Nuclei of about 10 px across (radius 4.5-5.5)."""
    return simulate_cells(shape=(96, 96), seed=7, radius=(4.5, 5.5), density=0.3)


@pytest.fixture
def scaled_model():
    """An (untrained, seeded) tiny U-Net whose ModelInfo stores DEFAULTS."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=3, depth=2, width=8).eval()
    return net, ModelInfo(network=net.config, defaults=dict(DEFAULTS))


def test_checkpoint_stores_defaults_and_old_files_have_none(tmp_path, scaled_model):
    net, info = scaled_model
    save_checkpoint(tmp_path / "m.pt", net, info)
    _, loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.defaults == DEFAULTS
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["defaults"]  # a file written before defaults existed (and before the
    del payload[METADATA_HASH_KEY]  # metadata hash: it would refuse the missing entry)
    torch.save(payload, tmp_path / "old.pt")
    seg = Segmenter(tmp_path / "old.pt", device="cpu")
    assert seg.model_diameter is None and seg.default_method == "map"
    assert seg.resolve_diameter(np.zeros((32, 32)), "auto") is None


def test_segment_uses_the_models_post_processing_defaults(scaled_model, scene):
    """No method given: the stored WT thresholds and the size filter relative to the
    diameter (0.2 x the area of a 12-px disc = 23 px) make the labels."""
    seg = Segmenter(scaled_model, device="cpu")
    result = seg.segment(scene.image, diameter=12.0)
    expected_min = round(0.2 * disc_area(12.0))
    assert result.method == "wt" and result.diameter == 12.0
    assert result.post_params == {"tau0": 0.45, "tau1": 0.85, "min_size": expected_min}
    labels, _ = postprocess(result.probs, "wt", **result.post_params)
    np.testing.assert_array_equal(result.labels, labels)
    # an explicit method drops the stored thresholds but keeps the relative size filter
    other = seg.segment(scene.image, method="map", diameter=12.0)
    assert other.method == "map" and other.post_params == {"min_size": expected_min}


def test_prediction_at_a_diameter_runs_the_network_at_the_model_scale(scaled_model, scene):
    """diameter 10 px for a model of 20 px: the network sees the image at 2x and the
    probabilities come back on the image's grid (streamed tile by tile or not)."""
    seg = Segmenter(scaled_model, device="cpu")
    assert seg.zoom_for(10.0) == pytest.approx(2.0)
    probs = seg.predict(scene.image, diameter=10.0, tile_size=128)
    assert probs.shape == (3, 96, 96)
    net = scaled_model[0]
    at_scale = predict_probabilities(
        net, rescale(scene.image, 2.0), normalizer=seg.info.normalizer(), tile_size=128
    )
    np.testing.assert_allclose(probs, resize(at_scale, (96, 96)), atol=1e-4)
    streamed = []
    seg.predict(scene.image, diameter=10.0, tile_size=128, on_tile=streamed.append)
    assert len(streamed) > 1 and streamed[-1].done == streamed[-1].total
    np.testing.assert_allclose(streamed[-1].probs, probs, atol=1e-6)


def test_bad_diameter_is_refused(scaled_model):
    seg = Segmenter(scaled_model, device="cpu")
    for bad in (0, -3, float("nan")):
        with pytest.raises(ValueError, match="diameter"):
            seg.resolve_diameter(np.zeros((8, 8)), bad)


def test_training_normalises_object_size_and_the_model_keeps_it(scene, scaled_model):
    """diameter=20 on nuclei of ~10 px: the image is trained on at 2x; the model records
    its scale, and a fine-tune from it trains at the same scale without being told."""
    d = median_diameter(scene.labels)
    cfg = TrainConfig(steps=2, batch_size=1, crop_size=64, diameter=20.0, weights="balance")
    trainer = Trainer(
        [scene.image], [scene.labels], cfg, network=dict(scaled_model[0].config), device="cpu"
    )
    sample = trainer.train_samples[0]
    assert sample.zoom == pytest.approx(20.0 / d)
    assert sample.image.shape == tuple(round(96 * 20.0 / d) for _ in range(2))
    assert median_diameter(sample.labels) == pytest.approx(20.0, rel=0.05)
    model, info = trainer.run()
    assert info.defaults["diameter"] == 20.0
    tune = Trainer(
        [scene.image],
        [scene.labels],
        TrainConfig(steps=1, batch_size=1, crop_size=64),
        init=(model, info),
        device="cpu",
    )
    assert tune.config.diameter == 20.0 and tune.train_samples[0].zoom == pytest.approx(20 / d)


def test_scale_jitter_builds_targets_per_crop(scene):
    """With scale_range the crops are drawn at random zooms and their targets and weights
    are built at that zoom: the class map matches the crop's labels, weights are finite."""
    cfg = TrainConfig(
        steps=3,
        batch_size=2,
        crop_size=48,
        diameter=20.0,
        scale_range=(0.5, 2.0),
        weights="saw",
    )
    trainer = Trainer(
        [scene.image],
        [scene.labels],
        cfg,
        network={
            "architecture": "unet",
            "in_channels": 1,
            "out_channels": 3,
            "depth": 2,
            "width": 8,
        },
        device="cpu",
    )
    assert trainer.train_samples[0].target is None  # built per crop
    x, y, w = trainer._batch()
    assert x.shape == (2, 1, 48, 48) and y.shape == (2, 48, 48)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert set(np.unique(y.numpy())) <= {0, 1, 2}
    _, info = trainer.run()
    assert np.isfinite(info.history[-1]["loss"])
    with pytest.raises(ValueError, match="weak"):
        TrainConfig(weak=True, scale_range=(0.5, 2.0))
