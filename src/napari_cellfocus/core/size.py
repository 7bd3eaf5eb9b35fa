"""Object size: typical nucleus diameter of a label image, and rescaling to a model's scale.

A segmentation network sees nuclei at the size it was trained on. Images come with nuclei
of 7 to 60 pixels across, so the engine rescales each image by
``zoom = model diameter / image diameter`` before the network, and maps the probabilities
back to the image's own grid afterwards (the idea of cellpose's size model; the code and
choices here are this package's).

Sizes are *equivalent diameters*: the diameter of the disc with the object's area,
``d = 2 * sqrt(area / pi)`` in pixels (2D). The typical diameter of an image is the median
over its objects, so a few fragments or merged clumps do not move it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: Largest resampling factor (either way) applied to an image: nuclei of 1/4 to 4x the
#: model's diameter are brought to it exactly; beyond, part of the way.
MAX_ZOOM = 4.0
#: Zooms closer to 1 than this are not worth a resampling (the network is trained on
#: a +-2x scale jitter around its diameter).
NEGLIGIBLE_ZOOM = 0.05


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter (px) of every object of an instance image (Y, X).

    Returns a float64 array, one value per non-empty id, in increasing id order.
    """
    lab = np.asarray(labels)
    if lab.size == 0 or int(lab.max(initial=0)) <= 0:
        return np.zeros(0)
    areas = np.bincount(lab.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0].astype(np.float64)
    return 2.0 * np.sqrt(areas / math.pi)


def median_diameter(labels: np.ndarray, min_diameter: float = 3.0) -> float | None:
    """Median equivalent diameter (px) of the objects of ``labels`` (Y, X).

    Objects smaller than ``min_diameter`` px (single-pixel specks) are ignored. Returns
    ``None`` when no object is left.
    """
    diam = equivalent_diameters(labels)
    diam = diam[diam >= min_diameter]
    return float(np.median(diam)) if diam.size else None


def typical_diameter(labels: np.ndarray, fragment_fraction: float = 0.4) -> float | None:
    """Typical nucleus diameter (px) of a *predicted* label image, robust to fragments.

    A segmentation of an image at the wrong scale holds, besides the nuclei, many small
    pieces (noise blobs when upscaled, split nuclei): they can outnumber the nuclei and
    drag a plain median down. So the area-weighted median diameter is found first (which
    small pieces hardly move), objects under ``fragment_fraction`` of it are set aside,
    and the median of the rest is returned. ``None`` without objects.
    """
    diam = equivalent_diameters(labels)
    diam = np.sort(diam[diam >= 3.0])
    if not diam.size:
        return None
    weights = np.cumsum(diam**2)
    weighted_median = diam[np.searchsorted(weights, 0.5 * weights[-1])]
    kept = diam[diam >= fragment_fraction * weighted_median]
    return float(np.median(kept))


def disc_area(diameter: float) -> float:
    """Area (px^2) of a disc of the given diameter (px)."""
    return math.pi * (0.5 * float(diameter)) ** 2


def scaled_shape(shape: tuple[int, ...], zoom: float) -> tuple[int, ...]:
    """Shape of an array of ``shape`` resampled by ``zoom`` (at least 1 px per axis)."""
    return tuple(max(1, round(n * zoom)) for n in shape)


def resize(array: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """Resample the last ``len(shape)`` axes of ``array`` to ``shape``.

    order 0 (nearest: labels and class maps, dtype kept) or 1 (linear: intensities and
    probabilities, float32). When shrinking, intensities are first smoothed with a Gaussian
    of sigma ``(1 / zoom - 1) / 2`` per axis, so fine texture does not alias into the result.
    Pixel centres are mapped onto pixel centres: a zoom and its inverse give back the grid.
    Leading axes (channels, planes) are resampled one by one.
    """
    arr = np.asarray(array)
    if tuple(arr.shape[-len(shape) :]) == tuple(shape):
        return arr.copy() if order == 0 else arr.astype(np.float32, copy=True)
    return resize_block(arr, shape, tuple(slice(0, n) for n in shape), order)


def resize_block(
    array: np.ndarray, shape: tuple[int, ...], block: tuple[slice, ...], order: int = 1
) -> np.ndarray:
    """The part ``block`` (slices of the output grid, step 1) of ``resize(array, shape)``.

    Only the source pixels under the block (and a smoothing margin) are read, so a large
    result can be filled block by block as its source is computed (streamed tiles).
    Equal to the full resize inside the image; near a block edge that is not an image
    edge the pre-smoothing sees the source beyond the block, as the full resize does.
    """
    arr = np.asarray(array)
    nd = len(shape)
    src = arr.shape[-nd:]
    lead = arr.shape[:-nd]
    zooms = [n_out / n_in for n_out, n_in in zip(shape, src, strict=True)]
    sigma = [max(0.0, (1.0 / z - 1.0) / 2.0) for z in zooms] if order else [0.0] * nd
    # output pixel i (centre i + 0.5) sits at input coordinate (i + 0.5) / z - 0.5
    axes = []
    lo = []
    for sl, z, n, sg in zip(block, zooms, src, sigma, strict=True):
        c = (np.arange(sl.start, sl.stop, dtype=np.float64) + 0.5) / z - 0.5
        c = np.clip(c, 0, n - 1)
        pad = math.ceil(4 * sg) + 2
        start = max(0, math.floor(c.min()) - pad) if c.size else 0
        stop = min(n, math.ceil(c.max()) + pad + 1) if c.size else 0
        axes.append(c - start)
        lo.append(slice(start, stop))
    grid = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)
    out_shape = tuple(sl.stop - sl.start for sl in block)
    out = np.empty((*lead, *out_shape), arr.dtype if order == 0 else np.float32)
    smooth = any(s > 0.3 for s in sigma)
    for idx in np.ndindex(*lead):
        region = arr[(*idx, *lo)]
        if order == 0:
            out[idx] = ndi.map_coordinates(region, np.rint(grid), order=0, mode="nearest")
            continue
        region = region.astype(np.float32, copy=False)
        if smooth:
            region = ndi.gaussian_filter(region, sigma, mode="reflect")
        out[idx] = ndi.map_coordinates(region, grid, order=1, mode="nearest")
    return out


def rescale(array: np.ndarray, zoom: float, order: int = 1, ndim: int = 2) -> np.ndarray:
    """Resample the last ``ndim`` axes of ``array`` by ``zoom`` (see :func:`resize`)."""
    return resize(array, scaled_shape(np.shape(array)[-ndim:], zoom), order=order)


def zoom_for(diameter: float | None, model_diameter: float | None) -> float:
    """Zoom that brings nuclei of ``diameter`` px to the model's ``model_diameter`` px;
    1.0 when either is unknown or the change is negligible."""
    if not diameter or not model_diameter or diameter <= 0 or model_diameter <= 0:
        return 1.0
    zoom = float(model_diameter) / float(diameter)
    return 1.0 if abs(zoom - 1.0) < NEGLIGIBLE_ZOOM else zoom


def crop_window(
    image: np.ndarray,
    labels: np.ndarray,
    starts: list[float],
    zoom: float,
    side: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` training crop of ``image`` and ``labels`` (Y, X) at ``zoom``.

    Output pixel ``i`` along an axis samples the source at ``start + (i + 0.5) / zoom - 0.5``
    (``starts`` in source pixels, may be negative or run past the image). The image is
    sampled linearly (Gaussian-smoothed first when shrinking, see :func:`resize`; mirrored
    past its edges), the labels by nearest neighbour (0 past the edges).

    Returns ``(image crop float32, label crop, inside)`` where ``inside`` is True for
    output pixels that fall on the source image.
    """
    img = np.asarray(image, np.float32)
    coords = []
    for start in starts:
        coords.append(start + (np.arange(side, dtype=np.float64) + 0.5) / zoom - 0.5)
    inside_axes = [(c >= -0.5) & (c <= n - 0.5) for c, n in zip(coords, img.shape, strict=True)]
    inside = inside_axes[0][:, None] & inside_axes[1][None, :]
    # only the source region under the crop is filtered and sampled
    sigma = max(0.0, (1.0 / zoom - 1.0) / 2.0)
    pad = math.ceil(4 * sigma) + 2
    lo = [max(0, math.floor(c.min()) - pad) for c in coords]
    hi = [min(n, math.ceil(c.max()) + pad + 1) for c, n in zip(coords, img.shape, strict=True)]
    if any(h <= q for q, h in zip(lo, hi, strict=True)):  # crop entirely off the image
        return (
            np.zeros((side, side), np.float32),
            np.zeros((side, side), np.asarray(labels).dtype),
            inside,
        )
    region = img[lo[0] : hi[0], lo[1] : hi[1]]
    if sigma > 0.3:
        region = ndi.gaussian_filter(region, sigma, mode="reflect")
    grid = np.stack(np.meshgrid(coords[0] - lo[0], coords[1] - lo[1], indexing="ij")).astype(
        np.float32
    )
    out_img = ndi.map_coordinates(region, grid, order=1, mode="mirror")
    lab_region = np.asarray(labels)[lo[0] : hi[0], lo[1] : hi[1]]
    out_lab = ndi.map_coordinates(lab_region, np.rint(grid), order=0, mode="constant", cval=0)
    out_lab[~inside] = 0
    return out_img.astype(np.float32), out_lab, inside
