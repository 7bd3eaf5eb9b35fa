"""``cellfocus evaluate``: segmentation metrics of one label pair or of two folders.

    cellfocus evaluate --gt GT.tif --pred PRED.tif [--json] [--csv OUT.csv]
    cellfocus evaluate --gt GT_FOLDER/ --pred PRED_FOLDER/ [--json] [--csv OUT.csv]

Two folders pair up by name: a file's *key* is its name without the ``.tif`` / ``.tiff``
extension and without one trailing label ending (``_labels``, ``_label``, ``_masks``,
``_mask``, any case), so ``gt/img1.tif``, ``gt/img1_masks.tif`` and
``pred/img1_labels.tif`` (what ``cellfocus predict`` writes) all have the key ``img1``.
From a folder holding any file with a label ending, only those files are taken, so images
next to their labels (``cellfocus simulate``'s layout) and ``NAME_probs.tif`` are left out;
a folder without any (``masks/img1.tif``) is taken whole. Every key must be on both sides,
once: otherwise the command fails listing the unmatched names. Rows: one per pair (metrics of
:func:`napari_cellfocus.core.metrics.evaluate`) and a pooled row
(:func:`napari_cellfocus.core.metrics.pool_scores`: TP, FP, FN and matched IoU summed over
the images, then the same formulas).

Registered by ``napari_cellfocus.cli`` through :func:`add_evaluate_parser`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_cellfocus.cli_common import CliError, add_overwrite_flag, check_output_paths

__all__ = ["add_evaluate_parser", "label_key", "pair_by_name", "run_evaluate"]

#: Columns of the text table for folders (the CSV and JSON hold every metric).
TABLE_COLUMNS = ("n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "pq", "sq")


def label_key(path: Path) -> str:
    """Name of ``path`` without its extension and one trailing label ending."""
    from napari_cellfocus.core.io import LABEL_ENDINGS

    stem = path.stem
    for ending in sorted(LABEL_ENDINGS, key=len, reverse=True):
        if stem.lower().endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)]
    return stem


def _keyed(files: Sequence[Path], flag: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        key = label_key(f)
        if key in out:
            raise CliError(f"{flag}: {out[key].name} and {f.name} both pair as {key!r}.")
        out[key] = f
    return out


def pair_by_name(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    """``(key, gt_file, pred_file)`` for two files (key: the ground truth's name) or for
    two folders paired by :func:`label_key`, in sorted order; :class:`CliError` when a
    name has no partner (all such names listed)."""
    from napari_cellfocus.core.io import TIFF_SUFFIXES, expand_paths

    for path in (gt, pred):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder.")
    if gt.is_dir() != pred.is_dir():
        raise CliError(f"--gt {gt} and --pred {pred}: give two label files or two folders.")
    if not gt.is_dir():
        return [(gt.name, gt, pred)]
    gts = _keyed(expand_paths([gt], role="labels"), "--gt")
    preds = _keyed(expand_paths([pred], role="labels"), "--pred")
    no_pred = sorted(set(gts) - set(preds))
    no_gt = sorted(set(preds) - set(gts))
    if no_pred or no_gt:
        parts = []
        if no_pred:
            parts.append(f"no prediction in {pred} for {', '.join(gts[k].name for k in no_pred)}")
        if no_gt:
            parts.append(f"no ground truth in {gt} for {', '.join(preds[k].name for k in no_gt)}")
        left = [
            str(folder)
            for folder, taken in ((gt, gts), (pred, preds))
            if len(taken) < sum(f.suffix.lower() in TIFF_SUFFIXES for f in folder.iterdir())
        ]
        note = (
            f" From {' and '.join(left)}, only the files with such an ending were taken "
            "(the others are images)."
            if left
            else ""
        )
        raise CliError(
            "; ".join(parts) + ". Files pair by name without .tif and without a trailing "
            "_labels / _label / _masks / _mask." + note
        )
    return [(k, gts[k], preds[k]) for k in sorted(gts)]


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}


def evaluate_pairs(
    pairs: Sequence[tuple[str, Path, Path]], iou: float = 0.5
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metrics of every pair (with ``image``, ``gt``, ``pred``) and the pooled metrics."""
    from napari_cellfocus.core.io import read_image
    from napari_cellfocus.core.metrics import evaluate, pool_scores

    rows = []
    for key, gt_path, pred_path in pairs:
        gt, pred = read_image(gt_path), read_image(pred_path)
        try:
            metrics = evaluate(gt, pred, iou_threshold=iou)
        except ValueError as err:
            raise ValueError(f"--gt {gt_path} / --pred {pred_path}: {err}") from err
        rows.append({"image": key, "gt": str(gt_path), "pred": str(pred_path), **_plain(metrics)})
    pooled = _plain(pool_scores(rows))
    pooled["iou_threshold"] = rows[0]["iou_threshold"] if rows else iou
    return rows, pooled


def write_rows_csv(path: Path, rows: Sequence[dict[str, Any]], pooled: dict[str, Any]) -> Path:
    """One CSV row per image and a last ``pooled`` row (``n_images`` 1 per image); floats
    at full precision. Written atomically (``core.io.atomic_write``)."""
    from napari_cellfocus.core.io import atomic_write

    names = ["image", "gt", "pred", *(k for k in rows[0] if k not in ("image", "gt", "pred"))]
    names.append("n_images")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=names)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "n_images": 1})
    writer.writerow({"image": "pooled", "gt": "", "pred": "", **pooled})
    data = text.getvalue().encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))  # never a half-written table


def _shown(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_table(rows: Sequence[dict[str, Any]], pooled: dict[str, Any]) -> None:
    lines = [["image", *TABLE_COLUMNS]]
    lines += [[r["image"], *(_shown(r[c]) for c in TABLE_COLUMNS)] for r in rows]
    lines.append([f"pooled ({pooled['n_images']})", *(_shown(pooled[c]) for c in TABLE_COLUMNS)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def run_evaluate(args: argparse.Namespace) -> int:
    """Body of ``cellfocus evaluate``: a key/value list (or a JSON object) for one pair, a
    table (or JSON ``{"images": [...], "pooled": {...}}``) for two folders."""
    pairs = pair_by_name(Path(args.gt), Path(args.pred))
    if args.csv is not None:  # before any work: never over a label file or an existing
        inputs = [p for _, gt, pred in pairs for p in (gt, pred)]  # file without --overwrite
        check_output_paths(inputs, [("--csv", Path(args.csv))], args.overwrite)
    rows, pooled = evaluate_pairs(pairs, args.iou)
    if args.csv is not None:
        write_rows_csv(Path(args.csv), rows, pooled)
    folders = Path(args.gt).is_dir()
    if not folders:
        result = {k: v for k, v in rows[0].items() if k not in ("image", "gt", "pred")}
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            width = max(map(len, result))
            for key, value in result.items():
                print(f"{key:<{width}}  {_shown(value)}")
    elif args.json:
        print(json.dumps({"images": rows, "pooled": pooled}, indent=2))
    else:
        _print_table(rows, pooled)
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``evaluate`` sub-command on ``sub``; returns its parser."""
    p = sub.add_parser(
        "evaluate",
        help="compare predicted label images with ground truth (one pair or two folders)",
        description="Instance-segmentation metrics (precision, recall, F1, PQ, SQ, RQ, ...) "
        "of predicted label TIFFs against ground-truth label TIFFs: one pair of files, or two "
        "folders paired by name (NAME.tif / NAME_labels.tif / NAME_masks.tif all pair as "
        "NAME), giving one row per image and a pooled row (counts summed over the images).",
    )
    p.add_argument("--gt", required=True, type=Path, help="ground-truth labels: TIFF or folder")
    p.add_argument("--pred", required=True, type=Path, help="predicted labels: TIFF or folder")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold for a match (0.5)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--csv", type=Path, default=None, help="also write the rows (and the pooled row) to CSV"
    )
    add_overwrite_flag(p)
    p.set_defaults(func=run_evaluate)
    return p
