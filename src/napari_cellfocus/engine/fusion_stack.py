"""Training HF-Seg for its direct whole-stack mode on real-content and simulated stacks.

The direct mode of :func:`~napari_cellfocus.engine.fusion.iter_fuse` runs the HF-Seg
network on every pair ``(slice k, stack mean)``, takes the log-odds
``d_k = logit0_k - logit1_k`` that slice ``k`` is the sharper one, and fuses
``f = sum_k softmax_k(d)_k x_k``. :class:`StackFusionTrainer` trains exactly that
computation end to end: each step holds ``stacks`` whole (cropped) focus stacks and
``pairs`` two-source pairs, and minimises

``L = CE(softmax_k(d), t) + l1_weight * mean|f - y| + BCE_pairs``

with ``t`` the per-pixel target distribution of :func:`~napari_cellfocus.core.fusion_data.
focus_target` (equal weight on the slices whose noiseless image is within a tie
tolerance of the best), ``y`` the noiseless all-in-focus image and ``BCE_pairs`` the
eq. 6.3 loss of the pairs (both source orders, T 6.2.3), so the pairwise mode keeps its
meaning. Not in the thesis (its networks are trained on pairs only); the checkpoint is an
ordinary HF-Seg checkpoint.

Stacks come from :class:`StackSampler`: real images of a :class:`~napari_cellfocus.core.
fusion_data.RealImagePool` made into :func:`~napari_cellfocus.core.fusion_data.
real_focus_stack` stacks with :func:`~napari_cellfocus.core.fusion_data.
random_stack_params`, or, with probability ``sim_fraction``, the simulator's
:func:`~napari_cellfocus.core.simulate.simulate_focus_stack`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cellfocus.core.fusion_data import (
    FusionSample,
    RealImagePool,
    focus_target,
    random_stack_params,
    real_focus_stack,
)
from napari_cellfocus.engine.checkpoint import ModelInfo, save_checkpoint
from napari_cellfocus.engine.fusion import (
    build_fusion_model,
    fusion_kind,
    fusion_output,
    hf_seg_loss,
)
from napari_cellfocus.engine.train import TrainProgress
from napari_cellfocus.engine.training_guard import GuardedTraining, check_guard_settings

__all__ = [
    "StackFusionConfig",
    "StackFusionTrainer",
    "StackSample",
    "StackSampler",
    "direct_fusion",
]


@dataclass
class StackSample:
    """One training stack, normalised like a stack at inference.

    x : (Z, C, Y, X) float32 noisy slices; truth : (C, Y, X) float32 noiseless
    all-in-focus image; target : (Z, Y, X) float32 distribution over slices (sums to 1).
    """

    x: np.ndarray
    truth: np.ndarray
    target: np.ndarray


def _normalise(stack: np.ndarray, *others: np.ndarray, low=1.0, high=99.8):
    lo, hi = np.percentile(stack, [low, high])
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(1.0)
    return [(np.asarray(a, np.float32) - np.float32(lo)) * scale for a in (stack, *others)]


class StackSampler:
    """Endless supply of :class:`StackSample` (see the module docstring).

    pool : real images (``None``: simulator only); size : crop side (px);
    sim_fraction : share of simulator stacks; max_slices : cap on the slices per stack
    (memory / time of one step).
    """

    def __init__(
        self,
        pool: RealImagePool | None,
        size: int = 96,
        sim_fraction: float = 0.3,
        max_slices: int = 7,
    ) -> None:
        self.pool = pool
        self.size = int(size)
        self.sim_fraction = 1.0 if pool is None else float(sim_fraction)
        self.max_slices = int(max_slices)

    def __call__(self, rng: np.random.Generator) -> StackSample:
        if rng.random() < self.sim_fraction:
            return self._simulated(rng)
        image, labels = self.pool.crop(rng, self.size)
        p = random_stack_params(rng)
        p["n_slices"] = min(p["n_slices"], self.max_slices)
        st = real_focus_stack(image, labels, int(rng.integers(2**31)), **p)
        tie = 0.01 * max(float(st.sharp.max()), 1e-6)
        target = focus_target(st.clean, st.sharp, tie)
        x, truth = _normalise(st.stack, st.truth)
        return StackSample(x[:, None], truth[None], target)

    def _simulated(self, rng: np.random.Generator) -> StackSample:
        from napari_cellfocus.core.simulate import random_scene_params, simulate_focus_stack

        p = random_scene_params(rng)
        p.pop("out_of_focus", None)
        n = int(rng.integers(3, self.max_slices + 1))
        kw = {
            "n_slices": n,
            "defocus_per_slice": float(rng.uniform(0.75, 3.0)),
            "seed": int(rng.integers(2**31)),
        }
        shape = (self.size, self.size)
        noisy = simulate_focus_stack(shape, **kw, **p)
        clean = simulate_focus_stack(shape, **kw, **{**p, "photons": np.inf, "read_noise": 0.0})
        full = float(noisy.params.get("full_scale", 255.0))
        y = clean.all_in_focus.astype(np.float32)
        target = focus_target(clean.stack.astype(np.float32), y, 0.004 * full)
        x, truth = _normalise(noisy.stack, y)
        return StackSample(x[:, None], truth[None], target)


def direct_fusion(
    model: torch.nn.Module, x: torch.Tensor, space_to_depth: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The direct whole-stack HF-Seg fusion of :func:`~.fusion.iter_fuse`, differentiable.

    x : (Z, C, Y, X) normalised slices. Returns ``(log_w, fused)``: (Z, Y, X)
    log-softmax over slices of the log-odds ``logit0 - logit1`` of each pair
    ``(slice k, stack mean)``, and the fused (C, Y, X) image ``sum_k w_k x_k``.
    """
    ref = x.mean(dim=0, keepdim=True).expand_as(x)
    logits = fusion_output(model, torch.cat([x, ref], dim=1), "hf-seg", False, space_to_depth)
    d = logits[:, 0] - logits[:, 1]
    log_w = torch.log_softmax(d, dim=0)
    fused = (log_w.exp()[:, None] * x).sum(dim=0)
    return log_w, fused


@dataclass
class StackFusionConfig:
    """Settings of a :class:`StackFusionTrainer` run.

    steps, lr (Adam, cosine decay to 5 %), stacks / pairs per step, l1_weight (of the
    fused image's L1 error), seed, checkpoint_every / checkpoint_every_s and the
    divergence watch (as :class:`~.fusion.FusionTrainConfig`).
    """

    steps: int = 1000
    lr: float = 2e-3
    stacks: int = 2
    pairs: int = 2
    l1_weight: float = 20.0
    seed: int = 0
    checkpoint_every: int = 50
    checkpoint_every_s: float = 120.0
    divergence_factor: float = 10.0
    divergence_window: int = 20

    def __post_init__(self) -> None:
        if self.steps < 1 or self.stacks < 0 or self.pairs < 0 or self.stacks + self.pairs < 1:
            raise ValueError(
                "steps >= 1, stacks and pairs >= 0 with at least one of them > 0; got "
                f"steps={self.steps}, stacks={self.stacks}, pairs={self.pairs}."
            )
        check_guard_settings(
            self.checkpoint_every, self.checkpoint_every_s, self.divergence_factor
        )


class StackFusionTrainer(GuardedTraining):
    """Train HF-Seg on whole stacks (direct mode) plus pairs; see the module docstring.

    Parameters
    ----------
    config : :class:`StackFusionConfig`.
    stack_sampler : ``rng -> StackSample``; pair_sampler : ``rng -> FusionSample``
        (both crop-sized, normalised).
    init : ``None`` (a new HF-Seg network of ``network`` / ``space_to_depth``) or a
        ``(model, ModelInfo)`` pair.
    out : checkpoint written atomically during and after training (the segmentation
        trainer's rules, :mod:`.training_guard`).
    """

    what = "fusion"

    def __init__(
        self,
        config: StackFusionConfig,
        stack_sampler: Callable[[np.random.Generator], StackSample],
        pair_sampler: Callable[[np.random.Generator], FusionSample] | None = None,
        *,
        init: tuple[torch.nn.Module, ModelInfo] | None = None,
        network: dict[str, Any] | None = None,
        space_to_depth: int = 2,
        out: str | Path | None = None,
        data: str = "",
    ) -> None:
        self.config = cfg = config
        torch.manual_seed(cfg.seed)
        if init is not None:
            self.model, self.info = copy.deepcopy(init[0]), copy.deepcopy(init[1])
        else:
            self.model, self.info = build_fusion_model(
                "hf-seg", 1, network, space_to_depth=space_to_depth
            )
        if fusion_kind(self.info) != "hf-seg":
            raise ValueError("StackFusionTrainer trains HF-Seg models only.")
        if cfg.pairs and pair_sampler is None:
            raise ValueError("pairs > 0 needs a pair_sampler.")
        self.s2d = int(self.info.training.get("space_to_depth", 1))
        self.stack_sampler = stack_sampler
        self.pair_sampler = pair_sampler
        self.device = torch.device("cpu")
        self.out = Path(out) if out is not None else None
        self.data = data
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.history: list[dict[str, Any]] = list(self.info.history)
        self.step = 0
        self.start_guard()

    def loss(self, rng: np.random.Generator) -> torch.Tensor:
        """The loss of one step's examples (drawn from ``rng``)."""
        cfg = self.config
        total = torch.zeros(())
        for _ in range(cfg.stacks):
            s = self.stack_sampler(rng)
            x = torch.from_numpy(np.ascontiguousarray(s.x))
            log_w, fused = direct_fusion(self.model, x, self.s2d)
            target = torch.from_numpy(s.target)
            ce = -(target * log_w).sum(dim=0).mean()
            l1 = (fused - torch.from_numpy(s.truth)).abs().mean()
            total = total + (ce + cfg.l1_weight * l1) / cfg.stacks
        if cfg.pairs:
            examples = [self.pair_sampler(rng) for _ in range(cfg.pairs)]
            both = [e for ex in examples for e in (ex, ex.swapped())]
            xp = torch.from_numpy(np.stack([np.concatenate([e.a, e.b]) for e in both]))
            g = torch.from_numpy(np.stack([e.focus for e in both]))
            out = fusion_output(self.model, xp, "hf-seg", False, self.s2d)
            total = total + hf_seg_loss(out, g)
        return total

    def steps(self) -> Iterator[TrainProgress]:
        """Train, yielding after every step; closing the generator cancels (the weights
        of the last good step kept and written to ``out``). The examples of step ``s`` are
        drawn with the seed ``[seed, s]``."""
        seed = self.config.seed
        yield from self.guarded_steps(
            lambda: self.loss(np.random.default_rng([seed, self.step])), cosine=True
        )

    def current_info(self) -> ModelInfo:
        info = copy.deepcopy(self.info)
        info.history = list(self.history)
        info.training = {
            **info.training,
            "last_run": {
                **asdict(self.config),
                **self.run_state(),
                "device": "cpu",
                "trainer": "engine.fusion_stack.StackFusionTrainer (direct-mode stack loss)",
                "data": self.data,
            },
        }
        return info

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.model, self.current_info())
