"""The inference copy (folded batch norm, channels-last on the CPU) computes the same
logits and probabilities as the trained network, and leaves the network untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cellfocus.engine.inference import ENV_VAR, fold_batch_norms, inference_copy
from napari_cellfocus.engine.networks import DDTModel, ResidualUNet, UNet
from napari_cellfocus.engine.predict import predict_probabilities
from napari_cellfocus.engine.tiling import axis_tiling, even_window


def _with_running_stats(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """``model`` in eval mode after a few train-mode passes, so that every batch norm has
    running statistics far from the identity (mean 0, variance 1) it starts with."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, *shape) * 3.0 + 0.5)
    for m in model.modules():  # also non-trivial affine parameters
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    ("model", "shape", "pairs"),
    [
        (UNet(depth=3, width=8), (1, 40, 56), 2 * 5),  # 3 encoder + 2 decoder blocks
        (UNet(depth=3, width=8, residual=True), (1, 40, 56), 2 * 5),
        (UNet(depth=2, width=4, dims=3), (1, 8, 16, 16), 2 * 3),
        (DDTModel(depth=2, width=4), (1, 32, 32), 2 * 2 * 3),  # backbone + top U-Net
        (ResidualUNet(depth=3, width=8), (1, 32, 32), 0),  # norm before conv: not folded
    ],
    ids=["unet", "residual-unet-blocks", "unet-3d", "ddt", "counting-residual"],
)
def test_inference_copy_same_logits(model: nn.Module, shape: tuple[int, ...], pairs: int):
    model = _with_running_stats(model, shape)
    x = torch.rand(1, *shape) * 3.0 + 0.5
    want = _logits(model, x)
    fast = inference_copy(model, "cpu")
    got = _logits(fast, x)
    assert got.shape == want.shape
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * max(scale, 1.0)
    # the copy really changed: no batch norm left in the folded blocks
    left = sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d) for m in fast.modules())
    total = sum(isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d) for m in model.modules())
    assert total - left == pairs


def test_inference_copy_leaves_the_model_alone():
    model = _with_running_stats(UNet(depth=2, width=4), (1, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model, "cpu")
    assert fast is not model
    after = model.state_dict()
    assert before.keys() == after.keys()  # batch norms still there
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters())
    assert model.encoder[0].conv1.weight.is_contiguous()  # NCHW kept for training


def test_fold_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(UNet(depth=2, width=4).train())


def test_eager_environment_switch(monkeypatch):
    model = UNet(depth=2, width=4).eval()
    monkeypatch.setenv(ENV_VAR, "eager")
    assert inference_copy(model, "cpu") is model


def test_tiled_prediction_matches_the_trained_network(monkeypatch):
    """Through the real prediction path (tiles, blending, softmax): the default copy and
    the trained network itself give the same probabilities."""
    model = _with_running_stats(UNet(depth=3, width=8), (1, 64, 64))
    image = np.random.default_rng(1).random((150, 230)).astype(np.float32)
    fast = predict_probabilities(model, image, tile_size=96, halo=16, blend=8)
    monkeypatch.setenv(ENV_VAR, "eager")
    eager = predict_probabilities(model, image, tile_size=96, halo=16, blend=8)
    assert fast.shape == eager.shape == (3, 150, 230)
    assert np.abs(fast - eager).max() <= 1e-5


def test_even_window_hand_computed():
    # 1100 px, windows <= 1024, overlap 2*32 + 32 = 96: two windows of (1100 + 96) / 2 =
    # 598 px, rounded up to the pooling factor 8 -> 600 (a 1024 window would need two
    # windows too, computing 2048 px instead of 1200)
    assert even_window(1100, 1024, 32, 32, align=8) == 600
    assert len(axis_tiling(1100, 600, 32, 32, align=8).starts) == 2
    # 4096 px: ceil((4096 - 96) / (1024 - 96)) = 5 windows of (4096 + 4 * 96) / 5 = 896
    assert even_window(4096, 1024, 32, 32, align=8) == 896
    assert len(axis_tiling(4096, 896, 32, 32, align=8).starts) == 5
    # an axis no longer than the largest window is one window
    assert even_window(1000, 1024, 32, 32, align=8) == 1000
    assert even_window(1024, 1024, 32, 32, align=8) == 1024


def test_other_modules_are_used_as_they_are():
    """Wrappers and test doubles are not copied: only the package's own networks are."""
    wrapper = nn.Sequential(UNet(depth=2, width=4))
    assert inference_copy(wrapper, "cpu") is wrapper
