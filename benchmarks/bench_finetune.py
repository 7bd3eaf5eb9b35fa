"""The one-click fine-tune: time and PQ gain, configurations side by side in one run.

    .venv/bin/python benchmarks/bench_finetune.py [--quick] [--data ../shared/data/dsb2018-train]

Cases (each an image with full ground truth, of which a few cells are given as weak
annotations, as a user paints them in "Correct and fine-tune"):

* ``unfamiliar-512``: a 512 x 512 simulated image of a domain the default model was not
  trained on (large, elongated, dim, clumped nuclei; the scene of ``bench_engine.py``),
  10 cells annotated;
* ``unseen-768``: the 768 x 768 scene of the correction curve (``bench_papers.py``: large,
  clustered nuclei of the held-out simulator settings), 10 cells annotated;
* two real 360 x 360 images of the DSB 2018 validation split (held out from the default
  model's training, by image), 5 cells annotated each; skipped when the data folder is
  absent;

each with ``--draws`` (default 2) draws of which cells are annotated (``NAME#2``...).

Every case is scored as the widget shows it: the image is segmented (MAP) at the
diameter of the annotated cells (the fine-tune trains at that scale and its preview and
result layers are predicted there), before and after the fine-tune, and PQ is computed
on the *unannotated* cells (predictions touching an annotated cell left out), so the
gain measures what the model learnt for the cells the user did not paint.

Configurations: ``before`` (the one-click fine-tune as it was before issue 16's changes:
100 steps of 4 crops of 192 px, every weight trained) and ``default`` (what
``quick_finetune_config`` gives now), plus any ``--config NAME=JSON`` of TrainConfig
overrides. Time is the wall time from the click to the trained model (Trainer set-up,
including the pseudo-labels, and every step) and the time to the first preview the
widget shows (set-up + its first 10 steps + one prediction). Writes
``benchmarks/results/finetune.json`` and a section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.size import median_diameter
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.train import Trainer, quick_finetune_config

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "finetune.json"
DOCS = REPO / "docs" / "benchmarks.md"
MARKER = "finetune"
#: The widget's default preview interval (steps).
PREVIEW_EVERY = 10
#: The one-click fine-tune before issue 16 (quick_finetune_config of commit aeb838f).
BEFORE = {
    "steps": 100,
    "batch_size": 4,
    "crop_size": 192,
    "lr": 5e-4,
    "pseudo_label_weight": 1.0,
    "train_layers": "all",
}
#: Real validation images used (DSB 2018 stage-1 names; in the default model's held-out split).
REAL_CASES = ("a6e81120d1cb9f71", "b1a239838c7dbb34")


def simulated_cases() -> list[dict[str, Any]]:
    """The two simulated cases: image, ground truth and the annotated cell ids."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_papers as bp
    from bench_engine import unfamiliar_scene

    scene = unfamiliar_scene()
    n = int(scene.labels.max())
    cases = [
        {
            "name": "unfamiliar-512",
            "image": scene.image,
            "labels": scene.labels,
            "annotated": np.random.default_rng(0).permutation(np.arange(1, n + 1))[:10],
        }
    ]
    p = bp.PRESETS["cpu"]
    unseen, _ = bp.simulate_split(
        2, p["corr_size"], p["corr_radius"], (bp.DEFAULT_SEED, 7), bp.UNSEEN
    )
    ids = np.unique(unseen.labels)
    ids = ids[ids > 0]
    order = np.random.default_rng([bp.DEFAULT_SEED, 11, 0]).permutation(ids)
    cases.append(
        {
            "name": "unseen-768",
            "image": unseen.image,
            "labels": unseen.labels,
            "annotated": order[:10],
        }
    )
    return cases


def real_cases(data: Path) -> list[dict[str, Any]]:
    """The real validation images (5 annotated cells each), or [] without the data."""
    import tifffile

    cases = []
    for name in REAL_CASES:
        image_path, mask_path = data / "images" / f"{name}.tif", data / "masks" / f"{name}.tif"
        if not (image_path.exists() and mask_path.exists()):
            return []
        labels = tifffile.imread(mask_path).astype(np.int32)
        ids = np.unique(labels)
        ids = ids[ids > 0]
        cases.append(
            {
                "name": f"dsb-{name[:8]}",
                "image": tifffile.imread(image_path),
                "labels": labels,
                "annotated": np.random.default_rng(1).permutation(ids)[:5],
            }
        )
    return cases


def with_draws(cases: list[dict[str, Any]], draws: int) -> list[dict[str, Any]]:
    """``cases`` and, for draws 2..``draws``, each case again with as many other cells
    annotated (drawn with the seed ``[draw, case index]``), named ``NAME#draw``."""
    out = list(cases)
    for draw in range(2, draws + 1):
        for index, case in enumerate(cases):
            ids = np.unique(case["labels"])
            ids = ids[ids > 0]
            pick = np.random.default_rng([draw, index]).permutation(ids)[: len(case["annotated"])]
            out.append({**case, "name": f"{case['name']}#{draw}", "annotated": pick})
    return out


def pq_unannotated(seg: Segmenter, case: dict[str, Any], diameter: float) -> dict[str, float]:
    """Scores on the unannotated cells of ``case`` (predictions touching one left out)."""
    labels, ann = case["labels"], np.isin(case["labels"], case["annotated"])
    pred = seg.segment(case["image"], method="map", diameter=diameter).labels
    touched = np.unique(pred[ann])
    pred = np.where(np.isin(pred, touched[touched > 0]), 0, pred)
    res = evaluate(np.where(ann, 0, labels), pred)
    return {"pq": float(res["pq"]), "f1": float(res["f1"])}


def run_case(case: dict[str, Any], name: str, overrides: dict[str, Any], base: Segmenter) -> dict:
    """One fine-tune of ``case`` with ``overrides``; time and scores before / after."""
    weak = np.where(np.isin(case["labels"], case["annotated"]), case["labels"], 0)
    diameter = float(median_diameter(weak))
    config = quick_finetune_config(weak=True, **overrides)
    t0 = time.perf_counter()
    init = (base.model, base.info)
    trainer = Trainer([case["image"]], [weak.astype(np.int32)], config, init=init, device="cpu")
    setup_s = time.perf_counter() - t0
    preview_s, preview_cost = None, 0.0
    for progress in trainer.steps():
        if progress.step == min(PREVIEW_EVERY, config.steps):
            # what the widget does next: predict the image with the current weights
            p0 = time.perf_counter()
            Segmenter((trainer.model, trainer.current_info()), device="cpu").predict(
                case["image"], diameter=diameter
            )
            trainer.train_mode()
            preview_s = time.perf_counter() - t0
            preview_cost = time.perf_counter() - p0
    total_s = time.perf_counter() - t0 - preview_cost  # the training alone
    model, info = trainer.model, trainer.current_info()
    trainer.release()
    after = pq_unannotated(Segmenter((model, info), device="cpu"), case, diameter)
    return {
        "case": case["name"],
        "config": name,
        "overrides": overrides,
        "steps": config.steps,
        "annotated_cells": len(case["annotated"]),
        "diameter_px": diameter,
        "setup_s": setup_s,
        "finetune_s": total_s,
        "first_preview_s": preview_s,
        "pq_after": after["pq"],
        "f1_after": after["f1"],
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarise(rows: list[dict], before: dict[str, dict]) -> list[str]:
    """Markdown table rows: one per configuration and case, then the means."""
    lines = [
        "| configuration | case | cells annotated | PQ before | PQ after | gain | fine-tune s "
        "| first preview s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cfg in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == cfg]
        for r in mine:
            b = before[r["case"]]["pq"]
            lines.append(
                f"| {cfg} | {r['case']} | {r['annotated_cells']} | {b:.3f} | {r['pq_after']:.3f} "
                f"| {r['pq_after'] - b:+.3f} | {r['finetune_s']:.1f} | "
                f"{r['first_preview_s']:.1f} |"
            )
        gain = np.mean([r["pq_after"] - before[r["case"]]["pq"] for r in mine])
        lines.append(
            f"| **{cfg}: mean** | | | | | **{gain:+.3f}** | "
            f"**{np.mean([r['finetune_s'] for r in mine]):.1f}** | "
            f"**{np.mean([r['first_preview_s'] for r in mine]):.1f}** |"
        )
    return lines


def write_docs(result: dict) -> None:
    """The fine-tune section of docs/benchmarks.md (between its markers)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_engine import _replace_section

    configs = "; ".join(
        f"`{name}`: {json.dumps(over)}" for name, over in result["configs"].items()
    )
    lines = [
        f"<!-- {MARKER}:start -->",
        "### One-click fine-tune: time and PQ gain",
        "",
        f"`benchmarks/bench_finetune.py`, {result['date']}, commit `{result['commit']}`, "
        f"{result['machine']}, {result['threads']} threads, device cpu. PQ on the "
        "unannotated cells at the annotated cells' diameter (as the widget shows it), before "
        "and after a weak fine-tune on the annotated cells; time from the click to the "
        "trained model, and to the first preview (after 10 steps).",
        "",
        f"Configurations (TrainConfig overrides of the one-click fine-tune): {configs}.",
        "",
        *summarise(result["rows"], result["before"]),
        "",
        f"<!-- {MARKER}:end -->",
    ]
    _replace_section(DOCS, MARKER, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/dsb2018-train")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra configuration, e.g. fast='{\"steps\": 40}'",
    )
    parser.add_argument("--only", action="append", help="run only these configurations")
    parser.add_argument("--quick", action="store_true", help="3 steps, one case, no docs")
    parser.add_argument(
        "--draws", type=int, default=2, help="draws of the annotated cells per image"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    configs: dict[str, dict[str, Any]] = {"before": dict(BEFORE), "default": {}}
    for item in args.config:
        name, _, text = item.partition("=")
        configs[name] = json.loads(text)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
    cases = with_draws(simulated_cases() + real_cases(args.data), args.draws)
    if args.quick:
        cases = cases[:1]
        configs = {k: {**v, "steps": 3} for k, v in configs.items()}
    base = Segmenter("default", device="cpu")
    before = {}
    for case in cases:
        weak = np.where(np.isin(case["labels"], case["annotated"]), case["labels"], 0)
        before[case["name"]] = pq_unannotated(base, case, float(median_diameter(weak)))
        print(f"{case['name']}: PQ before {before[case['name']]['pq']:.3f}", flush=True)
    rows = []
    # case by case, every configuration in turn: a change of load on this shared machine
    # then falls on all configurations of a case alike
    for case in cases:
        for name, overrides in configs.items():
            row = run_case(case, name, overrides, base)
            rows.append(row)
            print(
                f"  {name:10s} {case['name']:16s} PQ {before[case['name']]['pq']:.3f} -> "
                f"{row['pq_after']:.3f} in {row['finetune_s']:.1f} s (first preview "
                f"{row['first_preview_s']:.1f} s)",
                flush=True,
            )
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads,
        "configs": configs,
        "default_config": {
            k: v for k, v in vars(quick_finetune_config()).items() if k != "augment"
        },
        "before": before,
        "rows": rows,
    }
    print("\n".join(summarise(rows, before)))
    if not args.no_write and not args.quick:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        write_docs(result)
        print(f"wrote {RESULTS} and {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
