"""Space-to-depth fusion networks, batch-norm folding and the whole-stack HF-Seg trainer
(engine.fusion / engine.fusion_stack, issues 14 and 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.fusion_data import FusionPairSampler
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.fusion import (
    FusionModel,
    build_fusion_model,
    fold_batchnorm,
    fuse_stack,
    fusion_output,
)
from napari_cellfocus.engine.fusion_stack import (
    StackFusionConfig,
    StackFusionTrainer,
    StackSampler,
    direct_fusion,
)

TINY = {"depth": 2, "width": 4}


def _settle_batchnorm(model: torch.nn.Module) -> None:
    """Give every batch norm non-trivial running statistics and affine weights."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("kind, out", [("hf-seg", 2), ("hf-reg", 1)])
def test_space_to_depth_shapes_any_size(kind, out):
    model, info = build_fusion_model(kind, network=TINY, space_to_depth=2)
    assert model.config["in_channels"] == 8 and model.config["out_channels"] == 4 * out
    assert info.training["space_to_depth"] == 2
    x = torch.rand(3, 2, 33, 45)
    y = fusion_output(model.eval(), x, kind, info.training["residual"], 2)
    assert y.shape == (3, out, 33, 45)


def test_space_to_depth_rejects_bad_factor():
    with pytest.raises(ValueError, match="space_to_depth"):
        build_fusion_model("hf-seg", space_to_depth=0)


def test_new_residual_hf_reg_starts_at_the_source_mean():
    model, _ = build_fusion_model("hf-reg", network=TINY, space_to_depth=2)
    x = torch.rand(2, 2, 16, 16)
    y = fusion_output(model.eval(), x, "hf-reg", True, 2)
    assert torch.allclose(y[:, 0], 0.5 * (x[:, 0] + x[:, 1]), atol=1e-6)


def test_fold_batchnorm_same_outputs():
    model, _ = build_fusion_model("hf-seg", network={"depth": 3, "width": 4, "norm": "batch"})
    _settle_batchnorm(model)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched
    x = torch.rand(2, 2, 40, 40)
    with torch.inference_mode():
        a, b = model(x), folded(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_fusion_model_folds_and_fuses_the_same(tmp_path):
    model, info = build_fusion_model(
        "hf-seg", network={"depth": 2, "width": 4, "norm": "batch"}, space_to_depth=2
    )
    _settle_batchnorm(model)
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (3, 37, 50)).astype(np.uint8)
    fm = FusionModel((model, info), device="cpu")
    plain = FusionModel((model, info), device="cpu", fold_batch_norm=False)
    assert fm.channels == 1 and fm.space_to_depth == 2 and fm.divisor == 4
    r1 = fuse_stack(stack, "hf-seg", model=fm)
    r2 = fuse_stack(stack, "hf-seg", model=plain)
    assert r1.fused.shape == (37, 50) and r1.fused.dtype == np.uint8
    assert np.abs(r1.fused.astype(int) - r2.fused.astype(int)).max() <= 1
    assert np.allclose(r1.depth, r2.depth, atol=1e-3)


def test_direct_fusion_matches_inference():
    """The trainer's differentiable direct fusion is the computation of iter_fuse's
    direct mode (same normalised stack in, same fused image and depth out)."""
    model, info = build_fusion_model("hf-seg", network=TINY, space_to_depth=2)
    model.eval()
    rng = np.random.default_rng(1)
    stack = rng.random((4, 32, 32)).astype(np.float32)
    fm = FusionModel((model, info), device="cpu", mixed_precision=False)
    res = fuse_stack(stack, "hf-seg", model=fm, mode="direct")
    lo, hi = fm.normalizer.limits(stack)
    x = torch.from_numpy((stack - lo) / (hi - lo))[:, None]
    with torch.no_grad():
        log_w, fused = direct_fusion(model, x, 2)
    fused = fused[0].numpy() * (hi - lo) + lo
    depth = (log_w.exp() * torch.arange(4.0)[:, None, None]).sum(0).numpy()
    assert np.allclose(res.fused, fused, atol=1e-4)
    assert np.allclose(res.depth, depth, atol=1e-4)


def test_stack_trainer_steps_and_checkpoint(tmp_path):
    out = tmp_path / "hfseg.pt"
    cfg = StackFusionConfig(steps=3, stacks=1, pairs=1, checkpoint_every=0)
    trainer = StackFusionTrainer(
        cfg,
        StackSampler(None, size=32, max_slices=3),
        FusionPairSampler((32, 32)),
        network=TINY,
        space_to_depth=2,
        out=out,
        data="test",
    )
    losses = [p.loss for p in trainer.steps()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    _, info = load_checkpoint(out, task="fusion")
    assert info.training["kind"] == "hf-seg" and info.training["space_to_depth"] == 2
    assert info.training["last_run"]["steps_done"] == 3
    fm = FusionModel(out, device="cpu")
    r = fuse_stack(np.random.default_rng(0).random((3, 20, 24)), "hf-seg", model=fm)
    assert r.fused.shape == (20, 24)


def test_stack_trainer_needs_pairs_sampler():
    with pytest.raises(ValueError, match="pair_sampler"):
        StackFusionTrainer(StackFusionConfig(pairs=1), StackSampler(None, 32), None)
    with pytest.raises(ValueError, match="steps"):
        StackFusionConfig(stacks=0, pairs=0)


def test_stack_sampler_simulated_target_is_a_distribution():
    s = StackSampler(None, size=32, max_slices=4)(np.random.default_rng(3))
    z = s.x.shape[0]
    assert 3 <= z <= 4 and s.x.shape[1:] == (1, 32, 32) and s.truth.shape == (1, 32, 32)
    assert s.target.shape == (z, 32, 32) and np.allclose(s.target.sum(axis=0), 1.0)


def test_pair_trainer_records_its_data_source():
    from napari_cellfocus.engine.fusion import FusionTrainConfig, FusionTrainer

    cfg = FusionTrainConfig(kind="hf-reg", steps=1, batch_size=1, crop_size=32)
    default = FusionTrainer(cfg, network=TINY, device="cpu")
    assert default.current_info().training["last_run"]["data"].startswith("simulated pairs")
    custom = FusionTrainer(cfg, sampler=FusionPairSampler((32, 32)), network=TINY, device="cpu")
    data = custom.current_info().training["last_run"]["data"]
    assert data == "pairs from napari_cellfocus.core.fusion_data.FusionPairSampler"
