"""Classical multi-focus fusion in torch: the methods of :mod:`napari_cellfocus.core.fusion`
on any torch device (CPU, CUDA, MPS).

The same four methods with the same parameters, defaults and outputs as the numpy
reference implementation (``max-focus``, ``pyramid``, ``gff``, ``wavelet``; see
:func:`napari_cellfocus.core.fusion.fuse_classical` for their definitions and papers). The
filters use the same borders as the numpy code: scipy's ``mode="reflect"`` (half-sample
symmetric, ``d c b a | a b c d | d c b a``, numpy's ``"symmetric"``; *not* torch's
``"reflect"``, which is scipy's ``"mirror"``) and ``mode="nearest"`` (edge value), done
here by gathering the padded rows and columns; even window sizes are placed as scipy
places them (``size // 2`` pixels before the centre).

Differences from numpy (measured by ``tests/engine/test_fusion_classical_torch.py``):

* Everything runs in float32 on the device except the guided filter of GFF, which runs in
  float64 like the numpy code (its ``eps2 = 1e-6`` is close to the float32 rounding of
  ``mean(I^2) - mean(I)^2``); windows wider than 31 px are summed by float64 cumulative
  sums, narrower ones by ``avg_pool2d``. On MPS (no float64) both stay float32. Small
  kernels (Laplacian, Gaussians) are sums of shifted copies, not ``conv2d``, which cuDNN
  may run in TF32 on recent GPUs.
* So intensities differ by float32 rounding (below 1e-6 of the intensity range), and a
  slice choice can flip only where two slices' measures are equal to within rounding.
  Where the choice compares window sums of quantised (8/16-bit) data (max-focus, the
  wavelet activity and its majority vote), both implementations sum exactly, so exact
  ties go to the first slice in both. Measured: identical depth maps on random and
  simulated 8- and 16-bit stacks, on the CPU and on an H100 (up to 20 x 2048 x 2048);
  fused images within one grey level, except the pyramid, where a coarse level's
  energies of two slices can be equal to within float32 rounding: on simulated 8-bit
  20 x 1024 x 1024 and 20 x 2048 x 2048 stacks 37 and 2 pixels (3.5e-5 and 5e-7 of them)
  differed by more than one grey level (at most 6 and 14), the same on CPU and CUDA.

Memory: the stack is moved once to the device as float32 ``(Z, C, Y, X)``; the methods
then work on chunks of slices (at most :data:`CHUNK_ELEMENTS` pixels per chunk) and
keep running maxima, choices and sums of slice size, so the peak is the stack plus a
few chunk- and slice-sized buffers (the wavelet method transforms each chunk twice
instead of keeping every detail band).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_cellfocus.core.fusion import (
    CLASSICAL_METHODS,
    FusionResult,
    PreparedStack,
    _auto_levels,
    _auto_wavelet_levels,
    _check_odd_size,
    _no_more,
    prepare_stack,
)
from napari_cellfocus.engine.device import describe_device, select_device

__all__ = [
    "CHUNK_ELEMENTS",
    "TORCH_METHODS",
    "box_filter",
    "fuse_classical_torch",
    "gaussian_filter",
    "guided_filter",
    "laplace",
    "median_filter",
]

#: Largest number of pixels (slices x Y x X) processed at once.
CHUNK_ELEMENTS = 2**24

#: Windows wider than this are summed with float64 cumulative sums instead of avg_pool2d.
_CUMSUM_ABOVE = 31

Pair = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- borders, filters
def _fold(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index of each position of an axis of length ``n`` padded by ``before`` and
    ``after``: scipy's "reflect" (half-sample symmetric, repeated for wide pads) or
    "nearest" (edge)."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        m = torch.remainder(i, 2 * n)
        return torch.where(m >= n, 2 * n - 1 - m, m)
    raise ValueError(f"mode: expected 'reflect' or 'nearest', got {mode!r}.")


def _pad_axis(x: torch.Tensor, dim: int, before: int, after: int, mode: str) -> torch.Tensor:
    if before == 0 and after == 0:
        return x
    return x.index_select(dim, _fold(x.shape[dim], before, after, mode, x.device))


def _as_4d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """(..., Y, X) -> (B, 1, Y, X) and the original leading shape."""
    return x.reshape(-1, 1, *x.shape[-2:]), x.shape[:-2]


def _float64_ok(device: torch.device) -> bool:
    return device.type != "mps"


def _box1d(x: torch.Tensor, size: int, dim: int, mode: str, total: bool) -> torch.Tensor:
    """Mean (or sum, ``total``) over ``size`` pixels along ``dim`` (-2 or -1) of (B, 1, Y, X)."""
    before = size // 2
    xp = _pad_axis(x, dim, before, size - 1 - before, mode)
    if size > _CUMSUM_ABOVE:
        work = xp.double() if _float64_ok(x.device) else xp
        c = torch.cumsum(work, dim=dim)
        c = F.pad(c, (1, 0) if dim == -1 else (0, 0, 1, 0))
        n = x.shape[dim]
        out = c.narrow(dim, size, n) - c.narrow(dim, 0, n)
        if not total:
            out = out / size
        return out.to(x.dtype)
    kernel = (size, 1) if dim == -2 else (1, size)
    return F.avg_pool2d(xp, kernel, stride=1, divisor_override=1 if total else None)


def box_filter(
    x: torch.Tensor, size: int, mode: str = "reflect", total: bool = False
) -> torch.Tensor:
    """Mean over ``size x size`` windows on the last two axes of (..., Y, X) (scipy's
    ``uniform_filter`` with ``size=(1, ..., size, size)``); ``total``: the sum instead."""
    if size <= 1:
        return x
    x4, lead = _as_4d(x)
    out = _box1d(_box1d(x4, size, -2, mode, total), size, -1, mode, total)
    return out.reshape(*lead, *out.shape[-2:])


def _correlate1d(x4: torch.Tensor, weights: Sequence[float], dim: int, mode: str) -> torch.Tensor:
    """Correlate (B, 1, Y, X) with a 1D kernel of odd length along ``dim``, as a sum of
    shifted copies (not conv2d: cuDNN may run float32 convolutions in TF32, 10-bit
    mantissas, on recent GPUs)."""
    r = len(weights) // 2
    xp = _pad_axis(x4, dim, r, r, mode)
    n = x4.shape[dim]
    out = xp.narrow(dim, 0, n) * float(weights[0])
    for i in range(1, len(weights)):
        out.add_(xp.narrow(dim, i, n), alpha=float(weights[i]))
    return out


def gaussian_filter(x: torch.Tensor, sigma: float, radius: int, mode: str = "reflect"):
    """Gaussian blur of (..., Y, X) on the last two axes: the kernel of scipy's
    ``gaussian_filter`` (``exp(-t^2 / 2 sigma^2)`` for ``|t| <= radius``, normalised), Y
    then X."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w = (w / w.sum()).tolist()
    x4, lead = _as_4d(x)
    out = _correlate1d(_correlate1d(x4, w, -2, mode), w, -1, mode)
    return out.reshape(*lead, *out.shape[-2:])


def laplace(x: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """5-point discrete Laplacian of (..., Y, X) (scipy's ``laplace`` on 2D slices: the
    second differences ``[1, -2, 1]`` along Y plus along X)."""
    x4, lead = _as_4d(x)
    out = _correlate1d(x4, (1.0, -2.0, 1.0), -2, mode)
    out += _correlate1d(x4, (1.0, -2.0, 1.0), -1, mode)
    return out.reshape(*lead, *out.shape[-2:])


def median_filter(index: torch.Tensor, size: int) -> torch.Tensor:
    """``size x size`` median of a (Y, X) map with edge ("nearest") borders, as scipy's
    ``median_filter`` (for even ``size`` the upper of the two middle values, rank
    ``size^2 // 2``); rows are done in bands to bound the memory of the unfolded windows."""
    if size <= 1:
        return index
    ny, nx = index.shape
    before = size // 2
    x = index.to(torch.float32)
    xp = _pad_axis(_pad_axis(x, 0, before, size - 1 - before, "nearest"), 1, before,
                   size - 1 - before, "nearest")  # fmt: skip
    band = max(1, CHUNK_ELEMENTS // (size * size * nx))
    rank = size * size // 2 + 1
    out = torch.empty_like(x)
    for y0 in range(0, ny, band):
        y1 = min(ny, y0 + band)
        rows = xp[y0 : y1 + size - 1][None, None]
        windows = F.unfold(rows, (size, size))  # (1, size^2, rows * X)
        out[y0:y1] = windows.kthvalue(rank, dim=1).values.reshape(y1 - y0, nx)
    return out.to(index.dtype)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """Grey guided filter (He, Sun, Tang), as :func:`napari_cellfocus.core.fusion.guided_filter`:
    ``q = mean(a) * I + mean(b)``, ``a = cov(I, p) / (var(I) + eps)``,
    ``b = mean(p) - a * mean(I)``, means over ``(2r+1)^2`` windows with reflected borders.

    guide, src : (..., Y, X) tensors of the same shape. Computed in float64 (float32 on
    MPS); returns float32.
    """
    dtype = torch.float64 if _float64_ok(guide.device) else torch.float32
    i = guide.to(dtype)
    p = src.to(dtype)
    size = 2 * int(r) + 1
    mean_i = box_filter(i, size)
    mean_p = box_filter(p, size)
    a = (box_filter(i * p, size) - mean_i * mean_p) / (
        box_filter(i * i, size) - mean_i * mean_i + eps
    )
    b = mean_p - a * mean_i
    del mean_p
    return (box_filter(a, size) * i + box_filter(b, size)).to(torch.float32)


# --------------------------------------------------------------------------- shared pieces
def _chunks(n: int, pixels: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, pixels))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, C, Y, X) -> (B, Y, X): the channel mean (the numpy code's grey image)."""
    return x.mean(dim=1) if x.shape[1] > 1 else x[:, 0]


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, C, Y, X), index (Y, X) int in [0, B) -> (C, Y, X)."""
    idx = index.long()[None, None].expand(1, x.shape[1], *index.shape)
    return torch.gather(x, 0, idx)[0]


class _RunningArgmax:
    """Per-pixel maximum over slices seen chunk by chunk; ties go to the first slice (as
    ``np.argmax``)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.index: torch.Tensor | None = None

    def update(self, values: torch.Tensor, start: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """values (B, Y, X) of slices ``start...``. Returns the mask of pixels whose choice
        moved into this chunk (``None`` on the first chunk: all of them) and the chunk's
        own choice (Y, X), counted from ``start``."""
        best, local = values.max(dim=0)
        if self.value is None:
            self.value, self.index = best, local + start
            return None, local
        better = best > self.value
        self.value = torch.where(better, best, self.value)
        self.index = torch.where(better, local + start, self.index)
        return better, local


# --------------------------------------------------------------------------- max focus
def _focus_measure(g: torch.Tensor, measure: str, window: int) -> torch.Tensor:
    """As ``core.fusion.focus_measure``: window sums divided once (exact ties stay ties)."""
    area = float(window * window)
    if measure == "laplacian":
        lap = laplace(g)
        return box_filter(lap * lap, window, total=True) / area
    if measure == "variance":
        mean = box_filter(g, window, total=True) / area
        sq = box_filter(g * g, window, total=True) / area
        return (sq - mean * mean).clamp_min(0.0)
    raise ValueError(f"measure: expected 'laplacian' or 'variance', got {measure!r}.")


def _max_focus(x: torch.Tensor, measure: str, window: int, smooth: int) -> Pair:
    n, _, ny, nx = x.shape
    best = _RunningArgmax()
    for s, e in _chunks(n, ny * nx):
        best.update(_focus_measure(_grey(x[s:e]), measure, window), s)
    assert best.index is not None
    index = median_filter(best.index, smooth) if smooth > 1 else best.index
    return _take(x, index), index.to(torch.float32)


def _run_max_focus(x: torch.Tensor, **kw: Any) -> Pair:
    measure = kw.pop("measure", "laplacian")
    window = _check_odd_size(kw.pop("window", 7), "window")
    smooth = _check_odd_size(kw.pop("smooth", 5), "smooth", minimum=0)
    _no_more(kw, "max-focus")
    if measure not in ("laplacian", "variance"):
        raise ValueError(f"measure: expected 'laplacian' or 'variance', got {measure!r}.")
    return _max_focus(x, measure, window, smooth)


# --------------------------------------------------------------------------- pyramid
def _reduce(x: torch.Tensor) -> torch.Tensor:
    """Gaussian (sigma 1, radius 4) low-pass then every other row/column."""
    return gaussian_filter(x, 1.0, 4)[..., ::2, ::2]


def _expand(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Linear up-sampling of (..., y, x) to (..., Y, X), pixel-edge aligned (scipy's
    ``zoom(order=1, grid_mode=True, mode="nearest")``)."""
    x4, lead = _as_4d(x)
    out = F.interpolate(x4, size=shape, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *shape)


def _pyramid(x: torch.Tensor, levels: int, window: int, smooth: int) -> Pair:
    n, _, ny, nx = x.shape
    if levels == 1:  # no detail level: the average, depth in the middle
        return x.mean(dim=0), torch.full((ny, nx), (n - 1) / 2.0, device=x.device)
    picked: list[torch.Tensor | None] = [None] * (levels - 1)
    bests = [_RunningArgmax() for _ in range(levels - 1)]
    coarse = None
    for s, e in _chunks(n, ny * nx):
        gauss = [x[s:e]]
        for _ in range(levels - 1):
            gauss.append(_reduce(gauss[-1]))
        part = gauss[-1].sum(dim=0)
        coarse = part if coarse is None else coarse + part
        for level in range(levels - 1):
            g = gauss[level]
            lap = g - _expand(gauss[level + 1], tuple(g.shape[-2:]))
            energy = box_filter((lap * lap).sum(dim=1), window)
            better, local = bests[level].update(energy, s)
            chosen = _take(lap, local)
            prev = picked[level]
            picked[level] = chosen if better is None else torch.where(better, chosen, prev)
    assert coarse is not None
    fused = coarse / n
    for level in range(levels - 2, -1, -1):
        detail = picked[level]
        assert detail is not None
        fused = _expand(fused, tuple(detail.shape[-2:])) + detail
    index = bests[0].index
    assert index is not None
    if smooth > 1:
        index = median_filter(index, smooth)
    return fused, index.to(torch.float32)


def _run_pyramid(x: torch.Tensor, **kw: Any) -> Pair:
    levels = kw.pop("levels", None) or _auto_levels(tuple(x.shape[-2:]))
    window = _check_odd_size(kw.pop("window", 3), "window")
    smooth = _check_odd_size(kw.pop("smooth", 5), "smooth", minimum=0)
    _no_more(kw, "pyramid")
    return _pyramid(x, _check_odd_size(levels, "levels"), window, smooth)


# --------------------------------------------------------------------------- GFF
def _gff(
    x: torch.Tensor,
    r1: int,
    eps1: float,
    r2: int,
    eps2: float,
    base_size: int,
    sigma_s: float,
    radius_s: int,
) -> Pair:
    n, c, ny, nx = x.shape
    lo, hi = float(x.min()), float(x.max())
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    # pass 1: saliency |I * L| * g, the slice of largest saliency
    sal = _RunningArgmax()
    for s, e in _chunks(n, ny * nx):
        g = (_grey(x[s:e]) - lo) * scale
        sal.update(gaussian_filter(laplace(g).abs(), sigma_s, radius_s), s)
    index = sal.index
    assert index is not None
    # pass 2: guided-filtered weights, accumulated with the base and detail layers
    shape = (ny, nx)
    zeros = x.new_zeros
    sum_b, sum_d = zeros(shape), zeros(shape)
    num_b, num_d, all_b, all_d = (zeros((c, *shape)) for _ in range(4))
    depth = _RunningArgmax()
    for s, e in _chunks(n, 8 * ny * nx):  # the float64 guided filter needs more room
        norm = (x[s:e] - lo) * scale
        base = box_filter(norm, base_size)
        detail = norm - base
        g = (_grey(x[s:e]) - lo) * scale
        k = torch.arange(s, e, device=x.device)[:, None, None]
        p = (index[None] == k).to(torch.float32)
        wb = guided_filter(g, p, r1, eps1).clamp_min(0.0)
        wd = guided_filter(g, p, r2, eps2).clamp_min(0.0)
        sum_b += wb.sum(dim=0)
        sum_d += wd.sum(dim=0)
        num_b += (wb[:, None] * base).sum(dim=0)
        num_d += (wd[:, None] * detail).sum(dim=0)
        all_b += base.sum(dim=0)
        all_d += detail.sum(dim=0)
        depth.update(wd, s)
    fused_b = torch.where(sum_b > 0, num_b / torch.where(sum_b > 0, sum_b, 1.0), all_b / n)
    fused_d = torch.where(sum_d > 0, num_d / torch.where(sum_d > 0, sum_d, 1.0), all_d / n)
    fused = (fused_b + fused_d) / scale + lo
    assert depth.index is not None
    return fused, depth.index.to(torch.float32)


def _run_gff(x: torch.Tensor, **kw: Any) -> Pair:
    args = {"r1": 45, "eps1": 0.3, "r2": 7, "eps2": 1e-6, "base_size": 31}
    for key in list(args):
        args[key] = kw.pop(key, args[key])
    _no_more(kw, "gff")
    return _gff(
        x,
        _check_odd_size(args["r1"], "r1"),
        float(args["eps1"]),
        _check_odd_size(args["r2"], "r2"),
        float(args["eps2"]),
        _check_odd_size(args["base_size"], "base_size"),
        5.0,
        5,
    )


# --------------------------------------------------------------------------- wavelets
def haar_dwt2(a: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One level of the orthonormal 2D Haar transform on the last two axes of (..., Y, X)
    (Y, X even): ``(approx, h, v, d)``, as :func:`napari_cellfocus.core.fusion.haar_dwt2`."""
    p, q = a[..., 0::2, 0::2], a[..., 0::2, 1::2]
    r, s = a[..., 1::2, 0::2], a[..., 1::2, 1::2]
    return (p + q + r + s) / 2, (p - q + r - s) / 2, (p + q - r - s) / 2, (p - q - r + s) / 2


def haar_idwt2(
    approx: torch.Tensor, h: torch.Tensor, v: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`haar_dwt2`."""
    out = approx.new_empty((*approx.shape[:-2], 2 * approx.shape[-2], 2 * approx.shape[-1]))
    out[..., 0::2, 0::2] = (approx + h + v + d) / 2
    out[..., 0::2, 1::2] = (approx - h + v - d) / 2
    out[..., 1::2, 0::2] = (approx + h - v - d) / 2
    out[..., 1::2, 1::2] = (approx - h - v + d) / 2
    return out


def _majority(index: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Consistency verification: each choice becomes the most frequent in its
    ``size x size`` window (edge borders); exact vote counts, ties to the first slice."""
    if size <= 1:
        return index
    best = _RunningArgmax()
    for k in range(n):
        votes = box_filter((index == k).to(torch.float32), size, "nearest", total=True)
        best.update(votes[None], k)
    assert best.index is not None
    return best.index


def _wavelet_chunks(
    x: torch.Tensor, levels: int
) -> Iterator[tuple[int, int, torch.Tensor, list[tuple[torch.Tensor, ...]]]]:
    """Per chunk of slices: (start, end, approximation band, detail bands per level)."""
    n, _, ny, nx = x.shape
    m = 2**levels
    for s, e in _chunks(n, ny * nx):
        a = _pad_axis(_pad_axis(x[s:e], -2, 0, (-ny) % m, "reflect"), -1, 0, (-nx) % m,
                      "reflect")  # fmt: skip
        details = []
        for _ in range(levels):
            a, h, v, d = haar_dwt2(a)
            details.append((h, v, d))
        yield s, e, a, details


def _wavelet(x: torch.Tensor, levels: int, window: int, consistency: int) -> Pair:
    n, _, ny, nx = x.shape
    # pass 1: the choice per level (largest area activity), then the majority filter
    bests = [_RunningArgmax() for _ in range(levels)]
    coarse = None
    for s, _, a, details in _wavelet_chunks(x, levels):
        part = a.sum(dim=0)
        coarse = part if coarse is None else coarse + part
        for level, (h, v, d) in enumerate(details):
            activity = (h.abs() + v.abs() + d.abs()).sum(dim=1)
            bests[level].update(box_filter(activity, window, total=True), s)
    index = [_majority(b.index, n, consistency) for b in bests]  # type: ignore[arg-type]
    # pass 2: gather the chosen detail coefficients
    picked: list[list[torch.Tensor | None]] = [[None, None, None] for _ in range(levels)]
    for s, e, _, details in _wavelet_chunks(x, levels):
        for level, bands in enumerate(details):
            local = index[level] - s
            inside = (local >= 0) & (local < e - s)
            for j, band in enumerate(bands):
                chosen = _take(band, local.clamp(0, e - s - 1))
                prev = picked[level][j]
                picked[level][j] = chosen if prev is None else torch.where(inside, chosen, prev)
    assert coarse is not None
    fused = coarse / n
    for level in range(levels - 1, -1, -1):
        h, v, d = picked[level]
        fused = haar_idwt2(fused, h, v, d)  # type: ignore[arg-type]
    depth = index[0].repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    return fused[..., :ny, :nx], depth[:ny, :nx].to(torch.float32)


def _run_wavelet(x: torch.Tensor, **kw: Any) -> Pair:
    levels = kw.pop("levels", None) or _auto_wavelet_levels(tuple(x.shape[-2:]))
    levels = _check_odd_size(levels, "levels")
    window = _check_odd_size(kw.pop("window", 3), "window")
    consistency = _check_odd_size(kw.pop("consistency", 3), "consistency", minimum=0)
    _no_more(kw, "wavelet")
    return _wavelet(x, levels, window, consistency)


# --------------------------------------------------------------------------- dispatcher
#: Torch methods by name: ``fn(x (Z, C, Y, X) float32 tensor, **params) -> (fused (C, Y, X),
#: depth (Y, X) float32 slice indices)``, tensors on the device of ``x``.
TORCH_METHODS: dict[str, Callable[..., Pair]] = {
    "max-focus": _run_max_focus,
    "pyramid": _run_pyramid,
    "gff": _run_gff,
    "wavelet": _run_wavelet,
}
assert set(TORCH_METHODS) == set(CLASSICAL_METHODS)


def fuse_prepared_torch(
    ps: PreparedStack, method: str, device: torch.device, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse a :class:`~napari_cellfocus.core.fusion.PreparedStack` (``n >= 2``) on
    ``device``: fused (Y, X, C) float32 and depth (Y, X) float32, numpy arrays."""
    with torch.inference_mode():
        x = torch.from_numpy(ps.data).to(device).permute(0, 3, 1, 2).contiguous()
        fused, depth = TORCH_METHODS[method](x, **dict(params))
        del x
        return (
            fused.permute(1, 2, 0).float().cpu().numpy(),
            depth.float().cpu().numpy(),
        )


def fuse_classical_torch(
    stack: np.ndarray | Sequence[np.ndarray],
    method: str = "max-focus",
    axis: int = 0,
    rgb: bool | None = None,
    name: str = "stack",
    device: str | torch.device | None = "cpu",
    **params: Any,
) -> FusionResult:
    """Fuse a focus stack with a classical method on a torch device.

    The torch counterpart of :func:`napari_cellfocus.core.fusion.fuse_classical`: the same
    arguments (plus ``device``: "cpu", "cuda", "cuda:N", "mps" or "auto"), the same checks
    and error messages, the same result (``fused`` with the stack's XY shape and dtype,
    ``depth`` (Y, X) float32 slice indices); ``info`` holds the parameters plus
    ``implementation="torch"`` and ``device``.
    """
    if method not in TORCH_METHODS:
        raise ValueError(
            f"unknown classical fusion method {method!r}; expected one of "
            f"{', '.join(TORCH_METHODS)}."
        )
    dev = select_device(device)
    start = time.perf_counter()
    ps = prepare_stack(stack, axis, rgb, name=name)
    info = {**params, "implementation": "torch", "device": describe_device(dev)}
    if ps.n == 1:
        return FusionResult(
            ps.output(ps.data[0]), np.zeros(ps.data.shape[1:3], np.float32), method, 0.0, info
        )
    fused, depth = fuse_prepared_torch(ps, method, dev, **params)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return FusionResult(ps.output(fused), depth, method, time.perf_counter() - start, info)
