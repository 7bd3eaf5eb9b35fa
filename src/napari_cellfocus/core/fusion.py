"""Classical multi-focus fusion of focus stacks (numpy / scipy only).

A *focus stack* is a set of ``n`` images of the same field taken at different focal
planes. Fusion turns it into one all-in-focus image plus a *depth map*: for each pixel
the (fractional) index of the slice it was taken from. Every method here is
intrinsically 2D: the stack axis is the focus axis and each slice is a 2D image (grey,
or colour with the channels last).

Methods (each returns ``(fused, depth)``):

* :func:`max_focus` - per-pixel maximum of a focus measure (Laplacian energy or local
  variance), with the depth (slice-index) map smoothed by a median filter before the
  pixels are taken, so the output holds source pixels only (no halos, no blending).
* :func:`pyramid_fusion` - Laplacian-pyramid fusion (Burt and Adelson 1983; selection
  rule of Burt and Kolczynski 1993): per level, the coefficient of the slice with the
  largest local energy; the coarsest Gaussian level is averaged.
* :func:`gff_fusion` - guided-filter fusion, GFF (S. Li, X. Kang, J. Hu, "Image fusion
  with guided filtering", IEEE TIP 22(7), 2013), with the paper's parameters.
* :func:`wavelet_fusion` - discrete (Haar) wavelet fusion with the maximum-absolute
  area-based selection rule and the consistency verification (majority filter) of
  H. Li, B. S. Manjunath, S. K. Mitra, "Multisensor image fusion using the wavelet
  transform", Graphical Models and Image Processing 57(3), 1995.

Also here: the "Near" post-processing of the thesis (**T** eq. 6.6, generalised to
``n`` sources), the iterated pairwise fusion ``f(f(x0, x1), x2) ...`` (**T** 6.2) as a
helper for any pairwise fusion function, and the dtype helpers that keep 8/16-bit
input 8/16-bit on output.

Array conventions: internally a stack is float32 ``(Z, Y, X, C)`` (``C = 1`` for grey);
the public functions accept ``(Z, Y, X)`` grey or ``(Z, Y, X, C)`` colour stacks (or
any axis as the stack axis) and return the fused image with the stack's XY shape
(``(Y, X)`` or ``(Y, X, C)``) and its dtype, and the depth map ``(Y, X)`` float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "CLASSICAL_METHODS",
    "FusionResult",
    "PreparedStack",
    "focus_measure",
    "fuse_classical",
    "fuse_iteratively",
    "gff_fusion",
    "guided_filter",
    "haar_dwt2",
    "haar_idwt2",
    "max_focus",
    "near",
    "prepare_stack",
    "pyramid_fusion",
    "restore_dtype",
    "wavelet_fusion",
]


# --------------------------------------------------------------------------- containers
@dataclass
class FusionResult:
    """Output of a fusion method.

    fused : np.ndarray, (Y, X) or (Y, X, C)
        The all-in-focus image, dtype of the input stack (8/16-bit stays 8/16-bit).
    depth : np.ndarray, (Y, X) float32
        For each pixel the (fractional) index of the slice it came from, along the
        stack axis of the input (0 = first slice).
    method : str
        Name of the method.
    seconds : float
        Wall-clock time of the fusion.
    info : dict
        Method parameters and anything else worth reporting.
    """

    fused: np.ndarray
    depth: np.ndarray
    method: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedStack:
    """A stack brought to the internal layout.

    data : float32 (Z, Y, X, C) ; dtype : the input dtype ; rgb : whether the input had a
    channel axis (last) ; axis : the stack axis of the input.
    """

    data: np.ndarray
    dtype: np.dtype
    rgb: bool
    axis: int

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    def grey(self) -> np.ndarray:
        """(Z, Y, X) float32: mean over channels."""
        return self.data.mean(axis=-1) if self.data.shape[-1] > 1 else self.data[..., 0]

    def output(self, fused: np.ndarray) -> np.ndarray:
        """(Y, X, C) float -> the user's layout and dtype."""
        out = fused if self.rgb else fused[..., 0]
        return restore_dtype(out, self.dtype)


# --------------------------------------------------------------------------- dtype / input
def restore_dtype(image: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Cast a float result back to ``dtype``.

    Integer dtypes are rounded to the nearest integer and clipped to the dtype's range
    (so an 8-bit stack gives an 8-bit image, a 16-bit stack a 16-bit image); float dtypes
    are a plain cast; bool is thresholded at 0.5.
    """
    dtype = np.dtype(dtype)
    arr = np.asarray(image)
    if dtype == np.bool_:
        return arr >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(arr), info.min, info.max).astype(dtype)
    return arr.astype(dtype, copy=False)


def prepare_stack(
    stack: np.ndarray | Sequence[np.ndarray],
    axis: int = 0,
    rgb: bool | None = None,
    name: str = "stack",
    min_slices: int = 1,
) -> PreparedStack:
    """Check a focus stack and bring it to float32 (Z, Y, X, C).

    Parameters
    ----------
    stack : array or sequence of 2D images
        ``(Z, Y, X)`` grey slices, or ``(Z, Y, X, C)`` colour slices (channels last);
        ``axis`` says which axis is the stack axis. A sequence of same-shape images
        (e.g. several napari layers) is stacked along a new first axis.
    axis : int
        The focus (stack) axis of ``stack``; negative values count from the end (for a
        colour stack, not counting the channel axis).
    rgb : bool, optional
        Whether the last axis holds colour channels. ``None``: yes when the array has 4
        dimensions and the last one has 3 or 4 entries.
    name : str
        What to call the stack in error messages (a file or layer name).
    min_slices : int
        Smallest accepted number of slices.

    Raises
    ------
    ValueError
        Wrong number of dimensions, an axis that does not exist, too few slices,
        slices of different shapes, non-numeric data, NaN or infinite values.
    """
    if isinstance(stack, (list, tuple)):
        if not stack:
            raise ValueError(f"{name}: no image given, expected at least {min_slices}.")
        shapes = {np.shape(s) for s in stack}
        if len(shapes) != 1:
            raise ValueError(
                f"{name}: all images must have the same shape to be fused, got {sorted(shapes)}."
            )
        dtypes = [np.asarray(s).dtype for s in stack]
        arr = np.stack([np.asarray(s) for s in stack])
        dtype = np.result_type(*dtypes)
        axis = 0
    else:
        arr = np.asarray(stack)
        dtype = arr.dtype
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected numeric intensities, got dtype {arr.dtype}.")
    if rgb is None:
        rgb = arr.ndim == 4 and arr.shape[-1] in (3, 4)
    expected = 4 if rgb else 3
    if arr.ndim != expected:
        kind = "(Z, Y, X, C) colour" if rgb else "(Z, Y, X) grey"
        hint = ""
        if arr.ndim == 2:
            hint = " A single 2D image is not a focus stack."
        raise ValueError(
            f"{name}: expected a {kind} focus stack ({expected} dimensions), got shape "
            f"{arr.shape}.{hint}"
        )
    n_axes = arr.ndim - (1 if rgb else 0)
    if not -n_axes <= axis < n_axes:
        raise ValueError(
            f"{name}: stack axis {axis} does not exist for shape {arr.shape} "
            f"(valid: 0..{n_axes - 1})."
        )
    axis = axis % n_axes
    arr = np.moveaxis(arr, axis, 0)
    if arr.shape[0] < min_slices:
        raise ValueError(
            f"{name}: expected at least {min_slices} slices along axis {axis}, got {arr.shape[0]}."
        )
    if min(arr.shape[1:3]) < 1:
        raise ValueError(f"{name}: empty slices (shape {arr.shape}).")
    data = arr.astype(np.float32)
    if not rgb:
        data = data[..., None]
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name}: contains NaN or infinite values.")
    return PreparedStack(np.ascontiguousarray(data), np.dtype(dtype), bool(rgb), axis)


def _check_odd_size(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise ValueError(f"{name}: expected a whole number >= {minimum}, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------- Near, T eq. 6.6
def near(
    fused: np.ndarray, sources: np.ndarray | Sequence[np.ndarray], rgb: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ "Near" post-processing, thesis **T** eq. 6.6: each pixel from the nearest source.

    For two sources, ``y*(p) = xA(p)`` if ``||y(p) - xA(p)||^2 < ||y(p) - xB(p)||^2`` else
    ``xB(p)`` (ties go to ``xB``). For ``n`` sources the source at the smallest squared
    distance is taken, ties going to the later source (the same rule for ``n = 2``). The
    distance is over the colour channels when there are any.

    Parameters
    ----------
    fused : (Y, X) or (Y, X, C)
        The image to snap to the sources (e.g. HF-Reg output).
    sources : (n, Y, X) or (n, Y, X, C), or a sequence of such images
    rgb : whether the last axis is a channel axis (default: ``fused.ndim == 3``).

    Returns
    -------
    (image, index)
        ``image`` has the sources' dtype and holds exactly source pixels; ``index`` is
        the (Y, X) int array of the chosen source.
    """
    src = np.stack(sources) if isinstance(sources, (list, tuple)) else np.asarray(sources)
    y = np.asarray(fused)
    if rgb is None:
        rgb = y.ndim == 3
    if src.shape[1:] != y.shape:
        raise ValueError(
            f"near: the sources {src.shape[1:]} and the fused image {y.shape} must have the "
            "same shape."
        )
    if y.ndim != (3 if rgb else 2):
        raise ValueError(f"near: expected a (Y, X) or (Y, X, C) image, got shape {y.shape}.")
    diff = src.astype(np.float64) - y.astype(np.float64)[None]
    dist = diff**2 if not rgb else (diff**2).sum(axis=-1)
    # argmin over the reversed order -> ties go to the later source
    index = (src.shape[0] - 1 - np.argmin(dist[::-1], axis=0)).astype(np.intp)
    picked = np.take_along_axis(src, index[None, ..., None] if rgb else index[None], axis=0)[0]
    return picked, index


# ----------------------------------------------------------------- iterated fusion, T 6.2
PairFunction = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def fuse_iteratively(
    sources: Sequence[np.ndarray] | np.ndarray, fuse_pair: PairFunction
) -> tuple[np.ndarray, np.ndarray]:
    """n sources by the n-th functional power of a pairwise fusion, **T** 6.2.

    ``f^n(x0, ..., xn) = f(f^{n-1}(x0, ..., x_{n-1}), xn)``, e.g.
    ``f^2 = f(f(x0, x1), x2)``. A depth map is carried along: when ``fuse_pair``
    returns the weight ``w`` (Y, X) in [0, 1] of its *second* argument (the new slice
    ``k``), ``depth <- (1 - w) * depth + w * k``; when it returns ``None`` the depth comes
    from :func:`near` on the pair.

    Parameters
    ----------
    sources : sequence (n >= 1) of (Y, X) or (Y, X, C) float arrays
    fuse_pair : ``(a, b) -> (fused, weight_of_b or None)``

    Returns
    -------
    (fused, depth) with depth (Y, X) float32 in [0, n - 1].
    """
    srcs = list(sources)
    if not srcs:
        raise ValueError("fuse_iteratively: no source given.")
    fused = np.asarray(srcs[0], dtype=np.float32)
    depth = np.zeros(fused.shape[:2], np.float32)
    for k, b in enumerate(srcs[1:], start=1):
        b = np.asarray(b, dtype=np.float32)
        new, w = fuse_pair(fused, b)
        if w is None:
            _, idx = near(new, np.stack([fused, b]), rgb=new.ndim == 3)
            w = idx.astype(np.float32)
        w = np.asarray(w, dtype=np.float32)
        depth = (1.0 - w) * depth + w * np.float32(k)
        fused = np.asarray(new, dtype=np.float32)
    return fused, depth


# --------------------------------------------------------------------------- focus measures
def _window_mean(a: np.ndarray, window: int) -> np.ndarray:
    """Mean over ``window x window`` windows on the last two axes (reflected borders), as
    window sums divided once: exact for integer-valued data below 2**24, so equal sums
    stay equal (exact ties go to the first slice, here and in the torch implementation)."""
    ones = np.ones(window, np.float32)
    total = ndi.correlate1d(a, ones, axis=-2, mode="reflect")
    total = ndi.correlate1d(total, ones, axis=-1, mode="reflect")
    return total / np.float32(window * window)


def focus_measure(image: np.ndarray, measure: str = "laplacian", window: int = 7) -> np.ndarray:
    """Local focus measure of grey images (intrinsically 2D per image).

    Parameters
    ----------
    image : (Y, X) or (Z, Y, X) float
        One image or a stack of slices (the measure is computed per slice).
    measure : {"laplacian", "variance"}
        ``"laplacian"``: energy of the Laplacian, the mean of ``(d2I/dy2 + d2I/dx2)^2``
        over a ``window x window`` neighbourhood (the 5-point discrete Laplacian).
        ``"variance"``: local variance, ``mean(I^2) - mean(I)^2`` over the window.
    window : odd int
        Side of the averaging window, pixels.

    Returns
    -------
    float32 array of the input shape.
    """
    arr = np.asarray(image, dtype=np.float32)
    window = _check_odd_size(window, "window")
    if measure == "laplacian":
        if arr.ndim == 3:
            lap = np.stack([ndi.laplace(s, mode="reflect") for s in arr])
        else:
            lap = ndi.laplace(arr, mode="reflect")
        return _window_mean(lap * lap, window)
    if measure == "variance":
        mean = _window_mean(arr, window)
        sq = _window_mean(arr * arr, window)
        return np.maximum(sq - mean * mean, 0.0)
    raise ValueError(f"measure: expected 'laplacian' or 'variance', got {measure!r}.")


def _take(data: np.ndarray, index: np.ndarray) -> np.ndarray:
    """data (Z, Y, X, C), index (Y, X) int -> (Y, X, C)."""
    return np.take_along_axis(data, index[None, ..., None], axis=0)[0]


# --------------------------------------------------------------------------- max focus
def _max_focus(
    data: np.ndarray, grey: np.ndarray, measure: str, window: int, smooth: int
) -> tuple[np.ndarray, np.ndarray]:
    fm = focus_measure(grey, measure, window)
    index = np.argmax(fm, axis=0)
    if smooth > 1:
        index = ndi.median_filter(index, size=smooth, mode="nearest")
    return _take(data, index), index.astype(np.float32)


def max_focus(
    stack: np.ndarray,
    measure: str = "laplacian",
    window: int = 7,
    smooth: int = 5,
    axis: int = 0,
    rgb: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel maximum focus measure with a smoothed depth map (intrinsically 2D).

    The focus measure (:func:`focus_measure` on the grey slices) is computed for every
    slice; the depth map is the index of the slice where it is largest, smoothed by a
    ``smooth x smooth`` median filter (which removes isolated wrong picks in flat,
    noisy regions and keeps depth edges sharp); each output pixel is then taken from
    the slice of its depth, so the result holds source pixels only.

    Parameters
    ----------
    stack : (Z, Y, X) or (Z, Y, X, C)
    measure : {"laplacian", "variance"}
    window : odd int, window of the focus measure (px)
    smooth : int, median filter size on the depth map (px); 0 or 1 = none
    axis, rgb : see :func:`prepare_stack`

    Returns
    -------
    (fused, depth) : fused with the stack's XY shape and dtype; depth (Y, X) float32
    (whole slice indices).
    """
    ps = prepare_stack(stack, axis, rgb)
    smooth = _check_odd_size(smooth, "smooth", minimum=0)
    fused, depth = _max_focus(ps.data, ps.grey(), measure, window, smooth)
    return ps.output(fused), depth


# --------------------------------------------------------------------------- Laplacian pyramid
def _blur_yx(a: np.ndarray, sigma: float) -> np.ndarray:
    sig = [0.0] * a.ndim
    sig[-3] = sig[-2] = sigma
    return ndi.gaussian_filter(a, sig, mode="reflect")


def _reduce(a: np.ndarray) -> np.ndarray:
    """Gaussian (sigma 1) low-pass then keep every other row/column; a (..., Y, X, C)."""
    return _blur_yx(a, 1.0)[..., ::2, ::2, :]


def _expand(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear up-sampling of (..., y, x, C) to (..., Y, X, C) (pixel-edge aligned)."""
    zoom = [1.0] * a.ndim
    zoom[-3] = shape[0] / a.shape[-3]
    zoom[-2] = shape[1] / a.shape[-2]
    out = ndi.zoom(a, zoom, order=1, mode="nearest", grid_mode=True)
    if out.shape[-3:-1] != tuple(shape):  # guard against rounding of the output size
        out = out[..., : shape[0], : shape[1], :]
        pad = [(0, 0)] * out.ndim
        pad[-3] = (0, shape[0] - out.shape[-3])
        pad[-2] = (0, shape[1] - out.shape[-2])
        out = np.pad(out, pad, mode="edge")
    return out


def _auto_levels(shape: tuple[int, int], smallest: int = 8) -> int:
    return max(1, int(np.floor(np.log2(max(1, min(shape)) / smallest))) + 1)


def _pyramid(
    data: np.ndarray, levels: int, window: int, smooth: int
) -> tuple[np.ndarray, np.ndarray]:
    gauss = [data]
    for _ in range(levels - 1):
        gauss.append(_reduce(gauss[-1]))
    fused = gauss[-1].mean(axis=0)  # coarsest level: average
    depth = None
    for level in range(levels - 2, -1, -1):
        g = gauss[level]
        lap = g - _expand(gauss[level + 1], g.shape[1:3])
        energy = ndi.uniform_filter((lap * lap).sum(axis=-1), size=(1, window, window))
        index = np.argmax(energy, axis=0)
        if level == 0:
            depth = index
        picked = _take(lap, index)
        fused = _expand(fused, g.shape[1:3]) + picked
    if depth is None:  # one level only: no detail, average image, depth in the middle
        depth = np.full(data.shape[1:3], (data.shape[0] - 1) / 2.0)
    elif smooth > 1:
        depth = ndi.median_filter(depth, size=smooth, mode="nearest")
    return fused, np.asarray(depth, np.float32)


def pyramid_fusion(
    stack: np.ndarray,
    levels: int | None = None,
    window: int = 3,
    smooth: int = 5,
    axis: int = 0,
    rgb: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian-pyramid fusion (Burt and Adelson 1983; Burt and Kolczynski 1993), 2D.

    Each slice is decomposed into a Laplacian pyramid (Gaussian low-pass of sigma 1 and
    decimation by 2 per level; ``L_k = G_k - expand(G_{k+1})``). At every detail level
    the coefficient of the slice with the largest local energy (sum of ``L^2`` over the
    channels and a ``window x window`` neighbourhood) is kept; the coarsest Gaussian
    level is the mean of the slices. The fused pyramid is collapsed. The depth map is
    the finest level's choice, median-filtered (``smooth``).

    Parameters
    ----------
    levels : int, optional
        Pyramid levels including the coarsest (default: until the image is ~8 px).
    window : odd int, selection window (px). smooth : median size for the depth map.

    Returns
    -------
    (fused, depth) as :func:`max_focus`.
    """
    ps = prepare_stack(stack, axis, rgb)
    if levels is None:
        levels = _auto_levels(ps.data.shape[1:3])
    levels = _check_odd_size(levels, "levels")
    fused, depth = _pyramid(ps.data, levels, _check_odd_size(window, "window"), int(smooth))
    return ps.output(fused), depth


# --------------------------------------------------------------------------- guided filter / GFF
def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1) x (2r+1) window on the last two axes (reflected borders)."""
    size = (1,) * (a.ndim - 2) + (2 * r + 1, 2 * r + 1)
    return ndi.uniform_filter(a, size=size, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Grey guided filter (K. He, J. Sun, X. Tang, ECCV 2010 / TPAMI 2013), 2D.

    ``q = mean_a * I + mean_b`` with ``a = cov(I, p) / (var(I) + eps)``,
    ``b = mean(p) - a * mean(I)``, means over ``(2r+1)^2`` windows.

    Parameters
    ----------
    guide, src : (..., Y, X) float arrays of the same shape (leading axes are batch).
    r : window radius (px). eps : regularisation (in the squared units of ``guide``).
    """
    guide = np.asarray(guide, np.float64)
    src = np.asarray(src, np.float64)
    mean_i = _box(guide, r)
    mean_p = _box(src, r)
    cov_ip = _box(guide * src, r) - mean_i * mean_p
    var_i = _box(guide * guide, r) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return (_box(a, r) * guide + _box(b, r)).astype(np.float32)


def _gff(
    data: np.ndarray,
    grey: np.ndarray,
    r1: int,
    eps1: float,
    r2: int,
    eps2: float,
    base_size: int,
    sigma_s: float,
    radius_s: int,
) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = float(data.min()), float(data.max())
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    norm = (data - lo) * scale  # [0, 1]: the units the paper's eps refer to
    g = (grey - lo) * scale
    size = (1, base_size, base_size, 1)
    base = ndi.uniform_filter(norm, size=size, mode="reflect")
    detail = norm - base
    lap_kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    lap = np.stack([np.abs(ndi.convolve(s, lap_kernel, mode="reflect")) for s in g])
    sal = ndi.gaussian_filter(
        lap, (0, sigma_s, sigma_s), mode="reflect", truncate=radius_s / sigma_s
    )
    index = np.argmax(sal, axis=0)
    p = (index[None] == np.arange(data.shape[0])[:, None, None]).astype(np.float32)
    wb = np.maximum(guided_filter(g, p, r1, eps1), 0.0)
    wd = np.maximum(guided_filter(g, p, r2, eps2), 0.0)
    wb_sum = wb.sum(axis=0, keepdims=True)
    wd_sum = wd.sum(axis=0, keepdims=True)
    n = data.shape[0]
    wb = np.where(wb_sum > 0, wb / np.where(wb_sum > 0, wb_sum, 1), 1.0 / n)
    wd = np.where(wd_sum > 0, wd / np.where(wd_sum > 0, wd_sum, 1), 1.0 / n)
    fused = (wb[..., None] * base).sum(axis=0) + (wd[..., None] * detail).sum(axis=0)
    fused = fused / scale + lo
    depth = np.argmax(wd, axis=0).astype(np.float32)
    return fused.astype(np.float32), depth


def gff_fusion(
    stack: np.ndarray,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
    base_size: int = 31,
    axis: int = 0,
    rgb: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Guided-filter fusion (Li, Kang, Hu 2013), 2D, with the paper's parameters.

    1. Two-scale decomposition: base ``B_n = I_n * Z`` (``base_size x base_size`` = 31 x 31
       average filter), detail ``D_n = I_n - B_n``.
    2. Saliency ``S_n = |I_n * L| * g`` with ``L`` the 3 x 3 Laplacian and ``g`` an
       11 x 11 Gaussian of sigma 5; weight maps ``P_n = 1`` where ``S_n`` is the largest.
    3. ``W^B_n = G_{r1, eps1}(P_n, I_n)``, ``W^D_n = G_{r2, eps2}(P_n, I_n)`` (guided
       filters with the source as guidance; r1 = 45, eps1 = 0.3, r2 = 7, eps2 = 1e-6),
       normalised to sum to one at every pixel.
    4. ``F = sum_n W^B_n B_n + sum_n W^D_n D_n``.

    Intensities are scaled to [0, 1] by the stack's minimum and maximum first (the units
    of the paper's ``eps``) and scaled back. Colour stacks use the grey (channel mean)
    image for saliency and guidance; weights apply to every channel. The depth map is
    the slice of largest detail weight.
    """
    ps = prepare_stack(stack, axis, rgb)
    fused, depth = _gff(
        ps.data,
        ps.grey(),
        _check_odd_size(r1, "r1"),
        float(eps1),
        _check_odd_size(r2, "r2"),
        float(eps2),
        _check_odd_size(base_size, "base_size"),
        5.0,
        5,
    )
    return ps.output(fused), depth


# --------------------------------------------------------------------------- wavelets
def haar_dwt2(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One level of the orthonormal 2D Haar transform on axes (-3, -2) of (..., Y, X, C).

    ``Y`` and ``X`` must be even. Returns ``(approx, horizontal, vertical, diagonal)``
    each of shape (..., Y/2, X/2, C): for the 2 x 2 block ``[[p, q], [r, s]]``,
    ``approx = (p+q+r+s)/2``, ``h = (p-q+r-s)/2``, ``v = (p+q-r-s)/2``, ``d = (p-q-r+s)/2``.
    """
    p = a[..., 0::2, 0::2, :]
    q = a[..., 0::2, 1::2, :]
    r = a[..., 1::2, 0::2, :]
    s = a[..., 1::2, 1::2, :]
    return (p + q + r + s) / 2, (p - q + r - s) / 2, (p + q - r - s) / 2, (p - q - r + s) / 2


def haar_idwt2(approx: np.ndarray, h: np.ndarray, v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Inverse of :func:`haar_dwt2` (exact up to floating-point rounding)."""
    shape = list(approx.shape)
    shape[-3] *= 2
    shape[-2] *= 2
    out = np.empty(shape, np.result_type(approx, np.float32))
    out[..., 0::2, 0::2, :] = (approx + h + v + d) / 2
    out[..., 0::2, 1::2, :] = (approx - h + v - d) / 2
    out[..., 1::2, 0::2, :] = (approx + h - v - d) / 2
    out[..., 1::2, 1::2, :] = (approx - h - v + d) / 2
    return out


def _majority(index: np.ndarray, n: int, size: int) -> np.ndarray:
    """Consistency verification: each choice becomes the most frequent in its window
    (edge borders); votes are counted exactly, so ties go to the first slice."""
    if size <= 1:
        return index
    ones = np.ones((size, size), np.int32)
    votes = np.stack(
        [ndi.correlate((index == k).astype(np.int32), ones, mode="nearest") for k in range(n)]
    )
    return np.argmax(votes, axis=0)


def _wavelet(
    data: np.ndarray, levels: int, window: int, consistency: int
) -> tuple[np.ndarray, np.ndarray]:
    n, ny, nx = data.shape[:3]
    m = 2**levels
    pad_y, pad_x = (-ny) % m, (-nx) % m
    a = np.pad(data, ((0, 0), (0, pad_y), (0, pad_x), (0, 0)), mode="symmetric")
    details = []
    for _ in range(levels):
        a, h, v, d = haar_dwt2(a)
        details.append((h, v, d))
    fused = a.mean(axis=0)
    depth = None
    for level in range(levels - 1, -1, -1):
        h, v, d = details[level]
        activity = (np.abs(h) + np.abs(v) + np.abs(d)).sum(axis=-1)
        # window sums (not means): exact for quantised (8/16-bit) data, so exact ties go
        # to the first slice here and in the torch implementation alike
        activity = ndi.correlate(
            activity, np.ones((1, window, window), np.float32), mode="reflect"
        )
        index = _majority(np.argmax(activity, axis=0), n, consistency)
        fused = haar_idwt2(fused, _take(h, index), _take(v, index), _take(d, index))
        if level == 0:
            depth = np.repeat(np.repeat(index, 2, axis=0), 2, axis=1)
    fused = fused[:ny, :nx]
    assert depth is not None
    return fused.astype(np.float32), depth[:ny, :nx].astype(np.float32)


def _auto_wavelet_levels(shape: tuple[int, int]) -> int:
    """Decomposition levels leaving a coarsest approximation band of 4 to 8 pixels."""
    return max(1, int(np.floor(np.log2(max(1, min(shape)) / 4))))


def wavelet_fusion(
    stack: np.ndarray,
    levels: int | None = None,
    window: int = 3,
    consistency: int = 3,
    axis: int = 0,
    rgb: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Wavelet max-abs fusion with consistency verification (Li, Manjunath, Mitra 1995), 2D.

    Each slice gets a ``levels``-level orthonormal Haar transform (:func:`haar_dwt2`;
    the image is padded symmetrically to a multiple of ``2**levels`` and cropped back;
    default: as many levels as leave a 4-8 px approximation band, because the averaged
    approximation band keeps some blur when it covers frequencies the defocus reaches).
    Per level, the activity of a slice is the sum of the absolute values of its three
    detail bands (and channels) over a ``window x window`` area (area-based maximum
    selection); the slice of largest activity wins, and the decision map is then made
    consistent by a ``consistency x consistency`` majority filter (a coefficient is
    taken from the slice most of its neighbours come from). The approximation band is
    averaged. The depth map is the finest level's decision (at full resolution).
    """
    ps = prepare_stack(stack, axis, rgb)
    if levels is None:
        levels = _auto_wavelet_levels(ps.data.shape[1:3])
    fused, depth = _wavelet(
        ps.data,
        _check_odd_size(levels, "levels"),
        _check_odd_size(window, "window"),
        _check_odd_size(consistency, "consistency", minimum=0),
    )
    return ps.output(fused), depth


# --------------------------------------------------------------------------- dispatcher
def _run_max_focus(ps: PreparedStack, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    measure = kw.pop("measure", "laplacian")
    window = _check_odd_size(kw.pop("window", 7), "window")
    smooth = _check_odd_size(kw.pop("smooth", 5), "smooth", minimum=0)
    _no_more(kw, "max-focus")
    return _max_focus(ps.data, ps.grey(), measure, window, smooth)


def _run_pyramid(ps: PreparedStack, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    levels = kw.pop("levels", None) or _auto_levels(ps.data.shape[1:3])
    window = _check_odd_size(kw.pop("window", 3), "window")
    smooth = _check_odd_size(kw.pop("smooth", 5), "smooth", minimum=0)
    _no_more(kw, "pyramid")
    return _pyramid(ps.data, _check_odd_size(levels, "levels"), window, smooth)


def _run_gff(ps: PreparedStack, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    args = {"r1": 45, "eps1": 0.3, "r2": 7, "eps2": 1e-6, "base_size": 31}
    for key in list(args):
        args[key] = kw.pop(key, args[key])
    _no_more(kw, "gff")
    return _gff(
        ps.data,
        ps.grey(),
        _check_odd_size(args["r1"], "r1"),
        float(args["eps1"]),
        _check_odd_size(args["r2"], "r2"),
        float(args["eps2"]),
        _check_odd_size(args["base_size"], "base_size"),
        5.0,
        5,
    )


def _run_wavelet(ps: PreparedStack, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    levels = kw.pop("levels", None) or _auto_wavelet_levels(ps.data.shape[1:3])
    levels = _check_odd_size(levels, "levels")
    window = _check_odd_size(kw.pop("window", 3), "window")
    consistency = _check_odd_size(kw.pop("consistency", 3), "consistency", minimum=0)
    _no_more(kw, "wavelet")
    return _wavelet(ps.data, levels, window, consistency)


def _no_more(kw: dict[str, Any], method: str) -> None:
    if kw:
        raise ValueError(f"{method}: unknown parameter(s) {sorted(kw)}.")


#: Classical methods by name: ``fn(PreparedStack, **params) -> (fused float (Y, X, C), depth)``.
CLASSICAL_METHODS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "max-focus": _run_max_focus,
    "pyramid": _run_pyramid,
    "gff": _run_gff,
    "wavelet": _run_wavelet,
}


def fuse_classical(
    stack: np.ndarray | Sequence[np.ndarray],
    method: str = "max-focus",
    axis: int = 0,
    rgb: bool | None = None,
    name: str = "stack",
    **params: Any,
) -> FusionResult:
    """Fuse a focus stack with one of :data:`CLASSICAL_METHODS`.

    Parameters
    ----------
    stack : (Z, Y, X) grey or (Z, Y, X, C) colour, or a sequence of 2D images.
    method : "max-focus", "pyramid", "gff" or "wavelet".
    axis : the stack axis. rgb : channels last (default: guessed, see
        :func:`prepare_stack`). name : for error messages.
    **params : parameters of the method (see :func:`max_focus`, :func:`pyramid_fusion`,
        :func:`gff_fusion`, :func:`wavelet_fusion`).

    Returns
    -------
    FusionResult
        ``fused`` with the stack's XY shape and dtype; ``depth`` (Y, X) float32.
    """
    if method not in CLASSICAL_METHODS:
        raise ValueError(
            f"unknown classical fusion method {method!r}; expected one of "
            f"{', '.join(CLASSICAL_METHODS)}."
        )
    start = time.perf_counter()
    ps = prepare_stack(stack, axis, rgb, name=name)
    if ps.n == 1:
        return FusionResult(
            ps.output(ps.data[0]), np.zeros(ps.data.shape[1:3], np.float32), method, 0.0
        )
    fused, depth = CLASSICAL_METHODS[method](ps, **dict(params))
    return FusionResult(
        ps.output(fused),
        np.asarray(depth, np.float32),
        method,
        time.perf_counter() - start,
        dict(params),
    )
