"""Tune dock widget: re-label the cached probabilities live, and optimise thresholds.

Moving a slider never runs the model: the last segmentation's probabilities are
post-processed again (MAP, TH(γ1, γ2) or WT(τ0, τ1), see
:mod:`napari_cellfocus.core.postprocess`) in a worker thread and the labels layer of the
segmented image (``"<image> labels"``) is updated. The updates are throttled, not
debounced: while a slider is dragged the labels follow at most every ``THROTTLE_MS``
(100 ms), and once more with the final values after the last move.
"Optimise thresholds" runs the grid search of
:func:`~napari_cellfocus.core.postprocess.search_thresholds` against a reference labels
layer, one row of the grid at a time so that it shows progress and can be cancelled,
maximising the chosen objective (PQ by default, or F1), plots it against each threshold
and moves the sliders to the best values (the middle of a plateau of equal best values).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from napari_cellfocus.core.validation import check_labels
from napari_cellfocus.widgets._inputs import LayerCombo
from napari_cellfocus.widgets._layers import put_labels, role_of
from napari_cellfocus.widgets._plots import PlotCanvas
from napari_cellfocus.widgets._progress import ProgressBar
from napari_cellfocus.widgets._stack import stack_options
from napari_cellfocus.widgets._state import METHOD_PARAMS, get_state, unwrap
from napari_cellfocus.widgets._workers import Cancelled, Failed, start_job

if TYPE_CHECKING:
    import napari

#: While a slider moves, the labels are re-made at most once per this many milliseconds.
THROTTLE_MS = 100
METHODS = (
    ("map", "MAP: most likely class"),
    ("th", "TH: thresholds γ1, γ2"),
    ("wt", "WT: watershed τ0, τ1"),
)
SLIDERS = (
    ("gamma1", "γ1 cell", "TH: a pixel is cell when P(cell) ≥ γ1 (and not touching)."),
    ("gamma2", "γ2 touching", "TH: a pixel is touching when P(touching) ≥ γ2."),
    ("tau0", "τ0 background", "WT: background markers where P(background) ≥ τ0."),
    ("tau1", "τ1 cell marker", "WT: cell markers where P(cell) ≥ τ1."),
)
SYMBOL = {"gamma1": "γ1", "gamma2": "γ2", "tau0": "τ0", "tau1": "τ1"}
#: What "Optimise thresholds" can maximise: (key of core.metrics.evaluate, text).
OBJECTIVES = (
    ("pq", "PQ: finds the cells and draws them well"),
    ("f1", "F1: finds the cells (any IoU > 0.5)"),
)


@dataclass
class Relabelled:
    labels: np.ndarray
    count: int
    milliseconds: float
    generation: int


def relabel_job(
    probs: np.ndarray,
    spatial_dims: int,
    method: str,
    params: dict[str, Any],
    generation: int,
    cancel: threading.Event,
    **stack: Any,
) -> Relabelled | Failed:
    """Worker function: post-process cached probabilities (no model involved); ``stack``:
    ``postprocess_planes``' axes / z_mode / link of the segmentation (see Segment)."""
    from napari_cellfocus.engine.segment import postprocess_planes

    start = time.perf_counter()
    try:
        labels, count = postprocess_planes(probs, spatial_dims, method, params, **stack)
    except ValueError as err:
        return Failed(str(err))
    return Relabelled(labels, count, 1000 * (time.perf_counter() - start), generation)


@dataclass
class Optimised:
    method: str
    grid: dict[str, np.ndarray]
    scores: np.ndarray  # (len(first), len(second)) values of the objective
    best: dict[str, float]
    best_score: float
    objective: str = "pq"


def optimise_job(
    probs: np.ndarray,
    reference: np.ndarray,
    spatial_dims: int,
    method: str,
    min_size: int,
    objective: str,
    cancel: threading.Event,
) -> Iterator[Any]:
    """Worker generator: ``objective`` (PQ or F1) on the default grid, one row (first
    parameter value) per yield; the best is the middle of the plateau of best values."""
    from napari_cellfocus.core.postprocess import best_grid_index, default_grid, search_thresholds

    grid = default_grid(method)
    first, second = list(grid)
    lead = probs.shape[1 : probs.ndim - spatial_dims]
    if lead:
        planes: Any = [probs[(slice(None), *i)] for i in np.ndindex(*lead)]
        refs: Any = [reference[i] for i in np.ndindex(*lead)]
    else:
        planes, refs = probs, reference
    scores = np.zeros((grid[first].size, grid[second].size))
    try:
        for i, value in enumerate(grid[first]):
            row = search_thresholds(
                planes,
                refs,
                method=method,
                grid={first: [float(value)], second: grid[second]},
                objective=objective,
                min_size=min_size,
            )
            scores[i] = row.scores[0]
            yield (i + 1, grid[first].size)
            if cancel.is_set():
                return Cancelled(f"after {i + 1} of {grid[first].size} rows")
    except ValueError as err:
        return Failed(str(err))
    i, j = best_grid_index(scores)
    best = {first: float(grid[first][i]), second: float(grid[second][j])}
    return Optimised(method, grid, scores, best, float(scores[i, j]), objective)


def _prefer_reference(layers: list) -> Any:
    """Pick a user's labels layer (ground truth first), never the plugin's output."""
    users = [layer for layer in layers if role_of(layer) is None]
    for layer in users:
        if "truth" in layer.name.lower() or "gt" in layer.name.lower().split():
            return layer
    return users[0] if users else None


class TuneWidget(QWidget):
    """Dock widget "Tune"."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)
        self.worker = None
        self.search_worker = None
        self._pending = False
        self._search_cancel: threading.Event | None = None
        self.last_relabel_ms: float | None = None
        #: Slider move to labels shown, ms (the post-processing, the worker, the layer).
        self.last_update_ms: float | None = None
        self._asked_at = time.perf_counter()
        self._plotted_for: int | None = None  # generation of the result the curve shows
        self._last_apply = -math.inf  # time.perf_counter() of the last throttled update
        self.last_search: Optimised | None = None

        self.method_combo = QComboBox()
        for key, text in METHODS:
            self.method_combo.addItem(text, key)
        self.method_combo.setToolTip(
            "How probabilities become cells: MAP takes the most likely class; TH thresholds "
            "the cell and touching maps; WT grows cells from markers by watershed."
        )
        self.sliders: dict[str, QLabeledDoubleSlider] = {}
        self._rows: dict[str, QWidget] = {}
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10_000_000)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip(
            "Objects smaller than this (pixels, or voxels in 3D) are removed."
        )
        self.info = QLabel("Segment an image first: the sliders re-label its probabilities.")
        self.info.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Method", self.method_combo)
        for key, text, tip in SLIDERS:
            slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
            slider.setRange(0.0, 1.0)
            slider.setSingleStep(0.01)
            slider.setDecimals(2)
            slider.setValue(float(self.state.post_params[key]))
            slider.setToolTip(tip)
            slider.valueChanged.connect(self._schedule)
            label = QLabel(text)
            label.setToolTip(tip)
            form.addRow(label, slider)
            self.sliders[key] = slider
            self._rows[key] = (label, slider)
        form.addRow("Min size", self.min_size)
        self.min_size.setValue(int(self.state.post_params["min_size"]))

        self.reference = LayerCombo(
            napari_viewer, Labels, none_text="— none —", prefer=_prefer_reference
        )
        self.reference.setToolTip(
            "Labels to compare with (ground truth or labels you corrected), "
            "same size as the segmented image."
        )
        self.objective_combo = QComboBox()
        for key, text in OBJECTIVES:
            self.objective_combo.addItem(text, key)
        self.objective_combo.setToolTip(
            "What the search maximises against the reference. PQ (panoptic quality = "
            "F1 x mean IoU of the matched cells) also rewards well-drawn outlines; F1 only "
            "counts cells found (IoU > 0.5), so its best thresholds can draw cells too "
            "large or too small."
        )
        self.optimise_button = QPushButton("Optimise thresholds")
        self.optimise_button.setToolTip(
            "Try a grid of thresholds of the chosen method (TH or WT) and keep the "
            "pair with the best objective (PQ or F1) against the reference."
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = ProgressBar()
        self.progress.setMaximum(1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.plot = PlotCanvas("PQ vs threshold", "threshold", "PQ")
        self.search_info = QLabel("")
        self.search_info.setWordWrap(True)
        group = QGroupBox("Optimise thresholds")
        gl = QVBoxLayout(group)
        gform = QFormLayout()
        gform.addRow("Reference", self.reference)
        gform.addRow("Objective", self.objective_combo)
        gl.addLayout(gform)
        buttons = QHBoxLayout()
        buttons.addWidget(self.optimise_button)
        buttons.addWidget(self.cancel_button)
        gl.addLayout(buttons)
        gl.addWidget(self.progress)
        gl.addWidget(self.plot)
        gl.addWidget(self.search_info)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.info)
        layout.addWidget(group)
        layout.addStretch(1)

        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._throttled)
        index = [m for m, _ in METHODS].index(self.state.post_method)
        self.method_combo.setCurrentIndex(index)
        self._show_rows()
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.min_size.valueChanged.connect(self._schedule)
        self.optimise_button.clicked.connect(self.optimise)
        self.cancel_button.clicked.connect(self.cancel_search)
        self.state.result_changed.connect(self._result_changed)
        self.state.post_changed.connect(self._sync_from_state)
        self._result_changed()

    def _sync_from_state(self) -> None:
        """Show the state's post-processing (e.g. the model's defaults after a Segment run)
        without re-labelling: the labels already come from these settings."""
        if self.method == self.state.post_method and self.params() == self.state.post_kwargs():
            return
        widgets = [self.method_combo, self.min_size, *self.sliders.values()]
        for w in widgets:
            w.blockSignals(True)
        try:
            self.set_method(self.state.post_method)
            for key, slider in self.sliders.items():
                slider.setValue(float(self.state.post_params[key]))
            self.min_size.setValue(int(self.state.post_params["min_size"]))
            self._show_rows()
        finally:
            for w in widgets:
                w.blockSignals(False)

    # ------------------------------------------------------------------ live relabel
    @property
    def method(self) -> str:
        return self.method_combo.currentData()

    @property
    def objective(self) -> str:
        """What "Optimise thresholds" maximises: "pq" or "f1"."""
        return self.objective_combo.currentData()

    def set_objective(self, objective: str) -> None:
        self.objective_combo.setCurrentIndex([k for k, _ in OBJECTIVES].index(objective))

    def set_method(self, method: str) -> None:
        self.method_combo.setCurrentIndex([m for m, _ in METHODS].index(method))

    def params(self) -> dict[str, float | int]:
        """Parameters of the selected method as set in the widget."""
        values: dict[str, float | int] = {k: float(s.value()) for k, s in self.sliders.items()}
        values["min_size"] = int(self.min_size.value())
        return {k: values[k] for k in METHOD_PARAMS[self.method]}

    def _inert_sliders(self) -> set[str]:
        """Thresholds that cannot change the labels of the current probabilities: a
        2-class model (background / cell) has no touching class, so γ2 (TH) and τ1 (WT)."""
        result = self.state.result
        if result is not None and result.probs.shape[0] == 2:
            return {"gamma2", "tau1"}
        return set()

    def _show_rows(self) -> None:
        used = METHOD_PARAMS[self.method]
        inert = self._inert_sliders()
        for key, (label, slider) in self._rows.items():
            label.setVisible(key in used)
            slider.setVisible(key in used)
            label.setEnabled(key not in inert)
            slider.setEnabled(key not in inert)

    def _method_changed(self, *_: Any) -> None:
        self._show_rows()
        self._schedule()

    def _schedule(self, *_: Any) -> None:
        """Throttle: update now if the last update is ``THROTTLE_MS`` old, else when it
        will be. A change while an update is pending only waits for it (the update reads
        the newest values), so a drag updates every ``THROTTLE_MS`` and the last value is
        always shown (a change after the last update schedules another)."""
        if self.timer.isActive():
            return
        wait_ms = max(0.0, THROTTLE_MS - 1000 * (time.perf_counter() - self._last_apply))
        self.timer.start(math.ceil(wait_ms))

    def _throttled(self) -> None:
        self._last_apply = time.perf_counter()
        self.apply()

    def _result_changed(self) -> None:
        result = self.state.result
        if self._plotted_for is not None and (
            result is None or result.generation != self._plotted_for
        ):  # the curve belongs to the probabilities of another segmentation
            self.plot.clear()
            self.plot.title = ""
            self._plotted_for = None
            self.search_info.setText("")
        self._show_rows()
        if result is None:
            self.info.setText("Segment an image first: the sliders re-label its probabilities.")
        else:
            self.info.setText(
                f"Re-labelling the probabilities of '{result.layer_name}' "
                f"({result.model_name}); {self.state.count} cells."
            )

    def apply(self) -> None:
        """Post-process the cached probabilities with the current settings (no model run)."""
        method, params = self.method, self.params()
        self.state.set_post(method, params)
        result = self.state.result
        if result is None:
            return
        if self.worker is not None:
            self._pending = True
            return
        self._pending = False
        self._asked_at = time.perf_counter()
        self.worker, _ = start_job(
            relabel_job,
            result.probs,
            result.spatial_dims,
            method,
            params,
            result.generation,
            returned=self._relabelled,
            finished=self._relabel_finished,
            # the planes become cells again as in the segmentation (joined across z...)
            **stack_options(result.stack if result.spatial_dims == 2 else None, result.image),
        )

    def _relabelled(self, out: Any) -> None:
        if isinstance(out, Failed):
            show_error(out.message)
            return
        result = self.state.result
        if result is None or out.generation != result.generation:
            return  # a newer segmentation arrived meanwhile
        put_labels(
            self.viewer, out.labels, result.scale, result.translate, source=result.layer_name
        )
        self.state.set_count(out.count)
        self.last_relabel_ms = out.milliseconds
        # from the slider's move to the layer holding the new labels (what the user waits)
        self.last_update_ms = 1000 * (time.perf_counter() - self._asked_at)
        self.info.setText(
            f"{out.count} cells · labels updated in {self.last_update_ms:.0f} ms "
            f"(post-processing {out.milliseconds:.0f} ms, {self.method.upper()}, "
            "no model run)."
        )

    def _relabel_finished(self) -> None:
        self.worker = None
        if self._pending:
            self.apply()

    # ------------------------------------------------------------------ optimise
    def optimise(self) -> None:
        """Grid-search the thresholds of TH or WT against the reference layer."""
        if self.search_worker is not None:
            return
        result = self.state.result
        layer = self.reference.layer()
        try:
            if result is None:
                raise ValueError("Nothing to optimise yet: segment an image in 'Segment' first.")
            if layer is None:
                raise ValueError(
                    "Choose a reference labels layer (ground truth, or labels you corrected) "
                    "under 'Reference'."
                )
            reference = check_labels(
                np.asarray(layer.data), name=f"'{layer.name}'", ndim=(2, 3, 4, 5)
            )
            shape = result.probs.shape[1:]
            if reference.shape != shape:
                raise ValueError(
                    f"Reference '{layer.name}' has shape {reference.shape} but the segmented "
                    f"image '{result.layer_name}' has shape {shape}: choose labels of that image."
                )
            if not reference.any():
                raise ValueError(f"Reference '{layer.name}' is empty: it holds no cell.")
        except ValueError as err:
            show_error(str(err))
            self.search_info.setText(str(err))
            return
        method = self.method
        if method == "map":
            method = "th"
            self.search_info.setText("MAP has no thresholds: optimising TH(γ1, γ2).")
        self.progress.setMaximum(1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m rows of the grid")
        self.optimise_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.search_worker, self._search_cancel = start_job(
            optimise_job,
            result.probs,
            reference,
            result.spatial_dims,
            method,
            int(self.min_size.value()),
            self.objective,
            yielded=self._search_progress,
            returned=self._searched,
            finished=self._search_finished,
        )

    def cancel_search(self) -> None:
        if self._search_cancel is not None:
            self._search_cancel.set()

    def _search_progress(self, progress: tuple[int, int]) -> None:
        done, total = progress
        self.progress.set_progress(done, total)

    def _searched(self, out: Any) -> None:
        if isinstance(out, Cancelled):
            self.search_info.setText(f"Optimisation cancelled {out.message}.")
            return
        if isinstance(out, Failed):
            show_error(out.message)
            self.search_info.setText(out.message)
            return
        self.last_search = out
        name = out.objective.upper()
        self.plot.ylabel = name
        first, second = list(out.grid)
        i = int(np.argmin(np.abs(out.grid[first] - out.best[first])))
        j = int(np.argmin(np.abs(out.grid[second] - out.best[second])))
        self.plot.plot_lines(
            [
                (
                    out.grid[first],
                    out.scores[:, j],
                    f"{SYMBOL[first]} ({SYMBOL[second]}={out.best[second]:.2f})",
                ),
                (
                    out.grid[second],
                    out.scores[i, :],
                    f"{SYMBOL[second]} ({SYMBOL[first]}={out.best[first]:.2f})",
                ),
            ],
            title=f"{name} vs threshold (best {out.best_score:.3f})",
            ylim=(max(0.0, min(out.scores[:, j].min(), out.scores[i, :].min()) - 0.05), 1.01),
        )
        result = self.state.result
        self._plotted_for = result.generation if result is not None else None
        self.set_method(out.method)
        for key, value in out.best.items():
            self.sliders[key].setValue(value)
        text = (
            f"Best {name} {out.best_score:.3f} at {SYMBOL[first]} = {out.best[first]:.2f}, "
            f"{SYMBOL[second]} = {out.best[second]:.2f} ({out.scores.size} settings tried "
            f"against '{self.reference.currentText()}'). Sliders moved there."
        )
        self.search_info.setText(text)
        show_info(text)
        self._schedule()

    def _search_finished(self) -> None:
        self.search_worker = None
        self._search_cancel = None
        self.optimise_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
