"""Training targets built from an instance label image.

Every function takes an instance label image ``labels`` of shape (Y, X) or (Z, Y, X)
(0 = background, every positive integer one cell; numbering need not be consecutive) and
returns either a ``uint8`` class map using the package-wide class convention

    0 = background, 1 = cell (interior), 2 = touching / border, 3 = gap

(the 2-class scheme of UNET2, :func:`two_class_from_instances`, keeps 0 and 1 only: its
touching pixels are background) or a ``float32`` continuous target. Results never depend
on which integers label the cells.

Conventions shared by all functions here (and by :mod:`napari_cellfocus.core.weights`):

* neighbourhoods are full cubes, ``(2k + 1)`` pixels a side in every axis
  (8-connectivity in 2D, 26-connectivity in 3D);
* pixels outside the image count as background; in particular an instance that is cut by the
  image edge does *not* get a contour along that edge (it continues outside a training crop);
* distances are Euclidean, in pixels (voxels are taken as isotropic).

References: T = Guerrero-Peña, PhD thesis (loss modelling for instance segmentation),
D = Zamora-Cárdenas et al., "Enforcing morphological information in FCNs" (DDT).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology

from napari_cellfocus.core.validation import check_labels

BACKGROUND, CELL, TOUCHING, GAP = 0, 1, 2, 3

__all__ = [
    "BACKGROUND",
    "CELL",
    "GAP",
    "TOUCHING",
    "augment_three_class",
    "border_target",
    "class_target",
    "four_class_with_gap",
    "inverse_distance_target",
    "three_class_from_instances",
    "two_class_from_instances",
]


# --------------------------------------------------------------------------- helpers
def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Return ``labels`` renumbered 0..n (0 kept as background) and the number of cells n."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64)
    if uniq.size and uniq[0] != 0:
        inverse += 1
    n = int(uniq.size - (1 if uniq.size and uniq[0] == 0 else 0))
    return inverse, n


def _instance_windows(
    lab: np.ndarray, n: int, margin: int
) -> Iterator[tuple[int, tuple[slice, ...]]]:
    """Yield ``(label, window)`` for labels 1..n of a consecutive label image.

    ``window`` is the bounding box of the instance grown by ``margin`` pixels on every side and
    clipped to the image.
    """
    for i, box in enumerate(ndi.find_objects(lab, max_label=n), start=1):
        if box is None:
            continue
        yield (
            i,
            tuple(
                slice(max(s.start - margin, 0), min(s.stop + margin, size))
                for s, size in zip(box, lab.shape, strict=True)
            ),
        )


def _inner_boundary(lab: np.ndarray) -> np.ndarray:
    """Contour pixels: instance pixels with a (full-connectivity) neighbour of another value.

    The neighbour may be background or another instance. Pixels on the image edge are not
    contour pixels because of that edge alone (``mode='nearest'``).
    """
    size = 3
    hi = ndi.maximum_filter(lab, size=size, mode="nearest")
    lo = ndi.minimum_filter(lab, size=size, mode="nearest")
    return (lab > 0) & ((hi != lab) | (lo != lab))


def _other_instance_mask(lab: np.ndarray, k: int, min_count: int = 1) -> np.ndarray:
    """Foreground pixels whose (2k+1)^d window holds >= ``min_count`` pixels of other cells.

    Counts ``sum_{p' in eta_k(p)} [g(p') != g(p)] * [g(p') != 0]`` (thesis eq. 4.1) for
    foreground pixels; pixels outside the image count as background.
    """
    if k < 1:
        raise ValueError(f"neighbourhood half-size k must be >= 1, got {k}.")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}.")
    size = 2 * k + 1
    fg = lab > 0
    big = int(lab.max()) + 1 if lab.size else 1
    hi = ndi.maximum_filter(lab, size=size, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(fg, lab, big), size=size, mode="constant", cval=big)
    # A window max above g(p) or a nonzero min below g(p) is another instance.
    candidates = fg & ((hi != lab) | (lo != lab))
    if min_count == 1 or not candidates.any():
        return candidates
    coords = np.nonzero(candidates)
    own = lab[coords]
    padded = np.pad(lab, k)
    count = np.zeros(own.shape, dtype=np.int64)
    for offset in itertools.product(range(size), repeat=lab.ndim):
        vals = padded[tuple(c + o for c, o in zip(coords, offset, strict=True))]
        count += (vals != own) & (vals != 0)
    out = np.zeros(lab.shape, dtype=bool)
    out[tuple(c[count >= min_count] for c in coords)] = True
    return out


def _cube(size: int, ndim: int) -> np.ndarray:
    return np.ones((size,) * ndim, dtype=bool)


def _ball(radius: int, ndim: int) -> np.ndarray:
    return (morphology.disk(radius) if ndim == 2 else morphology.ball(radius)).astype(bool)


def _closing(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary closing (dilation then erosion) with the outside of the image as background."""
    dilated = ndi.binary_dilation(mask, structure=footprint, border_value=0)
    return ndi.binary_erosion(dilated, structure=footprint, border_value=0)


# --------------------------------------------------------------------------- targets
def augment_three_class(mask: np.ndarray, structure_size: int = 3) -> np.ndarray:
    """Binary mask -> background / cell / touching by thesis Algorithm 1 (T 3.2.1).

    With ``h`` the binary ground truth (C = 2 classes, ``max(h) = 1``) and ``s_e`` a square
    structuring element of side ``structure_size``:

    1. ``h' = (h dilate s_e) erode s_e``  (closing: clustered cells become one component)
    2. ``h' = h' - h``                    (the one-pixel gaps that separate touching cells)
    3. ``h' = h' dilate s_e``             (thicken the division lines)
    4. ``h' = h + (max(h) + 1) * h'``
    5. ``h'`` clipped to ``[0, max(h) + 1]``

    so every pixel of the dilated division region becomes class 2 (touching), other foreground
    pixels class 1 and other background 0. The thesis used a 3 x 3 square; in 3D the element
    is the 3 x 3 x 3 cube. Pixels outside the image count as background in the closing, so the
    image edge creates no touching pixels.

    Parameters
    ----------
    mask : array (Y, X) or (Z, Y, X)
        Binary ground truth in which touching cells are separated by (one-pixel) background
        gaps, as in the thesis annotations. Any non-zero value counts as foreground, so an
        instance image whose cells are separated by gaps also works; for instance images whose
        cells share a border use :func:`three_class_from_instances`.
    structure_size : int
        Side of the square (cubic) structuring element, >= 1.

    Returns
    -------
    np.ndarray
        ``uint8`` class map, same shape, values in {0, 1, 2}.
    """
    h = check_labels(mask, name="mask") > 0
    if structure_size < 1:
        raise ValueError(f"structure_size must be >= 1, got {structure_size}.")
    se = _cube(int(structure_size), h.ndim)
    division = _closing(h, se) & ~h  # steps 1-2 (negative differences clip to 0)
    division = ndi.binary_dilation(division, structure=se)  # step 3
    out = h.astype(np.int64) + 2 * division  # step 4 with max(h) = 1
    return np.clip(out, 0, 2).astype(np.uint8)  # step 5


def three_class_from_instances(labels: np.ndarray, k: int = 2, min_count: int = 2) -> np.ndarray:
    """Instance labels -> background / cell / touching by thesis eq. 4.1 (T 4.2.1).

    ``h(p) = 0`` if ``g(p) = 0``; ``h(p) = 2`` if
    ``sum_{p' in eta_k(p)} [g(p') != g(p)] [g(p') != 0] > 1``; else ``h(p) = 1``.
    ``eta_k(p)`` is the ``(2k + 1)^d`` cube around ``p`` (T 5.2 generalises it to d
    dimensions and uses ``k = 2`` in all experiments; 4.2.1 gives no other value).

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
        Instance labels, 0 = background.
    k : int
        Neighbourhood half-size (``k = 2`` gives a 5 x 5 window in 2D).
    min_count : int
        How many pixels of other cells the window must hold. Eq. 4.1 says "> 1", i.e. 2.

    Returns
    -------
    np.ndarray
        ``uint8`` class map in {0, 1, 2}.
    """
    lab, _ = _relabel(check_labels(labels))
    out = (lab > 0).astype(np.uint8)
    out[_other_instance_mask(lab, k, min_count)] = TOUCHING
    return out


def two_class_from_instances(labels: np.ndarray, k: int = 2, min_count: int = 2) -> np.ndarray:
    """Instance labels -> background / cell, touching cells kept apart (the UNET2 target).

    The 2-class target of the thesis' UNET2 baseline (a plain U-Net trained with the U-Net
    weight map): :func:`three_class_from_instances` with its touching class (2) merged into
    the background (0). The touching pixels -- cell pixels with more than ``min_count - 1``
    pixels of another cell in their ``(2k + 1)^d`` window -- therefore become a background
    strip between cells that meet, so connected components of the cell class still give one
    object per cell.

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
        Instance labels, 0 = background.
    k, min_count : int
        As in :func:`three_class_from_instances` (eq. 4.1).

    Returns
    -------
    np.ndarray
        ``uint8`` class map, same shape, in {0, 1} (0 = background incl. touching, 1 = cell).
    """
    out = three_class_from_instances(labels, k=k, min_count=min_count)
    out[out == TOUCHING] = BACKGROUND
    return out


def four_class_with_gap(
    labels: np.ndarray, k: int = 2, gap_radius: int = 3, min_count: int = 1
) -> np.ndarray:
    """Instance labels -> background / cell / touching / gap (T 5.2, 5.2.1).

    ``h(p) = 0`` if ``g(p) = 0`` and ``rho_e(p) = 0``; ``3`` (gap) if ``g(p) = 0`` and
    ``rho_e(p) > 0``; ``2`` (touching) if a pixel ``p'`` of another cell lies in ``eta_k(p)``;
    ``1`` otherwise. ``rho_e = (g closed by e) - g`` is the bottom-hat of the instance map with
    a hyper-sphere ``e``. For a label image closed with a flat element, a background pixel has
    ``rho_e > 0`` exactly when it lies in the binary closing of the foreground, which is what is
    computed (so label numbering cannot matter). Outside the image counts as background.

    ``k`` is the half-size of the ``(2k + 1)^d`` touching neighbourhood (``k = 2`` in all
    experiments of T 5.2.1); it is *not* the size of ``e``. The thesis writes the touching
    condition with "for all p'", which no pixel can satisfy (``p`` is in its own window); it is
    read as "there exists", i.e. ``min_count = 1``, unlike eq. 4.1's "> 1".

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
    k : int
        Touching neighbourhood half-size.
    gap_radius : int
        Radius of the disk (2D) / ball (3D) ``e``. The thesis sets it per data set without
        giving values; 3 (closes gaps up to about 5 pixels wide) is this package's default.
    min_count : int
        Pixels of other cells needed in the window for "touching".

    Returns
    -------
    np.ndarray
        ``uint8`` class map in {0, 1, 2, 3}.
    """
    lab, _ = _relabel(check_labels(labels))
    if gap_radius < 1:
        raise ValueError(f"gap_radius must be >= 1, got {gap_radius}.")
    fg = lab > 0
    out = fg.astype(np.uint8)
    out[_other_instance_mask(lab, k, min_count)] = TOUCHING
    out[~fg & _closing(fg, _ball(int(gap_radius), lab.ndim))] = GAP
    return out


def border_target(labels: np.ndarray) -> np.ndarray:
    """Border transform ground truth BTGT (D section 4): background / cell / border.

    D: pixels are borders "if their 3 x 3 neighbourhood contained elements from the outline of
    another instance". With the outline of an instance taken as its pixels that have a
    (full-connectivity) neighbour outside it, this reads:

    * a cell pixel of instance ``i`` is border (2) if its 3^d window holds a pixel of an
      instance ``j != i`` (every such pixel is on ``j``'s outline);
    * a background pixel is border (2) if its 3^d window holds pixels of two or more different
      instances (it lies *between* instances; "another" has no meaning for background, and
      marking every background pixel next to any cell would outline isolated cells too);
    * other cell pixels are 1, other background 0.

    Returns
    -------
    np.ndarray
        ``uint8`` class map in {0, 1, 2} (the three classes of the DDT top model).
    """
    lab, _ = _relabel(check_labels(labels))
    fg = lab > 0
    out = fg.astype(np.uint8)
    out[_other_instance_mask(lab, 1, 1)] = TOUCHING
    big = int(lab.max()) + 1 if lab.size else 1
    hi = ndi.maximum_filter(lab, size=3, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(fg, lab, big), size=3, mode="constant", cval=big)
    out[~fg & (hi > 0) & (lo < big) & (hi != lo)] = TOUCHING
    return out


def inverse_distance_target(labels: np.ndarray) -> np.ndarray:
    """Distance transform ground truth DTGT (D sections 3-4, Fig. 1), high at cell borders.

    For a pixel ``p`` of instance ``i`` let ``d(p) >= 1`` be its Euclidean distance to the
    nearest pixel *not* in ``i`` (background or another cell; the image edge is not a border,
    see module notes) and ``D_i = max_{q in i} d(q)``. The target is

        ``t(p) = 1 - (d(p) - 1) / D_i``  for ``p`` in a cell,  ``t(p) = 0`` on background,

    so every instance is normalised on its own: its outline pixels (``d = 1``) are 1, its
    innermost pixels are ``1 / D_i`` (> 0, so ``t > 0`` still marks the cells) and values fall
    linearly in between; all values lie in [0, 1] as D requires. An instance that fills the
    whole image (no pixel outside it) gets ``d`` measured from the image frame instead.

    Returns
    -------
    np.ndarray
        ``float32`` map, same shape as ``labels``.
    """
    lab, n = _relabel(check_labels(labels))
    dist = np.zeros(lab.shape, dtype=np.float64)
    for i, win in _instance_windows(lab, n, margin=1):
        inside = lab[win] == i
        if inside.all():
            d = ndi.distance_transform_edt(np.pad(inside, 1))[(slice(1, -1),) * lab.ndim]
        else:
            d = ndi.distance_transform_edt(inside)
        dist[win][inside] = d[inside]
    out = np.zeros(lab.shape, dtype=np.float32)
    if n:
        d_max = np.asarray(ndi.maximum(dist, lab, index=np.arange(1, n + 1)), dtype=np.float64)
        d_max = np.concatenate([[1.0], d_max])  # index 0 = background, unused
        fg = lab > 0
        out[fg] = (1.0 - (dist[fg] - 1.0) / d_max[lab[fg]]).astype(np.float32)
    return out


def class_target(labels: np.ndarray, n_classes: int = 3, **params: int) -> np.ndarray:
    """Semantic class map used for training (dispatcher for the training engine).

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
    n_classes : {2, 3, 4}
        2 -> :func:`two_class_from_instances` (background / cell; touching pixels are
        background);
        3 -> :func:`three_class_from_instances` (background / cell / touching);
        4 -> :func:`four_class_with_gap` (adds the gap class).
    **params
        Passed on (``k``, ``min_count``, and ``gap_radius`` for 4 classes).

    Returns
    -------
    np.ndarray
        ``uint8`` class map.
    """
    if n_classes == 2:
        return two_class_from_instances(labels, **params)
    if n_classes == 3:
        return three_class_from_instances(labels, **params)
    if n_classes == 4:
        return four_class_with_gap(labels, **params)
    raise ValueError(f"n_classes must be 2, 3 or 4, got {n_classes!r}.")
