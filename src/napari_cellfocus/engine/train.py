"""Training and fine-tuning of segmentation networks, dense or weak labels.

The :class:`Trainer` owns the model, the optimiser and the data; :meth:`Trainer.steps`
is a generator that yields a :class:`TrainProgress` after *every* optimisation step,
so the napari widget can run it in a ``thread_worker`` (which can only stop between
yields), and the CLI and tests can drive it with :func:`train`.

Safety rules:
- the model is checked after every step; a diverged run (a loss that is not a number,
  non-finite weights, or a smoothed loss above ``divergence_factor`` times its best for
  ``divergence_window`` steps in a row) stops with :class:`TrainingDiverged`; the weights
  of the last step before divergence are restored (never a NaN model), and no model of
  the diverged steps is written (see :meth:`Trainer.steps`);
- when ``out`` is given, checkpoints are written atomically (temporary name +
  rename) every ``checkpoint_every`` steps, every ``checkpoint_every_s`` seconds, on
  cancel and at the end, so a file under the final name is always a complete, loadable
  model and a long run never loses more than a few minutes;
- a cancel (``should_stop`` returning True, or closing the generator) keeps the
  current good weights in ``trainer.model`` and on disk; ``cancel_reason`` (e.g. "SIGTERM",
  set by the CLI's signal handler) is stored in the checkpoint's metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_cellfocus.core.augment import AugmentConfig, augment_sample
from napari_cellfocus.core.normalize import PercentileNormalization
from napari_cellfocus.core.size import (
    MAX_ZOOM,
    crop_window,
    median_diameter,
    resize,
    scaled_shape,
    zoom_for,
)
from napari_cellfocus.core.targets import class_target, inverse_distance_target
from napari_cellfocus.core.validation import check_image, check_labels, check_same_shape
from napari_cellfocus.core.weights import triplex_weight_map, weight_map
from napari_cellfocus.engine.checkpoint import (
    CLASS_NAMES,
    ModelInfo,
    load_checkpoint,
    resolve_model_path,
    save_checkpoint,
)
from napari_cellfocus.engine.device import example_threads, release_memory, select_device
from napari_cellfocus.engine.finetune import MAX_CROP, QUICK_STEPS
from napari_cellfocus.engine.loss_methods import cli_loss_methods, get_loss_method
from napari_cellfocus.engine.losses import get_loss, mae_loss
from napari_cellfocus.engine.networks import build_network

#: Losses made of cross entropy plus the Youden regulariser (T 5.2.2).
#: What ``TrainConfig.train_layers`` may be: every weight, or the decoder only.
TRAIN_LAYERS = ("all", "decoder")

#: W3's saturation distance ``beta`` (T eq. 4.3): background farther than this from every
#: annotated cell is outside the annotated zone.
W3_BETA = 30.0

#: Default network of new models: small enough to train on a laptop CPU.
DEFAULT_NETWORK: dict[str, Any] = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 3,
    "depth": 4,
    "width": 24,
    "norm": "batch",
    "dims": 2,
}


def ddt_network(top_input: str = "ddt+image", paper: bool = True, **params: Any) -> dict[str, Any]:
    """Network config of a deep distance transformer (D section 3) for ``Trainer(network=)``.

    ``top_input``: "ddt" (DDT + UNet1) or "ddt+image" (DDT + UNet2). ``paper=True`` (D's
    mode) sets ``detach_ddt=True``: the top model's class loss stops at the DDT output, so
    the backbone learns from the MAE to the distance target only and the top model from the
    cross entropy only, as in D's two-stage training (backbone with MAE, then the top model
    with CE on its output, Table 1), in one run. ``paper=False`` trains both end to end
    (the class loss also shapes the backbone). Other ``params`` (depth, width, norm, ...) go
    to :class:`~napari_cellfocus.engine.networks.DDTModel`; the rest of ``DEFAULT_NETWORK``
    fills in what is not given.
    """
    net = {k: v for k, v in DEFAULT_NETWORK.items() if k != "architecture"}
    net.update(params)
    return {"architecture": "ddt", **net, "top_input": top_input, "detach_ddt": bool(paper)}


@dataclass
class TrainConfig:
    """Settings of one training run.

    n_classes : 2 (bg / cell, touching pixels as background: the thesis' UNET2), 3 (bg /
        cell / touching) or 4 (adds gap).
    loss : "wce" (weighted cross entropy), "j3" / "j4" (CE + Youden J; 3 / 4 classes
        only), "jaccard".
    weights : weight map of the loss: "saw", "dwm", "unet", "balance", "overcrowding" or
        "none"; ``None`` (default) = the loss' own: "saw" for "wce", "none" for "j3" / "j4"
        (the thesis trains them as plain CE + J, T 5.2.2). A map given explicitly with
        "j3" / "j4" weights their CE term only (the weighted variant, an extension).
        Ignored when ``weak`` (W3 is then used) and by "jaccard". See :attr:`weight_scheme`.
    weak : annotations are incomplete: unannotated regions get the W3 weights
        (thesis eq. 4.3), so only annotated cells and their surroundings teach. With
        "j3" / "j4" the W3 map is cut to its annotated zone (annotated cells and the
        background within W3's ``beta`` = 30 px of them), the CE term is the W3-weighted
        mean ``sum(w ce) / sum(w)`` and the Youden term is computed over that zone only
        (see :meth:`Trainer._loss`).
    steps : optimisation steps; batch_size : crops per step; crop_size : crop side (px).
    lr : Adam learning rate (thesis: 1e-4 with betas 0.9 / 0.99).
    lr_schedule : "constant" or "cosine" (decay to 5 % of ``lr`` over ``steps``).
    warmup_steps : the learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over
        the first steps (Adam's first updates are ~lr per weight whatever the gradient).
    val_fraction : share of images held out for validation (0 = none); with a single
        image, validation uses the training image itself.
    val_every : steps between validation evaluations (0 = only at the end).
    checkpoint_every : steps between checkpoint writes when an ``out`` path is given.
    checkpoint_every_s : seconds between checkpoint writes as well (0 = only by steps), so a
        run killed by a scheduler loses at most this much work.
    divergence_factor, divergence_window : training is declared diverged when the smoothed
        loss (exponential moving average, weight 0.1 per step) stays above
        ``divergence_factor`` times its best value for ``divergence_window`` steps in a row
        (0 = only a non-finite loss or non-finite weights count). A normal run's smoothed
        loss falls and wanders by far less than 10x; ``--lr 1e3`` multiplies it by 100-1000.
    seed : seeds numpy and torch.
    pseudo_label_weight : weak fine-tuning from a model only. Pixels farther than
        ``annotation_margin`` px from every annotated cell take the *starting model's*
        own prediction (argmax) as target, with this weight relative to the median
        W3 weight of the annotated zone. Without it, a hundred steps on ten annotated cells
        let the rest of the image drift (measured: PQ on the unannotated cells of an
        unfamiliar crowded image fell from 0.76 to 0.47; with weight 0.3 and frozen
        batch-norm statistics it rose to 0.82, with 1.0 to 0.86). 1.0 became the default
        after 5 of 5 paired comparisons with 0.3 on unannotated cells favoured it (docs/
        papers.md). 0 disables it (plain W3, as for training from scratch).
    annotation_margin : width in pixels of the background ring around annotated cells that
        is taught from the annotations rather than from the starting model.
    freeze_norm : keep batch-norm statistics fixed (eval mode) while training: a few crops
        of one image are a poor estimate of them. Used by the one-click fine-tune.
    diameter : the model's object scale in pixels. Each training image is resampled so
        that the median equivalent diameter of its labelled cells is this many pixels
        (``core.size``), and the model stores it, so prediction rescales images the same
        way. ``None``: the starting model's diameter when it has one, else images are
        used as given (no rescaling).
    train_layers : "all" (every weight learns) or "decoder" (the encoder of a U-Net keeps
        its weights; only the decoder and the output layer learn). With a frozen encoder
        the backward pass stops at the skip connections, so a step costs about a fifth
        less on the CPU; for a one-click fine-tune on a few cells it also keeps the
        features the starting model learnt from many images.
    scale_range : log-uniform range of an extra zoom drawn per crop (after the diameter
        normalisation), e.g. (0.5, 2.0) so the model also works on images whose size
        estimate is off. Class targets and weight maps are then rebuilt per crop at the
        crop's own scale. (1, 1) = no jitter; not available with ``weak`` labels.
    """

    n_classes: int = 3
    loss: str = "wce"
    weights: str | None = None
    weak: bool = False
    steps: int = 200
    batch_size: int = 4
    crop_size: int = 256
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    val_fraction: float = 0.0
    val_every: int = 0
    checkpoint_every: int = 50
    checkpoint_every_s: float = 300.0
    divergence_factor: float = 10.0
    divergence_window: int = 20
    seed: int = 0
    pseudo_label_weight: float = 1.0
    annotation_margin: int = 3
    freeze_norm: bool = False
    diameter: float | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    train_layers: str = "all"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.n_classes, bool) or self.n_classes not in (2, 3, 4):
            raise ValueError(f"n_classes must be 2, 3 or 4, got {self.n_classes!r}.")
        spec = get_loss_method(self.loss)  # ValueError naming the registered losses
        if self.n_classes not in spec.classes:
            known = {
                "j4": "n_classes=4 (background/cell/touching/gap)",
                "j3": "n_classes=3 (background/cell/touching)",
            }
            need = known.get(spec.key, f"n_classes in {spec.classes}")
            others = [
                m.key
                for m in cli_loss_methods()
                if self.n_classes in m.classes and m.key != spec.key
            ]
            raise ValueError(
                f"loss {spec.key!r} needs {need}, got {self.n_classes}; with "
                f"{self.n_classes} classes use loss {' / '.join(map(repr, others))}."
            )
        if self.steps < 1 or self.batch_size < 1 or self.crop_size < 16:
            raise ValueError(
                f"steps and batch_size must be >= 1 and crop_size >= 16, got steps={self.steps}, "
                f"batch_size={self.batch_size}, crop_size={self.crop_size}."
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}."
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        lo, hi = (float(v) for v in self.scale_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}.")
        self.scale_range = (lo, hi)
        if self.weak and self.scale_jitter:
            raise ValueError("scale_range jitter is not available with weak labels.")
        if self.diameter is not None and not self.diameter > 0:
            raise ValueError(f"diameter must be > 0 pixels, got {self.diameter}.")
        if self.train_layers not in TRAIN_LAYERS:
            raise ValueError(
                f"train_layers must be one of {', '.join(map(repr, TRAIN_LAYERS))}, got "
                f"{self.train_layers!r}."
            )
        if not (self.checkpoint_every_s >= 0 and self.checkpoint_every >= 0):
            raise ValueError(
                "checkpoint_every and checkpoint_every_s must be >= 0, got "
                f"{self.checkpoint_every} and {self.checkpoint_every_s}."
            )
        if not (self.divergence_factor == 0 or self.divergence_factor > 1):
            raise ValueError(
                f"divergence_factor must be > 1 (or 0 = off), got {self.divergence_factor}."
            )

    @property
    def weight_scheme(self) -> str:
        """The weight map the run uses: "w3" when ``weak``, "none" for "jaccard", else
        ``weights`` or, when that is None, the loss' own ("saw" for "wce", "none" for
        "j3" / "j4")."""
        if self.weak:
            return "w3"
        spec = get_loss_method(self.loss)
        if spec.call == "unweighted":
            return "none"
        if self.weights is not None:
            return self.weights
        return spec.default_weights

    @property
    def scale_jitter(self) -> bool:
        """True when crops are drawn at a random extra zoom (``scale_range`` != (1, 1))."""
        return tuple(self.scale_range) != (1.0, 1.0)


@dataclass
class TrainProgress:
    """What the UI shows after a step: step (1-based) of total, loss, ETA in seconds."""

    step: int
    total: int
    loss: float
    elapsed_s: float
    eta_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


class TrainingDiverged(FloatingPointError):
    """Training diverged; the message says at which step, why, and what was kept."""


@dataclass
class _Sample:
    image: np.ndarray  # float32 normalised, (Y, X)
    target: np.ndarray | None  # uint8 classes (None: built per crop, see scale_range)
    weight: np.ndarray | None  # float32 loss weights (None: built per crop)
    annotated: np.ndarray | None  # coordinates of annotated pixels, for weak sampling
    labels: np.ndarray  # int instance labels, for validation
    raw: np.ndarray  # the image (float32) at the training scale, for validation
    ddt: np.ndarray | None = None  # inverse distance-transform target (DDT models only)
    zoom: float = 1.0  # how the image was resampled from the one given


def target_and_weight(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Class target (uint8) and loss weight map (float32) of an instance image for ``config``."""
    target = class_target(labels, n_classes=config.n_classes)
    scheme = config.weight_scheme
    if scheme == "w3":
        weight = triplex_weight_map(labels, beta=W3_BETA)
        if get_loss_method(config.loss).call == "youden":
            # Outside W3's annotated zone (background farther than beta from every annotated
            # cell) W3 keeps only nu / n_0, near zero: there the labels say nothing. With the
            # Youden losses that zone is cut out exactly (weight 0), so the J term, which
            # has no weights, can leave it out (Trainer._loss: mask = weight > 0).
            far = ndi.distance_transform_edt(labels == 0) >= W3_BETA
            weight = np.where(far, 0.0, weight)
    elif scheme == "none":
        weight = np.ones(labels.shape, np.float32)
    elif scheme == "overcrowding":
        # C 4.2 sets sigma to the average cell radius (25 px on its images): here the
        # labels' own median radius, so the map has the same shape at every cell size
        diameter = median_diameter(labels)
        params = {"sigma": 0.5 * diameter} if diameter else {}
        weight = weight_map("overcrowding", labels, **params)
    else:
        extra = {"n_classes": config.n_classes} if scheme == "balance" else {}
        weight = weight_map(scheme, labels, target=target, **extra)
    return target, weight.astype(np.float32)


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    normalizer: PercentileNormalization,
    name: str = "image",
    with_ddt: bool = False,
) -> _Sample:
    """Normalise one image and build its class target and weight map (2D); with
    ``with_ddt`` also the inverse distance-transform target of the DDT paper.

    With ``config.diameter`` the image and labels are first resampled so the median
    equivalent diameter of the labelled cells is ``config.diameter`` px. With
    ``config.scale_jitter`` the target and weight map are left empty (``None``): they are
    built per crop at the crop's scale.
    """
    img = check_image(image, name=name, ndim=(2,))
    lab = check_labels(labels, name=f"labels of {name}", ndim=(2,))
    check_same_shape(img, lab, name, f"labels of {name}")
    if lab.max() == 0:
        raise ValueError(
            f"labels of {name}: no cell is annotated (all background); paint at least one cell."
        )
    img = np.asarray(img, np.float32)
    zoom = 1.0
    if config.diameter is not None:
        # limited like the Segmenter's zoom, so one tiny or huge annotation cannot make
        # a training image 100x larger (or smaller) than given
        zoom = zoom_for(median_diameter(lab), config.diameter)
        zoom = min(MAX_ZOOM, max(1.0 / MAX_ZOOM, zoom))
        if zoom != 1.0:
            shape = scaled_shape(lab.shape, zoom)
            img, lab = resize(img, shape, order=1), resize(lab, shape, order=0)
    if config.scale_jitter:
        target = weight = None
    else:
        target, weight = target_and_weight(lab, config)
    annotated = np.argwhere(lab > 0) if config.weak else None
    ddt = inverse_distance_target(lab) if with_ddt else None
    return _Sample(normalizer(img), target, weight, annotated, lab, img, ddt, zoom)


class SteppedTraining:
    """Shared driver of the trainers: ``steps()`` yields after every optimisation step;
    :meth:`run` drives it to the end or until ``should_stop()``, and closing the generator
    is what cancels (the trainer keeps its last good weights and writes them)."""

    model: torch.nn.Module

    def steps(self) -> Iterator[TrainProgress]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def current_info(self) -> ModelInfo:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def run(
        self,
        on_step: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[torch.nn.Module, ModelInfo]:
        """Train to the end (or until ``should_stop()``); returns the model and its info."""
        gen = self.steps()
        try:
            for progress in gen:
                if on_step is not None:
                    on_step(progress)
                if should_stop is not None and should_stop():
                    break
        finally:
            gen.close()
        return self.model, self.current_info()


class Trainer(SteppedTraining):
    """Train (or fine-tune) a segmentation network on images and instance labels.

    Parameters
    ----------
    images, labels : sequences of 2D arrays (Y, X); labels are instance images
        (0 = background / unannotated in weak mode).
    config : :class:`TrainConfig`.
    init : ``None`` (new network), ``"default"`` (the built-in model) or a checkpoint
        path to fine-tune from; or an already built ``(model, ModelInfo)`` pair.
    network : config of a new network (``DEFAULT_NETWORK`` by default).
    device : "auto", "cpu", "cuda", ...
    out : checkpoint path written atomically during and after training.
    names : names of the images for messages (layer or file names).
    workers : threads preparing augmented crops (numpy/scipy release the GIL); ``None``:
        :func:`~napari_cellfocus.engine.device.example_threads` (1 on the CPU, up to 8 on
        an accelerator).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        config: TrainConfig | None = None,
        *,
        init: str | Path | tuple[torch.nn.Module, ModelInfo] | None = None,
        network: dict[str, Any] | None = None,
        device: str | torch.device | None = "auto",
        out: str | Path | None = None,
        names: Sequence[str] | None = None,
        workers: int | None = None,
        image_weights: Sequence[float] | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        cfg = self.config
        if len(images) == 0:
            raise ValueError("no training image given.")
        if len(images) != len(labels):
            raise ValueError(
                f"got {len(images)} images but {len(labels)} label images; they must pair up."
            )
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        self.device = select_device(device)
        self.out = Path(out) if out is not None else None
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.model, self.info = self._init_model(init, network)
        if cfg.diameter is None and self.info.defaults.get("diameter"):
            # train at the scale the starting model predicts at
            self.config = cfg = dataclasses.replace(
                cfg, diameter=float(self.info.defaults["diameter"])
            )
        set_trainable(self.model, cfg.train_layers)
        self.model.to(self.device)
        self.normalizer = self.info.normalizer()
        workers = example_threads(self.device, workers)
        self._pool = ThreadPoolExecutor(workers) if workers > 1 else None
        jobs = list(zip(images, labels, names, strict=True))

        with_ddt = self.info.network.get("architecture") == "ddt"

        def prepare(job: tuple[np.ndarray, np.ndarray, str]) -> _Sample:
            return prepare_sample(
                job[0], job[1], cfg, self.normalizer, name=job[2], with_ddt=with_ddt
            )

        samples = list(self._pool.map(prepare, jobs) if self._pool else map(prepare, jobs))
        if cfg.weak and init is not None and cfg.pseudo_label_weight > 0:
            for sample in samples:
                self._add_pseudo_labels(sample)
        n_val = round(cfg.val_fraction * len(samples)) if len(samples) > 1 else 0
        order = self.rng.permutation(len(samples))
        self.val = [samples[i] for i in order[:n_val]]
        self.train_samples = [samples[i] for i in order[n_val:]] or samples
        if not self.val and cfg.val_every:
            self.val = self.train_samples[:1]
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.99)
        )
        self.loss_fn = get_loss(cfg.loss)
        self.history: list[dict[str, Any]] = list(self.info.history)
        self.step = 0
        self.cancelled = False
        self.cancel_reason: str | None = None
        self.finished = False
        self.diverged = False
        self.diverged_at: int | None = None
        self._good_state = copy.deepcopy(self.model.state_dict())
        # divergence watch: smoothed loss, its best, steps in a row above the limit, and the
        # (step, weights, history length) of the last step whose loss was healthy
        self._ema: float | None = None
        self._best_ema = math.inf
        self._over = 0
        self._healthy: tuple[int, dict[str, torch.Tensor], int] = (0, self._good_state, 0)
        self._wrote_out = False
        self._last_save_t = time.monotonic()
        if image_weights is not None and len(image_weights) != len(samples):
            raise ValueError(f"got {len(image_weights)} image weights for {len(samples)} images.")
        # each training image is drawn in proportion to its area (at the training scale)
        # times its weight, e.g. to set the share of real and simulated images in a batch
        weights = np.ones(len(samples)) if image_weights is None else np.asarray(image_weights)
        kept = order[n_val:] if n_val < len(samples) else np.arange(len(samples))
        areas = np.array(
            [
                smp.image.size * float(weights[i])
                for smp, i in zip(self.train_samples, kept, strict=True)
            ],
            np.float64,
        )
        self._areas = areas / areas.sum()

    # ------------------------------------------------------------------ set-up
    def _init_model(
        self, init: Any, network: dict[str, Any] | None
    ) -> tuple[torch.nn.Module, ModelInfo]:
        cfg = self.config
        if isinstance(init, tuple):
            model, info = init
            model = copy.deepcopy(model)
            info = copy.deepcopy(info)
        elif init is not None:
            model, info = load_checkpoint(
                resolve_model_path(init), device="cpu", task="segmentation"
            )
        else:
            net = dict(network or DEFAULT_NETWORK)
            net["out_channels"] = cfg.n_classes
            model = build_network(net)
            info = ModelInfo(network=model.config, classes=list(CLASS_NAMES[: cfg.n_classes]))
            return model, info
        if info.n_classes != cfg.n_classes:
            raise ValueError(
                f"the starting model predicts {info.n_classes} classes but training asks for "
                f"{cfg.n_classes}; use --classes {info.n_classes} or start a new model."
            )
        return model, info

    def train_mode(self) -> None:
        """Put the model in training mode (batch-norm statistics frozen if configured)."""
        self.model.train()
        if self.config.freeze_norm:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _add_pseudo_labels(self, sample: _Sample) -> None:
        """Weak fine-tuning: outside the annotated zone, teach the starting model's own
        prediction with a small weight, so unannotated regions do not drift (see
        ``TrainConfig.pseudo_label_weight``)."""
        from napari_cellfocus.engine.predict import predict_probabilities

        cfg = self.config
        probs = predict_probabilities(
            self.model, sample.raw, normalizer=self.normalizer, device=self.device
        )
        zone = ndi.binary_dilation(sample.labels > 0, iterations=max(1, cfg.annotation_margin))
        outside = ~zone
        reference = float(np.median(sample.weight[zone])) if zone.any() else 1.0
        sample.target[outside] = probs.argmax(0).astype(np.uint8)[outside]
        sample.weight[outside] = cfg.pseudo_label_weight * reference

    # ------------------------------------------------------------------ data
    def _scaled_crop(self, sample: _Sample, rng: np.random.Generator) -> tuple:
        """A crop at a random extra zoom in ``scale_range``; its class target and weight
        map are built from the resampled labels (with a margin, so they are right at the
        crop's edges). Pixels that fall outside the image get weight 0."""
        cfg = self.config
        lo, hi = cfg.scale_range
        zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        margin = 8
        side = cfg.crop_size + 2 * margin
        extent = side / zoom  # source pixels covered by the crop
        starts = [
            float(rng.uniform(min(0.0, n - extent), max(0.0, n - extent)))
            for n in sample.image.shape
        ]
        img, lab, inside = crop_window(sample.image, sample.labels, starts, zoom, side)
        target, weight = target_and_weight(lab, cfg)
        weight = np.where(inside, weight, 0.0).astype(np.float32)
        inner = (slice(margin, margin + cfg.crop_size),) * 2
        return img[inner], target[inner], weight[inner], None

    def _crop(self, sample: _Sample, rng: np.random.Generator) -> tuple:
        if sample.target is None:
            return self._scaled_crop(sample, rng)
        size = self.config.crop_size
        shape = sample.image.shape
        pads = [(0, max(0, size - n)) for n in shape]
        img, tgt, wgt, ddt = sample.image, sample.target, sample.weight, sample.ddt
        if any(p[1] for p in pads):
            img = np.pad(img, pads, mode="reflect")
            tgt = np.pad(tgt, pads, mode="reflect")
            wgt = np.pad(wgt, pads, mode="constant")  # padding never teaches
            ddt = None if ddt is None else np.pad(ddt, pads, mode="reflect")
            shape = img.shape
        if sample.annotated is not None and len(sample.annotated) and rng.random() < 0.9:
            # Weak labels: centre most crops on an annotated pixel (oversampling of the
            # crops that carry information, counting paper 4.1).
            centre = sample.annotated[rng.integers(len(sample.annotated))]
            jitter = rng.integers(-size // 4, size // 4 + 1, len(shape))
            starts = [
                int(np.clip(c - size // 2 + j, 0, n - size))
                for c, j, n in zip(centre, jitter, shape, strict=True)
            ]
        else:
            starts = [int(rng.integers(0, n - size + 1)) for n in shape]
        sl = tuple(slice(s, s + size) for s in starts)
        return img[sl], tgt[sl], wgt[sl], (None if ddt is None else ddt[sl])

    def _example(self, index: int) -> tuple[np.ndarray, ...]:
        """Batch element ``index`` of the current step: its own seeded generator, so the
        batch is the same whether examples are made in threads or one after another."""
        rng = np.random.default_rng([self.config.seed, self.step, index])
        areas = self._areas
        sample = self.train_samples[int(rng.choice(len(areas), p=areas))]
        img, tgt, wgt, ddt = self._crop(sample, rng)
        return augment_sample(img, tgt, wgt, rng, self.config.augment, extra=ddt)

    def _batch_indices(self) -> Sequence[int]:
        """Which elements of the step's batch this process makes: all of them here; one
        rank's share in distributed training (``engine.ddp.DistributedTrainer``)."""
        return range(self.config.batch_size)

    def _batch(self) -> tuple[torch.Tensor, ...]:
        indices = self._batch_indices()
        if self._pool is not None:
            examples = list(self._pool.map(self._example, indices))
        else:
            examples = [self._example(i) for i in indices]
        columns = list(zip(*examples, strict=True))
        x = torch.from_numpy(np.stack(columns[0])[:, None]).to(self.device)
        y = torch.from_numpy(np.stack(columns[1]).astype(np.int64)).to(self.device)
        w = torch.from_numpy(np.stack(columns[2])).to(self.device)
        if len(columns) == 4:  # DDT target, (N, 1, Y, X) like the model's second output
            return x, y, w, torch.from_numpy(np.stack(columns[3])[:, None]).to(self.device)
        return x, y, w

    # ------------------------------------------------------------------ loop
    def _loss(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch; ``w`` is the batch's weight map (0 on padding
        and outside the image).

        * "wce": ``mean(w * ce)`` (T eq. 3.1 / 4.2 divided by ``|Omega|``).
        * "j3" / "j4": ``sum(w * ce) / sum(w) + J``, J computed over the pixels with
          ``w > 0``. With the default ``weights`` (``weight_scheme == "none"``) ``w`` is 1
          on every pixel of the image, so this is T 5.2.2's plain mean CE + J; with an
          explicit map the CE term is that map's weighted mean (the weighted variant); with
          ``weak`` it is the W3-weighted mean over the annotated zone and J ignores the
          unannotated rest (see :func:`target_and_weight`). The weighted mean keeps the CE
          term on the scale of a mean cross entropy (W3's weights are ~1e-3, which would
          otherwise shrink CE to nothing beside J).
        * "jaccard": the soft Jaccard loss, unweighted.
        """
        call = get_loss_method(self.config.loss).call
        if call == "unweighted":
            return self.loss_fn(logits, y)
        if call == "youden":
            return self.loss_fn(logits, y, weight=w, reduction="weighted_mean", mask=w > 0)
        return self.loss_fn(logits, y, weight=w)

    def _batch_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        ddt_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of one batch from :meth:`_batch`: :meth:`_loss` of the class logits,
        plus for a DDT model the MAE of its distance output against ``ddt_target`` (D
        section 5; with ``detach_ddt`` only the MAE reaches the backbone)."""
        output = self._forward(x)
        if isinstance(output, (tuple, list)):  # DDT model: (class logits, distance map)
            logits, ddt = output
            return self._loss(logits, y, w) + mae_loss(ddt, ddt_target)
        return self._loss(output, y, w)

    def validate(self) -> dict[str, float]:
        """Mean PQ / F1 of the current model on the validation images (TH post-processing)."""
        from napari_cellfocus.core.metrics import evaluate
        from napari_cellfocus.core.postprocess import postprocess
        from napari_cellfocus.engine.predict import predict_probabilities

        scores: dict[str, list[float]] = {"pq": [], "f1": []}
        for sample in self.val:
            probs = predict_probabilities(
                self.model,
                sample.raw,
                normalizer=self.normalizer,
                device=self.device,
            )
            pred, _ = postprocess(probs, method="map")
            gt = sample.labels
            if self.config.weak:  # score only where annotated cells are
                keep = np.isin(pred, np.unique(pred[gt > 0]))
                pred = np.where(keep, pred, 0)
            res = evaluate(gt, pred)
            scores["pq"].append(float(res["pq"]))
            scores["f1"].append(float(res["f1"]))
        self.train_mode()
        return {f"val_{k}": float(np.mean(v)) for k, v in scores.items() if v}

    def steps(self) -> Iterator[TrainProgress]:
        """Run the training, yielding after every step. Closing the generator cancels."""
        cfg = self.config
        start = time.perf_counter()
        self.train_mode()
        first = self.step
        try:
            while self.step < cfg.steps:
                batch = self._batch()
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._batch_loss(*batch)
                value = self._loss_value(loss)
                why = None
                if not math.isfinite(value):
                    why = f"the loss is {value}"
                elif self._watch_loss(value):
                    why = (
                        f"the smoothed loss ({self._ema:.4g}) stayed above "
                        f"{cfg.divergence_factor:g}x its best ({self._best_ema:.4g}) for "
                        f"{cfg.divergence_window} steps"
                    )
                if self._agreed(why is not None):
                    raise self._diverge(self.step + 1, why or "rank 0 found the run diverged")
                loss.backward()
                lr = cfg.lr
                if cfg.lr_schedule == "cosine":
                    frac = self.step / max(1, cfg.steps - 1)
                    lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))
                if self.step < cfg.warmup_steps:
                    lr *= (self.step + 1) / cfg.warmup_steps
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                self.step += 1
                if self._agreed(not finite_parameters(self.model)):
                    self.step -= 1  # this step's update is undone
                    raise self._diverge(self.step + 1, "the weights became non-finite")
                self._good_state = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
                record: dict[str, Any] = {"step": len(self.history) + 1, "loss": value}
                if cfg.val_every and self.val and self.step % cfg.val_every == 0:
                    record.update(self.validate())
                self.history.append(record)
                elapsed = time.perf_counter() - start
                rate = elapsed / max(1, self.step - first)
                now = time.monotonic()
                due = (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or (
                    cfg.checkpoint_every_s and now - self._last_save_t >= cfg.checkpoint_every_s
                )
                if self.out is not None and due and self._over == 0:
                    # never while the loss is running away: that model may be a diverging one
                    self._checkpoint()
                yield TrainProgress(
                    self.step,
                    cfg.steps,
                    value,
                    elapsed,
                    rate * (cfg.steps - self.step),
                    {k: v for k, v in record.items() if k.startswith("val_")},
                )
            self.finished = True
        except (GeneratorExit, KeyboardInterrupt):
            self.cancelled = True
            raise
        finally:
            self.model.load_state_dict(self._good_state)
            self.model.eval()
            set_trainable(self.model)  # the model leaves with every weight trainable
            if self.out is not None and not self.diverged:
                self._checkpoint()

    # hooks of distributed training (engine.ddp.DistributedTrainer overrides them); in one
    # process they are the plain model call, the loss as a number and the flag itself
    def _forward(self, x: torch.Tensor) -> Any:
        """The model's output for a batch (through the DDP wrapper when distributed)."""
        return self.model(x)

    def _loss_value(self, loss: torch.Tensor) -> float:
        """The step's loss as a number (the mean over all ranks when distributed)."""
        return float(loss.detach())

    def _agreed(self, flag: bool) -> bool:
        """A decision every process must take alike (stop, diverged): here ``flag``;
        when distributed, rank 0's ``flag``, which the other ranks follow."""
        return flag

    def _watch_loss(self, value: float) -> bool:
        """Update the smoothed loss; True when it has diverged (see ``TrainConfig``).
        While the loss is healthy, the weights it was computed with (those before this
        step's update) become the ones kept if training diverges later."""
        cfg = self.config
        self._ema = value if self._ema is None else self._ema + 0.1 * (value - self._ema)
        self._best_ema = min(self._best_ema, self._ema)
        if cfg.divergence_factor and self._ema > cfg.divergence_factor * self._best_ema:
            self._over += 1
        else:
            self._over = 0
            self._healthy = (self.step, self._good_state, len(self.history))
        return bool(cfg.divergence_factor) and self._over >= max(1, cfg.divergence_window)

    def _diverge(self, step: int, why: str) -> TrainingDiverged:
        """Stop a diverged run: restore the weights of the last healthy step (that of the
        previous step when the loss or weights just stopped being numbers, as long as the
        loss was not running away), and deal with ``out``:

        - nothing was written to ``out`` by this run: nothing is written (a file already
          there, e.g. the previous model, stays as it was);
        - this run already wrote checkpoints there: the file is replaced by the model of the
          last healthy step, marked ``diverged`` in ``training["last_run"]``, or removed
          when that step is 0 (the starting weights).
        Returns the exception to raise."""
        if self._over == 0:  # a sudden NaN: the previous step's finite weights are kept
            self._healthy = (self.step, self._good_state, len(self.history))
        good_step, state, n_history = self._healthy
        self._good_state = state
        self.model.load_state_dict(state)
        self.step = good_step
        del self.history[n_history:]
        self.diverged, self.diverged_at = True, step
        kept = f"the model of the last good step ({good_step}) was kept in memory"
        if self.out is not None and self._wrote_out:
            if good_step > 0:
                self.model.eval()
                self.save(self.out)
                kept = (
                    f"{self.out} holds the model of the last good step ({good_step}), from "
                    "before the divergence, marked diverged"
                )
            else:
                self.out.unlink(missing_ok=True)
                kept = f"no model was written ({self.out} was removed); {kept}"
        elif self.out is not None:
            kept = f"no model was written to {self.out}; {kept}"
        return TrainingDiverged(
            f"training diverged at step {step}: {why}; {kept}. Try a lower learning rate "
            f"(now {self.config.lr:g})."
        )

    def _checkpoint(self) -> None:
        assert self.out is not None
        self.save(self.out)
        self._wrote_out = True
        self._last_save_t = time.monotonic()

    # ------------------------------------------------------------------ results
    def current_info(self) -> ModelInfo:
        """The ModelInfo of the model as it is now (history and training settings)."""
        info = copy.deepcopy(self.info)
        info.history = list(self.history)
        if self.config.diameter is not None:
            info.defaults["diameter"] = float(self.config.diameter)
        cfg = asdict(self.config)
        cfg["augment"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg["augment"].items()
        }
        info.training = {
            **info.training,
            "last_run": {
                **cfg,
                "weight_scheme": self.config.weight_scheme,  # what weights=None resolved to
                "steps_done": self.step,
                "finished": self.finished,
                "cancelled": self.cancelled,
                "cancel_reason": self.cancel_reason if self.cancelled else None,
                "diverged": self.diverged,
                "diverged_at_step": self.diverged_at,
                "device": str(self.device),
                "n_train_images": len(self.train_samples),
                "n_val_images": len(self.val),
            },
        }
        return info

    def save(self, path: str | Path) -> Path:
        """Write the current (last good) model to ``path`` atomically."""
        return save_checkpoint(path, self.model, self.current_info())

    def release(self) -> None:
        """Move the model to the CPU and give GPU memory back (after training)."""
        self.model.to("cpu")
        self.optimizer = None  # type: ignore[assignment]
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        release_memory(self.device)


def set_trainable(model: torch.nn.Module, layers: str = "all") -> None:
    """Mark which weights of ``model`` learn (``requires_grad``): all of them, or with
    ``layers="decoder"`` all but those of its encoders (every submodule named
    ``encoder``: the U-Net's, and both U-Nets' of a DDT model). ValueError for a network
    without an encoder."""
    for param in model.parameters():
        param.requires_grad_(True)
    if layers == "all":
        return
    encoders = [
        module
        for name, module in model.named_modules()
        if name == "encoder" or name.endswith(".encoder")
    ]
    if not encoders:
        name = getattr(model, "config", {}).get("architecture", type(model).__name__)
        raise ValueError(
            f"train_layers={layers!r} needs a network with an encoder (a U-Net); the "
            f"{name!r} network has none: use train_layers='all'."
        )
    for encoder in encoders:
        for param in encoder.parameters():
            param.requires_grad_(False)


def finite_parameters(model: torch.nn.Module) -> bool:
    """Whether every weight of ``model`` is a finite number.

    One reduction over all weights (the norm of each tensor is not finite as soon as one
    of its entries is NaN or infinite) and one host sync, instead of a check and a sync
    per tensor: ~1 ms for the default U-Net where the per-tensor loop took 30-100 ms of
    a ~1 s fine-tune step on 2 CPU cores.
    """
    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all())


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    on_step: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> tuple[torch.nn.Module, ModelInfo]:
    """Convenience wrapper: build a :class:`Trainer` and run it. See its parameters."""
    trainer = Trainer(images, labels, config, **kwargs)
    return trainer.run(on_step=on_step, should_stop=should_stop)


def quick_finetune_config(weak: bool = True, **overrides: Any) -> TrainConfig:
    """The one-click fine-tune of the plugin (and of ``cellfocus train --from default``).

    Sized for about 15-30 s on a 512 x 512 image on a 2-core CPU, first preview after
    ~10 s (``benchmarks/bench_finetune.py``): 30 steps of 4 crops of 192 px with the
    encoder frozen (``train_layers="decoder"``: a step costs ~0.8 s instead of ~1.2 s), a
    learning rate higher than the thesis' 1e-4 because the budget is tens of steps, not
    a thousand epochs. Measured against the earlier 100 steps of every weight on the
    same images and annotations, the PQ gain on the unannotated cells is the same within
    the spread between draws of the annotated cells, at a fifth of the time
    (docs/benchmarks.md, "One-click fine-tune").
    """
    settings: dict[str, Any] = {
        "weak": weak,
        "freeze_norm": True,
        "steps": QUICK_STEPS,
        "batch_size": 4,
        "crop_size": MAX_CROP,
        "lr": 5e-4,
        "train_layers": "decoder",
        "checkpoint_every": 10,
    }
    settings.update(overrides)
    return TrainConfig(**settings)
