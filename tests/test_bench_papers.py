"""benchmarks/bench_papers.py: the CI smoke test (``--quick``) and its small helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_papers.py"


def _bench(*args: str) -> subprocess.CompletedProcess:
    """Run the benchmark script as a process (output captured)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def _module():
    spec = importlib.util.spec_from_file_location("bench_papers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pooled_scores_by_hand():
    """Two images: (tp 2, 3 true, 2 predicted, mean IoU 0.8) and (tp 1, 1 true, 2 predicted,
    IoU 0.5). Pooled: TP 3, 4 true, 4 predicted -> P = R = 3/4, RQ = F1 = 2*3/(4+4) = 0.75,
    SQ = (2*0.8 + 1*0.5)/3 = 0.7, PQ = 0.7*0.75 = 0.525."""
    mod = _module()
    res = mod.pooled_scores(
        [
            {"tp": 2, "n_true": 3, "n_pred": 2, "mean_matched_iou": 0.8},
            {"tp": 1, "n_true": 1, "n_pred": 2, "mean_matched_iou": 0.5},
        ]
    )
    assert res["precision"] == pytest.approx(0.75)
    assert res["recall"] == pytest.approx(0.75)
    assert res["f1"] == pytest.approx(0.75)
    assert res["sq"] == pytest.approx(0.7)
    assert res["pq"] == pytest.approx(0.525)


def test_weaken_labels_drops_and_shifts_contours():
    """Ten isolated 5x5 squares, drop fraction fixed at 0.3 -> round(3.0) = 3 cells left out,
    7 kept. With max_shift 1 each kept square is eroded by the cross structuring element to its
    3x3 core (9 px) or dilated to the 5x5 square plus one row on each side (25 + 4*5 = 45 px);
    dilation never reaches another cell (gaps of 5 px)."""
    mod = _module()
    labels = np.zeros((30, 60), np.int32)
    for i in range(10):
        r, c = divmod(i, 5)
        labels[3 + 12 * r : 8 + 12 * r, 3 + 11 * c : 8 + 11 * c] = i + 1
    weak = mod.weaken_labels(labels, np.random.default_rng(0), drop=(0.3, 0.3), max_shift=1)
    kept = np.unique(weak[weak > 0])
    assert kept.size == 7
    areas = sorted({int((weak == k).sum()) for k in kept})
    assert set(areas) <= {9, 45}
    for k in kept:  # every kept annotation stays centred on its own cell
        assert labels[weak == k].max() in (0, k)
        assert (labels[weak == k] == k).any()


def test_quick_run_writes_every_row(tmp_path):
    """The CI smoke test: ``--quick`` finishes, every method row is present with finite
    scores, the correction curve has k = 0 and 5, plots are drawn, and docs are untouched."""
    docs = tmp_path / "docs"
    proc = _bench("--quick", "--out", str(tmp_path), "--docs", str(docs))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "papers_quick.json").read_text())
    mod = _module()
    specs = mod.method_specs(3, 8)
    expected = {(ds, m) for m, s in specs.items() for ds in s["data"]}
    got = {(r["dataset"], r["method"]) for r in result["rows"]}
    assert got == expected
    for row in result["rows"]:
        for post in ("map", "th", "wt"):
            scores = row["test"][post]
            for key in ("precision", "recall", "f1", "sq", "rq", "pq", "count_mae"):
                assert math.isfinite(scores[key]), (row["method"], post, key)
                assert scores[key] >= 0
            assert sorted(scores["contour_f1"], key=int) == [str(r) for r in range(2, 8)]
            assert all(0 <= v <= 1 for v in scores["contour_f1"].values())
        assert 0 <= row["test"]["wdmc"] <= 1
        assert len(row["loss_curve"]) == row["steps"] > 0
        assert set(row["thresholds"]) >= {"th", "wt"}
    rescount = next(r for r in result["rows"] if r["method"] == "ResCount")
    assert "binary" in rescount["test"]
    binary = rescount["test"]["binary"]
    assert 0 <= binary["centroid_f1_nearest"] <= binary["centroid_f1_optimal"] <= 1
    for name in ("DDT+UNet1", "DDT+UNet2"):  # D's mode: the class loss stops at the DDT
        row = next(r for r in result["rows"] if r["method"] == name)
        assert row["config"]["network"]["detach_ddt"] is True
    corr = result["correction"]
    assert [r["k"] for r in corr["rows"]] == [0, 5]
    assert corr["rows"][0]["finetune_s"] == 0.0 and corr["rows"][1]["finetune_s"] > 0
    for r in corr["rows"]:
        assert 0 <= r["pq_rest"] <= 1 and 0 <= r["pq_common"] <= 1
    images = tmp_path / "papers_quick_images"
    for name in ("training_curves", "pq_bars", "correction_curve", "overlays", "weight_maps"):
        assert (images / f"papers_{name}.png").stat().st_size > 0
    assert not docs.exists()
    for key in ("command", "seed", "device", "date", "commit", "preset"):
        assert key in result["meta"]
    # the full-run page renders from such a result: every method row in its tables
    page = mod.render_markdown(result)
    for method in {m for _, m in expected}:
        assert f"| {method} | WT |" in page
    assert "## Results: weak dataset" in page and "## Correction curve" in page
    assert "pending the first full run" in mod.render_markdown(None)


def _row(method: str, dataset: str, wt_pq: float, map_pq: float, bde: float | None = None):
    scores = {
        "pq": wt_pq,
        "f1": wt_pq,
        "bde": bde,
        "contour_f1": {str(r): wt_pq for r in range(2, 8)},
    }
    return {
        "method": method,
        "dataset": dataset,
        "test": {"wt": scores, "map": {**scores, "pq": map_pq}, "wdmc": 0.5},
    }


def test_ranking_checks_compare_orders_and_skip_missing_methods():
    """On the weak set W3 beats UNET3 under WT (as T Table 4 says) but loses under MAP; on
    the crowded set J3 > J4 > W3 under MAP, so T Table 6's J4 > J3 > W3 does not hold. BDE is
    lower-is-better: UNet1 0.5 < DDT+UNet2 0.6 < DDT+UNet1 0.9 disagrees with D. Claims
    whose methods were not run (SAW, DWM) are left out, and one method alone is no claim."""
    mod = _module()
    result = {
        "rows": [
            _row("W3", "weak", 0.8, 0.5),
            _row("UNET3", "weak", 0.7, 0.6),
            _row("J3", "crowded", 0.7, 0.9),
            _row("J4", "crowded", 0.7, 0.8),
            _row("W3", "crowded", 0.7, 0.7),
            _row("UNet1", "crowded", 0.7, 0.7, bde=0.5),
            _row("DDT+UNet1", "crowded", 0.7, 0.7, bde=0.9),
            _row("DDT+UNet2", "crowded", 0.7, 0.7, bde=0.6),
        ]
    }
    checks = {c["source"]: c for c in mod.ranking_checks(result)}
    assert checks["T Table 4 (weak labels, WT PQ)"]["agrees"] is True
    assert checks["T Table 4 (weak labels, MAP PQ)"]["ours"] == ["UNET3", "W3"]
    assert checks["T Table 6 (MAP PQ)"]["ours"] == ["J3", "J4", "W3"]
    assert not checks["T Table 6 (MAP PQ)"]["agrees"]
    assert checks["D Tables 2-3 (BDE)"]["ours"] == ["UNet1", "DDT+UNet2", "DDT+UNet1"]
    assert not any(c.startswith("T Table 2") or c.startswith("T Table 3") for c in checks)
    assert "T Table 6 (weak labels, MAP PQ)" not in checks  # only W3 ran on the weak set


def test_render_keeps_the_written_analysis(tmp_path):
    """Re-rendering docs/papers.md replaces the tables but keeps the text between the
    analysis markers of the page it replaces."""
    mod = _module()
    result = json.loads((REPO / "benchmarks" / "results" / "papers_quick.json").read_text())
    page = tmp_path / "papers.md"
    first = mod.render_markdown(result, previous=page)
    assert "To be written" in first
    page.write_text(
        first.replace(
            first[first.index(mod.ANALYSIS_START) : first.index(mod.ANALYSIS_END)],
            mod.ANALYSIS_START + "\nOur reading: J4 loses because of X.\n",
        )
    )
    again = mod.render_markdown(result, previous=page)
    assert "Our reading: J4 loses because of X." in again and "To be written" not in again
    assert "| papers' claim |" in again


def test_correction_only_updates_the_saved_run(tmp_path):
    """``--correction-only --draws 2 --finetune-steps 3`` re-runs just the correction curve on
    the saved run's preset (here the quick one: k = 0 and 5) with 3-step fine-tunes, keeps
    the method rows, records its own command / date / commit, and re-renders the page and
    the plots."""
    saved = json.loads((REPO / "benchmarks" / "results" / "papers_quick.json").read_text())
    (tmp_path / "papers.json").write_text(json.dumps(saved))
    docs = tmp_path / "docs"
    docs.mkdir()
    proc = _bench(
        "--correction-only",
        "--draws",
        "2",
        "--finetune-steps",
        "3",
        "--out",
        str(tmp_path),
        "--docs",
        str(docs),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "papers.json").read_text())
    assert result["rows"] == saved["rows"]
    rows = result["correction"]["rows"]
    assert sorted((r["repeat"], r["k"]) for r in rows) == [(0, 0), (0, 5), (1, 0), (1, 5)]
    assert {r["steps"] for r in rows if r["k"]} == {3}  # --finetune-steps, not the preset's 2
    assert result["correction"]["finetune_config"]["steps"] == 3
    assert "--correction-only" in result["correction_meta"]["command"]
    page = (docs / "papers.md").read_text()
    assert "Re-run on its own" in page and "2 draw(s)" in page
    assert (docs / "images" / "papers_correction_curve.png").stat().st_size > 0


TIMES = {"prep_s", "train_s", "eval_s", "s_per_step", "finetune_s"}


def _untimed(x):
    """``x`` without wall times (the only values that differ between two equal runs)."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def test_time_limited_run_resumes_to_the_same_result(tmp_path):
    """``--max-minutes 0`` runs one method per call, saves it and exits with code 3; a
    ``--resume`` call finishes the rest and the correction curve. Rows, loss curves and the
    correction curve equal those of one uninterrupted run; the progress files are removed
    and the result lists the calls it was made in."""

    def bench(out, *extra):
        return _bench("--quick", "--methods", "UNET3,W3", "--out", str(out), *extra)

    parts = tmp_path / "parts"
    first = bench(parts, "--max-minutes", "0")
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    assert "--resume" in first.stdout
    progress = json.loads((parts / "papers_quick_progress.json").read_text())
    assert [(r["dataset"], r["method"]) for r in progress["rows"]] == [("crowded", "UNET3")]
    assert not (parts / "papers_quick.json").exists()

    rest = bench(parts, "--resume")
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    assert "resuming" in rest.stdout and "1 run(s) done" in rest.stdout
    assert not (parts / "papers_quick_progress.json").exists()
    resumed = json.loads((parts / "papers_quick.json").read_text())
    assert [c["runs"] for c in resumed["meta"]["sessions"]] == [1, 4]

    whole = tmp_path / "whole"
    straight = bench(whole)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    once = json.loads((whole / "papers_quick.json").read_text())
    assert "sessions" not in once["meta"]
    assert _untimed(resumed["rows"]) == _untimed(once["rows"])
    assert _untimed(resumed["correction"]) == _untimed(once["correction"])

    # a resume with other settings is refused, naming the progress file
    (parts / "papers_quick_progress.json").write_text(json.dumps({"key": {"seed": 1}}))
    other = bench(parts, "--resume")
    assert other.returncode != 0
    assert "papers_quick_progress.json" in other.stderr and "other settings" in other.stderr
