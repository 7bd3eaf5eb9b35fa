"""Tests for napari_cellfocus.core.metrics.

Every expected value is worked out by hand in the test's docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_cellfocus.core.metrics import (
    average_precision,
    boundary_displacement_error,
    centroid_match_f1,
    contour_f1,
    count_errors,
    evaluate,
    iou_matrix,
    match_instances,
    mean_iou,
    weighted_dice_multiclass,
)

# ----------------------------------------------------------------------- fixtures


def square(shape=(10, 10), top=2, left=2, size=4, label=1):
    """A ``size`` x ``size`` square of ``label`` at rows top.., cols left.."""
    img = np.zeros(shape, dtype=np.int32)
    img[top : top + size, left : left + size] = label
    return img


def intervals(spans, width=14, height=3):
    """A (height, width) image with label k+1 on columns [a, b) for spans[k] = (a, b).

    Every row is identical, so IoUs equal the 1-D interval IoUs.
    """
    img = np.zeros((height, width), dtype=np.int32)
    for k, (a, b) in enumerate(spans):
        img[:, a:b] = k + 1
    return img


# ---------------------------------------------------------------------- iou_matrix


def test_iou_matrix_shifted_square_and_ids():
    """gt: 4x4 square id 3 and a 2x2 square id 17; pred: the 4x4 square shifted one
    column, id 5.

    IoU(3, 5): intersection 4 rows x 3 cols = 12, union 16 + 16 - 12 = 20 -> 0.6.
    IoU(17, 5) = 0 (no overlap).  Rows follow sorted gt ids, columns pred ids.
    """
    gt = square(label=3)
    gt[8:10, 8:10] = 17
    pred = square(left=3, label=5)
    iou, tids, pids = iou_matrix(gt, pred)
    assert tids.tolist() == [3, 17]
    assert pids.tolist() == [5]
    assert iou.shape == (2, 1)
    assert iou[0, 0] == pytest.approx(0.6)
    assert iou[1, 0] == 0.0


def test_iou_matrix_empty_sides():
    """No gt objects -> shape (0, n_pred); no predictions -> (n_true, 0)."""
    gt = np.zeros((6, 6), int)
    pred = square(shape=(6, 6), top=0, left=0, size=2)
    iou, tids, pids = iou_matrix(gt, pred)
    assert iou.shape == (0, 1) and tids.size == 0 and pids.tolist() == [1]
    iou, tids, pids = iou_matrix(pred, gt)
    assert iou.shape == (1, 0) and tids.tolist() == [1] and pids.size == 0


def test_iou_matrix_matches_brute_force():
    """Compare with the definition |A∩B|/|A∪B| evaluated pair by pair (independent
    oracle) on random, non-consecutive labels."""
    rng = np.random.default_rng(1)
    gt = rng.choice([0, 2, 9, 40], size=(24, 20))
    pred = rng.choice([0, 1, 7], size=(24, 20))
    iou, tids, pids = iou_matrix(gt, pred)
    for i, t in enumerate(tids):
        for j, p in enumerate(pids):
            a, b = gt == t, pred == p
            assert iou[i, j] == pytest.approx((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------- evaluate


def test_evaluate_shifted_square():
    """4x4 square shifted one pixel: IoU = 12/20 = 0.6 > 0.5 -> TP=1, FP=FN=0,
    P=R=F1=RQ=1, SQ=0.6, PQ = 0.6 * 1 = 0.6, AP = 1/(1+0+0) = 1, count error 0.

    At threshold 0.6 the IoU is not strictly greater -> TP=0, FP=FN=1, all scores 0.
    """
    gt, pred = square(), square(left=3)
    r = evaluate(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["n_true"], r["n_pred"]) == (1, 0, 0, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == r["rq"] == r["ap"] == 1.0
    assert r["sq"] == pytest.approx(0.6)
    assert r["mean_matched_iou"] == pytest.approx(0.6)
    assert r["pq"] == pytest.approx(0.6)
    assert r["count_error"] == 0
    r = evaluate(gt, pred, iou_threshold=0.6)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == r["sq"] == r["pq"] == 0.0


def test_evaluate_split_cell():
    """gt: one 4x4 cell; pred: its two 4x2 halves.  Each half has IoU 8/16 = 0.5,
    which is not strictly above 0.5 -> TP=0, FP=2, FN=1, every score 0,
    count_error = 2 - 1 = +1.

    At threshold 0.4 both halves qualify but matching is one-to-one -> TP=1 (IoU 0.5),
    FP=1, FN=0: P = 1/2, R = 1, F1 = 2*1/(1+2) = 2/3, SQ = 0.5, PQ = 1/3,
    AP = 1/(1+1+0) = 1/2.
    """
    gt = square()
    pred = square()
    pred[:, 4:6] *= 2  # cols 4..5 become label 2
    r = evaluate(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["count_error"]) == (0, 2, 1, 1)
    for key in ("precision", "recall", "f1", "rq", "sq", "pq", "ap"):
        assert r[key] == 0.0
    r = evaluate(gt, pred, iou_threshold=0.4)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == 1.0
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["rq"] == pytest.approx(2 / 3)
    assert r["sq"] == pytest.approx(0.5)
    assert r["pq"] == pytest.approx(1 / 3)
    assert r["ap"] == pytest.approx(0.5)


def test_evaluate_merged_cells():
    """gt: two touching cells, 4x3 (12 px) and 4x1 (4 px); pred: one 4x4 cell.

    IoU(big, pred) = 12/16 = 0.75 > 0.5 (TP), IoU(small, pred) = 4/16 = 0.25 (FN).
    TP=1, FP=0, FN=1: P=1, R=1/2, F1=RQ=2/3, SQ=0.75, PQ=0.5, AP=1/2, count_error -1.
    """
    gt = square()
    gt[2:6, 5] = 2
    pred = square(label=9)
    r = evaluate(gt, pred)
    assert (r["tp"], r["fp"], r["fn"], r["count_error"]) == (1, 0, 1, -1)
    assert r["precision"] == 1.0
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["sq"] == pytest.approx(0.75)
    assert r["pq"] == pytest.approx(0.5)
    assert r["ap"] == pytest.approx(0.5)


def test_evaluate_merge_of_equal_halves():
    """gt: two 4x2 halves; pred: the 4x4 union.  IoU 0.5 each (not > 0.5):
    TP=0, FP=1, FN=2, scores 0, count_error = 1 - 2 = -1."""
    gt = square()
    gt[:, 4:6] *= 2
    r = evaluate(gt, square())
    assert (r["tp"], r["fp"], r["fn"], r["count_error"]) == (0, 1, 2, -1)
    assert r["f1"] == r["pq"] == 0.0


def test_evaluate_empty_cases():
    """Conventions: both empty -> every score 1.0; one side empty -> every score 0.0.

    No gt, one prediction: TP=0, FP=1, FN=0, count_error +1.
    One gt, no prediction: TP=0, FP=0, FN=1, count_error -1.
    """
    empty = np.zeros((8, 8), np.uint16)
    cell = square(shape=(8, 8))
    scores = ("precision", "recall", "f1", "rq", "sq", "pq", "ap", "mean_matched_iou")

    r = evaluate(empty, empty)
    assert (r["tp"], r["fp"], r["fn"], r["n_true"], r["n_pred"]) == (0, 0, 0, 0, 0)
    assert all(r[k] == 1.0 for k in scores)
    assert r["count_error"] == 0

    r = evaluate(empty, cell)
    assert (r["tp"], r["fp"], r["fn"], r["count_error"]) == (0, 1, 0, 1)
    assert all(r[k] == 0.0 for k in scores)

    r = evaluate(cell, empty)
    assert (r["tp"], r["fp"], r["fn"], r["count_error"]) == (0, 0, 1, -1)
    assert all(r[k] == 0.0 for k in scores)


def test_evaluate_non_consecutive_labels_same_result():
    """Relabelling gt {1, 2} -> {3, 17} and pred {1, 2} -> {40, 9} changes nothing.

    Case: merged-cells example (TP=1, FP=0, FN=1, SQ=0.75) plus a lone prediction
    far away -> TP=1, FP=1, FN=1, P=R=F1=1/2, PQ = 0.75 * 0.5 = 0.375.
    """
    gt = square(shape=(12, 12))
    gt[2:6, 5] = 2
    pred = square(shape=(12, 12))
    pred[10:12, 10:12] = 2
    a = evaluate(gt, pred)
    gt2 = np.select([gt == 1, gt == 2], [3, 17], 0)
    pred2 = np.select([pred == 1, pred == 2], [40, 9], 0)
    b = evaluate(gt2, pred2)
    assert a == b
    assert (b["tp"], b["fp"], b["fn"]) == (1, 1, 1)
    assert b["f1"] == pytest.approx(0.5)
    assert b["pq"] == pytest.approx(0.375)


def test_evaluate_huge_ids_and_many_tiny_objects():
    """Ids far above the image size (10**12) give the same result as small ids.

    2500 one-pixel objects (every pixel its own label; 2500 x 2500 possible pairs)
    each match themselves with IoU 1 -> TP = 2500, F1 = PQ = 1.  Rolling the
    prediction by one column changes which id sits where, but every gt pixel object
    still coincides with exactly one predicted pixel object (IoU 1) -> TP = 2500,
    FP = FN = 0, SQ = 1.
    """
    gt = square(shape=(12, 12))
    gt[2:6, 5] = 2
    pred = square(shape=(12, 12))
    big_gt = np.where(gt > 0, gt.astype(np.int64) * 10**12, 0)
    big_pred = np.where(pred > 0, pred.astype(np.int64) * 10**12 + 7, 0)
    assert evaluate(big_gt, big_pred) == evaluate(gt, pred)

    x = np.arange(1, 2501).reshape(50, 50)
    r = evaluate(x, x)
    assert (r["tp"], r["f1"], r["pq"]) == (2500, 1.0, 1.0)
    r = evaluate(x, np.roll(x, 1, axis=1))
    assert (r["tp"], r["fp"], r["fn"], r["sq"]) == (2500, 0, 0, 1.0)


def test_evaluate_3d():
    """3D: gt block A (z 0..3, 2x2) and block B; pred = A shifted one slice in z plus
    an extra block C.

    IoU(A, A') = 3*4 / (16 + 16 - 12) = 12/20 = 0.6 -> TP.  B unmatched (FN), C (FP).
    TP=1, FP=1, FN=1: P=R=F1=1/2, SQ=0.6, PQ=0.3, AP=1/3.
    """
    gt = np.zeros((6, 8, 8), np.int32)
    pred = np.zeros_like(gt)
    gt[0:4, 1:3, 1:3] = 1
    gt[1:3, 5:7, 5:7] = 2
    pred[1:5, 1:3, 1:3] = 4
    pred[4:6, 5:8, 0:2] = 8
    r = evaluate(gt, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)
    assert r["sq"] == pytest.approx(0.6)
    assert r["pq"] == pytest.approx(0.3)
    assert r["ap"] == pytest.approx(1 / 3)


def test_evaluate_identical_many_cells():
    """evaluate(x, x): every object matches itself with IoU 1 -> F1 = PQ = 1, TP = n."""
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(0)
    seeds = np.zeros((256, 256), np.int32)
    pos = rng.choice(256 * 256, size=400, replace=False)
    ids = rng.choice(np.arange(1, 100_000), size=400, replace=False)
    seeds.flat[pos] = ids
    x = expand_labels(seeds, 6)
    n = np.unique(x[x > 0]).size
    r = evaluate(x, x)
    assert r["tp"] == n == 400
    assert r["f1"] == r["pq"] == r["sq"] == 1.0
    assert r["fp"] == r["fn"] == 0


def test_evaluate_on_a_large_image_with_many_cells():
    """1024 cells on 2048x2048 (the vectorised overlap path; its speed is a benchmark
    figure, not a test: shared machines make timed assertions flaky)."""
    grid = np.arange(1, 1025, dtype=np.int32).reshape(32, 32)
    gt = np.repeat(np.repeat(grid, 64, axis=0), 64, axis=1)
    pred = np.roll(gt, 3, axis=1)
    r = evaluate(gt, pred)
    # Each 64x64 cell shifted 3 px: IoU = 61/67 > 0.5 for every cell.
    assert r["tp"] == 1024
    assert r["sq"] == pytest.approx(61 / 67)


# ---------------------------------------------------------------- match_instances


def test_match_below_half_maximises_total_iou():
    """1-D intervals (identical rows).  gt A=[0,10), B=[10,14); pred Y=[0,4), X=[4,14).

    IoU(A,Y) = 4/10 = 0.4; IoU(A,X) = |[4,10)| / (10 + 10 - 6) = 6/14 ~ 0.43;
    IoU(B,X) = 4/10 = 0.4 (B inside X); IoU(B,Y) = 0.
    Threshold 0.3: greedy (best pair first) takes A-X and leaves B unmatched (sum 0.43);
    the optimal one-to-one assignment takes A-Y and B-X (sum 0.8) -> TP=2, FP=FN=0.
    Threshold 0.5: no pair is above 0.5 -> TP=0.
    """
    gt = intervals([(0, 10), (10, 14)])
    pred = intervals([(0, 4), (4, 14)])  # Y=1, X=2
    m = match_instances(gt, pred, iou_threshold=0.3)
    assert m.tp == 2 and m.fp == 0 and m.fn == 0
    assert m.matched_true.tolist() == [1, 2]
    assert m.matched_pred.tolist() == [1, 2]
    assert m.matched_iou == pytest.approx([0.4, 0.4])
    assert match_instances(gt, pred, iou_threshold=0.5).tp == 0


def test_match_greedy_trap_with_strong_pair():
    """Width-12 intervals: gt A=[0,10), B=[10,12); pred Y=[0,4), X=[4,12).

    IoU(A,Y) = 4/10 = 0.4; IoU(A,X=[4,12)) = 6/(10+8-6) = 6/12 = 0.5;
    IoU(B,X) = 2/8 = 0.25.
    Threshold 0.2: greedy takes A-X (0.5), B left alone: sum 0.5, TP 1.
    Optimal: A-Y + B-X = 0.65 -> TP=2, SQ = 0.65/2 = 0.325.
    """
    gt = intervals([(0, 10), (10, 12)], width=12)
    pred = intervals([(0, 4), (4, 12)], width=12)
    r = evaluate(gt, pred, iou_threshold=0.2)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    assert r["sq"] == pytest.approx(0.325)
    # At 0.45 only A-X (0.5) remains: TP=1, FP=1 (Y), FN=1 (B).
    m = match_instances(gt, pred, iou_threshold=0.45)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.matched_iou == pytest.approx([0.5])
    assert m.unmatched_true.tolist() == [2]
    assert m.unmatched_pred.tolist() == [1]


def test_match_picks_higher_iou_partner_below_half():
    """gt 4x4; pred halves 4x3 (IoU 12/16 = 0.75) and 4x1 (IoU 4/16 = 0.25).
    Threshold 0.1: one-to-one, maximal IoU -> gt matched with the 4x3 part."""
    gt = square()
    pred = square()
    pred[2:6, 5] = 7
    m = match_instances(gt, pred, iou_threshold=0.1)
    assert m.matched_pred.tolist() == [1]
    assert m.matched_iou == pytest.approx([0.75])
    assert m.unmatched_pred.tolist() == [7]


# ------------------------------------------------------------ average_precision


def test_average_precision_known_ious():
    """Two cells with IoU 0.6 (4x4 shifted by one: 12/20) and 0.8 (4x5 gt, 4x4 pred
    inside it: 16/20).  Thresholds 0.5, 0.55, ..., 0.95, match if IoU > t:

    t:   .50 .55 .60 .65 .70 .75 .80 .85 .90 .95
    TP:   2   2   1   1   1   1   0   0   0   0     (ties at 0.6 and 0.8 do not match)
    AP = TP/(TP + 2(2-TP)) = TP/(4-TP): 1, 1, 1/3 x4, 0 x4
    F1 = TP/2: 1, 1, 1/2 x4, 0 x4
    mean AP = (2 + 4/3)/10 = 1/3; mean F1 = (2 + 2)/10 = 0.4.
    """
    gt = np.zeros((10, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[1:5, 1:5] = 1
    pred[1:5, 2:6] = 1
    gt[1:5, 10:15] = 2
    pred[1:5, 10:14] = 2
    r = average_precision(gt, pred)
    assert r["thresholds"] == pytest.approx(np.arange(10) * 0.05 + 0.5)
    assert r["tp"].tolist() == [2, 2, 1, 1, 1, 1, 0, 0, 0, 0]
    assert r["ap"] == pytest.approx([1, 1] + [1 / 3] * 4 + [0] * 4)
    assert r["f1"] == pytest.approx([1, 1] + [0.5] * 4 + [0] * 4)
    assert r["mean_ap"] == pytest.approx(1 / 3)
    assert r["mean_f1"] == pytest.approx(0.4)
    # Float noise of np.arange thresholds does not change the tie rule.
    r2 = average_precision(gt, pred, thresholds=np.arange(0.5, 1.0, 0.05))
    assert r2["tp"].tolist() == r["tp"].tolist()


def test_average_precision_empty():
    """Both empty -> AP = F1 = 1 at every threshold; gt only -> 0 everywhere."""
    e = np.zeros((5, 5), int)
    r = average_precision(e, e, thresholds=[0.5, 0.9])
    assert r["ap"].tolist() == [1.0, 1.0] and r["mean_f1"] == 1.0
    r = average_precision(square(shape=(5, 5), top=0, left=0, size=2), e, thresholds=[0.5])
    assert r["ap"].tolist() == [0.0] and r["fn"].tolist() == [1]


# ------------------------------------------------------------------ centroid F1


def test_centroid_match_f1_threshold():
    """gt: 3x3 cells centred at (5,5) and (5,25); pred: 3x3 cells centred at (5,8)
    and (30,30).  Distance (5,5)-(5,8) = 3.

    max_distance 4: 3 < 4 -> TP=1, FP=1, FN=1 -> P=R=F1=1/2.
    max_distance 3: 3 is not < 3 (strict, C 5.1 "less than") -> TP=0.
    """
    gt = np.zeros((40, 40), np.int32)
    pred = np.zeros_like(gt)
    gt[4:7, 4:7] = 1
    gt[4:7, 24:27] = 2
    pred[4:7, 7:10] = 5
    pred[29:32, 29:32] = 6
    r = centroid_match_f1(gt, pred, max_distance=4)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(0.5)
    r = centroid_match_f1(gt, pred, max_distance=3)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 2)
    assert r["f1"] == 0.0


def test_centroid_match_is_optimal_one_to_one():
    """Single-pixel objects on row 5: gt at x=10, 15; pred at x=12, 7; max 3.5.

    Distances: t10-p12 = 2, t10-p7 = 3, t15-p12 = 3, t15-p7 = 8 (too far).
    Closest-first would give t10-p12 and leave t15 unmatched (TP=1); the optimal
    one-to-one assignment t10-p7, t15-p12 gives TP=2 -> F1 = 1.
    """
    gt = np.zeros((10, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[5, 10], gt[5, 15] = 1, 2
    pred[5, 12], pred[5, 7] = 1, 2
    r = centroid_match_f1(gt, pred, max_distance=3.5)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    assert r["f1"] == 1.0


def test_centroid_match_nearest_is_c_closest_first_rule():
    """matching="nearest" (C 5.1: each target "uniquely associated with the closest"
    prediction). The layout above: pairs by distance t10-p12 (2), t10-p7 (3),
    t15-p12 (3); t10-p12 is taken first, then t10 and p12 are used, so TP = 1,
    FP = 1 (p7), FN = 1 (t15): P = R = F1 = 1/2.

    Second layout, where both rules agree: gt at x = 2, 20, 40; pred at x = 4, 19,
    60; max 5. Closest first: t20-p19 (1), t2-p4 (2); p60 is 20 from t40: TP 2,
    FP 1, FN 1. Order of the labels does not matter (renumbered below)."""
    gt = np.zeros((10, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[5, 10], gt[5, 15] = 1, 2
    pred[5, 12], pred[5, 7] = 1, 2
    r = centroid_match_f1(gt, pred, max_distance=3.5, matching="nearest")
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(0.5)

    gt = np.zeros((3, 64), np.int32)
    pred = np.zeros_like(gt)
    gt[1, 2], gt[1, 20], gt[1, 40] = 1, 2, 3
    pred[1, 4], pred[1, 19], pred[1, 60] = 1, 2, 3
    for g, p in ((gt, pred), (np.where(gt > 0, 4 - gt, 0), np.where(pred > 0, 10 - pred, 0))):
        for rule in ("nearest", "optimal"):
            r = centroid_match_f1(g, p, max_distance=5, matching=rule)
            assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    with pytest.raises(ValueError, match="matching"):
        centroid_match_f1(gt, pred, matching="greedy")


def test_centroid_match_3d_spacing_and_empty():
    """3D single voxels at (0,0,0) and (1,0,0): distance 1 voxel; with spacing
    (2, 1, 1) it is 2.  max 1.5: TP=1 in voxels, TP=0 with spacing; max 2.5: TP=1.
    Empty: both -> F1 1.0; gt only -> 0.0.
    """
    gt = np.zeros((3, 4, 4), np.int32)
    pred = np.zeros_like(gt)
    gt[0, 0, 0] = 1
    pred[1, 0, 0] = 3
    assert centroid_match_f1(gt, pred, max_distance=1.5)["tp"] == 1
    assert centroid_match_f1(gt, pred, max_distance=1.5, spacing=(2, 1, 1))["tp"] == 0
    assert centroid_match_f1(gt, pred, max_distance=2.5, spacing=(2, 1, 1))["tp"] == 1
    e = np.zeros_like(gt)
    assert centroid_match_f1(e, e)["f1"] == 1.0
    r = centroid_match_f1(gt, e)
    assert (r["f1"], r["fn"], r["fp"]) == (0.0, 1, 0)


# ----------------------------------------------------------------- count errors


def test_count_errors():
    """true [10, 5, 3, 0], pred [12, 5, 1, 1]: |e| = [2, 0, 2, 1].
    MAE = 5/4 = 1.25, MedAE = median(0, 1, 2, 2) = 1.5, mean signed error = 1/4."""
    r = count_errors([10, 5, 3, 0], [12, 5, 1, 1])
    assert r["mae"] == pytest.approx(1.25)
    assert r["median_ae"] == pytest.approx(1.5)
    assert r["mean_error"] == pytest.approx(0.25)
    assert r["n_images"] == 4


def test_count_errors_empty_and_invalid():
    """No images -> zeros; unequal lengths, negative counts, 2-D input -> ValueError."""
    assert count_errors([], []) == {"mae": 0.0, "median_ae": 0.0, "mean_error": 0.0, "n_images": 0}
    with pytest.raises(ValueError, match="same length"):
        count_errors([1, 2], [1])
    with pytest.raises(ValueError, match=">= 0"):
        count_errors([1, -2], [1, 2])
    with pytest.raises(ValueError, match="1-D"):
        count_errors([[1]], [[1]])


# ------------------------------------------------------------------- contour F1


def test_contour_f1_shifted_square_radius_0_and_1():
    """gt 4x4 square rows/cols 2..5, pred shifted to cols 3..6 (10x10 image).
    Boundary = the 12-pixel ring of each square.

    Radius 0: common ring pixels = rows 2 and 5 at cols 3..5 = 6 -> P = R = 6/12,
    F1 = 0.5.  Radius 1: every ring pixel of one square is at distance 0 or 1 of the
    other ring (e.g. (2,6)->(2,5), (3,3)->(3,2)) -> P = R = F1 = 1.
    """
    gt, pred = square(), square(left=3)
    r0 = contour_f1(gt, pred, radius=0)
    assert r0["precision"] == pytest.approx(0.5)
    assert r0["recall"] == pytest.approx(0.5)
    assert r0["f1"] == pytest.approx(0.5)
    r1 = contour_f1(gt, pred, radius=1)
    assert r1 == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_contour_f1_touching_cells_count_as_contour():
    """gt: two touching 4x2 halves -> every one of the 16 pixels is boundary
    (each half is 2 wide).  pred: the merged 4x4 square, 12-pixel ring.
    Radius 0: P = 12/12 = 1, R = 12/16 = 3/4, F1 = 2 * 3/4 / (7/4) = 6/7.
    """
    gt = square()
    gt[:, 4:6] *= 2
    r = contour_f1(gt, square(), radius=0)
    assert r["precision"] == 1.0
    assert r["recall"] == pytest.approx(0.75)
    assert r["f1"] == pytest.approx(6 / 7)


def test_contour_f1_3d_and_empty():
    """3D: the shifted-square pair repeated in 3 slices (the image edge along z is
    not a contour), so every distance is in-plane: radius 0 -> 0.5, radius 1 -> 1.
    Empty: no boundary anywhere -> 1.0; only one image has boundary -> 0.0.
    """
    gt = np.stack([square()] * 3)
    pred = np.stack([square(left=3)] * 3)
    assert contour_f1(gt, pred, radius=0)["f1"] == pytest.approx(0.5)
    assert contour_f1(gt, pred, radius=1)["f1"] == 1.0
    e = np.zeros_like(gt)
    assert contour_f1(e, e)["f1"] == 1.0
    assert contour_f1(gt, e) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# -------------------------------------------------------------------------- BDE


def test_bde_shifted_square():
    """Rings of the 4x4 square and its one-column shift (see contour test).
    gt -> pred: 6 ring pixels coincide (0), the other 6 are 1 px away -> mean 0.5;
    pred -> gt likewise 0.5.  BDE = (0.5 + 0.5)/2 = 0.5.  Identical -> 0.
    """
    gt, pred = square(), square(left=3)
    assert boundary_displacement_error(gt, pred) == pytest.approx(0.5)
    assert boundary_displacement_error(gt, gt) == 0.0


def test_bde_averages_both_directions():
    """gt: the 4x4 square (12-pixel ring); pred: the same square plus a one-pixel
    object at (9, 9), which is all boundary.

    gt -> pred: every gt ring pixel is also a pred boundary pixel -> mean 0.
    pred -> gt: 12 ring pixels at 0, (9, 9) at distance |(9,9)-(5,5)| = 4*sqrt(2)
    -> mean 4*sqrt(2)/13.  BDE = (0 + 4*sqrt(2)/13)/2 = 2*sqrt(2)/13.
    """
    gt = square()
    pred = square()
    pred[9, 9] = 2
    bde = boundary_displacement_error(gt, pred)
    assert bde == pytest.approx(2 * math.sqrt(2) / 13)
    assert boundary_displacement_error(pred, gt) == pytest.approx(bde)


def test_bde_anisotropic_spacing():
    """Same pair with spacing (1, 2) (a column step is 2 units).

    gt -> pred: (2,2),(5,2),(3,2),(4,2) are 2 away (one column); (3,5) is 1 away
    from (2,5) and (4,5) 1 away from (5,5) (a row step); the 6 shared pixels 0.
    Sum 4*2 + 2*1 = 10 -> mean 10/12.  pred -> gt: (2,6),(3,6),(4,6),(5,6) -> 2,
    (3,3) -> (2,3) = 1, (4,3) -> (5,3) = 1 -> 10/12.  BDE = 10/12 = 5/6.
    """
    bde = boundary_displacement_error(square(), square(left=3), spacing=(1, 2))
    assert bde == pytest.approx(5 / 6)


def test_bde_3d_and_empty():
    """3D stack of the shifted pair (3 identical slices): distances in-plane -> 0.5.
    Empty: both without boundary -> 0.0; one without -> inf."""
    gt = np.stack([square()] * 3)
    pred = np.stack([square(left=3)] * 3)
    assert boundary_displacement_error(gt, pred) == pytest.approx(0.5)
    e = np.zeros_like(gt)
    assert boundary_displacement_error(e, e) == 0.0
    assert math.isinf(boundary_displacement_error(gt, e))
    assert math.isinf(boundary_displacement_error(e, pred))


# -------------------------------------------------------------------- mean IoU


def test_mean_iou_shifted_square():
    """8x8 image, 4x4 square shifted one column.
    Foreground IoU = 12/20 = 0.6.  Background: intersection = 64 - |fg union| = 44,
    union = 64 - |fg intersection| = 52 -> 44/52.  Mean = (0.6 + 44/52)/2.
    """
    gt = square(shape=(8, 8), top=1, left=1)
    pred = square(shape=(8, 8), top=1, left=2)
    assert mean_iou(gt, pred) == pytest.approx((0.6 + 44 / 52) / 2)


def test_mean_iou_ignores_identity_and_empty():
    """Merging two touching cells leaves the binary masks equal -> 1.0.
    Both all background -> only background class present -> 1.0.
    gt empty, pred one pixel in 8x8: fg IoU 0/1 = 0, bg IoU 63/64 -> 63/128.
    """
    gt = square(shape=(8, 8), top=1, left=1)
    gt[:, 3:5] *= 2
    assert mean_iou(gt, square(shape=(8, 8), top=1, left=1)) == 1.0
    e = np.zeros((8, 8), int)
    assert mean_iou(e, e) == 1.0
    p = e.copy()
    p[0, 0] = 1
    assert mean_iou(e, p) == pytest.approx(63 / 128)


# ------------------------------------------------------------------------ WDMC


def test_wdmc_hand_case():
    """gt [0,1,1,2], pred [0,1,2,2]:
    Dice_bg = 2*1/(1+1) = 1; Dice_cell = 2*1/(2+1) = 2/3; Dice_touch = 2*1/(1+2) = 2/3.
    WDMC = 0.3*1 + 0.3*2/3 + 0.4*2/3 = 0.3 + 0.2 + 0.8/3 = 23/30.
    """
    gt = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 2, 2]])
    assert weighted_dice_multiclass(gt, pred) == pytest.approx(23 / 30)


def test_wdmc_weight_order_and_absent_class():
    """gt [0,0,1,2], pred [0,0,1,1]: Dice_bg = 1, Dice_cell = 2*1/(1+2) = 2/3,
    Dice_touch = 0 (gt has one, pred none).
    Default (bg .3, cell .3, touch .4): 0.3 + 0.2 + 0 = 0.5.
    Weights (0.4, 0.3, 0.3): 0.4 + 0.2 + 0 = 0.6.
    Weights (2, 2, 1) are normalised by their sum 5: (2 + 4/3)/5 = 2/3.
    Identical maps without class 2 -> Dice_touch = 1 (absent in both) -> 1.0.
    """
    gt = np.array([[0, 0, 1, 2]])
    pred = np.array([[0, 0, 1, 1]])
    assert weighted_dice_multiclass(gt, pred) == pytest.approx(0.5)
    assert weighted_dice_multiclass(gt, pred, weights=(0.4, 0.3, 0.3)) == pytest.approx(0.6)
    assert weighted_dice_multiclass(gt, pred, weights=(2, 2, 1)) == pytest.approx(2 / 3)
    assert weighted_dice_multiclass(pred, pred) == 1.0


def test_wdmc_3d():
    """3D (2, 1, 2) maps with the same pixel multiset as the 2D hand case:
    gt [[0,1],[1,2]], pred [[0,1],[2,2]] -> 23/30."""
    gt = np.array([[[0, 1]], [[1, 2]]])
    pred = np.array([[[0, 1]], [[2, 2]]])
    assert weighted_dice_multiclass(gt, pred) == pytest.approx(23 / 30)


def test_wdmc_invalid():
    """Class 3 with three weights, negative weights, and a shape mismatch raise."""
    with pytest.raises(ValueError, match=r"0\.\.2"):
        weighted_dice_multiclass(np.array([[0, 3]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="weights"):
        weighted_dice_multiclass(np.array([[0, 1]]), np.array([[0, 1]]), weights=(1, -1, 1))
    with pytest.raises(ValueError, match="same shape"):
        weighted_dice_multiclass(np.zeros((2, 2), int), np.zeros((2, 3), int))


# ------------------------------------------------------------------- ValueErrors

ALL_PAIR_METRICS = [
    evaluate,
    match_instances,
    iou_matrix,
    average_precision,
    centroid_match_f1,
    contour_f1,
    boundary_displacement_error,
    mean_iou,
]


@pytest.mark.parametrize("fn", ALL_PAIR_METRICS)
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((4, 4), int), np.zeros((4, 5), int))


@pytest.mark.parametrize("fn", ALL_PAIR_METRICS)
def test_fractional_labels_raise(fn):
    bad = np.zeros((4, 4))
    bad[1, 1] = 1.5
    with pytest.raises(ValueError, match="fractional"):
        fn(bad, np.zeros((4, 4), int))


@pytest.mark.parametrize("fn", ALL_PAIR_METRICS)
def test_negative_labels_raise(fn):
    bad = np.zeros((4, 4), int)
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=">= 0"):
        fn(np.zeros((4, 4), int), bad)


@pytest.mark.parametrize("fn", ALL_PAIR_METRICS)
@pytest.mark.parametrize("shape", [(5,), (2, 2, 2, 2)])
def test_wrong_ndim_raises(fn, shape):
    with pytest.raises(ValueError, match="dimensions"):
        fn(np.zeros(shape, int), np.zeros(shape, int))


def test_parameter_errors():
    """Out-of-range thresholds, radius, max_distance and spacing raise ValueError."""
    a = square()
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate(a, a, iou_threshold=1.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision(a, a, thresholds=[0.5, -0.1])
    with pytest.raises(ValueError, match="thresholds"):
        average_precision(a, a, thresholds=[])
    with pytest.raises(ValueError, match="radius"):
        contour_f1(a, a, radius=-1)
    with pytest.raises(ValueError, match="max_distance"):
        centroid_match_f1(a, a, max_distance=0)
    with pytest.raises(ValueError, match="spacing"):
        boundary_displacement_error(a, a, spacing=(1, 1, 1))


def test_pool_scores_sums_matches_over_images_first():
    """Image A: 3 true, 3 predicted, 2 matched with IoU 0.8 and 0.6; image B: 1 true,
    3 predicted, 1 matched with IoU 1.0. Pooled: TP 3, FP 3, FN 1 -> precision 1/2,
    recall 3/4, F1 = 6/10, SQ = (0.8 + 0.6 + 1.0) / 3 = 0.8, PQ = 0.48 (not the mean of
    the two images' scores)."""
    from napari_cellfocus.core.metrics import _scores, pool_scores

    a = _scores(2, 3, 3, 1.4)
    b = _scores(1, 1, 3, 1.0)
    pooled = pool_scores([a, b])
    assert pooled["tp"] == 3 and pooled["fp"] == 3 and pooled["fn"] == 1
    assert pooled["precision"] == pytest.approx(0.5)
    assert pooled["recall"] == pytest.approx(0.75)
    assert pooled["f1"] == pytest.approx(0.6)
    assert pooled["sq"] == pytest.approx(0.8)
    assert pooled["pq"] == pytest.approx(0.48)
    assert pooled["n_images"] == 2


def test_score_on_annotations_weak_judges_only_objects_touching_drawn_cells():
    """Two drawn 4x4 cells. The prediction matches the first, splits the second into
    two 4x2 halves (IoU 0.5 each: no match, both false) and finds one more cell far
    from the drawings. Weak: the far cell is left out, so TP 1, FP 2, FN 1:
    RQ = 1 / (1 + 2/2 + 1/2) = 0.4, SQ 1, PQ 0.4. Dense: the far cell is a third FP:
    RQ = 1 / (1 + 3/2 + 1/2) = 1/3."""
    from napari_cellfocus.core.metrics import score_on_annotations

    drawn = np.zeros((20, 20), np.int32)
    drawn[2:6, 2:6] = 1
    drawn[10:14, 10:14] = 2
    pred = np.zeros_like(drawn)
    pred[2:6, 2:6] = 5
    pred[10:14, 10:12] = 6
    pred[10:14, 12:14] = 7
    pred[16:19, 16:19] = 8
    weak = score_on_annotations(drawn, pred, weak=True)
    assert (weak["tp"], weak["n_pred"], weak["n_true"]) == (1, 3, 2)
    assert weak["pq"] == pytest.approx(0.4)
    dense = score_on_annotations(drawn, pred, weak=False)
    assert (dense["tp"], dense["n_pred"]) == (1, 4)
    assert dense["pq"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shape"):
        score_on_annotations(drawn, pred[:10], weak=True)
