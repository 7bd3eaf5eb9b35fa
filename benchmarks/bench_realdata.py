"""Real-data benchmark: the default model (and the previous one) on the real validation split.

    python benchmarks/bench_realdata.py --data ../shared/data/dsb2018-train

Every validation image is segmented as a user gets it: the model's own defaults, the
nucleus diameter estimated per image (``diameter="auto"``; a model without a scale sees
the image as it is). Scores per image size and pooled over all images (TP/FP/FN summed
first): PQ, F1, precision, recall, SQ, count error, seconds per image. The false
detections are sorted by size against the image's typical nucleus (fragments under a
quarter of its area, and so on). A row with the diameter taken from the ground truth
shows what a perfect size estimate would give.

The validation images are those listed in the default model's checkpoint (the split the
training script held out); the previous model is read from git history unless
``--previous PATH`` is given. Writes ``benchmarks/results/realdata.json`` and the tables of
``docs/default_model.md`` (between ``<!-- realdata:start -->`` and ``<!-- realdata:end -->``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_cellfocus.core.datasets import read_pairs, split_by_image  # noqa: E402
from napari_cellfocus.core.metrics import match_instances, pool_scores  # noqa: E402
from napari_cellfocus.core.size import median_diameter  # noqa: E402
from napari_cellfocus.engine.checkpoint import default_model_path  # noqa: E402
from napari_cellfocus.engine.segment import Segmenter  # noqa: E402
from napari_cellfocus.engine.validation import post_labels, predict_all, score  # noqa: E402

#: The simulator-only default model, as shipped before the real-data one.
PREVIOUS = "6751289:src/napari_cellfocus/data/default_model.pt"
START, END = "<!-- realdata:start -->", "<!-- realdata:end -->"
KEYS = ("pq", "f1", "precision", "recall", "sq")


def previous_model(spec: str | None, tmp: Path) -> Path:
    """The previous default model: a path, or ``COMMIT:PATH`` read with ``git show``."""
    spec = spec or PREVIOUS
    if Path(spec).exists():
        return Path(spec)
    out = tmp / "previous_model.pt"
    with out.open("wb") as fh:
        subprocess.run(["git", "-C", str(REPO), "show", spec], stdout=fh, check=True)
    return out


def validation_set(data: Path, seg: Segmenter, seed: int, fraction: float) -> list:
    """The held-out images named in the model's record (else a fresh split by image)."""
    real = read_pairs(data)
    names = seg.info.training.get("default_model", {}).get("validation_files")
    if names:
        wanted = set(names)
        return [r for r in real if r.name in wanted]
    _, val = split_by_image([r.image.shape for r in real], fraction, seed)
    return [real[i] for i in val]


#: Where a false detection lies: share of its pixels on annotated nuclei.
PLACES = (("on a nucleus (split / partial)", 0.5), ("at a nucleus edge", 0.1), ("background", 0.0))
SIZES = (("< 1/4", 0.25), ("1/4 - 1/2", 0.5), ("1/2 - 2", 2.0), ("> 2", float("inf")))


def false_positives(preds, method, params, fraction) -> dict[str, dict[str, int]]:
    """False detections (unmatched predicted objects) by where they lie (the share of their
    pixels on annotated nuclei: >= 1/2 a split or partial nucleus, 1/10 - 1/2 at a nucleus'
    edge, less: background texture or an unannotated object) and by area relative to the
    image's median annotated nucleus."""

    table = {place: {size: 0 for size, _ in SIZES} for place, _ in PLACES}
    for pred in preds:
        lab = post_labels(pred, method, params, fraction)
        m = match_instances(pred.labels, lab)
        true_areas = np.bincount(pred.labels.ravel())[1:]
        typical = float(np.median(true_areas[true_areas > 0])) if true_areas.any() else 1.0
        areas = np.bincount(lab.ravel())
        on_nuclei = np.bincount(
            lab.ravel(), weights=(pred.labels.ravel() > 0), minlength=areas.size
        )
        matched = {int(i) for i in m.matched_pred}
        for obj in m.pred_ids:
            if int(obj) in matched:
                continue
            share = on_nuclei[obj] / areas[obj]
            place = next(name for name, low in PLACES if share >= low)
            size = next(name for name, high in SIZES if areas[obj] / typical < high)
            table[place][size] += 1
    return table


def summarise(preds, method, params, fraction) -> dict:
    rows = score(preds, method, params, fraction)
    by_size: dict[str, list] = {}
    for pred, row in zip(preds, rows, strict=True):
        by_size.setdefault("x".join(map(str, pred.shape)), []).append(row)
    groups = {"all": rows, **by_size}
    out = {}
    for name, group in groups.items():
        pooled = pool_scores(group)
        idx = [
            i for i, p in enumerate(preds) if name == "all" or "x".join(map(str, p.shape)) == name
        ]
        counts = np.array([rows[i]["count_error"] for i in idx], float)
        n_true = np.array([rows[i]["n_true"] for i in idx], float)
        out[name] = {
            **{k: pooled[k] for k in KEYS},
            "n_images": len(group),
            "n_true": int(pooled["n_true"]),
            "n_pred": int(pooled["n_pred"]),
            "mean_abs_count_error": float(np.mean(np.abs(counts))),
            "mean_abs_rel_count_error": float(np.mean(np.abs(counts) / np.maximum(n_true, 1))),
            "seconds_per_image": float(np.mean([preds[i].seconds for i in idx])),
        }
    return out


def evaluate_model(name: str, model, val, device: str, diameter="auto") -> dict:
    seg = Segmenter(model, device=device)
    t = time.perf_counter()
    preds = predict_all(
        seg,
        [v.image for v in val],
        [v.labels for v in val],
        [v.name for v in val],
        diameter=diameter,
    )
    method, params = seg.default_method, seg.default_post_params()
    fraction = float(seg.info.defaults.get("min_size_fraction") or 0.0)
    rel = [p.diameter / p.true_diameter for p in preds if p.diameter and p.true_diameter]
    result = {
        "model": name,
        "source": seg.source,
        "method": method,
        "post_params": params,
        "min_size_fraction": fraction,
        "model_diameter": seg.model_diameter,
        "scores": summarise(preds, method, params, fraction),
        "false_positives": false_positives(preds, method, params, fraction),
        "seconds": time.perf_counter() - t,
    }
    if rel:
        err = np.abs(np.array(rel) - 1)
        result["diameter_estimate"] = {
            "median_abs_rel_error": float(np.median(err)),
            "within_10pct": float(np.mean(err <= 0.1)),
            "within_25pct": float(np.mean(err <= 0.25)),
        }
    result["per_image"] = [
        {
            "file": p.name,
            "shape": list(p.shape),
            "diameter": p.diameter,
            "true_diameter": p.true_diameter,
            "seconds": p.seconds,
            **{k: r[k] for k in ("pq", "f1", "precision", "recall", "tp", "fp", "fn")},
        }
        for p, r in zip(preds, score(preds, method, params, fraction), strict=True)
    ]
    return result


def write_docs(record: dict, path: Path) -> None:
    lines = [
        START,
        f"Measured by `{record['command']}` at commit {record['commit']} on {record['date']}, "
        f"{record['device']}; {record['n_images']} real validation images (held out by image, "
        "never trained on).",
        "",
        "| model | post-processing | images | PQ | F1 | precision | recall | SQ | mean abs count error | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in record["models"]:
        post = res["method"].upper() + (
            " " + ", ".join(f"{k} {v}" for k, v in res["post_params"].items())
            if res["post_params"]
            else ""
        )
        if res["min_size_fraction"]:
            post += f"; size filter {res['min_size_fraction']:.2f} x typical area"
        for group, s in res["scores"].items():
            label = "pooled" if group == "all" else group
            lines.append(
                f"| {res['model']} | {post} | {label} ({s['n_images']}) | {s['pq']:.3f} | {s['f1']:.3f} | "
                f"{s['precision']:.3f} | {s['recall']:.3f} | {s['sq']:.3f} | "
                f"{s['mean_abs_count_error']:.1f} ({100 * s['mean_abs_rel_count_error']:.0f} %) | {s['seconds_per_image']:.2f} |"
            )
    lines += [
        "",
        "False detections (predicted objects matching no annotated nucleus at IoU > 0.5), by "
        "where they lie and by area relative to the image's median annotated nucleus:",
        "",
        "| model | where | " + " | ".join(f"area {name}" for name, _ in SIZES) + " | all |",
        "|---|---|" + "---|" * (len(SIZES) + 1),
    ]
    for res in record["models"]:
        for place, row in res["false_positives"].items():
            cells = " | ".join(str(row[name]) for name, _ in SIZES)
            lines.append(f"| {res['model']} | {place} | {cells} | {sum(row.values())} |")
    est = [
        r
        for r in record["models"]
        if "diameter_estimate" in r and r["model"].endswith("estimated")
    ]
    if est:
        e = est[0]["diameter_estimate"]
        lines += [
            "",
            f"Diameter estimate against the ground truth's median: median error "
            f"{100 * e['median_abs_rel_error']:.1f} %, {100 * e['within_10pct']:.0f} % of images within 10 %, "
            f"{100 * e['within_25pct']:.0f} % within 25 %.",
        ]
    lines.append(END)
    section = "\n".join(lines)
    text = path.read_text() if path.exists() else "# The built-in default model\n"
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of real images/masks")
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument(
        "--previous", default=None, help=f"previous model (default: git {PREVIOUS})"
    )
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--limit", type=int, default=0, help="first N validation images only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "realdata.json"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "default_model.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    seg = Segmenter(args.model, device=args.device)
    val = validation_set(args.data, seg, args.seed, args.val_fraction)
    if args.limit:
        val = val[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        prev = previous_model(args.previous, Path(tmp))
        models = [
            evaluate_model("default, diameter estimated", args.model, val, args.device),
            evaluate_model(
                "default, diameter from ground truth",
                args.model,
                val,
                args.device,
                diameter=[median_diameter(v.labels) for v in val],
            ),
            evaluate_model("previous (simulator only)", str(prev), val, args.device),
        ]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    record = {
        "command": f"python benchmarks/bench_realdata.py --data {args.data}",
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{args.device} ({torch.get_num_threads()} threads)",
        "n_images": len(val),
        "models": models,
    }
    for res in models:
        s = res["scores"]["all"]
        print(
            f"{res['model']:<40} PQ {s['pq']:.3f} F1 {s['f1']:.3f} P {s['precision']:.3f} "
            f"R {s['recall']:.3f} ({res['seconds']:.0f} s)"
        )
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
        write_docs(record, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
