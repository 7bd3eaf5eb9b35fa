"""From class-probability maps to instance label images (MAP, TH, WT, binary WT, COMB).

Every method takes the softmax output of a segmentation network, ``probs`` of
shape (C, Y, X) or (C, Z, Y, X) (float, values in [0, 1], summing to 1 over C),
with the package class convention 0 = background, 1 = cell, 2 = touching and,
in the 4-class scheme, 3 = gap.  A 2-class map (C = 2: background, cell; the UNET2
scheme, whose touching pixels are background) has no touching class: MAP and TH label
the connected components of the cell class and WT becomes the distance watershed of
the foreground (see each function).  Every method returns ``(labels, count)``: an
``int32`` instance image of shape (Y, X) or (Z, Y, X) whose objects are numbered
consecutively 1..count (0 = background), and the number of objects.

Methods and where they are defined
----------------------------------
* :func:`map_labels` -- maximum a posteriori, the gap class folded into the next
  most likely class, i.e. argmax over classes {0, 1, 2} (thesis T 5.2.3), then
  the labelling of T 4.2.4 (cells labelled, touching pixels to the closest cell).
* :func:`threshold_labels` -- thresholded maps TH(gamma1, gamma2), T eq. 4.4 and
  Algorithm 2: touching pixels go to the closest cell, equidistant ones to the
  background; hole filling and small-object removal.
* :func:`watershed_labels` -- WT(tau0, tau1), T 4.2.4 / Fig. 24: marker-controlled
  watershed on the relief ``z2 - z1``.
* :func:`binary_watershed_labels` -- counting paper (C) 4.3: binary threshold,
  cleaning, distance-transform watershed sized by the mean cell size.
* :func:`average_probabilities` -- COMB ensemble (T 4.3).
* :func:`search_thresholds` -- thresholds maximising PQ (or F1) against reference
  instances (C 5.1, Fig. 8; T 4.3 "exploration over the parameters space"); ties
  go to the middle of the plateau of best values (:func:`best_grid_index`).

Defaults
--------
The thesis reports the best thresholds per trained model (T Table 5), not one
universal value.  Defaults here: ``gamma1 = 0.5, gamma2 = 0.1`` (the TH values
of three of the five models in Table 5: LSMAX, BWM, UNET) and ``tau0 = 0.4,
tau1 = 0.9`` (the WT values of W3, the best WT result in T Tables 4 and 6).
The thesis gives no small-object size; ``min_size = 16`` pixels (or voxels) is
this package's choice, far below a cell at the thesis' scale.  Pixels (voxels)
are assumed isotropic for every distance computed here.

Connectivity
------------
Cell regions, markers and instances use face connectivity (4 in 2D, 6 in 3D),
so two cells that meet only at a corner of a touching strip stay apart; the
background, when looking for holes, uses full connectivity (8 / 26), the
topologically consistent partner.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from napari_cellfocus.core.methods import (
    DEFAULT_GAMMA1,
    DEFAULT_GAMMA2,
    DEFAULT_MIN_SIZE,
    DEFAULT_TAU0,
    DEFAULT_TAU1,
    POST_METHODS,
    get_post_method,
)
from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.validation import (
    check_image,
    check_labels,
    check_probabilities,
    check_same_shape,
)

__all__ = [
    "DEFAULT_GAMMA1",
    "DEFAULT_GAMMA2",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_TAU0",
    "DEFAULT_TAU1",
    "METHODS",
    "ThresholdSearch",
    "average_probabilities",
    "best_grid_index",
    "binary_watershed_labels",
    "default_grid",
    "fill_holes",
    "map_labels",
    "postprocess",
    "relabel_consecutive",
    "remove_small_objects",
    "search_thresholds",
    "threshold_labels",
    "watershed_labels",
]

#: Largest search radius (pixels) of the exact shell search for the nearest cell;
#: touching pixels farther from every cell fall back to a Euclidean distance transform.
_SHELL_RADIUS = {2: 8, 3: 4}

_INT32_MAX = np.iinfo(np.int32).max


# ------------------------------------------------------------------------ helpers


def _structure(ndim: int, full: bool) -> np.ndarray:
    """Face (``full=False``) or full (``full=True``) connectivity structuring element."""
    return ndimage.generate_binary_structure(ndim, ndim if full else 1)


def _c_strides(shape: tuple[int, ...]) -> np.ndarray:
    """Element strides of a C-ordered array of ``shape`` (for flat-index offsets)."""
    return np.array([int(np.prod(shape[i + 1 :])) for i in range(len(shape))], dtype=np.int64)


def _check_unit(value: float, name: str) -> float:
    """Return ``value`` as float after checking it lies in [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}.") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name}: expected a value in [0, 1], got {v:g}.")
    return v


def _check_min_size(min_size: int) -> int:
    """Return ``min_size`` as a non-negative int."""
    if isinstance(min_size, bool) or not float(min_size).is_integer() or min_size < 0:
        raise ValueError(f"min_size: expected a whole number >= 0, got {min_size!r}.")
    return int(min_size)


def _probs(probs: np.ndarray, name: str = "probabilities") -> np.ndarray:
    """Validated float32 (C, [Z,] Y, X) map with 2, 3 or 4 classes."""
    return check_probabilities(probs, name=name, n_classes=(2, 3, 4))


def _touching_probability(arr: np.ndarray) -> np.ndarray:
    """P(touching) = z2; zero for a 2-class map (background / cell), which has none."""
    return arr[2] if arr.shape[0] > 2 else np.zeros_like(arr[0])


def _background_probability(arr: np.ndarray) -> np.ndarray:
    """P(background) = z0, or z0 + z3 in the 4-class scheme (gap is background, T 5.2.1)."""
    return arr[0] + arr[3] if arr.shape[0] == 4 else arr[0]


# -------------------------------------------------------------- small label helpers


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the objects of ``labels`` as 1..count, keeping their order.

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
        Instance image, 0 = background; ids may have gaps.

    Returns
    -------
    labels : int32 array, same shape
        Object with the k-th smallest id becomes k.
    count : int
        Number of objects.
    """
    lab = check_labels(labels)
    if lab.size == 0:
        return lab.astype(np.int32), 0
    top = int(lab.max())
    if top == 0:
        return np.zeros(lab.shape, np.int32), 0
    if top <= 4 * lab.size:
        present = np.bincount(lab.ravel(), minlength=top + 1) > 0
        present[0] = False
        lut = np.zeros(top + 1, np.int32)
        count = int(present.sum())
        lut[present] = np.arange(1, count + 1, dtype=np.int32)
        return lut[lab], count
    ids, inverse = np.unique(lab, return_inverse=True)
    has_bg = ids[0] == 0
    out = (inverse.reshape(lab.shape) + (0 if has_bg else 1)).astype(np.int32)
    return out, int(ids.size - (1 if has_bg else 0))


def _drop_small_and_relabel(lab: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """:func:`remove_small_objects` then :func:`relabel_consecutive` in one pass.

    ``lab`` is a non-negative int32 image whose ids do not exceed its size (true
    for every image built in this module).
    """
    if lab.size == 0:
        return lab.astype(np.int32), 0
    sizes = np.bincount(lab.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    count = int(keep.sum())
    lut = np.zeros(sizes.size, np.int32)
    lut[keep] = np.arange(1, count + 1, dtype=np.int32)
    return lut[lab], count


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set to background every object with fewer than ``min_size`` pixels (voxels).

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
        Instance image, 0 = background.
    min_size : int >= 0
        Smallest object size kept, in pixels (2D) or voxels (3D).

    Returns
    -------
    np.ndarray
        Copy of ``labels`` (same integer dtype as :func:`check_labels` gives) with
        the small objects set to 0; other ids unchanged (not renumbered).
    """
    lab = check_labels(labels)
    min_size = _check_min_size(min_size)
    if min_size <= 1 or lab.size == 0 or int(lab.max()) == 0:
        return lab.copy()
    # Sparse huge ids would make bincount allocate max(id) counters: compact first.
    lab_c = relabel_consecutive(lab)[0] if int(lab.max()) > 4 * lab.size else lab
    sizes = np.bincount(lab_c.ravel())
    small = sizes < min_size
    small[0] = False
    out = lab.copy()
    out[small[lab_c]] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of each instance separately, never merging two instances.

    A hole is a connected region of background (full connectivity) that does not
    touch the array border.  It is given to an instance only when every pixel next
    to it (full connectivity) belongs to that one instance; background enclosed by
    several instances together (e.g. the gap in the middle of a ring of cells) is
    left as background.  A background ring around an instance nested inside
    another instance is therefore also left as it is.

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
        Instance image, 0 = background.

    Returns
    -------
    np.ndarray
        Copy with the filled holes; same integer dtype as :func:`check_labels` gives.
    """
    return _fill_holes(check_labels(labels), copy=True)


def _fill_holes(lab: np.ndarray, copy: bool) -> np.ndarray:
    """:func:`fill_holes` on an already checked integer array (in place if ``copy=False``)."""
    out = np.array(lab, order="C", copy=True) if copy else np.ascontiguousarray(lab)
    if out.size == 0 or min(out.shape) < 3:
        return out
    background = out == 0
    if not background.any() or background.all():
        return out
    bg_lab, n_bg = ndimage.label(background, structure=_structure(out.ndim, full=True))
    is_hole = np.ones(n_bg + 1, dtype=bool)
    is_hole[0] = False
    for axis in range(out.ndim):
        for end in (0, -1):
            is_hole[np.take(bg_lab, end, axis=axis)] = False
    if not is_hole.any():
        return out
    flat_bg = bg_lab.ravel()
    hole_px = np.flatnonzero(is_hole[flat_bg])
    # Hole pixels never lie on the border, so flat neighbour offsets cannot wrap.
    strides = _c_strides(out.shape)
    offsets = [
        int(np.dot(o, strides)) for o in itertools.product((-1, 0, 1), repeat=out.ndim) if any(o)
    ]
    neigh = out.ravel()[hole_px[:, None] + np.array(offsets)[None, :]]
    hole_id = flat_bg[hole_px]
    big = np.iinfo(neigh.dtype).max
    hi = np.zeros(n_bg + 1, dtype=neigh.dtype)
    lo = np.full(n_bg + 1, big, dtype=neigh.dtype)
    np.maximum.at(hi, hole_id, neigh.max(axis=1))
    np.minimum.at(lo, hole_id, np.where(neigh > 0, neigh, big).min(axis=1))
    fill = np.where((hi > 0) & (hi == lo), hi, 0)
    out.ravel()[hole_px] = fill[hole_id]  # out is C-contiguous: ravel() is a view
    return out


# --------------------------------------------------- touching pixels to nearest cell


@lru_cache(maxsize=8)
def _shells(ndim: int, radius: int) -> tuple[tuple[int, np.ndarray], ...]:
    """Integer offsets with 0 < |o|^2 <= radius^2, grouped by squared length (ascending)."""
    rng = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(*([rng] * ndim), indexing="ij"), axis=-1).reshape(-1, ndim)
    sq = (grid**2).sum(axis=1)
    keep = (sq > 0) & (sq <= radius * radius)
    grid, sq = grid[keep], sq[keep]
    return tuple((int(s), grid[sq == s]) for s in np.unique(sq))


def _lattice_shell(sq: int, ndim: int) -> np.ndarray:
    """All integer vectors of dimension ``ndim`` whose squared length is exactly ``sq``."""
    r = math.isqrt(sq)
    rng = np.arange(-r, r + 1)
    heads = np.stack(np.meshgrid(*([rng] * (ndim - 1)), indexing="ij"), -1).reshape(-1, ndim - 1)
    rest = sq - (heads**2).sum(axis=1)
    ok = rest >= 0
    heads, rest = heads[ok], rest[ok]
    root = np.rint(np.sqrt(rest)).astype(np.int64)
    ok = root * root == rest
    heads, root = heads[ok], root[ok]
    pos = np.column_stack([heads, root])
    neg = np.column_stack([heads, -root])[root > 0]
    return np.concatenate([pos, neg])


def _labels_on_shell(
    cell_lab: np.ndarray, coords: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest positive cell id found at ``coords + offsets`` (bounds-checked)."""
    pts = coords[:, None, :] + offsets[None, :, :]
    inside = np.all((pts >= 0) & (pts < np.array(cell_lab.shape)), axis=2)
    pts = np.where(inside[..., None], pts, 0)
    vals = np.where(inside, cell_lab[tuple(np.moveaxis(pts, 2, 0))], 0)
    hi = vals.max(axis=1)
    lo = np.where(vals > 0, vals, _INT32_MAX).min(axis=1)
    return hi, lo


def _nearest_cell(cell_lab: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Id of the closest cell for every pixel of ``targets``, 0 where two cells tie.

    "Closest" is the Euclidean distance from the pixel centre to the nearest pixel
    centre of a cell.  On the pixel grid squared distances are integers, so
    "equidistant to two different cells" is tested exactly: the pixel is a tie when
    the smallest squared distance to cell ``a`` equals the smallest squared distance
    to some other cell ``b`` (T Algorithm 2, steps 4-7).

    The search runs shell by shell (all offsets with the same squared length at
    once) outward to a radius of a few pixels, vectorised over the target pixels;
    pixels left over (farther than that from every cell) get their squared distance
    from :func:`scipy.ndimage.distance_transform_edt` and are then checked on the
    exact lattice shell of that length.

    Parameters
    ----------
    cell_lab : int32 array (Y, X) or (Z, Y, X)
        Cell instances, 0 elsewhere.
    targets : bool array, same shape
        Pixels to assign.

    Returns
    -------
    int32 array of shape (n_targets,)
        In the raster order of ``np.flatnonzero(targets)``.
    """
    ndim = cell_lab.ndim
    radius = _SHELL_RADIUS.get(ndim, 3)
    padded = np.pad(cell_lab, radius)
    flat = padded.ravel()
    remaining = np.flatnonzero(np.pad(targets, radius))
    result = np.zeros(remaining.size, np.int32)
    position = np.arange(remaining.size)
    strides = _c_strides(padded.shape)
    for _, offsets in _shells(ndim, radius):
        if remaining.size == 0:
            break
        vals = flat[remaining[:, None] + (offsets @ strides)[None, :]]
        hi = vals.max(axis=1)
        hit = hi > 0
        if not hit.any():
            continue
        v, h = vals[hit], hi[hit]
        lo = np.where(v > 0, v, _INT32_MAX).min(axis=1)
        result[position[hit]] = np.where(lo == h, h, 0)
        remaining, position = remaining[~hit], position[~hit]
    if remaining.size:
        # Rare: far from every cell.  Exact squared distance from the EDT features.
        idx = ndimage.distance_transform_edt(
            cell_lab == 0, return_distances=False, return_indices=True
        )
        coords = np.column_stack(np.unravel_index(remaining, padded.shape)) - radius
        nearest = idx[(slice(None), *coords.T)].T
        sq = ((nearest - coords) ** 2).sum(axis=1)
        for s in np.unique(sq):
            sel = sq == s
            hi, lo = _labels_on_shell(cell_lab, coords[sel], _lattice_shell(int(s), ndim))
            result[position[sel]] = np.where(lo == hi, hi, 0)
    return result


def _instances_from_classes(
    cell: np.ndarray,
    touching: np.ndarray,
    min_size: int,
    fill: bool,
) -> tuple[np.ndarray, int]:
    """Shared tail of MAP and TH: label cells, give touching pixels away, clean up.

    1. Cells: connected components (face connectivity) of ``cell``.
    2. Touching pixels whose connected region of ``cell | touching`` (full
       connectivity) holds no cell pixel are background (no adjacent cell).
    3. Every other touching pixel gets the id of the closest cell, or background
       when equidistant to two different cells (:func:`_nearest_cell`).
    4. Optional per-instance hole filling, then small-object removal, renumbering.
    """
    ndim = cell.ndim
    cell_lab, n_cells = ndimage.label(cell, structure=_structure(ndim, full=False))
    cell_lab = cell_lab.astype(np.int32, copy=False)
    if n_cells and touching.any():
        region, _ = ndimage.label(cell | touching, structure=_structure(ndim, full=True))
        has_cell = np.zeros(int(region.max()) + 1, dtype=bool)
        has_cell[region[cell]] = True
        targets = touching & has_cell[region]
        if targets.any():
            cell_lab[targets] = _nearest_cell(cell_lab, targets)
    if fill:
        cell_lab = _fill_holes(cell_lab, copy=False)
    return _drop_small_and_relabel(cell_lab, min_size)


# ------------------------------------------------------------------------- methods


def map_labels(
    probs: np.ndarray,
    min_size: int = DEFAULT_MIN_SIZE,
    fill_holes: bool = True,
) -> tuple[np.ndarray, int]:
    """Instances from the maximum a posteriori (MAP) class map (T 5.2.3, 4.2.4).

    ``h(p) = argmax_{l in {0, 1, 2}} z_l(p)``: with 4 classes a pixel whose most
    likely class is the gap (3) goes to its second most likely class, which is the
    same as the argmax over the first three classes (T 5.2.3).  Ties follow
    ``numpy.argmax`` (the lower class wins).  Then, as in T 4.2.4 / eq. 4.4, cell
    pixels (h = 1) are labelled into connected components and each touching pixel
    (h = 2) goes to the closest cell, or to the background when equidistant to two
    different cells (see :func:`threshold_labels`); holes are filled and objects
    smaller than ``min_size`` removed.

    With 2 classes (background, cell) ``h = argmax(z0, z1)``: the cell pixels
    (``z1 > z0``; a tie is background) are labelled into connected components, there
    are no touching pixels to give away.

    Parameters
    ----------
    probs : float array (C, Y, X) or (C, Z, Y, X), C = 2, 3 or 4
        Softmax output, classes background, cell[, touching[, gap]].
    min_size : int
        Objects with fewer pixels (voxels) are removed.
    fill_holes : bool
        Fill the holes of each instance (:func:`fill_holes`).

    Returns
    -------
    labels : int32 array (Y, X) or (Z, Y, X)
        Consecutive instance ids 1..count.
    count : int
    """
    arr = _probs(probs)
    min_size = _check_min_size(min_size)
    z0, z1, z2 = arr[0], arr[1], _touching_probability(arr)
    cell = (z1 > z0) & (z1 >= z2)
    touching = (z2 > z0) & (z2 > z1)
    return _instances_from_classes(cell, touching, min_size, bool(fill_holes))


def _threshold(
    arr: np.ndarray, gamma1: float, gamma2: float, min_size: int, fill: bool
) -> tuple[np.ndarray, int]:
    if arr.shape[0] == 2:  # no touching class: gamma2 has no effect
        touching = np.zeros(arr.shape[1:], dtype=bool)
    else:
        touching = arr[2] >= gamma2
    cell = (arr[1] >= gamma1) & ~touching
    return _instances_from_classes(cell, touching, min_size, fill)


def threshold_labels(
    probs: np.ndarray,
    gamma1: float = DEFAULT_GAMMA1,
    gamma2: float = DEFAULT_GAMMA2,
    min_size: int = DEFAULT_MIN_SIZE,
    fill_holes: bool = True,
) -> tuple[np.ndarray, int]:
    """Instances by thresholded maps, TH(gamma1, gamma2) (T eq. 4.4, Algorithm 2).

    Decision rule (T 4.2.4): ``h(p) = 2`` if ``z2(p) >= gamma2``; ``h(p) = 1`` if
    ``z1(p) >= gamma1`` and ``z2(p) < gamma2``; ``h(p) = 0`` otherwise.  The gap
    class of a 4-class map takes no part (it is neither cell nor touching).
    Then (eq. 4.4 and Algorithm 2, steps 3-9):

    * cell pixels are labelled into connected components (face connectivity);
    * each touching pixel takes the id of the closest cell, where the distance is
      the Euclidean distance between pixel centres (isotropic pixels).  A touching
      pixel is *equidistant* when its smallest squared distance to one cell equals
      its smallest squared distance to another cell; squared distances on the grid
      are integers, so this is an exact equality test, and such pixels become
      background;
    * touching pixels with no adjacent cell -- their connected region of cell and
      touching pixels (full connectivity) holds no cell pixel -- become background
      (the thesis assigns touching pixels to their "closest adjacent cell");
    * finally per-instance hole filling and removal of objects smaller than
      ``min_size`` (T 3.2.3).

    With 2 classes (background, cell) the cells are the connected components of
    ``z1 >= gamma1``; there is no touching class, so ``gamma2`` has no effect.

    Parameters
    ----------
    probs : float array (C, Y, X) or (C, Z, Y, X), C = 2, 3 or 4
        Softmax output, classes background, cell[, touching[, gap]].
    gamma1, gamma2 : float in [0, 1]
        Cell and touching thresholds.
    min_size : int
        Objects with fewer pixels (voxels) are removed.
    fill_holes : bool
        Fill the holes of each instance (:func:`fill_holes`).

    Returns
    -------
    labels : int32 array (Y, X) or (Z, Y, X)
        Consecutive instance ids 1..count, numbered in raster order of each cell
        component's first pixel.
    count : int
    """
    arr = _probs(probs)
    return _threshold(
        arr,
        _check_unit(gamma1, "gamma1"),
        _check_unit(gamma2, "gamma2"),
        _check_min_size(min_size),
        bool(fill_holes),
    )


def _dilate_face(mask: np.ndarray) -> np.ndarray:
    """Binary dilation with the face-connectivity element, by array slicing (fast)."""
    out = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def _watershed(arr: np.ndarray, tau0: float, tau1: float, min_size: int) -> tuple[np.ndarray, int]:
    if arr.shape[0] == 2:  # no touching class to flood over: split the foreground by shape
        return _split_foreground(arr[0] < tau0, None, min_size)
    background = _background_probability(arr) >= tau0
    seeds = (arr[1] >= tau1) & ~background
    markers, n = ndimage.label(seeds, structure=_structure(seeds.ndim, full=False))
    markers = markers.astype(np.int32, copy=False)
    bg_id = n + 1
    markers[background] = bg_id
    unknown = markers == 0
    if unknown.any():
        # Flood only the unknown pixels and the marker pixels next to them: marker
        # interiors never label anything, and leaving them out makes the flood
        # several times faster on images that are mostly background or cell cores.
        region = _dilate_face(unknown)
        relief = _touching_probability(arr) - arr[1]
        markers = _flood_in_parts(relief, markers, region)
    markers[markers == bg_id] = 0
    return _drop_small_and_relabel(markers, min_size)


#: Pixels (voxels) of the crops :func:`_flood_in_parts` floods at once, about.
FLOOD_PART_PIXELS = 1 << 18


def _flood_in_parts(
    relief: np.ndarray, markers: np.ndarray, region: np.ndarray, part: int = FLOOD_PART_PIXELS
) -> np.ndarray:
    """``markers`` with every pixel of ``region`` flooded from its markers over ``relief``
    (:func:`skimage.segmentation.watershed`, face connectivity), part by part.

    A flood never leaves the face-connected component of ``region`` it starts in, so the
    components are independent problems. They are flooded in groups, consecutive in
    raster order, each group in the crop that bounds it (about ``part`` pixels), so the
    flood's queue and arrays stay small enough for the caches: one flood of a 2048²
    probability map took 7.1x the time of a 1024² one (0.99 s), by parts 3.6x (0.48 s).
    The labels are those of one flood of the whole image wherever the relief has no
    ties (tested); skimage queues every marker pixel at the same age, so markers of equal
    value leave its queue in an order set by the whole queue, and such ties may go the
    other way (0.1 % of the pixels on a relief rounded to 0.01, none on network maps).
    """
    comp, n = ndimage.label(region, structure=_structure(region.ndim, full=False))
    out = markers.copy()
    boxes = ndimage.find_objects(comp)
    first = 0
    while first < n:
        lo = [b.start for b in boxes[first]]
        hi = [b.stop for b in boxes[first]]
        last = first + 1
        while last < n:  # grow the group while its bounding box stays within ``part``
            box = boxes[last]
            new_lo = [min(a, b.start) for a, b in zip(lo, box, strict=True)]
            new_hi = [max(a, b.stop) for a, b in zip(hi, box, strict=True)]
            if math.prod(h - lw for lw, h in zip(new_lo, new_hi, strict=True)) > part:
                break
            lo, hi, last = new_lo, new_hi, last + 1
        crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        ids = comp[crop]
        mask = (ids > first) & (ids <= last)  # component ids first+1 .. last
        seeds = np.where(mask, markers[crop], 0)
        flooded = watershed(relief[crop], seeds, mask=mask, connectivity=1)
        out[crop][mask] = flooded[mask]
        first = last
    return out


def watershed_labels(
    probs: np.ndarray,
    tau0: float = DEFAULT_TAU0,
    tau1: float = DEFAULT_TAU1,
    min_size: int = DEFAULT_MIN_SIZE,
) -> tuple[np.ndarray, int]:
    """Instances by marker-controlled watershed, WT(tau0, tau1) (T 4.2.4, Fig. 24).

    * Background marker: every pixel with ``z0(p) >= tau0`` (with 4 classes,
      ``z0 + z3 >= tau0``: gap pixels are background, T 5.2.1).  All of them share
      one marker whose basin becomes background.
    * Cell markers: connected components (face connectivity) of the pixels with
      ``z1(p) >= tau1`` that are not background markers (a pixel can satisfy both
      only when ``tau0 + tau1 <= 1``; the background marker wins).
    * Relief: ``z2 - z1`` (high on touching regions, low inside cells), flooded
      from the markers with :func:`skimage.segmentation.watershed`
      (face connectivity, Meyer's flooding).

    Objects smaller than ``min_size`` are removed afterwards.

    With 2 classes (background, cell) there is no touching relief to flood, so WT is
    the distance watershed that suits a binary foreground, the one of
    :func:`binary_watershed_labels`: the foreground is every pixel that is not a
    background marker (``z0 < tau0``), cleaned (small pieces removed, holes filled),
    and split at the local maxima of its distance transform at least the radius of a
    median-sized piece apart.  ``tau1`` has no effect.

    Parameters
    ----------
    probs : float array (C, Y, X) or (C, Z, Y, X), C = 2, 3 or 4
        Softmax output, classes background, cell[, touching[, gap]].
    tau0, tau1 : float in [0, 1]
        Background and cell marker thresholds.
    min_size : int
        Objects with fewer pixels (voxels) are removed.

    Returns
    -------
    labels : int32 array (Y, X) or (Z, Y, X)
        Consecutive instance ids 1..count.
    count : int
    """
    arr = _probs(probs)
    return _watershed(
        arr, _check_unit(tau0, "tau0"), _check_unit(tau1, "tau1"), _check_min_size(min_size)
    )


# ------------------------------------------------------ counting paper: binary + WT


def _foreground(x: np.ndarray, classes_first: bool | None) -> np.ndarray:
    """Foreground probability (Y, X) / (Z, Y, X) from a map or from class probabilities."""
    arr = np.asarray(x)
    if classes_first is None:
        classes_first = arr.ndim == 4 or (
            arr.ndim == 3
            and arr.shape[0] in (2, 3, 4)
            and np.issubdtype(arr.dtype, np.floating)
            and bool(np.all(np.isfinite(arr)))
            and float(np.abs(arr.sum(axis=0) - 1).max(initial=0)) <= 1e-3
        )
    if classes_first:
        p = check_probabilities(arr, name="probabilities", n_classes=(2, 3, 4))
        return (1.0 - _background_probability(p)).astype(np.float32)
    fg = check_image(arr, name="foreground probability")
    lo, hi = float(fg.min(initial=0)), float(fg.max(initial=0))
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"foreground probability: expected values in [0, 1], got range [{lo:g}, {hi:g}]."
        )
    return fg


def _equivalent_radius(size: float, ndim: int) -> float:
    """Radius of the disc (2D) or ball (3D) with ``size`` pixels / voxels."""
    if ndim == 2:
        return float(np.sqrt(size / np.pi))
    return float(np.cbrt(3.0 * size / (4.0 * np.pi)))


def _binary_watershed(
    fg: np.ndarray, threshold: float, mean_cell_size: float | None, min_size: int
) -> tuple[np.ndarray, int]:
    """Foreground probability (Y, X) / (Z, Y, X) -> instances: C 4.3 on ``fg >= threshold``."""
    return _split_foreground(fg >= threshold, mean_cell_size, min_size)


def _split_foreground(
    foreground: np.ndarray, mean_cell_size: float | None, min_size: int
) -> tuple[np.ndarray, int]:
    """Boolean foreground (Y, X) / (Z, Y, X) -> int32 instances and their count.

    Steps 2-3 of :func:`binary_watershed_labels`: components cleaned, then split by the
    distance watershed sized by ``mean_cell_size`` (median piece size when ``None``).
    """
    ndim = foreground.ndim
    face = _structure(ndim, full=False)
    comp, _ = ndimage.label(foreground, structure=face)
    comp = fill_holes(remove_small_objects(comp, min_size))
    mask = comp > 0
    if not mask.any():
        return np.zeros(foreground.shape, np.int32), 0
    if mean_cell_size is None:
        sizes = np.bincount(comp.ravel())[1:]
        mean_cell_size = float(np.median(sizes[sizes > 0]))
    radius = _equivalent_radius(mean_cell_size, ndim)
    dist = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(
        dist,
        min_distance=max(1, round(radius)),
        labels=mask.astype(np.int32),
        exclude_border=False,
    )
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    lab = watershed(-dist, markers, mask=mask, connectivity=1).astype(np.int32)
    # A component without a peak (too thin for one) keeps its own id.
    missing = mask & (lab == 0)
    if missing.any():
        lab[missing] = comp[missing].astype(np.int32) + len(peaks)
    return _drop_small_and_relabel(lab, min_size)


def binary_watershed_labels(
    foreground: np.ndarray,
    threshold: float = 0.5,
    mean_cell_size: float | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    classes_first: bool | None = None,
) -> tuple[np.ndarray, int]:
    """Binary threshold, cleaning and a size-aware distance watershed (C 4.3).

    Steps (counting paper C 4.3; the paper gives the steps, not their parameters):

    1. ``mask = foreground >= threshold`` (C 5.1 picks the cutoff by maximising
       F1 on training images -- 0.55 on their data; see :func:`search_thresholds`).
    2. Cleaning: connected components (face connectivity) smaller than
       ``min_size`` are removed and the holes of each component filled.
    3. The watershed "parameters are set based on the average cell size": with
       ``r`` the radius of a disc (ball in 3D) of ``mean_cell_size`` pixels
       (voxels), markers are the local maxima of the Euclidean distance transform
       of the mask at least ``r`` pixels apart (``peak_local_max(min_distance=r)``),
       so two touching cells of that size get one marker each while one cell gets
       one.  The relief is ``-distance``, flooding is restricted to the mask.
       A component with no marker keeps one id.  Pieces smaller than
       ``min_size`` are removed at the end.

    Parameters
    ----------
    foreground : float array
        Foreground probability (Y, X) or (Z, Y, X) in [0, 1], or class probabilities
        (C, Y, X) / (C, Z, Y, X), C = 2, 3 or 4, where the foreground is
        ``1 - z0`` (``1 - z0 - z3`` with 4 classes: the gap is background).
    threshold : float in [0, 1]
        Cutoff on the foreground probability.
    mean_cell_size : float, optional
        Typical cell area in pixels (2D) or volume in voxels (3D).  When omitted it
        is estimated as the *median* size of the cleaned components (the median, not
        the mean, so that clumps of merged cells -- the very objects the watershed
        must split -- do not inflate it).
    min_size : int
        Objects with fewer pixels (voxels) are removed.
    classes_first : bool, optional
        Whether axis 0 holds classes.  By default a 4-D array, or a 3-D array with
        2-4 planes summing to 1 at every pixel, is taken as class probabilities;
        pass ``False`` for a 2-4 slice z-stack of foreground probabilities that
        happens to sum to one.

    Returns
    -------
    labels : int32 array (Y, X) or (Z, Y, X)
        Consecutive instance ids 1..count.
    count : int
    """
    fg = _foreground(foreground, classes_first)
    if mean_cell_size is not None:
        mean_cell_size = float(mean_cell_size)
        if not np.isfinite(mean_cell_size) or mean_cell_size <= 0:
            raise ValueError(
                f"mean_cell_size: expected a positive size in pixels, got {mean_cell_size!r}."
            )
    return _binary_watershed(
        fg, _check_unit(threshold, "threshold"), mean_cell_size, _check_min_size(min_size)
    )


# ------------------------------------------------------------------------ ensemble


def average_probabilities(prob_maps: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """COMB ensemble: the per-class mean of several models' probability maps (T 4.3).

    The thesis follows the average with a softmax.  Applied to probabilities, a
    softmax would pull every map towards the uniform 1/C and change what the TH/WT
    thresholds mean, while the mean of softmax outputs already sums to 1 at every
    pixel; so the plain mean is returned (a softmax over *logits* is for callers
    that still hold logits).

    Parameters
    ----------
    prob_maps : sequence of float arrays (C, Y, X) or (C, Z, Y, X), or one array
        with a leading model axis (M, C, ...).  All of the same shape.

    Returns
    -------
    float32 array (C, Y, X) or (C, Z, Y, X)
    """
    maps = list(prob_maps)
    if not maps:
        raise ValueError("prob_maps: expected at least one probability map, got none.")
    first = check_probabilities(maps[0], name="probability map 0")
    total = first.astype(np.float64)
    for i, m in enumerate(maps[1:], start=1):
        arr = check_probabilities(m, name=f"probability map {i}")
        check_same_shape(first, arr, "probability map 0", f"probability map {i}")
        total += arr
    return (total / len(maps)).astype(np.float32)


# ---------------------------------------------------------------------- dispatcher


class _Functions(Mapping):
    """Read-only ``{key: function}`` view of the registry (``core.methods.POST_METHODS``)."""

    def __getitem__(self, key: str) -> Callable[..., tuple[np.ndarray, int]]:
        return POST_METHODS[key].function

    def __iter__(self):
        return iter(POST_METHODS)

    def __len__(self) -> int:
        return len(POST_METHODS)


#: Methods accepted by :func:`postprocess`, ``{key: function}``: a view of the registry
#: :data:`napari_cellfocus.core.methods.POST_METHODS`, where a method is declared with its
#: parameters and search grid (:func:`~napari_cellfocus.core.methods.register_post_method`).
METHODS: Mapping[str, Callable[..., tuple[np.ndarray, int]]] = _Functions()


def postprocess(probs: np.ndarray, method: str = "th", **params) -> tuple[np.ndarray, int]:
    """Run one post-processing method by name (used by the widgets and the CLI).

    Parameters
    ----------
    probs : float array (C, Y, X) or (C, Z, Y, X)
        Softmax output (for ``"binary"`` also a foreground map, see
        :func:`binary_watershed_labels`).
    method : str
        A key of the registry (:data:`napari_cellfocus.core.methods.POST_METHODS`,
        case-insensitive): ``"map"`` (:func:`map_labels`), ``"th"``
        (:func:`threshold_labels`), ``"wt"`` (:func:`watershed_labels`), ``"binary"``
        (:func:`binary_watershed_labels`) or one registered later.
    **params
        Parameters the registry declares for that method (e.g. ``gamma1=0.6``).

    Returns
    -------
    labels : int32 array, count : int
    """
    spec = get_post_method(method)
    unknown = sorted(set(params) - set(spec.names))
    if unknown:
        raise ValueError(
            f"method {spec.key!r}: unknown parameter(s) {unknown}; expected some of "
            f"{list(spec.names)}."
        )
    return spec.function(probs, **params)


# ------------------------------------------------------------------ threshold search


@dataclass
class ThresholdSearch:
    """Result of :func:`search_thresholds`.

    Attributes
    ----------
    best_params : dict
        Threshold values with the best score (on ties, the middle of the plateau of
        best values: :func:`best_grid_index`).
    best_score : float
        The score reached with ``best_params``.
    scores : float array
        Score at every grid point, one axis per grid parameter in ``grid`` order.
    grid : dict of str -> float array
        The values tried for each parameter.
    method, metric : str
        What was searched and what was maximised (``metric`` is also ``objective``).
    """

    best_params: dict
    best_score: float
    scores: np.ndarray
    grid: dict = field(default_factory=dict)
    method: str = "th"
    metric: str = "pq"

    @property
    def objective(self) -> str:
        return self.metric


def default_grid(method: str) -> dict[str, np.ndarray]:
    """Default search grid of a method, from its registry entry
    (:data:`napari_cellfocus.core.methods.POST_METHODS`): for the built-in ones steps of
    0.1 (0.05 for ``gamma2`` and ``threshold``).

    The thesis' best values (T Table 5) lie on steps of 0.1 for gamma1, tau0, tau1
    and 0.1-0.2 for gamma2; the counting paper's best cutoff (0.55, C Fig. 8) on
    steps of 0.05. ``ValueError`` for a method without a grid (MAP).
    """
    key = str(method).lower()
    spec = POST_METHODS.get(key)
    if spec is None or not spec.grid:
        searchable = [k for k, m in POST_METHODS.items() if m.grid]
        raise ValueError(
            f"method: expected one of {', '.join(repr(k) for k in searchable)} (a method "
            f"with thresholds to search), got {method!r}."
        )
    return {k: np.asarray(v, dtype=float) for k, v in spec.grid.items()}


_POOLED = {"f1", "rq", "precision", "recall", "ap"}
#: Scores :func:`search_thresholds` can maximise (keys of ``core.metrics.evaluate``).
OBJECTIVES = ("pq", "f1", "rq", "sq", "precision", "recall", "ap")


def best_grid_index(scores: np.ndarray, atol: float = 1e-9) -> tuple[int, ...]:
    """Index of the best score on a grid, ties broken towards the middle of the plateau.

    The plateau is the set of grid points whose score is within ``atol`` of the
    maximum. Of its connected parts (neighbours along any axis or diagonal) the
    largest is kept (the first in grid order among equally large ones), and of its
    points the one closest (in grid steps) to the part's centre of mass (the first
    in grid order among equally close ones). A plateau of thresholds 0.2-0.6 on a
    0.1 grid gives 0.4, not 0.2: a threshold with room on both sides, so small
    changes of the image do not push it off the best values.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        raise ValueError("scores: expected at least one grid point.")
    if scores.ndim == 0:
        return ()
    finite = np.where(np.isnan(scores), -np.inf, scores)
    plateau = finite >= finite.max() - atol
    parts = ndimage.label(plateau, structure=np.ones((3,) * scores.ndim, bool))[0]
    sizes = np.bincount(parts.ravel())[1:]
    part = parts == int(np.argmax(sizes)) + 1
    points = np.argwhere(part)  # grid order
    centre = points.mean(axis=0)
    distance = ((points - centre) ** 2).sum(axis=1)
    best = points[int(np.argmin(distance))]  # argmin: the first of equally close ones
    return tuple(int(i) for i in best)


def _pooled_score(results: list[dict], metric: str) -> float:
    """``metric`` over several images: pooled counts for detection scores, else the mean."""
    if len(results) == 1 or metric not in _POOLED:
        return float(np.mean([r[metric] for r in results]))
    tp = sum(r["tp"] for r in results)
    n_true = sum(r["n_true"] for r in results)
    n_pred = sum(r["n_pred"] for r in results)
    if n_true == 0 and n_pred == 0:
        return 1.0
    if metric in ("f1", "rq"):
        return 2.0 * tp / (n_true + n_pred)
    if metric == "precision":
        return tp / n_pred if n_pred else 0.0
    if metric == "recall":
        return tp / n_true if n_true else 0.0
    return tp / (n_true + n_pred - tp)  # ap = TP / (TP + FP + FN)


def _inert_parameters(method: str, prepared: Sequence[np.ndarray]) -> set[str]:
    """Thresholds of ``method`` that cannot change its result on these maps: those whose
    registry entry excludes every map's class count (``Param.classes``).

    2-class maps (background, cell) have no touching class, so TH ignores ``gamma2``
    and WT ``tau1``; the search then runs each value of the other threshold once.
    Foreground maps (``"binary"``) have no class axis: nothing is inert.
    """
    if method == "binary":
        return set()
    spec = POST_METHODS[method]
    inert = [spec.inert(int(p.shape[0])) for p in prepared]
    return set.intersection(*inert) if inert else set()


def search_thresholds(
    probs: np.ndarray | Sequence[np.ndarray],
    reference_labels: np.ndarray | Sequence[np.ndarray],
    method: str = "th",
    grid: Mapping[str, Sequence[float]] | None = None,
    objective: str = "pq",
    iou_threshold: float = 0.5,
    metric: str | None = None,
    **fixed,
) -> ThresholdSearch:
    """Thresholds that maximise a segmentation score against reference instances.

    Grid search as in C 5.1 / Fig. 8 (cutoff chosen by F1 on the training images)
    and T 4.3 (exploration of the (gamma1, gamma2) and (tau0, tau1) planes).  Every
    grid point is post-processed and compared with the reference by
    :func:`napari_cellfocus.core.metrics.evaluate` (objects match at IoU > 0.5).

    The default objective is PQ (panoptic quality = F1 x mean IoU of the matches):
    F1 only counts matches, so the F1-best thresholds may give cells that just pass
    IoU 0.5 (too large or too small) and a lower PQ than the defaults; PQ rewards
    thresholds that also draw the cells' outlines well. Ties go to the middle of the
    plateau of best values (:func:`best_grid_index`), not to the first grid point.

    With several images the detection scores (``f1``, ``rq``, ``precision``,
    ``recall``, ``ap``) are computed from the true/false positives pooled over all
    images, as an F1 "computed on the training set" is; other scores (``pq``,
    ``sq``) are averaged over images.

    On 2-class maps (background, cell) ``gamma2`` (TH) and ``tau1`` (WT) have no
    effect: each value of the other threshold is scored once and the score copied
    along the inert axis, so the grid keeps its shape and the best value of the inert
    threshold is the middle of its range (the plateau rule).

    Parameters
    ----------
    probs : float array (C, Y, X) / (C, Z, Y, X), or a list of them
        Probability maps (for ``"binary"`` also foreground maps).
    reference_labels : int array (Y, X) / (Z, Y, X), or a list of the same length
        Reference instances for each map.
    method : {"th", "wt", "binary"} or another registered method with a grid
        Which post-processing to tune (its registry entry names the thresholds that
        may be searched, ``PostMethod.grid``).
    grid : dict of str -> sequence of float, optional
        Values to try for each threshold (names as in the method's signature);
        :func:`default_grid` when omitted.
    objective : {"pq", "f1", "rq", "sq", "precision", "recall", "ap"}
        Key of :func:`~napari_cellfocus.core.metrics.evaluate` to maximise
        (higher is better); "pq" by default, "f1" as in the counting paper.
    iou_threshold : float
        Matching threshold passed to ``evaluate``.
    metric : str, optional
        Older name of ``objective`` (used instead of it when given).
    **fixed
        Other parameters of the method kept fixed (e.g. ``min_size=30``).

    Returns
    -------
    ThresholdSearch
    """
    method = get_post_method(method).key
    base_grid = default_grid(method)
    grid = {k: np.asarray(v, dtype=float) for k, v in (grid or base_grid).items()}
    allowed = set(base_grid)
    if not grid or set(grid) - allowed:
        raise ValueError(
            f"grid: for method {method!r} expected parameters among {sorted(allowed)}, "
            f"got {sorted(grid)}."
        )
    for k, v in grid.items():
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"grid[{k!r}]: expected a non-empty 1-D list of values.")
        for value in v:
            _check_unit(value, f"grid[{k!r}]")
    if metric is not None:
        if objective not in ("pq", metric):
            raise ValueError(
                f"objective {objective!r} and metric {metric!r}: give one of them (metric "
                "is the older name of objective)."
            )
        objective = metric
    objective = str(objective).lower()
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective (metric): expected one of {', '.join(OBJECTIVES)}, got {objective!r}."
        )
    # One array is one image (its first axis holds classes, not images).
    prob_list = [probs] if isinstance(probs, np.ndarray) else list(probs)
    if isinstance(reference_labels, np.ndarray):
        ref_list = [reference_labels]
    else:
        ref_list = list(reference_labels)
    if len(prob_list) != len(ref_list) or not prob_list:
        raise ValueError(
            f"expected as many reference images as probability maps (at least one), "
            f"got {len(ref_list)} and {len(prob_list)}."
        )
    min_size = _check_min_size(fixed.pop("min_size", DEFAULT_MIN_SIZE))
    if method == "th":
        prepared = [_probs(p, name=f"probabilities {i}") for i, p in enumerate(prob_list)]
        fill = bool(fixed.pop("fill_holes", True))
        defaults = {"gamma1": DEFAULT_GAMMA1, "gamma2": DEFAULT_GAMMA2}
        defaults.update({k: _check_unit(fixed.pop(k), k) for k in list(fixed) if k in defaults})

        def run(arr, **kw):
            return _threshold(arr, kw["gamma1"], kw["gamma2"], min_size, fill)

        spatial = [p.shape[1:] for p in prepared]
    elif method == "wt":
        prepared = [_probs(p, name=f"probabilities {i}") for i, p in enumerate(prob_list)]
        defaults = {"tau0": DEFAULT_TAU0, "tau1": DEFAULT_TAU1}
        defaults.update({k: _check_unit(fixed.pop(k), k) for k in list(fixed) if k in defaults})

        def run(arr, **kw):
            return _watershed(arr, kw["tau0"], kw["tau1"], min_size)

        spatial = [p.shape[1:] for p in prepared]
    elif method == "binary":
        classes_first = fixed.pop("classes_first", None)
        prepared = [_foreground(p, classes_first) for p in prob_list]
        cell_size = fixed.pop("mean_cell_size", None)
        defaults = {"threshold": 0.5}

        def run(arr, **kw):
            return _binary_watershed(arr, kw["threshold"], cell_size, min_size)

        spatial = [p.shape for p in prepared]
    else:  # a method registered with a grid: its function at every grid point
        spec = POST_METHODS[method]
        prepared = [_probs(p, name=f"probabilities {i}") for i, p in enumerate(prob_list)]
        takes_min_size = "min_size" in spec.names
        defaults = {k: v for k, v in spec.defaults().items() if k in base_grid}
        defaults.update({k: fixed.pop(k) for k in list(fixed) if k in defaults})
        other = {k: fixed.pop(k) for k in list(fixed) if k in spec.names}
        if takes_min_size:
            other["min_size"] = min_size

        def run(arr, **kw):
            return spec.function(arr, **other, **kw)

        spatial = [p.shape[1:] for p in prepared]
    if fixed:
        raise ValueError(f"method {method!r}: unknown parameter(s) {sorted(fixed)}.")
    refs = []
    for i, (ref, shape) in enumerate(zip(ref_list, spatial, strict=True)):
        ref = check_labels(ref, name=f"reference labels {i}")
        if ref.shape != tuple(shape):
            raise ValueError(
                f"reference labels {i}: expected shape {tuple(shape)} (the probability "
                f"map's spatial shape), got {ref.shape}."
            )
        refs.append(ref)

    names = list(grid)
    inert = _inert_parameters(method, prepared)
    scores = np.zeros(tuple(grid[k].size for k in names), dtype=float)
    done: dict[tuple, float] = {}  # score by the values of the parameters that matter
    for index in itertools.product(*(range(grid[k].size) for k in names)):
        kw = dict(defaults)
        kw.update({k: float(grid[k][j]) for k, j in zip(names, index, strict=True)})
        key = tuple(sorted((k, v) for k, v in kw.items() if k not in inert))
        if key not in done:
            results = [
                evaluate(ref, run(arr, **kw)[0], iou_threshold=iou_threshold)
                for arr, ref in zip(prepared, refs, strict=True)
            ]
            done[key] = _pooled_score(results, objective)
        scores[index] = done[key]
    best = best_grid_index(scores)
    best_params = {k: float(grid[k][j]) for k, j in zip(names, best, strict=True)}
    return ThresholdSearch(
        best_params=best_params,
        best_score=float(scores[best]),
        scores=scores,
        grid=grid,
        method=method,
        metric=objective,
    )
