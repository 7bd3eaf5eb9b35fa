"""Per-cell measurements, detection boxes and CSV writing (numpy / scipy only).

Used by the Measure widget and usable headless: counting pixels, averaging coordinates
and intensities per label, and the bounding boxes of matched / missed / spurious cells.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy import ndimage

from napari_cellfocus.core.validation import check_labels, check_same_shape

#: Axis names of the centroid columns, by number of dimensions.
AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("t", "z", "y", "x")}

#: Edge colours of the boxes: matched prediction, unmatched prediction, missed object.
BOX_COLOURS = {"TP": "#33ff33", "FP": "#ff3333", "FN": "#ffcc00"}


def cell_table(labels: np.ndarray, intensity: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One row per object of ``labels``.

    Parameters
    ----------
    labels : int array (Y, X), (Z, Y, X) or (T, Z, Y, X); 0 = background.
    intensity : optional array of the same shape (one channel).

    Returns
    -------
    dict of columns, all of length n_objects, sorted by label:
    ``label`` (int), ``area`` (pixel or voxel count), ``centroid_<axis>`` (mean pixel
    index along each axis, in pixels), and ``mean_intensity`` when ``intensity`` is given.
    """
    lab = check_labels(labels, name="labels", ndim=(2, 3, 4))
    if intensity is not None:
        check_same_shape(lab, intensity, "labels", "intensity image")
    flat = lab.ravel()
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, minlength=ids.size).astype(np.int64)
    keep = ids > 0
    table: dict[str, np.ndarray] = {"label": ids[keep].astype(np.int64), "area": counts[keep]}
    for axis, name in enumerate(AXIS_NAMES[lab.ndim]):
        shape = [1] * lab.ndim
        shape[axis] = lab.shape[axis]
        coord = np.broadcast_to(np.arange(lab.shape[axis]).reshape(shape), lab.shape).ravel()
        sums = np.bincount(inverse, weights=coord, minlength=ids.size)
        table[f"centroid_{name}"] = sums[keep] / np.maximum(counts[keep], 1)
    if intensity is not None:
        values = np.asarray(intensity, dtype=np.float64).ravel()
        sums = np.bincount(inverse, weights=values, minlength=ids.size)
        table["mean_intensity"] = sums[keep] / np.maximum(counts[keep], 1)
    return table


def frame_table(labels: np.ndarray, intensity: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`cell_table` of each frame of a time series, one row per cell *and frame*.

    ``labels``: (T, Y, X) or (T, Z, Y, X); ``intensity`` of the same shape or None.
    Columns: ``frame`` first, then those of :func:`cell_table` for one frame
    (``centroid_y``, ``centroid_x``, ...). A cell whose id is kept across frames (linked)
    has one row in each frame it is in.
    """
    lab = check_labels(labels, name="labels", ndim=(3, 4))
    if intensity is not None:
        check_same_shape(lab, intensity, "labels", "intensity image")
    tables = [
        cell_table(lab[t], None if intensity is None else intensity[t])
        for t in range(lab.shape[0])
    ]
    names = ["frame", *tables[0]]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for t, table in enumerate(tables):
        n = len(table["label"])
        out["frame"].append(np.full(n, t, np.int64))
        for name in names[1:]:
            out[name].append(table[name])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def frame_counts(labels: np.ndarray) -> list[int]:
    """Number of objects in each frame of (T, ...) labels."""
    lab = np.asarray(labels)
    return [int(np.count_nonzero(np.unique(frame))) for frame in lab]


def frame_boxes(gt: np.ndarray, pred: np.ndarray, iou_threshold: float) -> tuple[list, list]:
    """:func:`match_boxes` frame by frame (matching within each frame), the frame index
    added in front of every corner: rectangles in (T, [Z,] Y, X) coordinates."""
    from napari_cellfocus.core.metrics import match_instances

    shapes: list[np.ndarray] = []
    status: list[str] = []
    for t in range(gt.shape[0]):
        rects, kinds = match_boxes(gt[t], pred[t], match_instances(gt[t], pred[t], iou_threshold))
        shapes += [np.column_stack([np.full(len(r), float(t)), r]) for r in rects]
        status += kinds
    return shapes, status


def _box(sl: tuple[slice, ...]) -> np.ndarray:
    """Rectangle (4, ndim) around a bounding-box slice, on the object's first plane."""
    lead = [float(s.start) for s in sl[:-2]]
    y0, y1 = sl[-2].start - 0.5, sl[-2].stop - 0.5
    x0, x1 = sl[-1].start - 0.5, sl[-1].stop - 0.5
    return np.array([[*lead, y0, x0], [*lead, y0, x1], [*lead, y1, x1], [*lead, y1, x0]])


def boxes(labels: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Bounding rectangles (in the last two axes) of the objects ``ids`` of ``labels``."""
    lab = check_labels(labels, ndim=(2, 3, 4))
    if ids.size == 0:
        return []
    slices = ndimage.find_objects(lab, max_label=int(ids.max()))
    return [_box(slices[int(i) - 1]) for i in ids if slices[int(i) - 1] is not None]


def match_boxes(gt: np.ndarray, pred: np.ndarray, matching: Any) -> tuple[list, list[str]]:
    """Rectangles and their status: matched predictions "TP", unmatched predictions "FP",
    unmatched ground-truth objects "FN" (``matching`` from core.metrics.match_instances)."""
    shapes: list[np.ndarray] = []
    status: list[str] = []
    for kind, labels, ids in (
        ("TP", pred, np.asarray(matching.matched_pred)),
        ("FP", pred, np.asarray(matching.unmatched_pred)),
        ("FN", gt, np.asarray(matching.unmatched_true)),
    ):
        rects = boxes(labels, ids)
        shapes += rects
        status += [kind] * len(rects)
    return shapes, status


def _write_rows(path: str | Path, rows: Iterable[Sequence[Any]]) -> Path:
    """Write CSV rows atomically (:func:`napari_cellfocus.core.io.atomic_write`): an
    interrupted export never leaves a half-written file under ``path``."""
    from napari_cellfocus.core.io import atomic_write

    def write(binary: IO[bytes]) -> None:
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        csv.writer(text).writerows(rows)
        text.flush()
        text.detach()  # leave the binary file open for atomic_write's fsync

    return atomic_write(path, write)


def write_csv(path: str | Path, table: Mapping[str, np.ndarray]) -> Path:
    """Write columns to a CSV file (header row, one row per cell)."""
    names = list(table)
    n = len(next(iter(table.values()))) if table else 0
    rows = [names] + [[_fmt(table[name][i]) for name in names] for i in range(n)]
    return _write_rows(path, rows)


def write_metrics_csv(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write a ``metric,value`` CSV."""
    rows = [["metric", "value"]] + [[key, _fmt(value)] for key, value in metrics.items()]
    return _write_rows(path, rows)


def _fmt(value: Any) -> Any:
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return f"{float(value):.6g}"
    return value
