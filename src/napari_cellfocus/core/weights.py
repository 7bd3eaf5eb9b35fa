"""Per-pixel loss weight maps for weighted cross entropy.

Every function returns a ``float32`` map with the shape of its label input, (Y, X) or
(Z, Y, X). Distances are Euclidean in pixels (voxels taken as isotropic); pixels outside the
image count as background and the image edge is not a cell contour (see
:mod:`napari_cellfocus.core.targets`). Cells may be numbered with any positive integers.

References: T = Guerrero-Peña, PhD thesis; C = Morelli et al., c-ResUnet cell counting;
Ronneberger et al., U-Net (MICCAI 2015).

Speed: every map here is meant to be computed per training crop on a CPU. Per-cell work is
done inside the cell's bounding box grown by the distance at which its contribution becomes
negligible (``truncate`` parameters), never on the whole image per cell.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import QhullError
from skimage import morphology

from napari_cellfocus.core.targets import (
    BACKGROUND,
    CELL,
    TOUCHING,
    _inner_boundary,
    _instance_windows,
    _relabel,
    class_target,
)
from napari_cellfocus.core.validation import check_labels, check_same_shape
from napari_cellfocus.core.weight_methods import WEIGHT_METHODS, get_weight_method

__all__ = [
    "WEIGHT_MAPS",
    "class_balance_weights",
    "distance_weight_map",
    "overcrowding_map",
    "shape_aware_weight_map",
    "triplex_weight_map",
    "unet_weight_map",
    "uniform_weights",
    "weight_map",
]

_NORMALIZATIONS = ("mean", "max", "none")


# --------------------------------------------------------------------------- helpers
def _semantic(labels: np.ndarray, target: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Check ``labels`` and return (consecutive labels, class map, number of cells)."""
    lab_in = check_labels(labels)
    lab, n = _relabel(lab_in)
    if target is None:
        h = class_target(lab, 3)
    else:
        h = check_labels(target, name="target")
        check_same_shape(h, lab, "target", "labels")
    return lab, h, n


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """Skeleton of a binary mask: thinning (Lam, Lee & Suen) in 2D, Lee's method in 3D."""
    if not mask.any():
        return mask.copy()
    if mask.ndim == 2:
        return morphology.thin(mask)
    return morphology.skeletonize(mask).astype(bool)


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the mask's pixel centres."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hull = morphology.convex_hull_image(mask, offset_coordinates=False)
    except (QhullError, ValueError):  # flat / collinear objects: hull = object
        return mask.copy()
    return hull | mask


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``True`` pixel (inf if none)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(~mask)


def _safe_inv(n: int | float) -> float:
    return 1.0 / n if n > 0 else 0.0


# --------------------------------------------------------------------------- balance
def class_balance_weights(
    target: np.ndarray, n_classes: int | None = None, normalize: str = "mean"
) -> np.ndarray:
    """Class imbalance weights ``w_B(p) = 1 / n_l`` for ``p`` in class ``l`` (T 3.2.2).

    ``n_l`` is the number of pixels of class ``l`` in ``target``. The thesis gives no scale;
    the map is rescaled by one factor for the whole image (ratios between classes unchanged):

    * ``"mean"`` (default): ``w_l = N / (L n_l)`` with ``N`` pixels and ``L`` classes present,
      so the mean weight over the image is exactly 1 and each present class carries the same
      total weight ``N / L``;
    * ``"max"``: ``w_l = min_k(n_k) / n_l``, the rarest present class gets 1;
    * ``"none"``: the raw ``1 / n_l``.

    Parameters
    ----------
    target : int array (Y, X) or (Z, Y, X)
        Semantic class map (values 0..C).
    n_classes : int, optional
        If given, every value of ``target`` must be below it.
    normalize : {"mean", "max", "none"}

    Returns
    -------
    np.ndarray
        ``float32`` weights, same shape as ``target``.
    """
    h = check_labels(target, name="target")
    if normalize not in _NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}.")
    if n_classes is not None and h.size and int(h.max()) >= n_classes:
        raise ValueError(
            f"target: expected class values 0..{n_classes - 1}, got maximum {int(h.max())}."
        )
    if h.size == 0:
        return np.zeros(h.shape, dtype=np.float32)
    classes, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
    per_class = 1.0 / counts.astype(np.float64)
    if normalize == "mean":
        per_class *= h.size / classes.size
    elif normalize == "max":
        per_class /= per_class.max()
    return per_class[inverse.reshape(h.shape)].astype(np.float32)


# --------------------------------------------------------------------------- U-Net
def _two_nearest_cell_distances(
    lab: np.ndarray, n: int, max_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances d1 <= d2 from every pixel to its nearest and second-nearest cell.

    Each cell's distance map is computed only in its bounding box grown by ``max_distance``;
    farther pixels keep ``inf`` for that cell. ``d1`` and ``d2`` are therefore exact wherever
    ``d2 <= max_distance`` and ``inf`` or exact elsewhere.
    """
    d1 = np.full(lab.shape, np.inf)
    d2 = np.full(lab.shape, np.inf)
    margin = math.ceil(max_distance)
    for i, win in _instance_windows(lab, n, margin):
        d = ndi.distance_transform_edt(lab[win] != i)
        a, b = d1[win], d2[win]  # views
        b[...] = np.minimum(b, np.maximum(a, d))
        a[...] = np.minimum(a, d)
    return d1, d2


def unet_weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    target: np.ndarray | None = None,
    normalize: str = "mean",
    truncate: float = 6.0,
) -> np.ndarray:
    """Ronneberger et al. near-objects weight map (the "UNET" baseline of T 3.3 / 4.3).

    ``w(p) = w_c(p) + w0 * exp(-(d1(p) + d2(p))^2 / (2 sigma^2))`` on background pixels and
    ``w(p) = w_c(p)`` on cells, where ``d1`` / ``d2`` are the distances to the nearest and the
    second-nearest cell (to their closest pixel) and ``w_c`` is
    :func:`class_balance_weights` of ``target`` (default: foreground / background).
    With fewer than two cells in reach the separation term is 0.

    "Background" is every pixel outside the cells of ``labels`` and, when a ``target`` is
    given, also every pixel of class 0 in it: with the 2-class target of UNET2
    (:func:`~napari_cellfocus.core.targets.two_class_from_instances`) the touching pixels
    of two cells that meet are background of the target, and they are exactly the
    separating pixels the term is meant for (there ``d1 = 0``, inside their own cell).
    With the 3- and 4-class targets class 0 lies outside the cells, so nothing changes.

    Speed: instead of a full-image distance transform per cell, each cell's distances are
    computed in its bounding box grown by ``truncate * sigma`` pixels, keeping the two smallest
    values per pixel. This is exact wherever ``d1 + d2 <= truncate * sigma``; elsewhere the
    dropped term is below ``w0 * exp(-truncate^2 / 2)`` (1.5e-7 for the defaults).

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
    w0 : float
        Amplitude of the separation term (10 in the U-Net paper).
    sigma : float
        Width in pixels (5 in the U-Net paper).
    target : int array, optional
        Class map for ``w_c``; default ``labels > 0``.
    normalize : {"mean", "max", "none"}
        Scale of ``w_c``, see :func:`class_balance_weights`.
    truncate : float
        Cut-off of the separation term in units of ``sigma``.

    Returns
    -------
    np.ndarray
        ``float32`` weight map.
    """
    lab, n = _relabel(check_labels(labels))
    if sigma <= 0 or truncate <= 0:
        raise ValueError(f"sigma and truncate must be > 0, got {sigma} and {truncate}.")
    if target is None:
        target = (lab > 0).astype(np.uint8)
    else:
        check_same_shape(target, lab, "target", "labels")
    w = class_balance_weights(target, normalize=normalize).astype(np.float64)
    if n >= 2:
        d1, d2 = _two_nearest_cell_distances(lab, n, truncate * sigma)
        bg = (lab == 0) | (np.asarray(target) == 0)
        w[bg] += w0 * np.exp(-((d1[bg] + d2[bg]) ** 2) / (2.0 * sigma**2))
    return w.astype(np.float32)


# --------------------------------------------------------------------------- DWM
def distance_weight_map(
    labels: np.ndarray,
    beta: float = 30.0,
    target: np.ndarray | None = None,
    normalize: str = "mean",
) -> np.ndarray:
    """Distance transform based weight map DWM, thesis eq. 3.2.

    ``w(p) = w_B(p) * (1 - min(phi_h(p) / beta, 1)) + 1``

    where ``phi_h(p)`` is the Euclidean distance from ``p`` to the closest non-background
    (cell or touching) pixel of the class map ``h`` -- 0 on those pixels -- and ``w_B`` the
    class balance weights of ``h`` (:func:`class_balance_weights`). Cells and touching pixels
    get ``w_B + 1``; background decays linearly from ``w_B + 1`` to 1 at ``beta`` pixels from
    the cells and stays 1 beyond. T Fig. 13C uses ``beta = 30``.

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
    beta : float
        Decay distance in pixels, >= 1.
    target : int array, optional
        Class map ``h``; default :func:`~napari_cellfocus.core.targets.class_target` with 3
        classes.
    normalize : {"mean", "max", "none"}
        Scale of ``w_B``.

    Returns
    -------
    np.ndarray
        ``float32`` weight map.
    """
    _, h, _ = _semantic(labels, target)
    if beta < 1:
        raise ValueError(f"beta must be >= 1 (thesis eq. 3.2), got {beta}.")
    wb = class_balance_weights(h, normalize=normalize).astype(np.float64)
    phi = _distance_to((h == CELL) | (h == TOUCHING))
    w = wb * (1.0 - np.minimum(phi / beta, 1.0)) + 1.0
    return w.astype(np.float32)


# --------------------------------------------------------------------------- SAW
def _saw_contour_weights(lab: np.ndarray, n: int, tau: float | None) -> np.ndarray:
    """``w_tau^c`` of thesis eq. 3.4 (before smoothing)."""
    skeletons = np.zeros(lab.shape, dtype=bool)  # K = union of s_t and s_r
    contours = _inner_boundary(lab)  # Gamma_t of every cell
    for i, win in _instance_windows(lab, n, margin=1):
        t = lab[win] == i
        r = _convex_hull(t) & ~t  # concave complement r_t = c_t minus t
        skeletons[win] |= _skeleton(t)
        if r.any():
            skeletons[win] |= _skeleton(r)
            inner = ndi.binary_erosion(r, structure=np.ones((3,) * r.ndim), border_value=0)
            contours[win] |= r & ~inner  # Gamma_r
    wc = np.zeros(lab.shape, dtype=np.float64)
    if not contours.any():
        return wc
    phi_k = _distance_to(skeletons)[contours]
    if tau is None:
        tau = float(phi_k.max())  # tau = sup over Gamma_H of phi_K
        wc[contours] = 1.0 - phi_k / tau if tau > 0 else 1.0
    else:
        wc[contours] = np.clip(1.0 - phi_k / tau, 0.0, 1.0)
    return wc


def shape_aware_weight_map(
    labels: np.ndarray,
    sigma: float = 3.0,
    n_passes: int = 20,
    tau: float | None = None,
    target: np.ndarray | None = None,
    normalize: str = "mean",
    propagation: str = "keep",
) -> np.ndarray:
    """Shape aware weight map SAW, thesis eqs. 3.3-3.4.

    ``w(p) = w_B(p) + (F_sigma^{n_passes} * w_tau^c)(p) + 1`` with

    ``w_tau^c(p) = 1 - phi_K(p) / tau`` on ``Gamma_H``, 0 elsewhere.

    For every cell ``t``: ``c_t`` its convex hull, ``r_t = c_t minus t`` its concave complement,
    ``s_t`` and ``s_r`` their skeletons (thinning, Lam-Lee-Suen, in 2D; Lee's method in 3D),
    ``Gamma_t`` and ``Gamma_r`` their contours. ``K`` is the union of all skeletons,
    ``phi_K`` the distance to ``K``, ``Gamma_H`` the union of all contours and, by default,
    ``tau = sup_{Gamma_H} phi_K`` (so ``w^c`` spans [0, 1] and is largest on narrow parts).
    ``F_sigma`` is a Gaussian filter of width ``sigma`` with copy (edge-replicating) padding,
    applied ``n_passes`` times (20 in the thesis) to "propagate ``w^c`` values from
    ``Gamma_H`` to neighboring pixels".

    Reading of the propagation (``propagation``). Twenty plain Gaussian passes (``"blur"``)
    preserve the *sum* of ``w^c``: with sigma 3 they spread it over ~13 px (3 sqrt(20)), so its
    peak falls from 1 to ~0.15 and SAW becomes class balance + 1 (on a crowded image the
    term averaged 0.06-0.11 against class weights of 0.7-3). T describes the filter as
    *propagating* the contour values to neighbouring pixels and says small distances "give
    rise to large weights", so the default ``"keep"`` propagates without losing them: each
    pass is ``w <- max(F_sigma * w, w^c)``, so every contour pixel keeps at least its
    eq. 3.4 value (narrow parts: ~1) and the neighbourhood gets a smooth, decaying copy of it
    (on the same crowded image: mean 0.35 on background, 0.54 on cells, peak 1).

    Other choices the thesis leaves open: the convex hull is that of the pixel centres (so
    convex digital shapes have an empty ``r_t``); ``sigma`` is not given in the thesis, 3
    pixels (the value of T 4.2.3) is used; a user-given ``tau`` smaller than the supremum
    clips ``w^c`` at 0; if every contour pixel lies on a skeleton (``tau = 0``), ``w^c = 1``
    there.

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
    sigma : float
        Gaussian width of one ``F_sigma`` pass, pixels (0 disables smoothing).
    n_passes : int
        Number of ``F_sigma`` passes.
    tau : float, optional
        Distance normalisation; default the supremum above.
    target : int array, optional
        Class map for ``w_B``; default 3-class target of ``labels``.
    normalize : {"mean", "max", "none"}
        Scale of ``w_B``.
    propagation : {"keep", "blur"}
        ``"keep"`` (default): each pass keeps at least the contour values of eq. 3.4;
        ``"blur"``: plain repeated Gaussian filtering (the contour term then becomes small).

    Returns
    -------
    np.ndarray
        ``float32`` weight map.
    """
    lab, h, n = _semantic(labels, target)
    if sigma < 0 or n_passes < 0:
        raise ValueError(f"sigma and n_passes must be >= 0, got {sigma} and {n_passes}.")
    if tau is not None and tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}.")
    if propagation not in ("keep", "blur"):
        raise ValueError(f"propagation must be 'keep' or 'blur', got {propagation!r}.")
    contour_w = _saw_contour_weights(lab, n, tau)
    wc = contour_w
    if sigma > 0:
        for _ in range(int(n_passes)):
            wc = ndi.gaussian_filter(wc, sigma=sigma, mode="nearest")
            if propagation == "keep":
                wc = np.maximum(wc, contour_w)
    wb = class_balance_weights(h, normalize=normalize).astype(np.float64)
    return (wb + wc + 1.0).astype(np.float32)


# --------------------------------------------------------------------------- W3
def triplex_weight_map(
    weak_labels: np.ndarray,
    beta: float = 30.0,
    nu: float = 10.0,
    sigma: float = 3.0,
    target: np.ndarray | None = None,
    balance_contour: bool = True,
) -> np.ndarray:
    """Triplex weight map W3 for weak (incomplete / inaccurate) annotations, thesis eq. 4.3.

    With ``phi_beta(u) = max(1 - u / beta, 0)`` and ``n_l`` the *number of pixels* of class
    ``l`` in the 3-class map ``h`` (T 3.2 / 5.2 define ``n_l = |h^l|``):

    * background (``h = 0``): ``nu / n_0 + nu * phi_beta(phi_h(p)) / n_1``
    * cell contour (``h = 1``, ``p`` in ``Gamma``): ``nu / n_1 + nu * phi_beta(phi_K(p))``
    * other cell pixels: ``nu / n_1 + w(zeta(p)) * exp(-phi_Gamma(p)^2 / sigma^2)``
    * touching (``h = 2``): ``nu / n_2``

    ``phi_h``: distance to the nearest cell or touching pixel; ``Gamma``: contour pixels of the
    annotated cells of class 1; ``phi_K``: distance to the cells' skeletons; ``phi_Gamma`` and
    ``zeta(p)``: distance to, and the nearest pixel of, ``Gamma``. The "triplex" are the three
    terms: class balance, contour importance, Gaussian spread into the cells. Background
    farther than ``beta`` from every annotated cell keeps only ``nu / n_0``, which is close to
    zero because ``n_0`` is a pixel count -- so unannotated cells there barely teach
    "background". Contour pixels get weights of order ``nu``; ``sigma`` sets how far into the
    cell they spread; ``nu`` scales everything.

    Reading of the contour term. Printed literally, the contour term ``nu * phi_beta(phi_K)``
    has no ``1 / n_1`` factor while every other term has one; with pixel counts it is then
    ~1000 times larger than the weight of background next to the cell, so training learns
    "cell" at contours and nothing teaches "background" (a tiny network trained with it
    predicted foreground almost everywhere). The text right after eq. 4.3 says the touching
    weight ``nu / n_2`` is "larger than all other weights", which holds only if the contour
    term is class-balanced too. ``balance_contour=True`` (default) therefore uses
    ``nu / n_1 + nu * phi_beta(phi_K(p)) / n_1`` on contours; ``False`` gives the literal print.

    Parameters
    ----------
    weak_labels : int array (Y, X) or (Z, Y, X)
        Instance labels of the annotated cells only, 0 elsewhere.
    beta : float
        Saturation distance of ``phi_beta`` in pixels (30 in the thesis).
    nu : float
        Weight scale (10 in the thesis).
    sigma : float
        Width of the Gaussians centred on contour pixels, pixels (3 in the thesis).
    target : int array, optional
        3-class map ``h``; default :func:`~napari_cellfocus.core.targets.class_target`.
    balance_contour : bool
        Divide the contour term by ``n_1`` (see above); ``False`` for the literal eq. 4.3.

    Returns
    -------
    np.ndarray
        ``float32`` weight map.
    """
    lab, h, n = _semantic(weak_labels, target)
    if beta <= 0 or sigma <= 0:
        raise ValueError(f"beta and sigma must be > 0, got {beta} and {sigma}.")
    inv = [_safe_inv(int(np.count_nonzero(h == c))) for c in (BACKGROUND, CELL, TOUCHING)]
    w = np.zeros(lab.shape, dtype=np.float64)

    bg = h == BACKGROUND
    phi_h = _distance_to((h == CELL) | (h == TOUCHING))[bg]
    w[bg] = nu * inv[0] + nu * np.maximum(1.0 - phi_h / beta, 0.0) * inv[1]

    cell = h == CELL
    contour = cell & _inner_boundary(lab)
    skeletons = np.zeros(lab.shape, dtype=bool)
    for i, win in _instance_windows(lab, n, margin=1):
        skeletons[win] |= _skeleton(lab[win] == i)
    if contour.any():
        phi_k = _distance_to(skeletons)[contour]
        contour_scale = inv[1] if balance_contour else 1.0
        w[contour] = nu * inv[1] + nu * np.maximum(1.0 - phi_k / beta, 0.0) * contour_scale
        interior = cell & ~contour
        phi_g, nearest = ndi.distance_transform_edt(~contour, return_indices=True)
        w_near = w[tuple(idx[interior] for idx in nearest)]
        w[interior] = nu * inv[1] + w_near * np.exp(-(phi_g[interior] ** 2) / sigma**2)
    else:
        w[cell] = nu * inv[1]

    w[h == TOUCHING] = nu * inv[2]
    return w.astype(np.float32)


# --------------------------------------------------------------------------- counting
def overcrowding_map(
    labels: np.ndarray,
    sigma: float = 25.0,
    cell_weight: float = 1.0,
    background_weight: float = 1.5,
    combine: str = "multiply",
    truncate: float = 5.0,
) -> np.ndarray:
    """Overcrowding weight map of the c-ResUnet counting paper (C section 4.2).

    ``S(p) = sum_i exp(-d_i(p)^2 / (2 sigma^2))`` on **background** pixels, where ``d_i(p)``
    is the distance from ``p`` to the closest contour pixel of cell ``i``, so contributions of
    nearby cells add up in the gaps where cells crowd; ``S = 0`` on cells. The map is floored
    at 1, ``M = max(S, 1)`` (cells and isolated background get 1), and C's class weights,
    1 on cells and 1.5 on background, then apply; ``combine`` says how:

    * ``"multiply"`` (default): ``w = class_weight * M`` -- cells ``cell_weight``, background
      ``background_weight * max(S, 1)``;
    * ``"add"``: ``w = class_weight + S`` (Ronneberger's ``w_c + ...`` form).

    Either way a gap pixel between two close cells (``S`` near 2) weighs more than any cell
    pixel. C's steps (distance to the border for "each pixel of the current map", summed
    over cells) leave open where the sum is kept; its aim ("penalize the errors on the
    borders of touching cells ... bigger as the number and/or the proximity of cells
    increases", Fig. 3) and the Ronneberger map it develops weight the background between
    cells, so the sum is kept on background only: summed everywhere, cell interiors near
    their own border got about as much weight as the gaps.

    Speed: each cell's distances are computed in its bounding box grown by
    ``truncate * sigma`` pixels; a dropped contribution is below ``exp(-truncate^2 / 2)``
    (3.7e-6 for the default).

    Parameters
    ----------
    labels : int array (Y, X) or (Z, Y, X)
    sigma : float
        Pixels; C sets it to the average cell radius, 25.
    cell_weight, background_weight : float
        Class weights (C: 1 and 1.5).
    combine : {"multiply", "add"}
    truncate : float
        Cut-off in units of ``sigma``.

    Returns
    -------
    np.ndarray
        ``float32`` weight map.
    """
    lab, n = _relabel(check_labels(labels))
    if sigma <= 0 or truncate <= 0:
        raise ValueError(f"sigma and truncate must be > 0, got {sigma} and {truncate}.")
    if combine not in ("add", "multiply"):
        raise ValueError(f"combine must be 'add' or 'multiply', got {combine!r}.")
    contours = _inner_boundary(lab)
    total = np.zeros(lab.shape, dtype=np.float64)
    for i, win in _instance_windows(lab, n, math.ceil(truncate * sigma)):
        own = contours[win] & (lab[win] == i)
        if not own.any():
            continue
        d = ndi.distance_transform_edt(~own)
        total[win] += np.exp(-(d**2) / (2.0 * sigma**2))
    background = lab == 0
    total[~background] = 0.0
    class_w = np.where(background, background_weight, cell_weight)
    if combine == "add":
        w = class_w + total
    else:
        w = class_w * np.maximum(total, 1.0)
    return w.astype(np.float32)


def uniform_weights(labels: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """Weight 1 on every pixel (the ``"none"`` weight map: a plain mean of the loss)."""
    return np.ones(check_labels(labels).shape, np.float32)


# --------------------------------------------------------------------------- dispatch
class _Functions(Mapping):
    """Read-only ``{key: function}`` view of ``core.weight_methods.WEIGHT_METHODS``."""

    def __getitem__(self, key: str) -> Any:
        return WEIGHT_METHODS[key].function

    def __iter__(self) -> Iterator[str]:
        return iter(WEIGHT_METHODS)

    def __len__(self) -> int:
        return len(WEIGHT_METHODS)


#: Weight maps by name, ``{key: function}``: a view of the registry
#: :data:`napari_cellfocus.core.weight_methods.WEIGHT_METHODS`, where each is declared
#: (:func:`~napari_cellfocus.core.weight_methods.register_weight_method` adds one).
WEIGHT_MAPS: Mapping[str, Any] = _Functions()


def weight_map(name: str, labels: np.ndarray, **params: Any) -> np.ndarray:
    """Compute the weight map called ``name`` for an instance label image.

    Parameters
    ----------
    name : a key of the registry (``core.weight_methods.WEIGHT_METHODS``)
        "balance", "unet", "dwm", "saw", "w3", "overcrowding", "none" or one registered
        later. A map whose entry takes the class map (``input="target"``, as
        ``"balance"``) gets it built with
        :func:`~napari_cellfocus.core.targets.class_target` (``n_classes`` param, default 3;
        or pass ``target=``); the others are called with ``labels``.
    labels : int array (Y, X) or (Z, Y, X)
    **params
        Keyword parameters of the chosen function.

    Returns
    -------
    np.ndarray
        ``float32`` weight map, same shape as ``labels``.
    """
    spec = get_weight_method(name)
    if spec.input == "target":
        n_classes = int(params.pop("n_classes", 3))
        target = params.pop("target", None)
        if target is None:
            target = class_target(labels, n_classes)
        else:
            check_same_shape(target, check_labels(labels), "target", "labels")
        return spec.function(target, n_classes=n_classes, **params)
    return spec.function(labels, **params)
