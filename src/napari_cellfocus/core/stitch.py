"""Join instance labels of successive planes or frames by overlap.

* :func:`stitch_planes`: 2D instance labels of each plane of a (Z, Y, X) stack -> 3D
  instances, as cellpose's ``stitch_threshold`` does for 2D models run on volumes;
* :func:`resize_axis`, :func:`combine_views`: the z rescaling and the averaging of the
  orthogonal views (YX, ZX, ZY) of a volume predicted by a 2D model
  (``z_mode="ortho"`` in :mod:`napari_cellfocus.engine.segment`);
* :func:`link_frames`: instance labels of each frame of a (T, ...) movie -> the same id
  for the same cell in successive frames (stardist-napari's "match previous frame").

Both run the same chain: slice ``k`` is matched to slice ``k - 1`` **after** ``k - 1``
got its final ids, so an object carries its id through any number of slices. A pair
(object ``a`` of slice ``k``, object ``b`` of slice ``k - 1``) may match when their IoU
(intersection over union, in pixels) is ``>= threshold``; the matching is one-to-one and
**greedy by IoU**: pairs are taken from the highest IoU down, each object at most once
(ties: the lower ids first). A matched object takes the id of its partner; an unmatched
one gets a new id. Ids come out consecutive (1..n, in order of first appearance).

Cellpose's own stitching lets each new mask take the previous mask of highest IoU and is
not strictly one-to-one; with ``threshold >= 0.5`` both agree (two objects of one slice
cannot both overlap one object by more than half its union).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_STITCH_THRESHOLD",
    "DEFAULT_Z_SPLIT",
    "DEFAULT_Z_TRIM",
    "check_z_scale",
    "combine_views",
    "link_frames",
    "match_by_overlap",
    "resize_axis",
    "split_z",
    "stitch_planes",
    "trim_z",
]

#: Default IoU an object must share with its partner of the previous plane / frame.
DEFAULT_STITCH_THRESHOLD = 0.25
_TOL = 1e-9
#: Planes of a stitched object dimmer than this share of its brightest plane are cut.
DEFAULT_Z_TRIM = 0.6
#: A stitched object is split at a plane whose area is under this share of the largest
#: areas on both sides of it (two nuclei stacked in z).
DEFAULT_Z_SPLIT = 0.85


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"stitch threshold: expected an IoU in (0, 1], got {threshold!r}.")
    return t


def match_by_overlap(
    prev: np.ndarray, cur: np.ndarray, threshold: float = DEFAULT_STITCH_THRESHOLD
) -> dict[int, int]:
    """``{id in cur: id in prev}`` for the pairs of the greedy one-to-one matching of
    ``cur``'s objects to ``prev``'s by IoU ``>= threshold`` (see the module docstring).

    ``prev`` and ``cur``: int label arrays of the same shape, 0 = background.
    """
    threshold = _check_threshold(threshold)
    prev = np.asarray(prev)
    cur = np.asarray(cur)
    if prev.shape != cur.shape:
        raise ValueError(f"slices of different shapes: {prev.shape} and {cur.shape}.")
    both = (prev > 0) & (cur > 0)
    if not both.any():
        return {}
    p_ids, p_area = np.unique(prev[prev > 0], return_counts=True)
    c_ids, c_area = np.unique(cur[cur > 0], return_counts=True)
    pi = np.searchsorted(p_ids, prev[both])
    ci = np.searchsorted(c_ids, cur[both])
    pairs, inter = np.unique(ci.astype(np.int64) * p_ids.size + pi, return_counts=True)
    rows, cols = np.divmod(pairs, p_ids.size)
    iou = inter / (c_area[rows] + p_area[cols] - inter)
    keep = iou >= threshold - _TOL
    rows, cols, iou = rows[keep], cols[keep], iou[keep]
    # Greedy: highest IoU first; ties by the lower current id, then the lower previous id
    # (np.lexsort sorts by the last key first).
    order = np.lexsort((cols, rows, -iou))
    used_r: set[int] = set()
    used_c: set[int] = set()
    out: dict[int, int] = {}
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        out[int(c_ids[r])] = int(p_ids[c])
    return out


def _chain(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Relabel the slices ``labels[k]`` along axis 0 so matched objects share ids."""
    threshold = _check_threshold(threshold)
    arr = np.asarray(labels)
    if arr.ndim < 2:
        raise ValueError(f"expected a stack of label slices (axis 0), got shape {arr.shape}.")
    out = np.zeros(arr.shape, np.int64)
    next_id = 1
    for k in range(arr.shape[0]):
        cur = arr[k]
        ids = np.unique(cur[cur > 0])
        if ids.size == 0:
            continue
        mapping = match_by_overlap(out[k - 1], cur, threshold) if k else {}
        lut_ids = np.empty(ids.size, np.int64)
        for i, lab in enumerate(ids.tolist()):
            if lab in mapping:
                lut_ids[i] = mapping[lab]
            else:
                lut_ids[i] = next_id
                next_id += 1
        idx = np.searchsorted(ids, cur[cur > 0])
        plane = np.zeros(cur.shape, np.int64)
        plane[cur > 0] = lut_ids[idx]
        out[k] = plane
    return _consecutive(out)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in order of first appearance (C order), int32."""
    flat = labels.ravel()
    nz = flat[flat > 0]
    if nz.size == 0:
        return np.zeros(labels.shape, np.int32)
    ids, first = np.unique(nz, return_index=True)
    rank = np.empty(ids.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, ids.size + 1)
    out = np.zeros(labels.shape, np.int32)
    out[labels > 0] = rank[np.searchsorted(ids, labels[labels > 0])]
    return out


def stitch_planes(labels: np.ndarray, threshold: float = DEFAULT_STITCH_THRESHOLD) -> np.ndarray:
    """3D instances (Z, Y, X) int32 from per-plane 2D instance labels (Z, Y, X).

    Plane ``z``'s objects join the object of plane ``z - 1`` they overlap best (IoU
    ``>= threshold``, one-to-one, greedy by IoU); the others start new 3D objects. The ids
    of the input planes may repeat from plane to plane or not: only the per-plane objects
    matter.
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"stitch_planes: expected (Z, Y, X) labels, got shape {arr.shape}.")
    return _chain(arr, threshold)


def link_frames(labels: np.ndarray, threshold: float = DEFAULT_STITCH_THRESHOLD) -> np.ndarray:
    """(T, ...) labels relabelled so a cell keeps its id from frame to frame.

    Each object of frame ``t`` takes the id of the object of frame ``t - 1`` it overlaps
    best (IoU ``>= threshold``, one-to-one, greedy by IoU); objects without a partner (new
    cells, or cells that moved by more than the overlap allows) get new ids, and an id
    whose cell is gone is not reused. Frames may be 2D (T, Y, X) or 3D (T, Z, Y, X).
    """
    arr = np.asarray(labels)
    if arr.ndim < 3:
        raise ValueError(f"link_frames: expected (T, Y, X) or (T, Z, Y, X), got {arr.shape}.")
    return _chain(arr, threshold)


def trim_z(
    labels: np.ndarray,
    image: np.ndarray,
    fraction: float = DEFAULT_Z_TRIM,
    background_percentile: float = 5.0,
) -> np.ndarray:
    """Cut each 3D object of a stitched (Z, Y, X) volume to the planes where it is bright.

    Along z a microscope blurs more than in the plane, so a 2D model also finds a
    nucleus in the planes above and below it, in its out-of-focus light, and the
    stitched object comes out too long in z (on simulated volumes 10 planes for 7; the
    3D IoU with the true nucleus then falls under 0.5). The mean intensity of the object
    in each plane, above the image's background (its ``background_percentile``), peaks
    where the nucleus is in focus and falls off in the out-of-focus planes; planes where
    it is below ``fraction`` of the object's brightest plane are removed from the
    object (a full-width-at-``fraction``-maximum cut of its axial profile). The
    brightest plane always stays, so no object disappears; ids are kept.

    ``labels`` : int (Z, Y, X) 3D instances; ``image`` : the (Z, Y, X) grey image they
    were segmented from; ``fraction`` in [0, 1] (0 keeps everything).
    """
    lab = np.asarray(labels)
    img = np.asarray(image, dtype=np.float64)
    if lab.ndim != 3 or img.shape != lab.shape:
        raise ValueError(
            f"trim_z: expected (Z, Y, X) labels and an image of the same shape, got "
            f"{lab.shape} and {img.shape}."
        )
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"trim_z: fraction must lie in [0, 1], got {fraction}.")
    fg = lab > 0
    if fraction == 0.0 or not fg.any():
        return lab.copy()
    n_planes = lab.shape[0]
    z = np.broadcast_to(np.arange(n_planes)[:, None, None], lab.shape)[fg]
    ids = lab[fg].astype(np.int64)
    key = ids * n_planes + z
    size = (int(ids.max()) + 1) * n_planes
    signal = img[fg] - np.percentile(img, background_percentile)
    sums = np.bincount(key, weights=signal, minlength=size).reshape(-1, n_planes)
    counts = np.bincount(key, minlength=size).reshape(-1, n_planes)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    peak = means.max(axis=1, keepdims=True)
    keep = (means >= fraction * peak) | (means == peak)
    out = lab.copy()
    out[fg] = np.where(keep[ids, z], ids, 0)
    return out


def split_z(labels: np.ndarray, ratio: float = DEFAULT_Z_SPLIT) -> np.ndarray:
    """Split stitched 3D objects where their cross-section narrows between two maxima.

    A nucleus' area along z rises to one maximum and falls; two nuclei stacked in z
    whose cross-sections overlap are stitched into one object whose area profile has
    two maxima with a waist between them. Each object is cut at every plane ``z`` that
    is a local minimum of its area and smaller than ``ratio`` times the largest area on
    each side (``max(area[:z])`` and ``max(area[z + 1:])``); the planes after a cut get a
    new id (the waist plane stays with the part before it). Cuts in adjacent planes
    count once. Returns consecutive ids in order of first appearance.

    ``labels`` : int (Z, Y, X) 3D instances (from :func:`stitch_planes`); ``ratio`` in
    (0, 1] (0 splits nothing).
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"split_z: expected (Z, Y, X) labels, got shape {lab.shape}.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"split_z: ratio must lie in [0, 1], got {ratio}.")
    fg = lab > 0
    if ratio == 0.0 or not fg.any():
        return _consecutive(lab.astype(np.int32))
    n_planes = lab.shape[0]
    z = np.broadcast_to(np.arange(n_planes)[:, None, None], lab.shape)[fg]
    ids = lab[fg].astype(np.int64)
    area = np.bincount(ids * n_planes + z, minlength=(int(ids.max()) + 1) * n_planes)
    area = area.reshape(-1, n_planes).astype(np.float64)
    # part[i, z]: which piece of object i plane z belongs to (0 = the first)
    part = np.zeros(area.shape, np.int64)
    for obj in np.flatnonzero(area.any(axis=1)):
        a = area[obj]
        planes = np.flatnonzero(a)
        lo, hi = int(planes[0]), int(planes[-1])
        last = None
        for k in range(lo + 1, hi):
            if last is not None and k - last <= 1:
                continue
            if a[k] <= a[k - 1] and a[k] <= a[k + 1]:
                if a[k] < ratio * min(a[lo:k].max(), a[k + 1 : hi + 1].max()):
                    part[obj, k + 1 :] += 1
                    last = k
    if not part.any():
        return _consecutive(lab.astype(np.int32))
    pieces = part[ids, z]
    out = np.zeros(lab.shape, np.int64)
    out[fg] = ids * (int(part.max()) + 1) + pieces  # a unique key per (object, piece)
    return _consecutive(out)


# --------------------------------------------------------------- orthogonal views


def check_z_scale(z_scale: float | None) -> float:
    """``z_scale`` (z step / pixel size) as a float > 0; ``None`` is 1 (isotropic)."""
    if z_scale is None:
        return 1.0
    try:
        value = float(z_scale)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or not 0.05 <= value <= 50.0:
        raise ValueError(
            f"z scale (z step / pixel size): expected a number in [0.05, 50], got {z_scale!r}."
        )
    return value


def resize_axis(array: np.ndarray, n_out: int, axis: int = 0) -> np.ndarray:
    """Linear resampling of one axis of ``array`` to ``n_out`` samples (float32).

    Sample centres map onto sample centres (output ``i`` sits at input
    ``(i + 0.5) * n_in / n_out - 0.5``, clipped to the ends), as in
    :func:`napari_cellfocus.core.size.resize`; when shrinking, the axis is first smoothed
    with a Gaussian of sigma ``(n_in / n_out - 1) / 2`` so nothing aliases. Only two input
    planes are read per output plane: a (Z, Y, X) volume is rescaled along z without a
    3D coordinate grid.
    """
    arr = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    n_in, n_out = arr.shape[0], max(1, int(n_out))
    if n_in == n_out:
        return np.moveaxis(arr.copy(), 0, axis)
    if n_out < n_in:
        from scipy.ndimage import gaussian_filter1d

        sigma = (n_in / n_out - 1.0) / 2.0
        if sigma > 0.3:
            arr = gaussian_filter1d(arr, sigma, axis=0, mode="reflect")
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    out = np.empty((n_out, *arr.shape[1:]), np.float32)
    for i in range(n_out):
        out[i] = arr[lo[i]] if w[i] == 0 else (1 - w[i]) * arr[lo[i]] + w[i] * arr[hi[i]]
    return np.moveaxis(out, 0, axis)


def combine_views(views: list[np.ndarray], boundary: str = "mean") -> np.ndarray:
    """One class-probability volume (C, Z, Y, X) from those of the orthogonal views.

    ``boundary="mean"``: the views' probabilities averaged, class by class (cellpose's
    ``do_3D`` averages its flows the same way); ``"max"``: the classes after the cell
    class (touching / gap: the boundaries) take the views' maximum, so a boundary seen in
    one view only still separates two nuclei, then each voxel is renormalised to sum 1.
    """
    if not views:
        raise ValueError("no views to combine.")
    shape = np.shape(views[0])
    if any(np.shape(v) != shape for v in views):
        raise ValueError(f"views of different shapes: {[np.shape(v) for v in views]}.")
    mean = np.mean(np.stack(views), axis=0, dtype=np.float32)
    if boundary == "mean" or shape[0] < 3:
        return mean
    if boundary != "max":
        raise ValueError(f"boundary: expected 'mean' or 'max', got {boundary!r}.")
    out = mean.copy()
    out[2:] = np.max(np.stack([v[2:] for v in views]), axis=0)
    out /= np.maximum(out.sum(axis=0, keepdims=True), 1e-6)
    return out.astype(np.float32, copy=False)
