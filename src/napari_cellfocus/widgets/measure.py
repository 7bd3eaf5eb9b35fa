"""Measure dock widget: count, per-cell table, metrics against ground truth, CSV export.

The table has one row per cell (label, area in pixels, centroid, mean intensity in
the chosen channel). With a ground-truth layer the scores of
:func:`napari_cellfocus.core.metrics.evaluate` are shown (objects match when their
IoU exceeds the threshold) and, optionally, a Shapes layer of bounding boxes:
green = true positive, red = false positive, yellow = false negative (missed).
Clicking a row of the cell table selects that cell in the labels layer
(``selected_label``) and centres the view on it (for stacks, on its plane).

A time series (the labels of a Segment run with a "time series" Stack mode, or a layer
whose first axis label is ``t``/``time``) is measured frame by frame: a ``frame``
column, cells matched within each frame, metrics pooled over the frames (and per frame
in the CSV), and a plot of the cells per frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_cellfocus.core.measure import (
    BOX_COLOURS,
    cell_table,
    frame_boxes,
    frame_counts,
    frame_table,
    match_boxes,
    write_csv,
    write_metrics_csv,
)
from napari_cellfocus.core.validation import check_labels
from napari_cellfocus.widgets._inputs import ImageSource, LayerCombo
from napari_cellfocus.widgets._job import JobPanel, WorkerOf
from napari_cellfocus.widgets._layers import (
    BOXES_NAME,
    BOXES_ROLE,
    LABELS_ROLE,
    MARK,
    own_labels,
    remove_own,
    role_of,
    source_of,
)
from napari_cellfocus.widgets._plots import PlotCanvas
from napari_cellfocus.widgets._stack import axis_kind, lead_axes_of
from napari_cellfocus.widgets._state import get_state, unwrap

if TYPE_CHECKING:
    import napari

#: Rows shown in the dock (the CSV always has every cell).
MAX_ROWS = 2000
#: Metrics shown first in the metrics table.
MAIN_METRICS = ("f1", "precision", "recall", "pq", "sq", "rq", "ap", "tp", "fp", "fn")


@dataclass
class Measured:
    table: dict[str, np.ndarray]
    metrics: dict[str, Any] | None
    shapes: list[np.ndarray]
    status: list[str]
    labels_name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    #: A time series measured frame by frame: per-frame counts and metrics.
    frames: bool = False
    counts: list[int] | None = None
    frame_metrics: list[dict[str, Any]] | None = None


def measure_job(
    labels: np.ndarray,
    intensity: np.ndarray | None,
    gt: np.ndarray | None,
    iou_threshold: float,
    want_boxes: bool,
    labels_name: str,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    cancel: threading.Event,
    frames: bool = False,
) -> Measured:
    """Worker function: the table, the metrics and the boxes. ``frames``: the first
    axis is time: rows, counts, metrics and boxes frame by frame (matching within each
    frame), the metrics pooled over the frames. A ValueError ends the job as
    :class:`~napari_cellfocus.widgets._workers.Failed` (``start_job``)."""
    from napari_cellfocus.core.metrics import evaluate, evaluate_frames, match_instances

    counts = frame_metrics = None
    metrics = shapes = status = None
    if frames:
        table = frame_table(labels, intensity)
        counts = frame_counts(labels)
        if gt is not None:
            scores = evaluate_frames(gt, labels, iou_threshold=iou_threshold)
            metrics, frame_metrics = scores["pooled"], scores["frames"]
            if want_boxes:
                shapes, status = frame_boxes(gt, labels, iou_threshold)
    else:
        table = cell_table(labels, intensity)
        if gt is not None:
            metrics = evaluate(gt, labels, iou_threshold=iou_threshold)
            if want_boxes:
                shapes, status = match_boxes(
                    gt, labels, match_instances(gt, labels, iou_threshold)
                )
    return Measured(
        table,
        metrics,
        shapes or [],
        status or [],
        labels_name,
        scale,
        translate,
        frames,
        counts,
        frame_metrics,
    )


def camera_of(viewer: napari.Viewer) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera``
    before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _prefer_truth(layers: list) -> Any:
    """Default ground truth: a user's labels layer named like one (else none)."""
    for layer in layers:
        words = layer.name.lower().replace("_", " ").split()
        if role_of(layer) is None and ("truth" in layer.name.lower() or "gt" in words):
            return layer
    return None


class MeasureWidget(QWidget):
    """Dock widget "Measure"."""

    worker = WorkerOf("panel")  # the running measurement, None when idle

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.result: Measured | None = None

        self.state = get_state(napari_viewer)
        self.labels = LayerCombo(napari_viewer, Labels, prefer=self._prefer_own_labels)
        self.labels.setToolTip(
            "The cells to measure (by default '<image> labels' of the image segmented last)."
        )
        self.intensity = ImageSource(
            napari_viewer, label="Intensity", none_text="— none —", prefer=self._prefer_image
        )
        self.intensity.setToolTip("Image (and channel) whose mean intensity is measured per cell.")
        self.gt = LayerCombo(napari_viewer, Labels, none_text="— none —", prefer=_prefer_truth)
        self.gt.setToolTip("Ground-truth labels of the same image, to score the segmentation.")
        self.iou = QDoubleSpinBox()
        self.iou.setRange(0.0, 0.99)
        self.iou.setSingleStep(0.05)
        self.iou.setValue(0.5)
        self.iou.setToolTip("A cell and a true cell match when their IoU is above this.")
        self.boxes_check = QCheckBox("Boxes: TP green, FP red, FN yellow")
        self.boxes_check.setToolTip("Add a Shapes layer of coloured boxes (needs ground truth).")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.panel = JobPanel(
            "Measure", buttons=[self.export_button], cancellable=False, progress=False
        )
        self.measure_button = self.panel.run_button
        self.count_label = QLabel("Cells: —")
        font = self.count_label.font()
        font.setPointSize(font.pointSize() + 3)
        font.setBold(True)
        self.count_label.setFont(font)
        self.metrics_table = QTableWidget(0, 2)
        self.metrics_table.setHorizontalHeaderLabels(["metric", "value"])
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.setMaximumHeight(190)
        self.cells_table = QTableWidget(0, 0)
        self.cells_table.verticalHeader().setVisible(False)
        self.cells_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.cells_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.cells_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.cells_table.setToolTip("Click a cell to select it in the labels and go to it.")
        self.frames_plot = PlotCanvas("cells per frame", "frame", "cells")
        self.frames_plot.setVisible(False)
        self.status = self.panel.status

        form = QFormLayout()
        form.addRow("Labels", self.labels)
        form.addRow(self.intensity)
        form.addRow("Ground truth", self.gt)
        form.addRow("IoU threshold", self.iou)
        form.addRow(self.boxes_check)
        self.panel.add_widget(self.count_label)
        self.panel.add_widget(QLabel("Metrics against ground truth"))
        self.panel.add_widget(self.metrics_table)
        self.panel.add_widget(QLabel("Cells"))
        self.panel.add_widget(self.cells_table, 1)
        self.panel.add_widget(self.frames_plot)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.panel, 1)

        self.measure_button.clicked.connect(self.measure)
        self.export_button.clicked.connect(self._export_clicked)
        self.cells_table.cellClicked.connect(lambda row, _col: self.go_to_cell(row))
        self.cells_table.currentCellChanged.connect(self._current_cell_changed)
        self.state.result_changed.connect(self._follow_result)

    def _prefer_own_labels(self, layers: list) -> Any:
        """Default labels: those of the image segmented last, else the topmost output."""
        result = self.state.result
        if result is not None:
            own = own_labels(self.viewer, result.layer_name)
            if own is not None and own in layers:
                return own
        for layer in reversed(layers):
            if role_of(layer) == LABELS_ROLE:
                return layer
        return None

    def _prefer_image(self, layers: list) -> Any:
        """Default intensity image: the one last segmented, if it is still open."""
        result = self.state.result
        for layer in layers:
            if result is not None and layer.name == result.layer_name:
                return layer
        return None

    def _follow_result(self) -> None:
        """A new segmentation: measure its labels, with its image (and channel)."""
        result = self.state.result
        if result is None or self.worker is not None:
            return
        labels = own_labels(self.viewer, result.layer_name)
        if labels is not None:
            self.labels.set_layer(labels)
        if result.layer_name in self.viewer.layers:
            self.intensity.set_source(self.viewer.layers[result.layer_name], result.channel)

    # ------------------------------------------------------------------ measure
    def _inputs(self) -> tuple:
        layer = self.labels.layer()
        if layer is None:
            raise ValueError(
                "No labels layer to measure: segment an image first (Segment), "
                "or open a labels layer."
            )
        labels = check_labels(np.asarray(layer.data), name=f"'{layer.name}'", ndim=(2, 3, 4))
        intensity = None
        if self.intensity.layers.layer() is not None:
            source = self.intensity.get()
            if source.data.shape != labels.shape:
                raise ValueError(
                    f"Intensity image '{source.layer.name}' has shape {source.data.shape} but "
                    f"labels '{layer.name}' have shape {labels.shape}: pick the image these "
                    "labels were made from (and its channel)."
                )
            intensity = source.data
        gt = None
        gt_layer = self.gt.layer()
        if gt_layer is not None:
            gt = check_labels(np.asarray(gt_layer.data), name=f"'{gt_layer.name}'", ndim=(2, 3, 4))
            if gt.shape != labels.shape:
                raise ValueError(
                    f"Ground truth '{gt_layer.name}' has shape {gt.shape} but labels "
                    f"'{layer.name}' have shape {labels.shape}: choose ground truth of the "
                    "same image."
                )
            if gt_layer is layer:
                raise ValueError("Ground truth and labels are the same layer: pick another one.")
        elif self.boxes_check.isChecked():
            show_info("Boxes need a ground-truth layer; measuring without them.")
        return layer, labels, intensity, gt

    def is_time_series(self, layer: Any) -> bool:
        """Whether the labels ``layer`` is a time series (first axis = frames): the
        segmentation it came from says so, or its first axis label is t / time."""
        if layer.ndim < 3:
            return False
        result = self.state.result
        stack = getattr(result, "stack", None)
        if result is not None and stack is not None and source_of(layer) == result.layer_name:
            return stack.axes.startswith("T")
        _, names = lead_axes_of(layer, None)
        return bool(names) and axis_kind(names[0]) == "T"

    def measure(self) -> None:
        """Compute the table (and metrics); shows an error and changes nothing on bad input."""
        if self.panel.running:
            return
        try:
            layer, labels, intensity, gt = self._inputs()
        except ValueError as err:
            self.panel.report(str(err))
            return
        self.panel.start(
            measure_job,
            labels,
            intensity,
            gt,
            float(self.iou.value()),
            self.boxes_check.isChecked() and gt is not None,
            layer.name,
            tuple(layer.scale),
            tuple(layer.translate),
            status=f"Measuring '{layer.name}'…",
            done=self._measured,
            frames=self.is_time_series(layer),
        )

    def _measured(self, out: Measured) -> None:
        self.result = out
        n = len(out.table["label"])
        self.count_label.setText(f"Cells: {n}")
        self._fill_cells(out.table)
        self._fill_metrics(out.metrics)
        remove_own(self.viewer, BOXES_ROLE)
        if out.shapes:
            self.viewer.add_shapes(
                out.shapes,
                shape_type="rectangle",
                edge_color=[BOX_COLOURS[s] for s in out.status],
                face_color="transparent",
                edge_width=1.5,
                name=BOXES_NAME,
                features={"status": out.status},
                scale=out.scale,
                translate=out.translate,
                metadata={MARK: {"role": BOXES_ROLE}},
            )
        self.export_button.setEnabled(True)
        text = f"{n} cells in '{out.labels_name}'"
        self.frames_plot.setVisible(bool(out.frames))
        if out.frames and out.counts:
            counts = out.counts
            self.count_label.setText(
                f"Cells per frame: {min(counts)}-{max(counts)} (mean {np.mean(counts):.1f})"
            )
            self.frames_plot.plot_lines([(list(range(len(counts))), counts, "")])
            text = (
                f"{len(counts)} frames of '{out.labels_name}', {min(counts)}-{max(counts)} "
                "cells per frame (a row per cell and frame)"
            )
        if out.metrics is not None:
            m = out.metrics
            pooled = " pooled over the frames" if out.frames else ""
            text += (
                f"; F1 {m['f1']:.3f}{pooled} against ground truth "
                f"(TP {m['tp']}, FP {m['fp']}, FN {m['fn']})"
            )
        self.status.setText(text + ".")

    def _fill_cells(self, table: dict[str, np.ndarray]) -> None:
        names = list(table)
        n = len(table["label"])
        shown = min(n, MAX_ROWS)
        self.cells_table.blockSignals(True)  # refilling is not the user picking a cell
        self.cells_table.clear()
        self.cells_table.setColumnCount(len(names))
        self.cells_table.setRowCount(shown)
        self.cells_table.setHorizontalHeaderLabels(names)
        for row in range(shown):
            for col, name in enumerate(names):
                value = table[name][row]
                integer = name in ("label", "area", "frame")
                text = str(int(value)) if integer else f"{float(value):.2f}"
                self.cells_table.setItem(row, col, QTableWidgetItem(text))
        self.cells_table.setCurrentCell(-1, -1)
        self.cells_table.blockSignals(False)
        self.cells_table.resizeColumnsToContents()
        if n > shown:
            self.status.setText(f"Showing the first {shown} of {n} cells; the CSV has all.")

    def _fill_metrics(self, metrics: dict[str, Any] | None) -> None:
        self.metrics_table.setRowCount(0)
        if metrics is None:
            return
        keys = [k for k in MAIN_METRICS if k in metrics]
        keys += [k for k in metrics if k not in keys]
        self.metrics_table.setRowCount(len(keys))
        for row, key in enumerate(keys):
            value = metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            self.metrics_table.setItem(row, 0, QTableWidgetItem(key))
            self.metrics_table.setItem(row, 1, QTableWidgetItem(text))
        self.metrics_table.resizeColumnsToContents()

    # ------------------------------------------------------------------ go to a cell
    def _current_cell_changed(self, row: int, _col: int, previous: int, _pcol: int) -> None:
        if row != previous:  # keyboard navigation (a click also arrives as cellClicked)
            self.go_to_cell(row)

    def go_to_cell(self, row: int) -> bool:
        """Select the cell of table row ``row`` in its labels layer and centre the view on
        its centroid; for a stack, the dims slider moves to its plane. False when the
        measured layer is gone or changed shape."""
        out = self.result
        if out is None or not 0 <= row < min(len(out.table["label"]), MAX_ROWS):
            return False
        layer = (
            self.viewer.layers[out.labels_name] if out.labels_name in self.viewer.layers else None
        )
        columns = [name for name in out.table if name.startswith("centroid_")]
        if "frame" in out.table:  # a time series: the frame, then the centroid in it
            columns = ["frame", *columns]
        if not isinstance(layer, Labels) or layer.ndim != len(columns):
            return False
        point = np.array([float(out.table[name][row]) for name in columns])
        dims = self.viewer.dims
        offset = dims.ndim - layer.ndim  # the layer's axes are the viewer's last ones
        shown = [axis - offset for axis in dims.displayed if axis >= offset]
        hidden = [d for d in range(layer.ndim) if d not in shown]
        point[hidden] = np.round(point[hidden])  # the plane the centroid lies in
        world = np.asarray(layer.data_to_world(point), dtype=float)
        for d in hidden:
            dims.set_point(d + offset, float(world[d]))
        camera_of(self.viewer).center = tuple(float(world[d]) for d in shown)
        layer.selected_label = int(out.table["label"][row])
        return True

    # ------------------------------------------------------------------ export
    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export cells", "cells.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> list[Path]:
        """Write the cell table to ``path`` and, with metrics, ``<stem>_metrics.csv`` beside it."""
        if self.result is None:
            show_error("Nothing to export yet: press Measure first.")
            return []
        path = Path(path)
        try:
            written = [write_csv(path, self.result.table)]
            if self.result.metrics is not None:
                metrics_path = path.with_name(f"{path.stem}_metrics.csv")
                written.append(write_metrics_csv(metrics_path, self.result.metrics))
            if self.result.frame_metrics:
                rows = self.result.frame_metrics
                per_frame = {"frame": np.arange(len(rows))}
                per_frame.update({k: np.array([r[k] for r in rows]) for k in rows[0]})
                frames_path = path.with_name(f"{path.stem}_metrics_per_frame.csv")
                written.append(write_csv(frames_path, per_frame))
        except OSError as err:
            show_error(f"Could not write {path}: {err}")
            return []
        text = "Exported " + " and ".join(str(p) for p in written) + "."
        self.status.setText(text)
        show_info(text)
        return written
