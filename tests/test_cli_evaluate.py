"""``cellfocus evaluate`` run as a process on label TIFFs written by the test."""

from __future__ import annotations

import json

import numpy as np
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
