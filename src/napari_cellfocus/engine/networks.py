"""Segmentation networks: U-Net, residual U-Net and the deep-distance-transform pair.

All networks work on 2D images (``dims=2``: input ``(N, C, Y, X)``) and on 3D stacks
(``dims=3``: input ``(N, C, Z, Y, X)``), return logits (no softmax / sigmoid on the class
output), and accept *any* spatial size: the input is reflect-padded up to a multiple of
:attr:`divisor` (the product of the pooling factors) and the output is cropped back to the
input size (lecture L, "Dealing with image sizes": fixed-size crops for training, whole
images at inference).

Every network keeps the keyword arguments it was built with in :attr:`config`, a plain
JSON-serialisable dict with an ``"architecture"`` key, so a checkpoint can rebuild the same
network with :func:`build_network`.

Sources
-------
* **T** 2.2 (U-Net as used in the thesis: two 3x3 convolutions + ReLU per block, 2x2
  max-pooling, up-sampling, concatenated skip connections, 1-pixel padding so the output has
  the input size; Xavier-normal initialisation, T 4.3 / 5.3; 3D variant with 3D convolutions,
  T 5.3).
* **C** 4.4 (residual U-Net of the cell-counting paper).
* **D** 3 (deep distance transformer backbone and top U-Net).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "DDTModel",
    "ResidualUNet",
    "UNet",
    "build_network",
    "count_parameters",
]

_NORMS = ("batch", "group", "instance", None)


# --------------------------------------------------------------------------------------
# small building blocks
# --------------------------------------------------------------------------------------
def _check_dims(dims: int) -> int:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 (images) or 3 (stacks), got {dims!r}.")
    return int(dims)


def _check_norm(norm: str | None) -> str | None:
    if norm not in _NORMS:
        raise ValueError(
            f"norm must be one of 'batch', 'group', 'instance' or None, got {norm!r}."
        )
    return norm


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_dropout(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {p!r}.")
    return float(p)


def _conv(dims: int, cin: int, cout: int, kernel: int, bias: bool = True) -> nn.Module:
    """'Same' convolution (zero padding of ``kernel // 2``), odd ``kernel``."""
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel_size=kernel, padding=kernel // 2, bias=bias)


def _group_count(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` that is <= ``max_groups`` (for GroupNorm)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm(norm: str | None, dims: int, channels: int) -> nn.Module:
    if norm is None:
        return nn.Identity()
    if norm == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.GroupNorm(_group_count(channels), channels)


def _dropout(p: float, dims: int) -> nn.Module:
    if p <= 0:
        return nn.Identity()
    return (nn.Dropout2d if dims == 2 else nn.Dropout3d)(p)


def _max_pool(dims: int) -> nn.Module:
    return (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(kernel_size=2, stride=2)


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "elu":
        return nn.ELU(inplace=False)
    raise ValueError(f"activation must be 'relu' or 'elu', got {name!r}.")


def _init_weights(module: nn.Module) -> None:
    """Xavier (Glorot) normal weights and zero biases for every convolution (T 4.3, 5.3)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class _DoubleConv(nn.Module):
    """U-Net block: (conv 3x3 -> norm -> ReLU) x 2, optionally with a residual shortcut.

    With ``residual=True`` the output is ``ReLU(body(x) + shortcut(x))`` where the body ends
    with the second normalisation and the shortcut is the identity (same channel count) or
    a 1x1 convolution.
    """

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        norm: str | None,
        dropout: float,
        residual: bool,
    ) -> None:
        super().__init__()
        bias = norm is None
        self.conv1 = _conv(dims, cin, cout, 3, bias=bias)
        self.norm1 = _norm(norm, dims, cout)
        self.conv2 = _conv(dims, cout, cout, 3, bias=bias)
        self.norm2 = _norm(norm, dims, cout)
        self.act = nn.ReLU()
        self.residual = residual
        self.shortcut: nn.Module = (
            nn.Identity() if (not residual or cin == cout) else _conv(dims, cin, cout, 1)
        )
        self.drop = _dropout(dropout, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        if self.residual:
            y = y + self.shortcut(x)
        return self.drop(self.act(y))


class _PreActResUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016, used by C 4.4).

    ``out = body(x) + shortcut(x)`` with ``body = (norm -> activation -> conv k x k) x 2`` and
    ``shortcut`` the identity when the channel counts match, else a 1x1 convolution (C,
    Fig. 5 caption: "shortcut-connections along the encoding-path are supported by a 1x1
    convolution to enable the final sum").
    """

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        kernel: int,
        norm: str | None,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, dims, cin),
            _activation(activation),
            _conv(dims, cin, cout, kernel),
            _norm(norm, dims, cout),
            _activation(activation),
            _conv(dims, cout, cout, kernel),
        )
        self.shortcut: nn.Module = nn.Identity() if cin == cout else _conv(dims, cin, cout, 1)
        self.drop = _dropout(dropout, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.body(x) + self.shortcut(x))


# --------------------------------------------------------------------------------------
# any-size forward
# --------------------------------------------------------------------------------------
def _pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial axes of ``x`` (N, C, *S) up to multiples of ``divisor``.

    Padding is split evenly before/after each axis; reflect padding is used, falling back
    to edge replication when an axis is too short to reflect (pad >= size). Returns the
    padded tensor and the slices that crop a same-size output back to ``x``'s size.
    """
    spatial = x.shape[2:]
    before = []
    after = []
    for s in spatial:
        total = (-s) % divisor
        before.append(total // 2)
        after.append(total - total // 2)
    crop = (
        slice(None),
        slice(None),
        *(slice(b, b + s) for b, s in zip(before, spatial, strict=True)),
    )
    if not any(before) and not any(after):
        return x, crop
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pads.extend((b, a))
    can_reflect = all(max(b, a) < s for b, a, s in zip(before, after, spatial, strict=True))
    mode = "reflect" if can_reflect else "replicate"
    return F.pad(x, pads, mode=mode), crop


class _AnySizeNet(nn.Module):
    """Base class: checks the input, pads to :attr:`divisor`, runs ``_core``, crops back."""

    in_channels: int
    dims: int
    divisor: int
    config: dict[str, Any]

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor input, got {type(x).__name__}.")
        want = "(N, C, Y, X)" if self.dims == 2 else "(N, C, Z, Y, X)"
        if x.ndim != self.dims + 2:
            raise ValueError(
                f"{type(self).__name__} with dims={self.dims} expects input {want}, "
                f"got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channel(s) on "
                f"axis 1, got {x.shape[1]} (shape {tuple(x.shape)})."
            )
        if any(s == 0 for s in x.shape[2:]):
            raise ValueError(f"input has an empty spatial axis: shape {tuple(x.shape)}.")

    def _core(self, x: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, out_channels, *S) for an input (N, in_channels, *S), any S."""
        self._check_input(x)
        padded, crop = _pad_to_multiple(x, self.divisor)
        return self._core(padded)[crop]


# --------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------
class UNet(_AnySizeNet):
    """U-Net (T 2.2, lecture L "U-Net"), 2D or 3D, configurable depth / width / norm.

    Encoder level ``l`` (``l = 0 .. depth-1``) has ``width * 2**l`` feature maps, made by two
    3x3 (3x3x3) convolutions each followed by normalisation and ReLU; levels are separated
    by 2x2 (2x2x2) max-pooling, the deepest level is the bottleneck. Each decoder level
    up-samples by 2 (nearest neighbour, as the "Upsample" layers of T Table 1), concatenates
    the encoder features of the same level and applies the same double convolution. A 1x1
    convolution maps the ``width`` channels to ``out_channels`` logits. Convolutions use
    "same" padding (T 2.2: "a 1 pixel padding was used"), weights are Xavier-normal (T 4.3).

    Parameters
    ----------
    in_channels : int
        Input channels (1 for a grey image).
    out_channels : int
        Output channels (number of classes; 3 or 4 for the class schemes of the package).
    depth : int
        Number of resolution levels including the bottleneck (``depth - 1`` poolings).
        The thesis network has depth 5 and width 64 (31 M parameters, T Table 1).
    width : int
        Feature maps at the first level.
    norm : {"batch", "group", "instance", None}
        Normalisation after each convolution (None = plain conv + ReLU as in T 2.2).
        "group" uses the largest divisor of the channel count that is <= 8 groups.
    dims : {2, 3}
        2D or 3D convolutions / pooling.
    dropout : float
        Channel dropout probability applied to the output of every block (0 = none).
    residual : bool
        Add a shortcut (identity or 1x1 convolution) around every double convolution.

    Attributes
    ----------
    divisor : int
        ``2 ** (depth - 1)``; inputs are padded internally to a multiple of it.
    config : dict
        ``{"architecture": "unet", **constructor kwargs}``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        depth: int = 4,
        width: int = 16,
        norm: str | None = "batch",
        dims: int = 2,
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.depth = _check_positive_int(depth, "depth", minimum=1)
        self.width = _check_positive_int(width, "width")
        self.norm = _check_norm(norm)
        self.dims = _check_dims(dims)
        self.dropout = _check_dropout(dropout)
        self.residual = bool(residual)
        self.divisor = 2 ** (self.depth - 1)
        self.config = {
            "architecture": "unet",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "width": self.width,
            "norm": self.norm,
            "dims": self.dims,
            "dropout": self.dropout,
            "residual": self.residual,
        }

        chans = [self.width * 2**level for level in range(self.depth)]
        self.encoder = nn.ModuleList()
        cin = self.in_channels
        for c in chans:
            self.encoder.append(
                _DoubleConv(self.dims, cin, c, self.norm, self.dropout, self.residual)
            )
            cin = c
        self.pool = _max_pool(self.dims)
        self.decoder = nn.ModuleList()
        for level in range(self.depth - 2, -1, -1):
            self.decoder.append(
                _DoubleConv(
                    self.dims,
                    chans[level + 1] + chans[level],
                    chans[level],
                    self.norm,
                    self.dropout,
                    self.residual,
                )
            )
        self.head = _conv(self.dims, chans[0], self.out_channels, 1)
        _init_weights(self)

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for block in self.decoder:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------------------
# residual U-Net (counting paper)
# --------------------------------------------------------------------------------------
class _UpResUnit(nn.Module):
    """Decoder unit of the residual U-Net: transposed-conv up-sampling (2x), concatenation
    with the encoder features, a pre-activation body, and the up-sampled tensor as the
    shortcut of the residual sum."""

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        norm: str | None,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.up = up(cin, cout, kernel_size=2, stride=2)
        self.body = nn.Sequential(
            _norm(norm, dims, 2 * cout),
            _activation(activation),
            _conv(dims, 2 * cout, cout, 3),
            _norm(norm, dims, cout),
            _activation(activation),
            _conv(dims, cout, cout, 3),
        )
        self.drop = _dropout(dropout, dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        return self.drop(self.body(torch.cat([up, skip], dim=1)) + up)


class ResidualUNet(_AnySizeNet):
    """Residual U-Net of the cell-counting paper (C 4.4, Fig. 5), 2D or 3D.

    * Optional learned colour-to-grey input: a 1x1 convolution from ``in_channels`` to one
      channel ("learn an optimal one-dimensional colorspace from the initial
      three-dimensional space"); on by default when ``in_channels == 3``.
    * Encoder: ``depth - 1`` levels, each one pre-activation residual unit
      ``(norm -> activation -> conv 3x3) x 2`` with a 1x1-convolution shortcut summed
      before the 2x2 max-pooling; level ``l`` has ``width * 2**l`` feature maps.
    * Bottleneck (level ``depth - 1``, ``width * 2**(depth-1)`` maps): the usual residual
      unit plus the paper's additional residual block, both with 5x5 (``bottleneck_kernel``)
      filters to widen the field of view.
    * Decoder: per level a 2x2 transposed convolution up-samples, the result is
      concatenated with the encoder features and passed through a pre-activation body; the
      up-sampled tensor is the residual shortcut.
    * Head: norm -> activation -> 1x1 convolution to ``out_channels`` logits.

    The paper's defaults (with the 512x512 RGB crops it was trained on) correspond to
    ``in_channels=3, depth=4, width=16`` (16-32-64 feature maps, 128 in the bottleneck);
    its output was a 1-channel sigmoid heat-map (cell vs background), here
    ``out_channels`` logits so the same network serves the 3/4-class schemes.

    Parameters
    ----------
    in_channels, out_channels, depth, width, norm, dims, dropout
        As for :class:`UNet` (``depth >= 2``).
    bottleneck_kernel : int
        Odd kernel size of the two bottleneck residual units (5 in C 4.4). C's "additional
        residual block at the end of the encoding-path (bottleneck), where we also used
        bigger size filters (5x5)" is read as 5x5 in both bottleneck units (docs/methods.md).
    activation : {"elu", "relu"}
        Activation inside the residual units. C writes "batch normalization, activation and
        convolution" without naming it; ELU is our reading (docs/methods.md).
    grey_input : bool or None
        Learned 1x1 colour-to-grey input convolution; None = only when ``in_channels == 3``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        depth: int = 4,
        width: int = 16,
        norm: str | None = "batch",
        dims: int = 2,
        dropout: float = 0.0,
        bottleneck_kernel: int = 5,
        activation: str = "elu",
        grey_input: bool | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.depth = _check_positive_int(depth, "depth", minimum=2)
        self.width = _check_positive_int(width, "width")
        self.norm = _check_norm(norm)
        self.dims = _check_dims(dims)
        self.dropout = _check_dropout(dropout)
        k = _check_positive_int(bottleneck_kernel, "bottleneck_kernel")
        if k % 2 == 0:
            raise ValueError(f"bottleneck_kernel must be odd, got {k}.")
        self.bottleneck_kernel = k
        _activation(activation)  # validates the name
        self.activation = activation
        if grey_input is None:
            grey_input = self.in_channels == 3
        self.grey_input = bool(grey_input)
        self.divisor = 2 ** (self.depth - 1)
        self.config = {
            "architecture": "residual_unet",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "width": self.width,
            "norm": self.norm,
            "dims": self.dims,
            "dropout": self.dropout,
            "bottleneck_kernel": self.bottleneck_kernel,
            "activation": self.activation,
            "grey_input": self.grey_input,
        }

        d = self.dims
        self.to_grey: nn.Module = (
            _conv(d, self.in_channels, 1, 1) if self.grey_input else (nn.Identity())
        )
        chans = [self.width * 2**level for level in range(self.depth)]
        cin = 1 if self.grey_input else self.in_channels
        self.encoder = nn.ModuleList()
        for c in chans[:-1]:
            self.encoder.append(_PreActResUnit(d, cin, c, 3, self.norm, activation, self.dropout))
            cin = c
        self.pool = _max_pool(d)
        self.bottleneck = nn.Sequential(
            _PreActResUnit(d, cin, chans[-1], k, self.norm, activation, 0.0),
            _PreActResUnit(d, chans[-1], chans[-1], k, self.norm, activation, self.dropout),
        )
        self.decoder = nn.ModuleList(
            _UpResUnit(d, chans[level + 1], chans[level], self.norm, activation, self.dropout)
            for level in range(self.depth - 2, -1, -1)
        )
        self.head = nn.Sequential(
            _norm(self.norm, d, chans[0]),
            _activation(activation),
            _conv(d, chans[0], self.out_channels, 1),
        )
        _init_weights(self)

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_grey(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)


# --------------------------------------------------------------------------------------
# DDT backbone + top model (D section 3)
# --------------------------------------------------------------------------------------
class DDTModel(_AnySizeNet):
    """Deep distance transformer (D section 3): backbone U-Net + top U-Net.

    * Backbone ("DDT", UNet1 architecture): a :class:`UNet` from the image to one channel,
      passed through a sigmoid, regressing the inverse distance transform normalised to
      [0, 1] (high at cell borders; trained with MAE, D section 5).
    * Top model: a :class:`UNet` producing ``out_channels`` class logits (foreground /
      background / border with the border ground truth, D section 4) from
      ``top_input="ddt"`` -> the DDT alone ("DDT + UNet1"), or
      ``top_input="ddt+image"`` -> the channels ``[DDT, image]`` ("DDT + UNet2", the
      paper's best pipeline).

    ``forward(x)`` returns the **tuple** ``(class_logits, ddt)`` with shapes
    ``(N, out_channels, *S)`` and ``(N, 1, *S)``; ``ddt`` lies in [0, 1].
    :meth:`forward_ddt` runs the backbone alone (for its MAE pre-training).

    Parameters
    ----------
    in_channels, out_channels, depth, width, norm, dims, dropout, residual
        Passed to both U-Nets (same depth, hence one :attr:`divisor`).
    top_input : {"ddt", "ddt+image"}
        What the top model sees.
    detach_ddt : bool
        Stop the class loss' gradient at the DDT, so the top model trains on a fixed
        backbone (the paper's two-stage training); False trains both end to end. D's mode
        for training is :func:`napari_cellfocus.engine.train.ddt_network` (``paper=True``
        sets it).

    Notes
    -----
    D describes the DDT output only as learnt by "an encoder-decoder ... with a ReLU
    activation" of a target normalised to [0, 1]; a sigmoid output is used here so the
    prediction is bounded in the same range.
    """

    TOP_INPUTS = ("ddt", "ddt+image")

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        top_input: str = "ddt+image",
        depth: int = 4,
        width: int = 16,
        norm: str | None = "batch",
        dims: int = 2,
        dropout: float = 0.0,
        residual: bool = False,
        detach_ddt: bool = False,
    ) -> None:
        super().__init__()
        if top_input not in self.TOP_INPUTS:
            raise ValueError(f"top_input must be 'ddt' or 'ddt+image', got {top_input!r}.")
        self.top_input = top_input
        self.detach_ddt = bool(detach_ddt)
        common = {
            "depth": depth,
            "width": width,
            "norm": norm,
            "dims": dims,
            "dropout": dropout,
            "residual": residual,
        }
        self.backbone = UNet(in_channels=in_channels, out_channels=1, **common)
        top_in = 1 if top_input == "ddt" else 1 + self.backbone.in_channels
        self.top = UNet(in_channels=top_in, out_channels=out_channels, **common)
        self.in_channels = self.backbone.in_channels
        self.out_channels = self.top.out_channels
        self.dims = self.backbone.dims
        self.divisor = self.backbone.divisor
        self.config = {
            "architecture": "ddt",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "top_input": self.top_input,
            "depth": self.backbone.depth,
            "width": self.backbone.width,
            "norm": self.backbone.norm,
            "dims": self.dims,
            "dropout": self.backbone.dropout,
            "residual": self.backbone.residual,
            "detach_ddt": self.detach_ddt,
        }

    def _core(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ddt = torch.sigmoid(self.backbone._core(x))
        feed = ddt.detach() if self.detach_ddt else ddt
        if self.top_input == "ddt+image":
            feed = torch.cat([feed, x], dim=1)
        return self.top._core(feed), ddt

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Return ``(class_logits, ddt)``, both cropped to the input's spatial size."""
        self._check_input(x)
        padded, crop = _pad_to_multiple(x, self.divisor)
        logits, ddt = self._core(padded)
        return logits[crop], ddt[crop]

    def forward_ddt(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone only: the predicted inverse distance transform (N, 1, *S) in [0, 1]."""
        self._check_input(x)
        padded, crop = _pad_to_multiple(x, self.divisor)
        return torch.sigmoid(self.backbone._core(padded))[crop]


# --------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------
ARCHITECTURES: dict[str, type[_AnySizeNet]] = {
    "unet": UNet,
    "residual_unet": ResidualUNet,
    "ddt": DDTModel,
}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Build a network from its :attr:`config` dict (e.g. read from a checkpoint).

    Parameters
    ----------
    config : dict
        ``{"architecture": "unet" | "residual_unet" | "ddt", **constructor kwargs}``;
        missing kwargs take the constructor defaults.

    Returns
    -------
    torch.nn.Module
        A freshly initialised network whose ``config`` equals the completed input.

    Raises
    ------
    ValueError
        Not a dict, unknown architecture, unknown or invalid parameters.
    """
    if not isinstance(config, dict):
        raise ValueError(f"network config must be a dict, got {type(config).__name__}.")
    kwargs = dict(config)
    arch = kwargs.pop("architecture", None)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown network architecture {arch!r}; expected one of "
            f"{', '.join(repr(a) for a in ARCHITECTURES)}."
        )
    cls = ARCHITECTURES[arch]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for architecture {arch!r}; "
            f"allowed: {sorted(allowed)}."
        )
    return cls(**kwargs)
