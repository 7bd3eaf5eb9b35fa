"""Checkpoints: round trip, weights_only loading, clear one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.engine.checkpoint import (
    CheckpointError,
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
)
from napari_cellfocus.engine.networks import UNet


def _model():
    torch.manual_seed(0)
    return UNet(in_channels=1, out_channels=3, depth=2, width=4)


def test_round_trip_and_weights_only(tmp_path):
    net = _model()
    info = ModelInfo(network=net.config, history=[{"step": 1, "loss": 0.5}], training={"seed": 3})
    path = save_checkpoint(tmp_path / "m.pt", net, info)
    assert not (tmp_path / "m.pt.part").exists()
    raw = torch.load(path, weights_only=True)  # must not need pickle of our classes
    assert raw["format"] == "napari-cellfocus-model" and raw["classes"][2] == "touching"
    loaded, info2 = load_checkpoint(path)
    assert info2.history == [{"step": 1, "loss": 0.5}] and info2.n_classes == 3
    x = torch.rand(1, 1, 20, 28)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), atol=1e-6)


def test_errors_are_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a napari-cellfocus model") as err:
        load_checkpoint(junk)
    assert "\n" not in str(err.value)

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a napari-cellfocus model"):
        load_checkpoint(other)

    net = _model()
    path = save_checkpoint(tmp_path / "m.pt", net, ModelInfo(network=net.config))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(truncated)

    wrong = dict(net.config, width=8)
    mismatch = save_checkpoint(tmp_path / "mismatch.pt", net, ModelInfo(network=wrong))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(mismatch)

    with pytest.raises(CheckpointError, match="segmentation model is needed"):
        fusion = save_checkpoint(
            tmp_path / "fusion.pt", net, ModelInfo(network=net.config, task="fusion")
        )
        load_checkpoint(fusion, task="segmentation")


def test_newer_format_is_refused(tmp_path):
    net = _model()
    path = save_checkpoint(tmp_path / "m.pt", net, ModelInfo(network=net.config))
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="Update napari-cellfocus"):
        load_checkpoint(path)
