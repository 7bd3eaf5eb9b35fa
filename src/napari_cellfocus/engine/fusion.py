"""Learned multi-focus fusion (thesis **T** chapter 6) and the fuse API of CLI and widget.

Networks (T 6.2.2), both a :class:`~napari_cellfocus.engine.networks.UNet` fed with the two
sources concatenated as ``2C`` channels:

* **HF-Seg**: 2 output channels, softmax ``z = (z0, z1)``, the focus map;
  fused ``f_S(x) = z0 * xA + z1 * xB`` (eq. 6.2); trained with the BCE of eq. 6.3
  (:func:`~napari_cellfocus.engine.losses.bce_loss`, target = focus map of source A).
* **HF-Reg**: ``C`` output channels, the regressed all-in-focus image; trained with
  eq. 6.4: the per-channel NPS dissimilarity (eq. 6.5, ``alpha = 6``) plus the
  per-channel min / max range terms (:func:`hf_reg_loss`); trained on noisy sources it
  also denoises (T 6.3.8). Optional "Near" post-processing (eq. 6.6) snaps the output
  to source pixels. Our built-in HF-Reg adds the source mean to the U-Net output (a
  global skip, see :func:`build_fusion_model`).

The default method (:data:`DEFAULT_METHOD`) is HF-Seg with the direct whole-stack focus
map: the best SSIM on the simulated benchmark (``docs/fusion.md``).

Training (T 6.2.3): every batch holds each pair in both source orders (commutativity);
Adam; progress after every step through a generator, with a stop flag, as in
:mod:`.train`.

Inference: ``n`` slices by the ``n``-th functional power ``f(f(x0, x1), x2) ...`` (T 6.2),
or, for HF-Seg, a *direct* whole-stack focus map (every slice compared with the stack
mean in one pass, softmax over slices; see :func:`iter_fuse`). Large images are fused
tile by tile with the normalised blending weights of :mod:`.tiling`; the generator
:func:`iter_fuse` yields a :class:`FusionProgress` per tile so the widget can show
progress and cancel. :func:`fuse_stack` is the single entry point of the CLI and the
widget for the learned *and* the classical methods, which run in numpy
(:mod:`napari_cellfocus.core.fusion`, the reference) or in torch on any device
(:mod:`.fusion_classical`); :func:`classical_device` says which.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_cellfocus.core.fusion import (
    CLASSICAL_METHODS,
    FusionResult,
    PreparedStack,
    fuse_classical,
    near,
    prepare_stack,
)
from napari_cellfocus.core.fusion_data import FusionPairSampler, FusionSample
from napari_cellfocus.core.normalize import PercentileNormalization
from napari_cellfocus.engine.checkpoint import (
    CheckpointError,
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
)
from napari_cellfocus.engine.device import (
    autocast,
    describe_device,
    example_threads,
    is_out_of_memory,
    release_memory,
    select_device,
)
from napari_cellfocus.engine.fusion_classical import fuse_classical_torch
from napari_cellfocus.engine.losses import bce_loss
from napari_cellfocus.engine.networks import build_network
from napari_cellfocus.engine.tiling import grid_tiles
from napari_cellfocus.engine.train import TrainProgress
from napari_cellfocus.engine.training_guard import GuardedTraining, check_guard_settings

__all__ = [
    "DEFAULT_FUSION_NETWORK",
    "DEFAULT_METHOD",
    "DEFAULT_SEG_MODE",
    "DEFAULT_TILE",
    "LEARNED_METHODS",
    "METHODS",
    "FusionModel",
    "FusionProgress",
    "FusionTrainConfig",
    "FusionTrainer",
    "build_fusion_model",
    "classical_device",
    "default_fusion_model_path",
    "fold_batchnorm",
    "fuse_stack",
    "fusion_output",
    "hf_reg_loss",
    "hf_seg_loss",
    "iter_fuse",
    "nps",
    "nps_loss",
    "range_loss",
]

#: Learned methods (names used by the CLI and the widget) = fusion network kinds.
LEARNED_METHODS = ("hf-seg", "hf-reg")
#: Every fusion method, learned first.
METHODS = (*LEARNED_METHODS, *CLASSICAL_METHODS)
#: The best learned method on the simulated benchmark (docs/fusion.md).
DEFAULT_METHOD = "hf-seg"
#: Default tile side of the learned methods (px).
DEFAULT_TILE = 1024
#: Default way HF-Seg fuses n slices (the better one on the simulated benchmark).
DEFAULT_SEG_MODE = "direct"

#: Network of the shipped models: small enough to train and run on a laptop CPU.
DEFAULT_FUSION_NETWORK: dict[str, Any] = {"depth": 4, "width": 16, "norm": "batch"}

_DATA = Path(__file__).resolve().parents[1] / "data"
#: Shipped model files by kind (the default method's model is ``default_fusion_model.pt``).
_DEFAULT_FILES = {
    "hf-seg": "default_fusion_model.pt",
    "hf-reg": "default_fusion_model_hfreg.pt",
}


def default_fusion_model_path(kind: str = DEFAULT_METHOD) -> Path:
    """The built-in model of a learned method shipped inside the package."""
    if kind not in _DEFAULT_FILES:
        raise ValueError(
            f"no built-in fusion model for {kind!r}; expected one of {LEARNED_METHODS}."
        )
    return _DATA / _DEFAULT_FILES[kind]


# --------------------------------------------------------------------------- losses
def nps(pred: torch.Tensor, target: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """Normalised positive sigmoid, **T** eq. 6.5, element-wise.

    ``phi_alpha(y, yhat) = 2 / (exp(-alpha |y - yhat|) + 1) - 1
    = (exp(alpha d) - 1) / (exp(alpha d) + 1) = tanh(alpha d / 2)`` with ``d = |y - yhat|``;
    0 at ``d = 0``, tending to 1 for large ``d``. Computed as ``tanh`` (no overflow).
    """
    return torch.tanh(0.5 * float(alpha) * (pred - target).abs())


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("pred and target must be torch tensors.")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    if pred.ndim < 3:
        raise ValueError(
            f"expected (N, C, Y, X) or (N, C, Z, Y, X) tensors, got shape {tuple(pred.shape)}."
        )


def nps_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """First term of **T** eq. 6.4: ``(1/|Omega|) sum_i sum_p phi_alpha(y_i(p), yhat_i(p))``.

    The *sum over channels* of the per-channel mean over pixels (T 6.2.2: "the sum of the
    mean distance for each channel"), averaged over the batch. Shapes (N, C, *S).
    """
    _check_pair(pred, target)
    pred, target = pred.float(), target.float()
    per_channel = nps(pred, target, alpha).flatten(2).mean(dim=2)  # (N, C)
    return per_channel.sum(dim=1).mean()


def range_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Min / max terms of **T** eq. 6.4 (per image, averaged over the batch).

    ``sum_i |min(y_i) - min(yhat_i)| + sum_i |max(y_i) - max(yhat_i)|`` over channels ``i``,
    minima and maxima taken over the pixels of each image.
    """
    _check_pair(pred, target)
    p, t = pred.float().flatten(2), target.float().flatten(2)
    lo = (t.amin(dim=2) - p.amin(dim=2)).abs().sum(dim=1)
    hi = (t.amax(dim=2) - p.amax(dim=2)).abs().sum(dim=1)
    return (lo + hi).mean()


def hf_reg_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """HF-Reg loss, **T** eq. 6.4: NPS (eq. 6.5, ``alpha = 6``) plus the min / max terms."""
    return nps_loss(pred, target, alpha) + range_loss(pred, target)


def hf_seg_loss(logits: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """HF-Seg loss, **T** eq. 6.3: BCE of the 2-channel focus map against the focus map of
    source A (``focus`` (N, Y, X) in [0, 1]); see :func:`~.losses.bce_loss`."""
    return bce_loss(logits, focus)


# --------------------------------------------------------------------------- models
def build_fusion_model(
    kind: str,
    channels: int = 1,
    network: dict[str, Any] | None = None,
    residual: bool | None = None,
    space_to_depth: int = 1,
) -> tuple[torch.nn.Module, ModelInfo]:
    """A new HF-Seg or HF-Reg U-Net and its ModelInfo (task "fusion").

    Parameters
    ----------
    kind : "hf-seg" (2 output channels) or "hf-reg" (``channels`` output channels).
    channels : colour channels of one source (1 = grey); the input has ``2 * channels``.
    network : U-Net settings (``depth``, ``width``, ``norm``, ...), default
        :data:`DEFAULT_FUSION_NETWORK`.
    residual : HF-Reg only (default True): the fused image is the mean of the two
        sources plus the network output (a global skip connection), so the U-Net
        regresses the correction; the loss is still eq. 6.4 on the fused image. Not in
        the thesis (there the U-Net output is the image); it reaches a useful model in
        the few hundred CPU steps of our training budget. Stored in the checkpoint. The
        last (1x1) convolution of a residual HF-Reg starts at zero, so a new network
        outputs the source mean.
    space_to_depth : ``s`` >= 1: the pair is rearranged into ``s * s`` times more
        channels at ``1 / s`` of the resolution (``pixel_unshuffle``, lossless) before the
        U-Net, whose ``s * s * K`` outputs are put back to full resolution
        (``pixel_shuffle``); the U-Net then runs on ``s * s`` times fewer pixels (about 4x
        faster for ``s = 2``). Stored in ``training["space_to_depth"]``; 1 = the plain
        U-Net of T 6.2.2 (the earlier checkpoints).
    """
    if kind not in LEARNED_METHODS:
        raise ValueError(f"kind: expected one of {LEARNED_METHODS}, got {kind!r}.")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels: expected an integer >= 1, got {channels!r}.")
    if isinstance(space_to_depth, bool) or not isinstance(space_to_depth, int):
        raise ValueError(f"space_to_depth: expected an integer >= 1, got {space_to_depth!r}.")
    if space_to_depth < 1:
        raise ValueError(f"space_to_depth: expected an integer >= 1, got {space_to_depth!r}.")
    s2 = space_to_depth**2
    cfg = {"architecture": "unet", **DEFAULT_FUSION_NETWORK, **(network or {})}
    cfg["in_channels"] = 2 * channels * s2
    cfg["out_channels"] = (2 if kind == "hf-seg" else channels) * s2
    model = build_network(cfg)
    classes = (
        ["source A", "source B"] if kind == "hf-seg" else [f"channel {c}" for c in range(channels)]
    )
    if residual is None:
        residual = kind == "hf-reg"
    if residual and kind != "hf-reg":
        raise ValueError("residual: only HF-Reg regresses an image (HF-Seg outputs a focus map).")
    head = getattr(model, "head", None)
    if residual and isinstance(head, torch.nn.Conv2d):
        # start from the source mean (a zero correction) rather than from random output
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)
    info = ModelInfo(
        network=model.config,
        task="fusion",
        classes=classes,
        normalization=PercentileNormalization().to_dict(),
        training={
            "kind": kind,
            "channels": channels,
            "residual": bool(residual),
            "space_to_depth": int(space_to_depth),
        },
    )
    return model, info


def fusion_output(
    model: torch.nn.Module, x: torch.Tensor, kind: str, residual: bool, space_to_depth: int = 1
) -> torch.Tensor:
    """Network output for inputs ``x`` (N, 2C, Y, X): HF-Seg logits (N, 2, Y, X), or the
    HF-Reg fused image (N, C, Y, X) (plus the source mean when ``residual``).
    ``space_to_depth`` ``s > 1``: the U-Net runs on ``pixel_unshuffle(x, s)`` (inputs
    padded by reflection to a multiple of ``s``) and its output is ``pixel_shuffle``-d
    back and cropped to (Y, X)."""
    s = int(space_to_depth)
    if s > 1:
        ny, nx = x.shape[-2:]
        py, px = (-ny) % s, (-nx) % s
        xin = x
        if py or px:
            mode = "reflect" if py < ny and px < nx else "replicate"
            xin = torch.nn.functional.pad(x, (0, px, 0, py), mode=mode)
        out = torch.nn.functional.pixel_shuffle(
            model(torch.nn.functional.pixel_unshuffle(xin, s)), s
        )[..., :ny, :nx]
    else:
        out = model(x)
    if kind == "hf-reg" and residual:
        c = x.shape[1] // 2
        out = out + 0.5 * (x[:, :c] + x[:, c:])
    return out


def fusion_kind(info: ModelInfo) -> str:
    """The kind ("hf-seg" / "hf-reg") of a fusion checkpoint's ModelInfo."""
    kind = info.training.get("kind")
    if kind in LEARNED_METHODS:
        return kind
    return "hf-seg" if info.classes[:2] == ["source A", "source B"] else "hf-reg"


# --------------------------------------------------------------------------- training
@dataclass
class FusionTrainConfig:
    """Settings of a fusion training run.

    kind : "hf-seg" or "hf-reg". steps : optimisation steps. batch_size : pairs per step
    (the batch holds each in both orders, so 2 x batch_size images). crop_size : side of
    the simulated training fields (px). lr : Adam learning rate (T 6.3: 1e-5 over 1000
    epochs; a higher rate suits a budget of minutes). alpha : NPS parameter (T: 6).
    lr_schedule : "constant" or "cosine". stack_fraction / noise : see
    :class:`~napari_cellfocus.core.fusion_data.FusionPairSampler`. seed : seeds numpy and
    torch. checkpoint_every : steps between atomic checkpoint writes when ``out`` is set;
    checkpoint_every_s : seconds between them as well (0 = only by steps).
    divergence_factor, divergence_window : the run is declared diverged when the smoothed
    loss stays above ``divergence_factor`` times its best for ``divergence_window`` steps
    in a row (0 = only a non-finite loss or weights), as in
    :class:`~napari_cellfocus.engine.train.TrainConfig` (the shipped models' smoothed
    losses never rose above 1.6x their best).
    """

    kind: str = "hf-seg"
    steps: int = 500
    batch_size: int = 4
    crop_size: int = 128
    lr: float = 1e-3
    alpha: float = 6.0
    lr_schedule: str = "cosine"
    stack_fraction: float = 0.5
    noise: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    checkpoint_every_s: float = 300.0
    divergence_factor: float = 10.0
    divergence_window: int = 20

    def __post_init__(self) -> None:
        if self.kind not in LEARNED_METHODS:
            raise ValueError(f"kind: expected one of {LEARNED_METHODS}, got {self.kind!r}.")
        if self.steps < 1 or self.batch_size < 1 or self.crop_size < 16:
            raise ValueError(
                "steps and batch_size must be >= 1 and crop_size >= 16, got "
                f"steps={self.steps}, batch_size={self.batch_size}, crop_size={self.crop_size}."
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: 'constant' or 'cosine', got {self.lr_schedule!r}.")
        check_guard_settings(
            self.checkpoint_every, self.checkpoint_every_s, self.divergence_factor
        )


Sampler = Callable[[np.random.Generator], FusionSample]


class FusionTrainer(GuardedTraining):
    """Train an HF-Seg or HF-Reg network on pairs from a sampler (the simulator by default).

    The segmentation trainer's safety rules (:mod:`.training_guard`): a diverged run stops
    with :class:`~napari_cellfocus.engine.train.TrainingDiverged` ("fusion training
    diverged at step N: ...") and writes no model of the diverged steps; checkpoints every
    ``checkpoint_every`` steps and ``checkpoint_every_s`` seconds, on cancel (closing the
    generator, ``should_stop``, a KeyboardInterrupt) and at the end; ``cancel_reason``
    (e.g. "SIGTERM") and ``steps_done`` / ``cancelled`` / ``diverged`` are stored in
    ``training["last_run"]``.

    Parameters
    ----------
    config : :class:`FusionTrainConfig`.
    sampler : ``rng -> FusionSample`` (crop-sized, normalised); default
        :class:`~napari_cellfocus.core.fusion_data.FusionPairSampler` of the config.
    init : ``None`` (new network), a checkpoint path, or a ``(model, ModelInfo)`` pair.
    network : U-Net settings of a new network.
    device : "auto", "cpu", "cuda", ...
    out : checkpoint written atomically during and after training.
    space_to_depth : of a new network (see :func:`build_fusion_model`).
    workers : threads making examples (numpy/scipy release the GIL); ``None``:
        :func:`~napari_cellfocus.engine.device.example_threads` (1 on the CPU, up to 8 on
        an accelerator).
    """

    def __init__(
        self,
        config: FusionTrainConfig | None = None,
        *,
        sampler: Sampler | None = None,
        init: str | Path | tuple[torch.nn.Module, ModelInfo] | None = None,
        network: dict[str, Any] | None = None,
        channels: int = 1,
        device: str | torch.device | None = "auto",
        out: str | Path | None = None,
        workers: int | None = None,
        space_to_depth: int = 1,
    ) -> None:
        self.config = cfg = config or FusionTrainConfig()
        self.device = select_device(device)
        self.out = Path(out) if out is not None else None
        torch.manual_seed(cfg.seed)
        if isinstance(init, tuple):
            self.model, self.info = copy.deepcopy(init[0]), copy.deepcopy(init[1])
        elif init is not None:
            self.model, self.info = load_checkpoint(init, device="cpu", task="fusion")
        else:
            self.model, self.info = build_fusion_model(
                cfg.kind, channels, network, space_to_depth=space_to_depth
            )
        if fusion_kind(self.info) != cfg.kind:
            raise ValueError(
                f"the starting model is {fusion_kind(self.info)}, but training asks for "
                f"{cfg.kind}."
            )
        self.sampler = sampler or FusionPairSampler(
            (cfg.crop_size, cfg.crop_size), cfg.stack_fraction, cfg.noise
        )
        #: What the examples were (stored in ``training["last_run"]["data"]``).
        self.data = (
            "simulated pairs (core.fusion_data.FusionPairSampler)"
            if sampler is None
            else f"pairs from {type(sampler).__module__}.{type(sampler).__qualname__}"
        )
        self.workers = example_threads(self.device, workers)
        self._pool = None
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.history: list[dict[str, Any]] = list(self.info.history)
        self.step = 0
        self.start_guard()

    #: Diverged runs say "fusion training diverged at step N: ...".
    what = "fusion"

    def _example(self, index: int) -> FusionSample:
        rng = np.random.default_rng([self.config.seed, self.step, index])
        return self.sampler(rng)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs (2B, 2C, Y, X), targets (2B, C, Y, X), focus maps (2B, Y, X): every pair
        in both source orders (T 6.2.3)."""
        n = self.config.batch_size
        if self._pool is not None:
            examples = list(self._pool.map(self._example, range(n)))
        else:
            examples = [self._example(i) for i in range(n)]
        both = [s for e in examples for s in (e, e.swapped())]
        x = np.stack([np.concatenate([s.a, s.b]) for s in both])
        y = np.stack([s.target for s in both])
        g = np.stack([s.focus for s in both])
        dev = self.device
        return (
            torch.from_numpy(x).to(dev),
            torch.from_numpy(y).to(dev),
            torch.from_numpy(g).to(dev),
        )

    def loss(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        residual = bool(self.info.training.get("residual", False))
        s2d = int(self.info.training.get("space_to_depth", 1))
        out = fusion_output(self.model, x, self.config.kind, residual, s2d)
        if self.config.kind == "hf-seg":
            return hf_seg_loss(out, g)
        return hf_reg_loss(out, y, self.config.alpha)

    def steps(self) -> Iterator[TrainProgress]:
        """Train, yielding after every step. Closing the generator cancels (weights kept
        and written to ``out``); a diverged run raises TrainingDiverged."""
        yield from self.guarded_steps(
            lambda: self.loss(*self.batch()), cosine=self.config.lr_schedule == "cosine"
        )

    def current_info(self) -> ModelInfo:
        info = copy.deepcopy(self.info)
        info.history = list(self.history)
        info.training = {
            **info.training,
            "last_run": {
                **asdict(self.config),
                **self.run_state(),
                "device": str(self.device),
                "data": self.data,
            },
        }
        return info

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.model, self.current_info())

    def release(self) -> None:
        """Move the model to the CPU and give GPU memory back."""
        self.model.to("cpu")
        self.optimizer = None  # type: ignore[assignment]
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        release_memory(self.device)


# --------------------------------------------------------------------------- inference
@dataclass
class FusionProgress:
    """Progress of :func:`iter_fuse`: ``done`` of ``total`` steps (network tiles, or 1 for
    a classical method); the last update carries the ``result``."""

    done: int
    total: int
    message: str = ""
    result: FusionResult | None = None


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (in eval mode) with every ``conv -> BatchNorm`` pair of its
    U-Net blocks (attributes ``conv1``/``norm1`` and ``conv2``/``norm2``) merged into one
    convolution with a bias, the norm replaced by the identity. Inference only: the
    outputs equal those of ``model.eval()`` up to float rounding. Models without batch
    norm come back unchanged (as a copy)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(model).eval()
    bn = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    for module in out.modules():
        for conv_name, norm_name in (("conv1", "norm1"), ("conv2", "norm2")):
            conv = getattr(module, conv_name, None)
            norm = getattr(module, norm_name, None)
            if isinstance(norm, bn) and isinstance(conv, torch.nn.modules.conv._ConvNd):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, torch.nn.Identity())
    return out


class FusionModel:
    """A fusion network ready for inference: model, ModelInfo, device and tiling.

    ``spec``: ``"default"`` / ``None`` (the built-in model of ``kind``), a checkpoint path,
    or a ``(model, ModelInfo)`` pair. ``fold_batch_norm``: fold every batch norm into the
    convolution before it (:func:`fold_batchnorm`, same outputs to float tolerance, one
    pass over the feature maps less per layer); a ``(model, ModelInfo)`` pair is folded on
    a copy, the caller's model is left as it is.
    """

    def __init__(
        self,
        spec: Any = None,
        kind: str = DEFAULT_METHOD,
        device: str | torch.device | None = "auto",
        mixed_precision: bool = True,
        fold_batch_norm: bool = True,
    ) -> None:
        self.device = select_device(device)
        if isinstance(spec, tuple):
            self.model, self.info = spec
            self.source = "session model"
        else:
            path = (
                default_fusion_model_path(kind)
                if spec is None or str(spec).lower() == "default"
                else Path(spec)
            )
            if not path.exists() and spec in (None, "default"):
                raise CheckpointError(
                    f"{path}: the built-in {kind} model is not installed with this copy of "
                    "napari-cellfocus; give a model file."
                )
            self.model, self.info = load_checkpoint(path, device="cpu", task="fusion")
            self.source = str(path)
        if self.info.task != "fusion":
            raise CheckpointError(f"{self.source}: a {self.info.task} model, not a fusion model.")
        self.kind = fusion_kind(self.info)
        self.residual = bool(self.info.training.get("residual", False))
        self.space_to_depth = int(self.info.training.get("space_to_depth", 1))
        self.channels = int(self.info.network.get("in_channels", 2)) // (
            2 * self.space_to_depth**2
        )
        self.normalizer = self.info.normalizer()
        self.model.eval()
        if fold_batch_norm:
            self.model = fold_batchnorm(self.model)
        self.model.to(self.device)
        self.mixed_precision = mixed_precision
        self.divisor = int(getattr(self.model, "divisor", 1)) * self.space_to_depth

    @property
    def device_name(self) -> str:
        return describe_device(self.device)

    def forward_tiles(
        self,
        a: np.ndarray,
        b: np.ndarray,
        tile_size: int = DEFAULT_TILE,
        halo: int = 32,
        blend: int = 32,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Network output for the pair ``(a, b)`` ((C, Y, X) normalised float32), tile by tile.

        Yields ``(done, total, out)`` after each tile; ``out`` (K, Y, X) float32 is being
        filled (K = 2 softmax probabilities for HF-Seg, C intensities for HF-Reg) and
        complete at the last yield.
        """
        x = np.concatenate([a, b]).astype(np.float32, copy=False)
        shape = x.shape[1:]
        tile, tiles = self._tiles(shape, tile_size, halo, blend)
        out: np.ndarray | None = None
        for t in tiles:
            xt = torch.from_numpy(np.ascontiguousarray(x[(slice(None), *t.slices)])[None])
            xt = xt.to(self.device)
            try:
                with torch.inference_mode(), autocast(self.device, self.mixed_precision):
                    y = fusion_output(
                        self.model, xt, self.kind, self.residual, self.space_to_depth
                    ).float()
                    if self.kind == "hf-seg":
                        y = torch.softmax(y, dim=1)
                    y = y[0].cpu().numpy()
            except RuntimeError as err:
                if is_out_of_memory(err):
                    release_memory(self.device)
                    raise MemoryError(
                        f"out of GPU memory with {tile}-pixel tiles; use smaller tiles or the CPU."
                    ) from err
                raise
            if out is None:
                out = np.zeros((y.shape[0], *shape), np.float32)
            out[(slice(None), *t.slices)] += y * t.weight
            yield t.index + 1, len(tiles), out

    def _tiles(self, shape: tuple[int, ...], tile_size: int, halo: int, blend: int):
        """Tile side and tiles; halo and blend shrink to a quarter of small tiles."""
        tile = max(self.divisor, (int(tile_size) // self.divisor) * self.divisor)
        window = tuple(min(tile, n) for n in shape)
        halo = min(int(halo), tile // 4)
        blend = min(int(blend), tile // 4)
        return tile, grid_tiles(shape, window, halo, blend, align=self.divisor)

    def n_tiles(
        self, shape: tuple[int, ...], tile_size: int, halo: int = 32, blend: int = 32
    ) -> int:
        """Number of tiles of one network pass over an image of ``shape``."""
        return len(self._tiles(shape, tile_size, halo, blend)[1])


def _smoothed_choice(
    fused: np.ndarray, a: np.ndarray, b: np.ndarray, sigma: float = 2.0
) -> np.ndarray:
    """Weight of ``b`` (1 where the fused image is nearer to ``b``) from Gaussian-smoothed
    absolute differences, (C, Y, X) inputs -> (Y, X) float32 in {0, 1}."""
    ea = ndi.gaussian_filter(np.abs(fused - a).sum(axis=0), sigma)
    eb = ndi.gaussian_filter(np.abs(fused - b).sum(axis=0), sigma)
    return (eb < ea).astype(np.float32)


def _learned_passes(ps: PreparedStack, fm: FusionModel, mode: str) -> int:
    """Network passes of one fusion (for the progress total)."""
    n = ps.n
    per_pair = 1
    if fm.kind == "hf-reg" and fm.channels == 1 and ps.data.shape[-1] > 1:
        per_pair = ps.data.shape[-1]
    if fm.kind == "hf-seg" and mode == "direct":
        return n
    if fm.kind == "hf-seg":  # pairwise: both source orders (see _iter_learned)
        return 2 * (n - 1)
    return (n - 1) * per_pair


def _iter_learned(
    ps: PreparedStack,
    fm: FusionModel,
    mode: str,
    use_near: bool,
    tile_size: int,
) -> Iterator[FusionProgress | tuple[np.ndarray, np.ndarray]]:
    data = np.moveaxis(ps.data, -1, 1)  # (Z, C, Y, X)
    lo, hi = fm.normalizer.limits(data)
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(1.0)
    x = (data - np.float32(lo)) * scale
    n, c = x.shape[:2]
    if fm.channels not in (1, c):
        raise ValueError(
            f"the fusion model takes {fm.channels}-channel images, the stack has {c} channels."
        )
    grey_net = fm.channels == 1 and c > 1
    per_pass = fm.n_tiles(x.shape[2:], tile_size)
    total = _learned_passes(ps, fm, mode) * per_pass
    done = 0

    def run_pair(a: np.ndarray, b: np.ndarray) -> Iterator[FusionProgress | np.ndarray]:
        nonlocal done
        out = None
        for _, _, filling in fm.forward_tiles(a, b, tile_size):
            out = filling
            done += 1
            yield FusionProgress(done, total)
        yield out

    def pair_output(a: np.ndarray, b: np.ndarray):
        result = None
        for item in run_pair(a, b):
            if isinstance(item, FusionProgress):
                yield item
            else:
                result = item
        return result

    if fm.kind == "hf-seg":
        prep = (lambda v: v.mean(axis=0, keepdims=True)) if grey_net else (lambda v: v)
        if mode == "direct":
            ref = x.mean(axis=0)
            logits = []
            for k in range(n):
                z = yield from pair_output(prep(x[k]), prep(ref))
                p0 = np.clip(z[0], 1e-6, 1 - 1e-6)
                logits.append(np.log(p0) - np.log1p(-p0))  # log-odds "slice k sharper"
            d = np.stack(logits)
            w = np.exp(d - d.max(axis=0, keepdims=True))
            w /= w.sum(axis=0, keepdims=True)
            fused = (w[:, None] * x).sum(axis=0)
            depth = (w * np.arange(n, dtype=np.float32)[:, None, None]).sum(axis=0)
        else:
            fused = x[0]
            depth = np.zeros(x.shape[2:], np.float32)
            for k in range(1, n):
                # both source orders, averaged: f(a, b) = f(b, a) by construction (the
                # commutativity of T 6.2.3, which training alone only approaches)
                z = yield from pair_output(prep(fused), prep(x[k]))
                zr = yield from pair_output(prep(x[k]), prep(fused))
                wb = 0.5 * (z[1] + zr[0])
                fused = (1.0 - wb)[None] * fused + wb[None] * x[k]
                depth = (1.0 - wb) * depth + wb * np.float32(k)
    else:
        fused = x[0]
        depth = np.zeros(x.shape[2:], np.float32)
        for k in range(1, n):
            if grey_net:
                chans = []
                for ch in range(c):
                    y = yield from pair_output(fused[ch : ch + 1], x[k, ch : ch + 1])
                    chans.append(y[0])
                new = np.stack(chans)
            else:
                new = yield from pair_output(fused, x[k])
            if use_near:  # T eq. 6.6 on each pair: exact source pixels
                picked, idx = near(
                    np.moveaxis(new, 0, -1),
                    np.stack([fused, x[k]]).transpose(0, 2, 3, 1),
                    rgb=True,
                )
                wb = idx.astype(np.float32)
                new = np.moveaxis(picked, -1, 0)
            else:
                wb = _smoothed_choice(new, fused, x[k])
            depth = (1.0 - wb) * depth + wb * np.float32(k)
            fused = new
    out = np.moveaxis(fused, 0, -1) / scale + np.float32(lo)
    yield out.astype(np.float32), depth.astype(np.float32)


def classical_device(device: str | torch.device | None) -> torch.device | None:
    """Where a classical method runs: ``None`` = the numpy reference implementation
    (:mod:`napari_cellfocus.core.fusion`), else the torch device of
    :mod:`.fusion_classical`.

    * ``None`` or ``"numpy"``: numpy.
    * ``"auto"``: a CUDA GPU when there is one, else numpy (numpy / scipy is 1.1-8 times
      faster than torch on the CPU for these filters, ``docs/fusion.md``; MPS only when
      asked for by name).
    * any torch device named explicitly (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``):
      torch on that device (an unavailable device raises ValueError).
    """
    if device is None:
        return None
    if isinstance(device, str):
        name = device.strip().lower()
        if name == "numpy":
            return None
        if name == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else None
    return select_device(device)


def _fuse_classical_on(
    stack: Any,
    method: str,
    device: str | torch.device | None,
    axis: int,
    rgb: bool | None,
    name: str,
    params: dict[str, Any],
) -> FusionResult:
    """A classical method on the implementation :func:`classical_device` picks; ``info``
    records ``implementation`` ("numpy" / "torch") and ``device``. Out of GPU memory: a
    clear MemoryError for an explicit device, the numpy fallback for "auto" (noted in
    ``info["fallback"]``)."""
    dev = classical_device(device)
    if dev is not None:
        try:
            return fuse_classical_torch(
                stack, method, axis=axis, rgb=rgb, name=name, device=dev, **params
            )
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            release_memory(dev)
            if not (isinstance(device, str) and device.strip().lower() == "auto"):
                raise MemoryError(
                    f"{name}: out of {dev.type.upper()} memory fusing with {method}; use "
                    "device='numpy' (or a smaller stack)."
                ) from err
            fallback = f"out of memory on {describe_device(dev)}"
    else:
        fallback = None
    result = fuse_classical(stack, method, axis=axis, rgb=rgb, name=name, **params)
    result.info = {**result.info, "implementation": "numpy", "device": "CPU (numpy)"}
    if fallback:
        result.info["fallback"] = fallback
    return result


def iter_fuse(
    stack: Any,
    method: str = DEFAULT_METHOD,
    *,
    axis: int = 0,
    rgb: bool | None = None,
    model: Any = None,
    device: str | torch.device | None = "auto",
    mode: str = DEFAULT_SEG_MODE,
    near_post: bool = False,
    tile_size: int = DEFAULT_TILE,
    name: str = "stack",
    **params: Any,
) -> Iterator[FusionProgress]:
    """Fuse a focus stack, yielding progress; the last update holds the :class:`FusionResult`.

    Parameters
    ----------
    stack : (Z, Y, X) grey or (Z, Y, X, C) colour array (any axis as the stack axis), or a
        sequence of same-shape 2D images (e.g. several layers).
    method : "hf-seg", "hf-reg" (learned) or "max-focus", "pyramid", "gff", "wavelet".
    axis : the stack axis. rgb : whether the last axis holds colour channels (default:
        a 4-D array whose last axis has 3 or 4 entries).
    model : learned methods: ``None`` / "default" (built-in model), a checkpoint path, a
        ``(model, ModelInfo)`` pair or a :class:`FusionModel`.
    device : "auto" (default), "cpu", "cuda", "cuda:N", "mps"; classical methods also
        "numpy" or ``None``. Learned methods: the network's device ("auto": CUDA, MPS,
        CPU). Classical methods: see :func:`classical_device` - numpy for ``None`` /
        "numpy" and for "auto" without a CUDA GPU, torch on the GPU for "auto" with one,
        torch on any device named explicitly (so ``device="cpu"`` runs the torch code on
        the CPU). ``result.info`` records ``implementation`` and ``device``.
    mode : HF-Seg: "direct" (default: every slice against the stack mean, softmax over
        slices of the log-odds that the slice is the sharper one; ``n`` passes that do not
        depend on each other, no accumulation of errors) or "pairwise" (the n-th functional
        power ``f(f(x0, x1), x2) ...`` of T 6.2; each pair in both source orders, the
        focus maps averaged, so ``f(a, b) = f(b, a)``: ``2 (n - 1)`` passes). HF-Reg
        always fuses pairwise.
    near_post : HF-Reg: apply "Near" (T eq. 6.6) to each pairwise result (source pixels
        only, no denoising).
    tile_size : learned methods: tile side in pixels (halo and blend of 32 px); default
        :data:`DEFAULT_TILE` (1024: a megapixel slice is one pass, no halo recomputed;
        512-px tiles cost 1.4x more on the CPU).
    **params : parameters of a classical method (see :mod:`napari_cellfocus.core.fusion`).

    Yields
    ------
    FusionProgress
        After each network tile (learned) or once (classical); the last has ``result``.
        The fused image has the stack's XY shape and dtype; the depth map is float32 slice
        indices (fractional for soft focus maps).
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown fusion method {method!r}; expected one of {', '.join(METHODS)}."
        )
    if mode not in ("pairwise", "direct"):
        raise ValueError(f"mode: expected 'pairwise' or 'direct', got {mode!r}.")
    start = time.perf_counter()
    if method in CLASSICAL_METHODS:
        result = _fuse_classical_on(stack, method, device, axis, rgb, name, params)
        yield FusionProgress(1, 1, f"{method} done", result)
        return
    if params:
        raise ValueError(f"{method}: unknown parameter(s) {sorted(params)}.")
    ps = prepare_stack(stack, axis, rgb, name=name)
    fm = model if isinstance(model, FusionModel) else FusionModel(model, method, device)
    if fm.kind != method:
        raise ValueError(
            f"the model {fm.source} is an {fm.kind} model, but method {method!r} was asked for."
        )
    if ps.n == 1:
        result = FusionResult(
            ps.output(ps.data[0]), np.zeros(ps.data.shape[1:3], np.float32), method
        )
        yield FusionProgress(1, 1, "one slice: nothing to fuse", result)
        return
    fused = depth = None
    for item in _iter_learned(ps, fm, mode, near_post, tile_size):
        if isinstance(item, FusionProgress):
            yield item
        else:
            fused, depth = item
    assert fused is not None and depth is not None
    info = {
        "mode": mode if method == "hf-seg" else "pairwise",
        "model": fm.source,
        "device": fm.device_name,
        "near": bool(near_post and method == "hf-reg"),
    }
    result = FusionResult(ps.output(fused), depth, method, time.perf_counter() - start, info)
    total = _learned_passes(ps, fm, mode) * fm.n_tiles(ps.data.shape[1:3], tile_size)
    yield FusionProgress(total, total, f"{method} done", result)


def fuse_stack(
    stack: Any,
    method: str = DEFAULT_METHOD,
    axis: int = 0,
    *,
    on_progress: Callable[[FusionProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> FusionResult:
    """Fuse a focus stack into an all-in-focus image and a depth map (CLI / widget API).

    Runs :func:`iter_fuse` (see it for ``stack``, ``method``, ``axis`` and ``kwargs``) to the
    end. ``on_progress`` gets every :class:`FusionProgress`; ``should_stop`` is polled
    after each and, when it returns True, raises :class:`InterruptedError`.

    Returns
    -------
    FusionResult
        ``fused``: the stack's XY shape and dtype; ``depth``: (Y, X) float32 slice index.
    """
    result = None
    gen = iter_fuse(stack, method, axis=axis, **kwargs)
    try:
        for update in gen:
            if on_progress is not None:
                on_progress(update)
            if update.result is not None:
                result = update.result
            if should_stop is not None and should_stop():
                raise InterruptedError("fusion cancelled")
    finally:
        gen.close()
    assert result is not None
    return result
