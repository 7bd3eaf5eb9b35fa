"""Segmentation, detection and counting metrics for instance label images.

All functions take label images of shape (Y, X) or (Z, Y, X) with 0 = background
and every positive integer one object; labels need not be consecutive.  Class maps
(for :func:`weighted_dice_multiclass`) use the package-wide class convention
0 = background, 1 = cell, 2 = touching, 3 = gap.

Definitions and where they come from
------------------------------------
* Instance matching, precision / recall / F1 at "Jaccard index greater than 0.5"
  and the panoptic scores RQ, SQ, PQ: thesis (T) sections 3.3 and 4.3, after
  Kirillov et al. (2019), *Panoptic Segmentation*.  A prediction matches a
  ground-truth object when their IoU is **strictly greater** than the threshold,
  as in both sources.  For thresholds >= 0.5 such matches are unique (two objects
  cannot both overlap a third by more than half of their union), so no assignment
  step is needed; below 0.5 a one-to-one assignment maximising the summed IoU is
  solved with :func:`scipy.optimize.linear_sum_assignment`.
* Average precision over IoU thresholds (``TP / (TP + FP + FN)``, the Data
  Science Bowl 2018 / StarDist "AP") and its mean over IoU 0.5:0.95.
* Contour F1 with an uncertainty radius: T section 3.3, Table 2 (after Estrada &
  Jepson, 2009).
* Centroid-matching F1, count MAE / median AE and mean IoU: counting paper (C)
  section 5.1.
* Boundary displacement error (BDE) and weighted Dice multi-class (WDMC): DDT
  paper (D) section 5 (BDE after Unnikrishnan et al., 2007).

Empty inputs never divide by zero or warn; the value each function returns in
that case is stated in its docstring.  The shared rule for detection scores is:
nothing to find and nothing found is a perfect result (1.0); one side empty and
the other not is a complete failure (0.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from skimage.segmentation import find_boundaries

from napari_cellfocus.core.validation import check_labels, check_same_shape

__all__ = [
    "Matching",
    "average_precision",
    "boundary_displacement_error",
    "centroid_match_f1",
    "contour_f1",
    "count_errors",
    "evaluate",
    "iou_matrix",
    "match_instances",
    "mean_iou",
    "weighted_dice_multiclass",
]

#: IoU values and thresholds closer than this are treated as equal, so that a
#: threshold such as ``np.arange(0.5, 1.0, 0.05)[2] == 0.6000000000000001`` behaves
#: like 0.6 and an IoU of exactly 0.6 is *not* above it.
_TOL = 1e-9

#: Default IoU thresholds for :func:`average_precision` (0.5, 0.55, ..., 0.95).
DEFAULT_AP_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


# --------------------------------------------------------------------------- inputs


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = check_labels(gt, name="ground truth")
    pred = check_labels(pred, name="prediction")
    check_same_shape(gt, pred, "ground truth", "prediction")
    return gt, pred


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing: expected {ndim} positive finite values (one per axis), got {spacing!r}."
        )
    return sp


def _check_threshold(iou_threshold: float) -> float:
    t = float(iou_threshold)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"iou_threshold: expected a value in [0, 1], got {iou_threshold!r}.")
    return t


# --------------------------------------------------------------------- label overlap


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relabel to 1..n (0 stays background).

    Returns the flat compact labels, the original ids (sorted, length n) and the
    object sizes in pixels (length n).
    """
    flat = labels.ravel()
    if flat.size == 0:
        return flat.astype(np.intp), np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        # Look-up table: O(size), no sort.
        counts = np.bincount(flat, minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids.astype(np.int64), counts[ids].astype(np.int64)
    # Very large, sparse ids: sort instead of a huge table.
    uniq, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.ravel()
    if uniq[0] != 0:
        inverse = inverse + 1
        uniq = np.concatenate([[0], uniq])
    areas = np.bincount(inverse, minlength=uniq.size)[1:]
    return inverse.astype(np.intp), uniq[1:].astype(np.int64), areas.astype(np.int64)


@dataclass(frozen=True)
class _Overlap:
    """Sparse IoU between every overlapping (ground truth, prediction) pair."""

    true_ids: np.ndarray
    pred_ids: np.ndarray
    rows: np.ndarray  # index into true_ids
    cols: np.ndarray  # index into pred_ids
    iou: np.ndarray


def _overlap(gt: np.ndarray, pred: np.ndarray) -> _Overlap:
    g, true_ids, true_area = _compact(gt)
    p, pred_ids, pred_area = _compact(pred)
    nt, npr = true_ids.size, pred_ids.size
    empty = np.zeros(0, np.intp)
    if nt == 0 or npr == 0:
        return _Overlap(true_ids, pred_ids, empty, empty, np.zeros(0))
    both = (g > 0) & (p > 0)
    key = (g[both].astype(np.int64) - 1) * npr + (p[both].astype(np.int64) - 1)
    if nt * npr <= max(4 * key.size, 1 << 22):
        counts = np.bincount(key, minlength=nt * npr)
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:
        pairs, inter = np.unique(key, return_counts=True)
    rows, cols = np.divmod(pairs, npr)
    union = true_area[rows] + pred_area[cols] - inter
    iou = inter / union
    return _Overlap(true_ids, pred_ids, rows.astype(np.intp), cols.astype(np.intp), iou)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection over union (Jaccard index) between every pair of objects.

    Computed from the overlapping pixels only, with one ``np.bincount`` over a
    combined (true, predicted) index; no Python loop over pixels or objects.

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Ground-truth and predicted instance labels of the same shape, 0 = background.

    Returns
    -------
    iou : float64 array (n_true, n_pred)
        ``iou[i, j] = |T_i ∩ P_j| / |T_i ∪ P_j|`` in [0, 1]; 0 for pairs that do
        not overlap.  Shape (0, n_pred) / (n_true, 0) when a side is empty.
    true_ids : int64 array (n_true,)
        Ground-truth label of each row (sorted).
    pred_ids : int64 array (n_pred,)
        Predicted label of each column (sorted).
    """
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    iou = np.zeros((ov.true_ids.size, ov.pred_ids.size))
    iou[ov.rows, ov.cols] = ov.iou
    return iou, ov.true_ids, ov.pred_ids


# ------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Matching:
    """One-to-one matching between ground-truth and predicted objects.

    Attributes
    ----------
    true_ids, pred_ids : int64 arrays
        Every ground-truth / predicted label present (sorted).
    matched_true, matched_pred : int64 arrays (tp,)
        Labels of the matched pairs, sorted by ground-truth label.
    matched_iou : float64 array (tp,)
        IoU of each matched pair (each > ``iou_threshold``).
    iou_threshold : float
        The threshold used.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    matched_true: np.ndarray
    matched_pred: np.ndarray
    matched_iou: np.ndarray
    iou_threshold: float

    @property
    def tp(self) -> int:
        """Number of matched pairs (true positives)."""
        return int(self.matched_true.size)

    @property
    def n_true(self) -> int:
        """Number of ground-truth objects."""
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted objects."""
        return int(self.pred_ids.size)

    @property
    def fp(self) -> int:
        """Predicted objects without a match (false positives)."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Ground-truth objects without a match (false negatives)."""
        return self.n_true - self.tp

    @property
    def unmatched_true(self) -> np.ndarray:
        """Labels of the false negatives."""
        return np.setdiff1d(self.true_ids, self.matched_true)

    @property
    def unmatched_pred(self) -> np.ndarray:
        """Labels of the false positives."""
        return np.setdiff1d(self.pred_ids, self.matched_pred)


def _match(ov: _Overlap, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched (row, col, iou) index triples for IoU strictly above ``threshold``."""
    keep = ov.iou > threshold + _TOL
    rows, cols, iou = ov.rows[keep], ov.cols[keep], ov.iou[keep]
    if threshold < 0.5 and rows.size:
        # Candidates may conflict: optimal one-to-one assignment on the candidates.
        urows, ri = np.unique(rows, return_inverse=True)
        ucols, ci = np.unique(cols, return_inverse=True)
        score = np.zeros((urows.size, ucols.size))
        score[ri.ravel(), ci.ravel()] = iou
        a, b = linear_sum_assignment(score, maximize=True)
        chosen = score[a, b] > 0
        rows, cols, iou = urows[a[chosen]], ucols[b[chosen]], score[a, b][chosen]
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order], iou[order]


def match_instances(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> Matching:
    """Match predicted objects to ground-truth objects by IoU.

    A pair can match only when its IoU is **strictly greater** than
    ``iou_threshold`` (thesis T 3.3: "Jaccard Index greater than 0.5";
    Kirillov et al. 2019: IoU > 0.5).  IoU and threshold are compared with a
    1e-9 tolerance, so an IoU equal to the threshold never matches even when the
    threshold carries floating-point noise (e.g. from ``np.arange``).

    * ``iou_threshold >= 0.5``: every object has at most one partner with
      IoU > 0.5, so all such pairs form a unique matching (Kirillov et al.).
    * ``iou_threshold < 0.5``: among the pairs above the threshold, the
      one-to-one assignment with the largest summed IoU is chosen
      (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Instance labels of the same shape; 0 = background; ids need not be
        consecutive.
    iou_threshold : float in [0, 1]
        1.0 matches nothing (no IoU exceeds 1).

    Returns
    -------
    Matching
    """
    t = _check_threshold(iou_threshold)
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    rows, cols, iou = _match(ov, t)
    return Matching(
        true_ids=ov.true_ids,
        pred_ids=ov.pred_ids,
        matched_true=ov.true_ids[rows],
        matched_pred=ov.pred_ids[cols],
        matched_iou=iou,
        iou_threshold=t,
    )


# ------------------------------------------------------------------ detection scores


def _prf(tp: int, n_true: int, n_pred: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with the empty-input convention of this module."""
    if n_true == 0 and n_pred == 0:
        return 1.0, 1.0, 1.0
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred)  # = 2TP / (2TP + FP + FN) = TP / (TP + FP/2 + FN/2)
    return float(precision), float(recall), float(f1)


def _scores(tp: int, n_true: int, n_pred: int, iou_sum: float) -> dict:
    precision, recall, f1 = _prf(tp, n_true, n_pred)
    fp, fn = n_pred - tp, n_true - tp
    both_empty = n_true == 0 and n_pred == 0
    if both_empty:
        sq, ap = 1.0, 1.0
    else:
        sq = iou_sum / tp if tp else 0.0
        ap = tp / (tp + fp + fn)
    rq = f1
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ap": float(ap),
        "pq": float(sq * rq),
        "sq": float(sq),
        "rq": rq,
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "mean_matched_iou": float(sq),
        "count_error": int(n_pred - n_true),
    }


def evaluate(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Detection and panoptic-quality scores of a predicted label image.

    Matching as in :func:`match_instances` (IoU strictly above the threshold).
    With TP matched pairs, FP unmatched predictions and FN unmatched
    ground-truth objects (Kirillov et al. 2019; thesis T 3.3, 4.3):

    * precision = TP / (TP + FP), recall = TP / (TP + FN)
    * f1 = rq = TP / (TP + FP/2 + FN/2)
    * sq = mean IoU over the TP pairs (also returned as ``mean_matched_iou``)
    * pq = sq * rq
    * ap = TP / (TP + FP + FN) (DSB 2018 / StarDist "average precision")
    * count_error = n_pred - n_true (signed, in objects)

    Empty inputs (no division by zero):

    * no ground truth and no prediction: precision = recall = f1 = rq = sq =
      pq = ap = mean_matched_iou = 1.0 (perfect);
    * only one side empty: precision = recall = f1 = rq = sq = pq = ap =
      mean_matched_iou = 0.0;
    * no TP otherwise: sq = pq = mean_matched_iou = 0.0.

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Instance labels of the same shape (0 = background, ids need not be
        consecutive).
    iou_threshold : float in [0, 1]
        Default 0.5 as in the thesis and Kirillov et al.

    Returns
    -------
    dict
        Keys ``precision, recall, f1, ap, pq, sq, rq`` (float), ``tp, fp, fn,
        n_true, n_pred, count_error`` (int), ``mean_matched_iou`` (float) and
        ``iou_threshold`` (float).
    """
    m = match_instances(gt, pred, iou_threshold)
    out = _scores(m.tp, m.n_true, m.n_pred, float(m.matched_iou.sum()))
    out["iou_threshold"] = m.iou_threshold
    return out


def average_precision(
    gt: np.ndarray,
    pred: np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_AP_THRESHOLDS,
) -> dict:
    """Detection scores over a range of IoU thresholds.

    For each threshold ``t`` the objects are matched as in
    :func:`match_instances` (IoU > t) and ``ap(t) = TP / (TP + FP + FN)`` (the
    DSB 2018 / StarDist "AP") and ``f1(t) = TP / (TP + FP/2 + FN/2)`` are
    computed.  The overlaps are computed once for all thresholds.

    Empty inputs: both empty -> ap = f1 = precision = recall = 1.0 at every
    threshold; one side empty -> 0.0 at every threshold.

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Instance labels of the same shape.
    thresholds : 1-D sequence of float in [0, 1]
        Default 0.5, 0.55, ..., 0.95.

    Returns
    -------
    dict
        ``thresholds, ap, f1, precision, recall`` (float64 arrays, one value per
        threshold), ``tp, fp, fn`` (int64 arrays), ``mean_ap`` and ``mean_f1``
        (float, the means over the thresholds, e.g. "AP@[0.5:0.95]").
    """
    ts = np.asarray(thresholds, dtype=float).ravel()
    if ts.size == 0:
        raise ValueError("thresholds: expected at least one IoU threshold, got none.")
    for t in ts:
        _check_threshold(t)
    gt, pred = _check_pair(gt, pred)
    ov = _overlap(gt, pred)
    n_true, n_pred = ov.true_ids.size, ov.pred_ids.size
    rows = [_scores(_match(ov, t)[0].size, n_true, n_pred, 0.0) for t in ts]

    def col(key: str, dtype: type) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=dtype)

    ap, f1 = col("ap", float), col("f1", float)
    return {
        "thresholds": ts,
        "ap": ap,
        "f1": f1,
        "precision": col("precision", float),
        "recall": col("recall", float),
        "tp": col("tp", np.int64),
        "fp": col("fp", np.int64),
        "fn": col("fn", np.int64),
        "mean_ap": float(ap.mean()),
        "mean_f1": float(f1.mean()),
    }


# ------------------------------------------------------------------------- counting


def _centroids(labels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Centroids (n, ndim) of the objects in ``labels`` in physical units."""
    compact, ids, areas = _compact(labels)
    compact = compact.reshape(labels.shape)
    fg = compact > 0
    which = compact[fg] - 1
    coords = np.nonzero(fg)
    out = np.empty((ids.size, labels.ndim))
    for axis, c in enumerate(coords):
        out[:, axis] = np.bincount(which, weights=c, minlength=ids.size) / areas
    return out * spacing


def centroid_match_f1(
    gt: np.ndarray,
    pred: np.ndarray,
    max_distance: float = 50.0,
    spacing: Sequence[float] | None = None,
    matching: str = "optimal",
) -> dict:
    """Detection F1 from matching object centroids (counting paper C, 5.1).

    A ground-truth and a predicted object can be paired when the Euclidean
    distance between their centroids is **strictly less** than ``max_distance``
    (C 5.1: "less than a fixed threshold (50 pixels, i.e. average cell
    diameter)").  Pairing is one-to-one, by one of two rules (``matching``):

    * ``"optimal"`` (default): the assignment with the most pairs and, among
      those, the smallest total distance
      (:func:`scipy.optimize.linear_sum_assignment` on the candidate pairs);
    * ``"nearest"``: C 5.1's rule, "each target cell was compared to all of the
      objects in the corresponding predicted mask and uniquely associated with
      the closest one", read as closest first: the candidate pairs are taken
      in increasing order of distance (ties: lower ground-truth, then
      prediction, index in label order), each skipped when its target or its
      prediction is already paired.  It never finds more pairs than
      ``"optimal"`` and can find fewer (a prediction closest to two targets goes
      to the nearer one even when the other has no second choice); use it to
      compare with C Table 1.

    Paired predictions are TP, unpaired ground truth FN, unpaired predictions FP.

    Empty inputs: both empty -> precision = recall = f1 = 1.0; one side empty ->
    0.0.

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Instance labels of the same shape.
    max_distance : float > 0
        Distance threshold in pixels (or in ``spacing`` units).  Default 50 px,
        the value of C 5.1 (their average cell diameter): set it to about one
        cell diameter for your data.
    spacing : sequence of float, optional
        Physical size of a pixel along each axis (Z, Y, X order), for
        anisotropic stacks.  Default 1 for every axis.
    matching : {"optimal", "nearest"}
        Pairing rule, see above.

    Returns
    -------
    dict
        ``precision, recall, f1`` (float) and ``tp, fp, fn, n_true, n_pred`` (int).
    """
    gt, pred = _check_pair(gt, pred)
    if not (np.isfinite(max_distance) and max_distance > 0):
        raise ValueError(f"max_distance: expected a positive number, got {max_distance!r}.")
    if matching not in ("optimal", "nearest"):
        raise ValueError(f"matching: expected 'optimal' or 'nearest', got {matching!r}.")
    sp = _check_spacing(spacing, gt.ndim)
    ct, cp = _centroids(gt, sp), _centroids(pred, sp)
    n_true, n_pred = len(ct), len(cp)
    tp = 0
    if n_true and n_pred:
        dist = cKDTree(ct).sparse_distance_matrix(cKDTree(cp), max_distance, output_type="ndarray")
        dist = dist[dist["v"] < max_distance]
        if dist.size and matching == "nearest":
            tp = _closest_first(dist["i"], dist["j"], dist["v"])
        elif dist.size:
            urows, ri = np.unique(dist["i"], return_inverse=True)
            ucols, ci = np.unique(dist["j"], return_inverse=True)
            # Forbidden pairs cost more than any complete set of allowed pairs,
            # so the assignment first maximises the number of pairs.
            big = max_distance * (min(urows.size, ucols.size) + 1)
            cost = np.full((urows.size, ucols.size), big)
            cost[ri.ravel(), ci.ravel()] = dist["v"]
            a, b = linear_sum_assignment(cost)
            tp = int(np.count_nonzero(cost[a, b] < max_distance))
    precision, recall, f1 = _prf(tp, n_true, n_pred)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "n_true": n_true,
        "n_pred": n_pred,
    }


def _closest_first(rows: np.ndarray, cols: np.ndarray, dist: np.ndarray) -> int:
    """Number of pairs taken by closest-first one-to-one pairing of the candidate
    pairs ``(rows[k], cols[k])`` at distances ``dist[k]``."""
    taken_rows: set[int] = set()
    taken_cols: set[int] = set()
    for k in np.lexsort((cols, rows, dist)):
        r, c = int(rows[k]), int(cols[k])
        if r not in taken_rows and c not in taken_cols:
            taken_rows.add(r)
            taken_cols.add(c)
    return len(taken_rows)


def count_errors(
    true_counts: Sequence[float] | np.ndarray, pred_counts: Sequence[float] | np.ndarray
) -> dict:
    """Counting errors over several images (counting paper C, 5.1).

    With ``e_k = pred_k - true_k`` for image k:
    MAE = mean |e_k|, MedAE = median |e_k|, mean_error = mean e_k (bias).

    Parameters
    ----------
    true_counts, pred_counts : 1-D sequences of non-negative numbers, same length
        Objects per image.

    Returns
    -------
    dict
        ``mae, median_ae, mean_error`` (float, in objects) and ``n_images`` (int).
        With no images all three errors are 0.0.
    """
    t = np.asarray(true_counts, dtype=float)
    p = np.asarray(pred_counts, dtype=float)
    for name, a in (("true_counts", t), ("pred_counts", p)):
        if a.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D list of counts, got shape {a.shape}.")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name}: counts must be finite and >= 0, got {a.tolist()!r}.")
    if t.shape != p.shape:
        raise ValueError(
            f"true_counts and pred_counts must have the same length, got {t.size} and {p.size}."
        )
    if t.size == 0:
        return {"mae": 0.0, "median_ae": 0.0, "mean_error": 0.0, "n_images": 0}
    err = p - t
    return {
        "mae": float(np.mean(np.abs(err))),
        "median_ae": float(np.median(np.abs(err))),
        "mean_error": float(np.mean(err)),
        "n_images": int(t.size),
    }


# ------------------------------------------------------------------ boundary metrics


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 1-connected neighbour of another label (incl. background).

    The image border itself is not a boundary.
    """
    return find_boundaries(labels, connectivity=1, mode="inner")


def _distance_to(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of ``mask``."""
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


def contour_f1(
    gt: np.ndarray,
    pred: np.ndarray,
    radius: float = 2,
    spacing: Sequence[float] | None = None,
) -> dict:
    """Contour (boundary) F1 with an uncertainty radius (thesis T 3.3, Table 2).

    Boundary pixels are object pixels with a face-connected neighbour of a
    different label (background or another object), so contacts between
    touching cells count as contour; the image edge does not.  A predicted
    boundary pixel is correct when a ground-truth boundary pixel lies within
    Euclidean distance ``radius`` (inclusive), and a ground-truth boundary pixel
    is recovered when a predicted boundary pixel lies within ``radius``:

    precision = correct predicted / all predicted boundary pixels,
    recall = recovered ground-truth / all ground-truth boundary pixels,
    F1 = 2 P R / (P + R).

    This tolerance matching follows the idea of Estrada & Jepson (2009) cited by
    T; it is not one-to-one (several pixels may be matched to the same
    counterpart).  The thesis reports radii 2..7 px (Table 2) and 1..7 (Fig. 15);
    ``radius=0`` demands exact coincidence.

    Empty inputs: no boundary on either side -> P = R = F1 = 1.0; on one side
    only -> 0.0; P = R = 0 -> F1 = 0.0.

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Label images (or binary masks) of the same shape.
    radius : float >= 0
        Uncertainty radius in pixels (or ``spacing`` units).  Default 2.
    spacing : sequence of float, optional
        Pixel size per axis for anisotropic stacks.

    Returns
    -------
    dict
        ``precision, recall, f1`` (float).
    """
    gt, pred = _check_pair(gt, pred)
    if not (np.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius: expected a number >= 0, got {radius!r}.")
    sp = _check_spacing(spacing, gt.ndim)
    bt, bp = _boundaries(gt), _boundaries(pred)
    nt, npx = int(bt.sum()), int(bp.sum())
    if nt == 0 and npx == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    if nt == 0 or npx == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision = float(np.count_nonzero(_distance_to(bt, sp)[bp] <= radius + _TOL) / npx)
    recall = float(np.count_nonzero(_distance_to(bp, sp)[bt] <= radius + _TOL) / nt)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1)}


def boundary_displacement_error(
    gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None
) -> float:
    """Boundary displacement error, BDE (DDT paper D, section 5).

    After Unnikrishnan et al. (2007) as cited by D: the error of a boundary
    pixel is its distance to the closest boundary pixel of the other image;
    BDE averages these errors over the boundary pixels of each image and then
    over both directions::

        BDE = ( mean_{b in B_gt} d(b, B_pred) + mean_{b in B_pred} d(b, B_gt) ) / 2

    Boundaries as in :func:`contour_f1` (object pixels next to a different
    label).  Lower is better; 0 for identical boundaries.

    Empty inputs: no boundary in either image -> 0.0; boundary in only one ->
    ``inf`` (the displacement is undefined and the result is the worst possible).

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Label images (or binary masks) of the same shape.
    spacing : sequence of float, optional
        Pixel size per axis; the result is in these units (default: pixels).

    Returns
    -------
    float
    """
    gt, pred = _check_pair(gt, pred)
    sp = _check_spacing(spacing, gt.ndim)
    bt, bp = _boundaries(gt), _boundaries(pred)
    has_t, has_p = bool(bt.any()), bool(bp.any())
    if not has_t and not has_p:
        return 0.0
    if not has_t or not has_p:
        return float("inf")
    d_tp = float(_distance_to(bp, sp)[bt].mean())
    d_pt = float(_distance_to(bt, sp)[bp].mean())
    return 0.5 * (d_tp + d_pt)


# ------------------------------------------------------------------ semantic metrics


def _confusion(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) pixel counts, rows = ground truth, columns = prediction."""
    key = gt.ravel().astype(np.int64) * n_classes + pred.ravel()
    return np.bincount(key, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Class-mean IoU of the foreground/background masks (counting paper C, 5.1).

    C reports a "mean intersection over union" for the segmentation masks
    without defining it further; it is read here as the usual semantic
    segmentation mean IoU (e.g. Keras ``MeanIoU(num_classes=2)``) of the binary
    masks ``labels > 0``: the IoU of the background class and of the cell class,
    averaged.  Object identities are ignored (a merge of two cells costs
    nothing); for per-object IoU use :func:`evaluate` (``sq``).

    Empty inputs: a class absent from both images is left out of the mean
    (both all-background -> background IoU only, i.e. 1.0); a zero-size image
    gives 1.0.

    Parameters
    ----------
    gt, pred : int array (Y, X) or (Z, Y, X)
        Label images or binary masks of the same shape.

    Returns
    -------
    float in [0, 1]
    """
    gt, pred = _check_pair(gt, pred)
    conf = _confusion(gt > 0, pred > 0, 2)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    if not present.any():
        return 1.0
    return float(np.mean(inter[present] / union[present]))


def weighted_dice_multiclass(
    gt_classes: np.ndarray,
    pred_classes: np.ndarray,
    weights: Sequence[float] = (0.3, 0.3, 0.4),
) -> float:
    """Weighted Dice multi-class coefficient, WDMC (DDT paper D, section 5).

    Dice is computed for each class separately and the results are combined
    by a weighted sum (D: foreground 0.3, background 0.3, border 0.4)::

        Dice_c = 2 |G_c ∩ P_c| / (|G_c| + |P_c|)
        WDMC = sum_c w_c Dice_c / sum_c w_c

    ``weights[c]`` belongs to class value ``c`` in this package's convention
    (0 = background, 1 = cell = D's foreground, 2 = touching = D's border), so
    the default (0.3, 0.3, 0.4) is D's setting.  The weights are divided by
    their sum, which changes nothing for D's weights (sum 1) and keeps the
    result in [0, 1] for others.  For the 4-class scheme pass four weights.

    Empty inputs: a class absent from both maps has Dice 1.0 (agreement on its
    absence), so two identical maps always give 1.0.

    Parameters
    ----------
    gt_classes, pred_classes : int array (Y, X) or (Z, Y, X)
        Class maps with values in ``0 .. len(weights) - 1``.
    weights : sequence of float >= 0, positive sum
        One weight per class.

    Returns
    -------
    float in [0, 1]
    """
    gt = check_labels(gt_classes, name="ground-truth classes")
    pred = check_labels(pred_classes, name="predicted classes")
    check_same_shape(gt, pred, "ground-truth classes", "predicted classes")
    w = np.asarray(weights, dtype=float).ravel()
    if w.size < 2 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            "weights: expected one non-negative weight per class (at least 2) "
            f"with a positive sum, got {weights!r}."
        )
    n = w.size
    for name, a in (("ground-truth classes", gt), ("predicted classes", pred)):
        if a.size and int(a.max()) >= n:
            raise ValueError(
                f"{name}: expected class values 0..{n - 1} (one per weight), "
                f"got maximum {int(a.max())}."
            )
    conf = _confusion(gt, pred, n)
    denom = conf.sum(0) + conf.sum(1)
    inter2 = 2.0 * np.diag(conf)
    dice = np.ones(n)
    np.divide(inter2, denom, out=dice, where=denom > 0)
    return float(np.sum(w * dice) / w.sum())


def pool_scores(results: Sequence[dict]) -> dict:
    """Scores of several images pooled: TP, FP, FN and matched IoU summed over the
    images first (so a large image counts for its many cells), then the formulas of
    :func:`evaluate`. ``results`` are :func:`evaluate` outputs at one IoU threshold."""
    tp = sum(int(r["tp"]) for r in results)
    n_true = sum(int(r["n_true"]) for r in results)
    n_pred = sum(int(r["n_pred"]) for r in results)
    iou_sum = sum(float(r["mean_matched_iou"]) * int(r["tp"]) for r in results)
    out = _scores(tp, n_true, n_pred, iou_sum)
    out["n_images"] = len(results)
    return out


def score_on_annotations(
    annotations: np.ndarray, pred: np.ndarray, weak: bool, iou_threshold: float = 0.5
) -> dict:
    """Scores of ``pred`` against a user's annotations (:func:`evaluate`'s keys).

    Dense annotations (every cell drawn) are ground truth for the whole image. Weak
    ones (only some cells drawn) say nothing about the rest of the image, so only
    the predicted objects that touch an annotated pixel are judged: each of them is
    a true positive when it matches a drawn cell, else a false positive (a split,
    a merge or a fragment inside the drawn cells); a drawn cell no object matches is
    a false negative. A detection elsewhere in the image is neither right nor wrong.

    ``annotations``, ``pred``: int arrays of one shape (Y, X) or (Z, Y, X), 0 = none.
    """
    annotations = np.asarray(annotations)
    pred = np.asarray(pred)
    if annotations.shape != pred.shape:
        raise ValueError(f"annotations have shape {annotations.shape} but the labels {pred.shape}")
    if weak:
        touching = np.unique(pred[annotations > 0])
        touching = touching[touching > 0]
        pred = np.where(np.isin(pred, touching), pred, 0)
    return evaluate(annotations, pred, iou_threshold=iou_threshold)


def evaluate_frames(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Scores of a time series frame by frame: ``{"frames": [evaluate of frame t, ...],
    "pooled": pool_scores of them}``. Objects are matched within each frame only (an id
    kept across frames is one object per frame), as a movie is judged."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt has shape {gt.shape} but pred has shape {pred.shape}")
    if gt.ndim < 3:
        raise ValueError(f"expected (T, Y, X) or (T, Z, Y, X) labels, got shape {gt.shape}")
    frames = [evaluate(gt[t], pred[t], iou_threshold=iou_threshold) for t in range(gt.shape[0])]
    return {"frames": frames, "pooled": pool_scores(frames)}
