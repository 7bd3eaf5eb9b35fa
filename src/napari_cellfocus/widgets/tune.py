"""Tune dock widget: re-label the cached probabilities live, and optimise thresholds.

Moving a slider never runs the model: the last segmentation's probabilities are
post-processed again (MAP, TH(γ1, γ2), WT(τ0, τ1) or any method the registry
:data:`napari_cellfocus.core.methods.POST_METHODS` offers to the apps; the method box and
one row per parameter are generated from it) in a worker thread and the labels layer of the
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
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from napari_cellfocus.core.methods import Param, PostMethod, app_methods, get_post_method
from napari_cellfocus.core.validation import check_labels
from napari_cellfocus.widgets._inputs import LayerCombo
from napari_cellfocus.widgets._job import Job, JobPanel, WorkerOf
from napari_cellfocus.widgets._layers import put_labels, role_of
from napari_cellfocus.widgets._plots import PlotCanvas
from napari_cellfocus.widgets._stack import stack_options
from napari_cellfocus.widgets._state import get_state, method_params, unwrap
from napari_cellfocus.widgets._workers import Cancelled

if TYPE_CHECKING:
    import napari

#: While a slider moves, the labels are re-made at most once per this many milliseconds.
THROTTLE_MS = 100
#: Method whose thresholds "Optimise thresholds" searches when the selected one has none.
SEARCH_FALLBACK = "th"
#: Upper end of an integer box whose parameter declares no upper bound.
INT_MAX = 10_000_000
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
) -> Relabelled:
    """Worker function: post-process cached probabilities (no model involved); ``stack``:
    ``postprocess_planes``' axes / z_mode / link of the segmentation (see Segment)."""
    from napari_cellfocus.engine.segment import postprocess_planes

    start = time.perf_counter()
    labels, count = postprocess_planes(probs, spatial_dims, method, params, **stack)
    return Relabelled(labels, count, 1000 * (time.perf_counter() - start), generation)


@dataclass
class Optimised:
    method: str
    grid: dict[str, np.ndarray]
    scores: np.ndarray  # the objective, one axis per grid parameter (in grid order)
    best: dict[str, float]
    best_score: float
    objective: str = "pq"


def optimise_job(
    probs: np.ndarray,
    reference: np.ndarray,
    spatial_dims: int,
    method: str,
    fixed: dict[str, Any],
    objective: str,
    cancel: threading.Event,
) -> Iterator[Any]:
    """Worker generator: ``objective`` (PQ or F1) on the method's default grid (its
    registry entry's), one row (value of the first grid parameter) per yield, the other
    parameters of the method as in ``fixed``; the best is the middle of the plateau of
    best values."""
    from napari_cellfocus.core.postprocess import best_grid_index, default_grid, search_thresholds

    grid = default_grid(method)
    first, *rest = list(grid)
    lead = probs.shape[1 : probs.ndim - spatial_dims]
    if lead:
        planes: Any = [probs[(slice(None), *i)] for i in np.ndindex(*lead)]
        refs: Any = [reference[i] for i in np.ndindex(*lead)]
    else:
        planes, refs = probs, reference
    scores = np.zeros(tuple(v.size for v in grid.values()))
    for i, value in enumerate(grid[first]):
        row = search_thresholds(
            planes,
            refs,
            method=method,
            grid={first: [float(value)], **{k: grid[k] for k in rest}},
            objective=objective,
            **fixed,
        )
        scores[i] = row.scores[0]
        yield (i + 1, grid[first].size)
        if cancel.is_set():
            return Cancelled(f"after {i + 1} of {grid[first].size} rows")
    index = best_grid_index(scores)
    best = {k: float(grid[k][j]) for k, j in zip(grid, index, strict=True)}
    return Optimised(method, grid, scores, best, float(scores[index]), objective)


def _prefer_reference(layers: list) -> Any:
    """Pick a user's labels layer (ground truth first), never the plugin's output."""
    users = [layer for layer in layers if role_of(layer) is None]
    for layer in users:
        if "truth" in layer.name.lower() or "gt" in layer.name.lower().split():
            return layer
    return users[0] if users else None


def _offered_params(methods: tuple[PostMethod, ...]) -> list[Param]:
    """The parameters the Tune widget shows, once per name (a name shared by several
    methods, such as ``min_size``, is one input): thresholds first, then whole numbers and
    flags, each in the order they first appear in the registry."""
    seen: dict[str, Param] = {}
    for spec in methods:
        for param in spec.tune_params():
            seen.setdefault(param.name, param)
    params = list(seen.values())
    return [p for p in params if p.kind == "float"] + [p for p in params if p.kind != "float"]


def _symbols(method: str) -> str:
    """``"γ1, γ2"``: the symbols of a method's searched thresholds."""
    spec = get_post_method(method)
    return ", ".join(spec.param(k).symbol for k in spec.grid)


def _input_for(param: Param) -> QWidget:
    """The input of one parameter: a labelled slider for a number with decimals, a spin
    box for a whole number, a check box for a flag (range and step from the registry)."""
    if param.kind == "bool":
        return QCheckBox()
    if param.kind == "int":
        box = QSpinBox()
        low = 0 if param.low is None else int(param.low)
        box.setRange(low, INT_MAX if param.high is None else int(param.high))
        box.setSingleStep(max(1, int(param.step)))
        if param.unit:
            box.setSuffix(param.unit)
        return box
    slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    slider.setRange(
        0.0 if param.low is None else float(param.low),
        1.0 if param.high is None else float(param.high),
    )
    slider.setSingleStep(param.step)
    slider.setDecimals(max(0, -math.floor(math.log10(param.step))) if param.step < 1 else 0)
    return slider


def _changed_signal(widget: QWidget) -> Any:
    return widget.toggled if isinstance(widget, QCheckBox) else widget.valueChanged


def _value(widget: QWidget, param: Param) -> Any:
    if param.kind == "bool":
        return bool(widget.isChecked())
    if param.kind == "int":
        return int(widget.value())
    return float(widget.value())


def _set_value(widget: QWidget, param: Param, value: Any) -> None:
    if value is None:  # "estimated when omitted": the input keeps its value
        return
    if param.kind == "bool":
        widget.setChecked(bool(value))
    elif param.kind == "int":
        widget.setValue(int(value))
    else:
        widget.setValue(float(value))


class TuneWidget(QWidget):
    """Dock widget "Tune"."""

    worker = WorkerOf("relabel_job")  # the running relabel, None when idle
    search_worker = WorkerOf("search_panel")  # the running threshold search, None when idle

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)
        #: The live relabel (no buttons: the sliders start it).
        self.relabel_job = Job()
        self._pending = False
        self.last_relabel_ms: float | None = None
        #: Slider move to labels shown, ms (the post-processing, the worker, the layer).
        self.last_update_ms: float | None = None
        self._asked_at = time.perf_counter()
        self._plotted_for: int | None = None  # generation of the result the curve shows
        self._last_apply = -math.inf  # time.perf_counter() of the last throttled update
        self.last_search: Optimised | None = None

        self.method_combo = QComboBox()
        methods = app_methods()
        for spec in methods:
            self.method_combo.addItem(spec.label, spec.key)
        self.method_combo.setToolTip(
            "How probabilities become cells: "
            + " ".join(f"{spec.key.upper()}: {spec.summary}" for spec in methods)
        )
        #: One input per parameter name of the offered methods (from the registry):
        #: sliders for thresholds, spin boxes for whole numbers, check boxes for flags.
        self.params_offered: list[Param] = _offered_params(methods)
        self.sliders: dict[str, QLabeledDoubleSlider] = {}
        self.spins: dict[str, QSpinBox] = {}
        self.checks: dict[str, QCheckBox] = {}
        self._inputs: dict[str, QWidget] = {}
        self._rows: dict[str, tuple[QLabel, QWidget]] = {}
        self.info = QLabel("Segment an image first: the sliders re-label its probabilities.")
        self.info.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Method", self.method_combo)
        for param in self.params_offered:
            widget = _input_for(param)
            _set_value(widget, param, self.state.post_params.get(param.name, param.default))
            widget.setToolTip(param.help)
            _changed_signal(widget).connect(self._schedule)
            label = QLabel(param.label)
            label.setToolTip(param.help)
            form.addRow(label, widget)
            group = {"float": self.sliders, "int": self.spins, "bool": self.checks}
            group[param.kind][param.name] = widget
            self._inputs[param.name] = widget
            self._rows[param.name] = (label, widget)
        #: The size filter's box (every built-in method has one).
        self.min_size: QSpinBox | None = self.spins.get("min_size")

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
        self.search_panel = JobPanel(
            "Optimise thresholds",
            run_tip="Try a grid of thresholds of the chosen method (TH, WT, ...) and keep "
            "the setting with the best objective (PQ or F1) against the reference.",
        )
        self.optimise_button = self.search_panel.run_button
        self.cancel_button = self.search_panel.cancel_button
        self.progress = self.search_panel.progress
        self.search_info = self.search_panel.status
        self.plot = PlotCanvas("PQ vs threshold", "threshold", "PQ")
        self.search_panel.add_widget(self.plot)
        group = QGroupBox("Optimise thresholds")
        gl = QVBoxLayout(group)
        gform = QFormLayout()
        gform.addRow("Reference", self.reference)
        gform.addRow("Objective", self.objective_combo)
        gl.addLayout(gform)
        gl.addWidget(self.search_panel)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.info)
        layout.addWidget(group)
        layout.addStretch(1)

        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._throttled)
        self.method_combo.setCurrentIndex(
            max(0, self.method_combo.findData(self.state.post_method))
        )
        self._show_rows()
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.optimise_button.clicked.connect(self.optimise)
        self.state.result_changed.connect(self._result_changed)
        self.state.post_changed.connect(self._sync_from_state)
        self._result_changed()

    def _sync_from_state(self) -> None:
        """Show the state's post-processing (e.g. the model's defaults after a Segment run)
        without re-labelling: the labels already come from these settings."""
        if self.method == self.state.post_method and self.params() == self.state.post_kwargs():
            return
        widgets = [self.method_combo, *self._inputs.values()]
        for w in widgets:
            w.blockSignals(True)
        try:
            self.set_method(self.state.post_method)
            for param in self.params_offered:
                value = self.state.post_params.get(param.name, param.default)
                _set_value(self._inputs[param.name], param, value)
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

    @property
    def methods(self) -> list[str]:
        """The methods in the method box, in its order (the registry's apps methods)."""
        return [self.method_combo.itemData(i) for i in range(self.method_combo.count())]

    def set_method(self, method: str) -> None:
        index = self.method_combo.findData(str(method).lower())
        if index < 0:
            raise ValueError(f"method: expected one of {self.methods}, got {method!r}.")
        self.method_combo.setCurrentIndex(index)

    def params(self) -> dict[str, Any]:
        """Parameters of the selected method as set in the widget."""
        spec = get_post_method(self.method)
        return {
            p.name: _value(self._inputs[p.name], self._param(p.name)) for p in spec.tune_params()
        }

    def _param(self, name: str) -> Param:
        return next(p for p in self.params_offered if p.name == name)

    def _inert_sliders(self) -> set[str]:
        """Parameters that cannot change the labels of the current probabilities (their
        registry entry's ``classes``): a 2-class model (background / cell) has no touching
        class, so γ2 (TH) and τ1 (WT)."""
        result = self.state.result
        if result is None:
            return set()
        n = int(result.probs.shape[0])
        return {p.name for p in self.params_offered if n not in p.classes}

    def _show_rows(self) -> None:
        used = method_params(self.method)
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
        if self.relabel_job.running:
            self._pending = True
            return
        self._pending = False
        self._asked_at = time.perf_counter()
        self.relabel_job.start(
            relabel_job,
            result.probs,
            result.spatial_dims,
            method,
            params,
            result.generation,
            done=self._relabelled,
            finished=self._relabel_finished,
            # the planes become cells again as in the segmentation (joined across z...)
            **stack_options(result.stack if result.spatial_dims == 2 else None, result.image),
        )

    def _relabelled(self, out: Relabelled) -> None:
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
        if self._pending:
            self.apply()

    # ------------------------------------------------------------------ optimise
    def optimise(self) -> None:
        """Grid-search the thresholds of the selected method (its registry grid; TH for a
        method without thresholds) against the reference layer."""
        if self.search_panel.running:
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
            self.search_panel.report(str(err))
            return
        method = self.method
        if not get_post_method(method).grid:
            method = SEARCH_FALLBACK
            self.search_info.setText(
                f"{self.method.upper()} has no thresholds: optimising "
                f"{get_post_method(method).label.split(':')[0]}({_symbols(method)})."
            )
        spec = get_post_method(method)
        fixed = {
            p.name: _value(self._inputs[p.name], self._param(p.name))
            for p in spec.tune_params()
            if p.name not in spec.grid and p.name in self._inputs
        }
        self.search_panel.start(
            optimise_job,
            result.probs,
            reference,
            result.spatial_dims,
            method,
            fixed,
            self.objective,
            progress_format="%v / %m rows of the grid",
            yielded=self._search_progress,
            done=self._searched,
            cancelled="Optimisation cancelled {}.",
        )

    def cancel_search(self) -> None:
        """Stop the threshold search after the current row of the grid."""
        self.search_panel.cancel()

    def _search_progress(self, progress: tuple[int, int]) -> None:
        self.search_panel.show_progress(*progress)

    def _searched(self, out: Optimised) -> None:
        self.last_search = out
        name = out.objective.upper()
        self.plot.ylabel = name
        spec = get_post_method(out.method)
        names = list(out.grid)
        index = [int(np.argmin(np.abs(out.grid[k] - out.best[k]))) for k in names]
        lines = []
        for axis, key in enumerate(names):
            cut = tuple(slice(None) if a == axis else i for a, i in enumerate(index))
            others = ", ".join(
                f"{spec.param(k).symbol}={out.best[k]:.2f}" for k in names if k != key
            )
            label = spec.param(key).symbol + (f" ({others})" if others else "")
            lines.append((out.grid[key], out.scores[cut], label))
        low = min(float(np.min(y)) for _, y, _ in lines)
        self.plot.plot_lines(
            lines,
            title=f"{name} vs threshold (best {out.best_score:.3f})",
            ylim=(max(0.0, low - 0.05), 1.01),
        )
        result = self.state.result
        self._plotted_for = result.generation if result is not None else None
        self.set_method(out.method)
        for key, value in out.best.items():
            if key in self._inputs:
                _set_value(self._inputs[key], self._param(key), value)
        at = ", ".join(f"{spec.param(k).symbol} = {out.best[k]:.2f}" for k in names)
        text = (
            f"Best {name} {out.best_score:.3f} at {at} ({out.scores.size} settings tried "
            f"against '{self.reference.currentText()}'). Sliders moved there."
        )
        self.search_info.setText(text)
        show_info(text)
        self._schedule()
