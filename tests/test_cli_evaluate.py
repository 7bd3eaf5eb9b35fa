"""``cellfocus evaluate`` run as a process on label TIFFs written by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile


def _write_pair(tmp_path):
    """Ground truth: two 4x4 squares (ids 3 and 9). Prediction: the first square exactly
    (IoU 1), the second shifted right by one pixel (overlap 4x3 = 12, union 20 -> IoU 0.6),
    plus a spurious 2x2 object. At IoU 0.5: TP = 2, FP = 1, FN = 0, so
    precision = 2/3, recall = 1, F1 = 2*2/(2*2+1+0) = 0.8, SQ = (1 + 0.6)/2 = 0.8,
    PQ = SQ * RQ = 0.8 * 0.8 = 0.64."""
    gt = np.zeros((16, 16), np.uint16)
    gt[1:5, 1:5] = 3
    gt[8:12, 8:12] = 9
    pred = np.zeros_like(gt)
    pred[1:5, 1:5] = 1
    pred[8:12, 9:13] = 2
    pred[13:15, 1:3] = 5
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    return tmp_path / "gt.tif", tmp_path / "pred.tif"


def test_evaluate_json(tmp_path, cli):
    gt, pred = _write_pair(tmp_path)
    res = cli("evaluate", "--gt", str(gt), "--pred", str(pred), "--json")
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["tp"] == 2 and metrics["fp"] == 1 and metrics["fn"] == 0
    assert metrics["n_true"] == 2 and metrics["n_pred"] == 3
    assert np.isclose(metrics["precision"], 2 / 3)
    assert np.isclose(metrics["recall"], 1.0)
    assert np.isclose(metrics["f1"], 0.8)
    assert np.isclose(metrics["sq"], 0.8)
    assert np.isclose(metrics["pq"], 0.64)


def test_evaluate_table_and_errors(tmp_path, cli):
    gt, pred = _write_pair(tmp_path)
    res = cli("evaluate", "--gt", str(gt), "--pred", str(pred))
    assert res.returncode == 0, res.stderr
    assert "f1" in res.stdout and "0.8000" in res.stdout

    missing = cli("evaluate", "--gt", str(tmp_path / "nope.tif"), "--pred", str(pred))
    assert missing.returncode == 2
    assert "nope.tif" in missing.stderr and "Traceback" not in missing.stderr

    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    broken = cli("evaluate", "--gt", str(tmp_path / "broken.tif"), "--pred", str(pred))
    assert broken.returncode == 2
    assert "broken.tif" in broken.stderr and "Traceback" not in broken.stderr

    tifffile.imwrite(tmp_path / "small.tif", np.zeros((8, 8), np.uint16))
    mismatch = cli("evaluate", "--gt", str(gt), "--pred", str(tmp_path / "small.tif"))
    assert mismatch.returncode == 2
    assert "shape" in mismatch.stderr


def _write_folders(tmp_path):
    """gt/ in `cellfocus simulate`'s layout: one.tif (an image, not taken), one_labels.tif
    (the pair of _write_pair) and two_masks.tif (one 3x3 square); pred/ as `cellfocus
    predict` writes it: one_labels.tif, one_probs.tif (not taken), two_labels.tif (that
    square exactly: TP 1, IoU 1). Pooled: TP 3, FP 1, FN 0, matched IoU 1 + 0.6 + 1, so
    precision 3/4, recall 1, F1 = 6/7, SQ = 2.6/3."""
    gt_one, pred_one = _write_pair(tmp_path)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_one.rename(gt_dir / "one_labels.tif")
    pred_one.rename(pred_dir / "one_labels.tif")
    tifffile.imwrite(gt_dir / "one.tif", np.full((16, 16), 9, np.uint8))
    tifffile.imwrite(
        pred_dir / "one_probs.tif", np.zeros((3, 16, 16), np.float32), photometric="minisblack"
    )
    two = np.zeros((12, 12), np.uint16)
    two[2:5, 2:5] = 7
    tifffile.imwrite(gt_dir / "two_masks.tif", two)
    tifffile.imwrite(pred_dir / "two_labels.tif", (two > 0).astype(np.uint16))
    return gt_dir, pred_dir


def test_evaluate_folders_per_image_and_pooled_rows(tmp_path, cli):
    """Each per-image row equals the single-pair evaluate of that pair, the pooled row
    equals pool_scores of them (and the hand-computed figures), in the JSON and the CSV."""
    import csv

    from napari_cellfocus.core.metrics import pool_scores

    gt_dir, pred_dir = _write_folders(tmp_path)
    out_csv = tmp_path / "metrics.csv"
    res = cli("evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir), "--json", "--csv",
              str(out_csv))  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert [r["image"] for r in report["images"]] == ["one", "two"]
    singles = []
    names = (("one_labels.tif", "one_labels.tif"), ("two_masks.tif", "two_labels.tif"))
    for row, (g, p) in zip(report["images"], names, strict=True):
        one = cli("evaluate", "--gt", str(gt_dir / g), "--pred", str(pred_dir / p), "--json")
        assert one.returncode == 0, one.stderr
        single = json.loads(one.stdout)
        singles.append(single)
        assert {k: row[k] for k in single} == single
    pooled = report["pooled"]
    expected = pool_scores(singles)
    assert {k: pooled[k] for k in expected} == pytest.approx(expected)
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["n_images"]) == (3, 1, 0, 2)
    assert np.isclose(pooled["precision"], 0.75) and np.isclose(pooled["f1"], 6 / 7)
    assert np.isclose(pooled["sq"], 2.6 / 3)

    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["one", "two", "pooled"]
    for row, want in zip(rows, [*singles, expected], strict=True):
        for key in ("precision", "recall", "f1", "pq", "sq", "tp", "fp", "fn"):
            assert float(row[key]) == pytest.approx(want[key], rel=1e-12), key

    table = cli("evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["image", "n_true"] and lines[-1].startswith("pooled (2)")
    assert "0.7500" in lines[-1]


def test_evaluate_folders_list_unmatched_names(tmp_path, cli):
    gt_dir, pred_dir = _write_folders(tmp_path)
    tifffile.imwrite(gt_dir / "three_labels.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(pred_dir / "four_labels.tif", np.zeros((8, 8), np.uint16))
    res = cli("evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "three_labels.tif" in res.stderr and "four_labels.tif" in res.stderr
    assert "one" not in res.stderr.replace(str(tmp_path), "")  # the matched pairs are fine
    # a ground-truth folder named like its images (masks/one.tif) pairs as well
    masks = tmp_path / "masks"
    masks.mkdir()
    (gt_dir / "one_labels.tif").rename(masks / "one.tif")
    (gt_dir / "two_masks.tif").rename(masks / "two.tif")
    (pred_dir / "four_labels.tif").unlink()
    res = cli("evaluate", "--gt", str(masks), "--pred", str(pred_dir), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pooled"]["tp"] == 3
    mixed = cli("evaluate", "--gt", str(gt_dir), "--pred", str(pred_dir / "one_labels.tif"))
    assert mixed.returncode == 2 and "two label files or two folders" in mixed.stderr


def test_label_key_drops_one_label_ending():
    from pathlib import Path

    from napari_cellfocus.cli_evaluate import label_key

    assert label_key(Path("a/img1_labels.tif")) == "img1"
    assert label_key(Path("img1_MASKS.tiff")) == "img1"
    assert label_key(Path("img1.tif")) == "img1"
    assert label_key(Path("x_masks_labels.tif")) == "x_masks"
    assert label_key(Path("_labels.tif")) == "_labels"
