"""Segment dock widget: image + model + device -> probability layers, labels and a count.

The prediction runs tile by tile in a worker thread (:func:`segment_job`); each
finished tile is shown at once in the class-probability layers, which are views of
the array being filled. Before that, the nucleus diameter is estimated by the model
(Diameter = auto) or taken from the box, and the image is predicted at the model's scale.
The instance labels come from the model's own post-processing defaults until the user
changes them in Tune. Cancel stops between tiles and puts the earlier outputs back.

Each source image has its own output layers (``"<image> labels"``, ``"<image> cell
probability"``, ...): segmenting another image adds its own, a re-run on the same
image updates them. The outputs of a run move to the top of the layer list (so a
newly opened image does not hide them) and its labels layer is selected at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_cellfocus.core.methods import get_post_method
from napari_cellfocus.core.validation import check_image
from napari_cellfocus.widgets._device import DevicePicker
from napari_cellfocus.widgets._inputs import ImageSource
from napari_cellfocus.widgets._job import JobPanel, WorkerOf
from napari_cellfocus.widgets._layers import (
    LayerQueue,
    move_to_top,
    probability_layers,
    put_labels,
    put_probabilities,
    restore_outputs,
    snapshot_outputs,
)
from napari_cellfocus.widgets._stack import (
    StackChoice,
    StackMode,
    layer_z_scale,
    stack_options,
)
from napari_cellfocus.widgets._state import Segmentation, get_state, unwrap
from napari_cellfocus.widgets._workers import Cancelled, Failed

if TYPE_CHECKING:
    import napari

    from napari_cellfocus.engine.segment import Segmenter

LOAD_FILE = "Load model file…"
_REFRESH_S = 0.1  # at most one probability-layer redraw per 100 ms while tiles stream


@dataclass
class SegmentDone:
    """Result of :func:`segment_job`."""

    probs: np.ndarray
    labels: np.ndarray
    count: int
    tiles: int
    seconds: float
    diameter: float | None = None
    method: str = "map"
    params: dict[str, Any] | None = None
    stack: StackMode | None = None
    frame_counts: list[int] | None = None  # cells in each frame of a time series


@dataclass
class ModelReady:
    """Yielded by :func:`segment_job` once the model is loaded (in the worker)."""

    segmenter: Segmenter


@dataclass
class DiameterFound:
    """Yielded by :func:`segment_job` once the nucleus diameter is known (px, or None)."""

    diameter: float | None
    estimated: bool


def segment_job(
    segmenter: Segmenter | Callable[[], Segmenter],
    image: np.ndarray,
    tile_size: int | None,
    method: str | None,
    params: dict[str, Any] | None,
    name: str,
    cancel: threading.Event,
    diameter: float | str | None = "auto",
    stack: StackMode | None = None,
    z_scale: float = 1.0,
) -> Iterator[Any]:
    """Worker generator: yield the model (:class:`ModelReady`), the diameter
    (:class:`DiameterFound`), then every :class:`TileUpdate`; return labels at the end.

    ``segmenter``: the model, or a function that loads it (called here, off the Qt
    thread; a model that cannot segment ``image`` returns :class:`Failed`).
    ``method=None``: the model's own post-processing defaults (with its size filter
    relative to the diameter). ``stack``: how a 2D model's planes become cells (z-stack
    planes joined into 3D cells, frames linked; ``None``: each plane on its own); with
    its ``z_mode == "ortho"`` the model also sees the ZX and ZY slices of the volume
    resampled along z by ``z_scale`` (z step / pixel size, from the layer's scale) and
    the three views' probabilities are averaged (``Segmenter.iter_predict_ortho``).
    An expected error (a model file that cannot be used, memory) ends it as
    :class:`Failed` (:func:`~napari_cellfocus.widgets._workers.start_job`)."""
    from napari_cellfocus.core.measure import frame_counts
    from napari_cellfocus.engine.segment import postprocess_planes

    start = time.perf_counter()
    if callable(segmenter):
        segmenter = segmenter()
    problem = model_problem(segmenter) or image_problem(segmenter, image, name)
    if problem:
        return Failed(problem[0].upper() + problem[1:])
    yield ModelReady(segmenter)
    if cancel.is_set():
        return Cancelled("before the prediction")
    estimated = isinstance(diameter, str) or diameter is None
    diam = segmenter.resolve_diameter(image, diameter, tile_size=tile_size, name=name)
    yield DiameterFound(diam, estimated)
    if cancel.is_set():
        return Cancelled("before the prediction")
    ortho = stack is not None and stack.z_mode == "ortho" and segmenter.spatial_dims == 2
    problem = memory_problem(segmenter, image, diam, name, z_scale if ortho else None)
    if problem:
        return Failed(problem)
    if method is None:
        method, params = segmenter.post_settings(None, None, diam, z_scale if ortho else None)
    if ortho:
        tiles = segmenter.iter_predict_ortho(
            image, diameter=diam, z_scale=z_scale, tile_size=tile_size, name=name
        )
    else:
        tiles = segmenter.iter_predict(image, diameter=diam, tile_size=tile_size, name=name)
    update = None
    try:
        for update in tiles:
            yield update
            if cancel.is_set():
                return Cancelled(f"after {update.done} of {update.total} tiles")
    finally:
        tiles.close()
    if update is None:
        return Failed(f"'{name}': nothing to segment (empty image).")
    if segmenter.spatial_dims != 2:
        stack = None  # a 3D model makes 3D cells itself
    labels, count = postprocess_planes(
        update.probs, segmenter.spatial_dims, method, params, **stack_options(stack, image)
    )
    frames = None
    if stack is not None and stack.axes.startswith("T"):
        frames = frame_counts(labels)
    return SegmentDone(
        update.probs,
        labels,
        count,
        update.total,
        time.perf_counter() - start,
        diam,
        method,
        params,
        stack,
        frames,
    )


def model_problem(segmenter: Segmenter) -> str | None:
    """Why this model cannot segment grey images here, or ``None``."""
    in_channels = int(segmenter.info.network.get("in_channels", 1))
    if in_channels != 1:
        return (
            f"the model '{segmenter.source}' expects {in_channels} input channels; "
            "the widgets feed one grey channel. Choose another model."
        )
    if segmenter.n_classes not in (2, 3, 4):
        return (
            f"the model '{segmenter.source}' predicts {segmenter.n_classes} classes; "
            "a cell segmentation model predicts 2 (background / cell), 3 (adds touching) "
            "or 4 (adds gap). Choose another model."
        )
    return None


def memory_problem(
    segmenter: Segmenter,
    image: np.ndarray,
    diameter: float | None,
    name: str,
    ortho_z_scale: float | None = None,
) -> str | None:
    """Why segmenting the layer ``name`` (array ``image``, already in memory) would not
    fit in the memory left (:mod:`napari_cellfocus.core.memory`: its probability maps,
    labels and post-processing; with ``ortho_z_scale`` the three orthogonal views of a
    volume resampled along z by it), or ``None``."""
    from napari_cellfocus.core.memory import (
        available_bytes,
        fits,
        gib,
        ortho_bytes,
        whole_image_bytes,
    )

    try:
        available = available_bytes()
    except ValueError as err:  # a malformed CELLFOCUS_MEMORY_LIMIT
        return str(err)
    zoom = segmenter.zoom_for(diameter)
    if ortho_z_scale is not None:
        need = ortho_bytes(
            image.size, image.itemsize, segmenter.n_classes, zoom, float(ortho_z_scale)
        )
    else:
        need = whole_image_bytes(image.size, image.itemsize, segmenter.n_classes, zoom)
    need -= image.nbytes  # the layer is loaded already
    if fits(need, available):
        return None
    views = " (three orthogonal views)" if ortho_z_scale is not None else ""
    return (
        f"'{name}' ({' x '.join(map(str, image.shape))}) needs about {gib(need)} more memory "
        f"for its probability maps{views} and labels, and {gib(available)} is available. Close "
        "other layers or programs, or segment the file from a terminal block by block "
        "(cellfocus predict FILE --out labels.tif: memory bounded by the block)."
    )


def image_problem(segmenter: Segmenter, image: np.ndarray, name: str) -> str | None:
    """Why the image layer ``name`` (array ``image``) does not suit this model, or ``None``."""
    sd = segmenter.spatial_dims
    if image.ndim < sd:
        return (
            f"'{name}' has shape {image.shape}, but the model is {sd}D: "
            f"it needs at least {sd} dimensions."
        )
    if image.ndim > sd + 2:
        return (
            f"'{name}' has shape {image.shape}: too many axes for a {sd}D model "
            f"(at most {sd + 2}); if one axis holds channels, pick one under 'Channel'."
        )
    return None


def post_summary(method: str, params: dict[str, Any]) -> str:
    """``"TH γ1=0.50 γ2=0.10, min size 16 px"``: a post-processing as the "Labels by" line
    shows it, from the method's registry entry (thresholds by their symbols, then the
    whole numbers and flags)."""
    spec = get_post_method(method)
    head, rest = [spec.key.upper()], []
    for param in spec.tune_params():
        if param.name not in params:
            continue
        value = params[param.name]
        if param.kind == "float" and value is not None:
            head.append(f"{param.symbol}={float(value):.2f}")
        elif param.kind == "int":
            rest.append(f"{param.symbol} {int(value)}{param.unit}")
        else:
            rest.append(f"{param.symbol} {value}")
    return ", ".join([" ".join(head), *rest])


class SegmentWidget(QWidget):
    """Dock widget "Segment"."""

    worker = WorkerOf("panel")  # the running segmentation, None when idle

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)
        self._saved: dict = {}
        self._source_name: str | None = None
        self._run_probs: np.ndarray | None = None
        self._prob_layers: list = []
        self._queue = LayerQueue()
        self._last_refresh = 0.0
        self._input = None
        self._z_scale: tuple[float, str] = (1.0, "no voxel size known")
        self._segmenter: Segmenter | None = None
        self.last_diameter: float | None = None
        self._stack: StackMode | None = None

        self.source = ImageSource(napari_viewer)
        self.stack = StackChoice()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(
            "The segmentation model: the built-in default, a model file (.pt), "
            "or a model fine-tuned in this session."
        )
        self.device_picker = DevicePicker(self.state.device)
        self.device_combo = self.device_picker.combo
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("auto")  # the minimum, 64, reads "auto"
        self.tile_spin.setValue(64)
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Largest side of the tiles predicted at once ('auto': 1024 px on the CPU, "
            "512 px on a GPU). Fewer, larger tiles are faster: each tile is predicted "
            "with a margin around it, so small tiles repeat work (128-px tiles took about "
            "23x as long as 512-px ones). Use smaller tiles to save memory, e.g. if the "
            "GPU runs out of memory, or to see the first tiles sooner."
        )
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0.0, 1000.0)
        self.diameter_spin.setDecimals(1)
        self.diameter_spin.setSingleStep(1.0)
        self.diameter_spin.setSuffix(" px")
        self.diameter_spin.setSpecialValueText("auto")
        self.diameter_spin.setValue(0.0)
        self.diameter_spin.setToolTip(
            "Typical nucleus diameter in pixels. 'auto' (0) lets the model measure it; the "
            "image is rescaled so nuclei have the size the model was trained at, and the "
            "results are mapped back. Type a value if the estimate is off."
        )
        self.diameter_label = QLabel("")
        self.post_label = QLabel()
        self.post_label.setWordWrap(True)
        self.panel = JobPanel(
            "Run",
            run_tip="Segment the image; probabilities appear tile by tile.",
            cancelling="Cancelling after the current tile…",
            device=self.device_picker,
        )
        self.run_button = self.panel.run_button
        self.cancel_button = self.panel.cancel_button
        self.progress = self.panel.progress
        self.status = self.panel.status
        self.count_label = QLabel("Cells: —")
        font = self.count_label.font()
        font.setPointSize(font.pointSize() + 3)
        font.setBold(True)
        self.count_label.setFont(font)
        self.panel.add_widget(self.count_label)

        form = QFormLayout()
        form.addRow(self.source)
        form.addRow("Stack", self.stack)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_picker)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Diameter", self.diameter_spin)
        form.addRow("", self.diameter_label)
        form.addRow("Labels by", self.post_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.panel)
        layout.addStretch(1)

        self._fill_models()
        self._show_post()
        self.model_combo.activated.connect(self._model_chosen)
        self.device_picker.changed.connect(self.state.set_device)
        self.run_button.clicked.connect(self.run)
        self.state.models_changed.connect(self._fill_models)
        self.state.post_changed.connect(self._show_post)
        self.state.count_changed.connect(self._show_count)
        self.source.changed.connect(self._source_changed)
        self._source_changed()

    # ------------------------------------------------------------------ model / device
    def _fill_models(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in self.state.models:
            self.model_combo.addItem(entry.name)
        self.model_combo.addItem(LOAD_FILE)
        self.model_combo.setCurrentIndex(self.state.current)
        self.model_combo.setToolTip(f"Model in use: {self.state.model.name}")
        self.model_combo.blockSignals(False)

    def _model_chosen(self, index: int) -> None:
        if index == len(self.state.models):  # "Load model file…"
            path, _ = QFileDialog.getOpenFileName(
                self,
                "Load a napari-cellfocus model",
                "",
                "Models (*.pt *.pth *.zip);;All files (*)",
            )
            if not path or not self.load_model_file(path):
                self.model_combo.setCurrentIndex(self.state.current)
            return
        self.state.select_model(index)

    def load_model_file(self, path: str | Path) -> bool:
        """Check and add a model file, and select it. Shows an error and returns False."""
        from napari_cellfocus.engine.checkpoint import load_checkpoint

        try:
            _, info = load_checkpoint(path, device="cpu", task="segmentation")
        except ValueError as err:  # CheckpointError
            show_error(f"Cannot use this model file. {err}")
            self._fill_models()
            return False
        if int(info.network.get("in_channels", 1)) != 1:
            show_error(
                f"{path}: this model expects {info.network.get('in_channels')} input channels; "
                "the widgets feed one grey channel. Choose another model."
            )
            self._fill_models()
            return False
        self.state.add_model(Path(path).name, Path(path), "file", select=True)
        self.status.setText(f"Model loaded from {path}.")
        return True

    def use_model(self, model: Any, name: str = "custom model") -> None:
        """Add a model (``(torch model, ModelInfo)``, path or "default") and select it."""
        kind = "session" if isinstance(model, tuple) else "file"
        if isinstance(model, str) and model.lower() == "default":
            self.state.select_model(0)
            return
        self.state.add_model(name, model, kind, select=True)

    def _show_post(self) -> None:
        if not self.state.post_user_set and self.state.result is None:
            self.post_label.setText("the model's defaults (change them in Tune)")
            return
        text = post_summary(self.state.post_method, self.state.post_kwargs())
        how = "set in Tune" if self.state.post_user_set else "model defaults; Tune changes them"
        self.post_label.setText(f"{text} ({how})")

    @property
    def diameter(self) -> float | str:
        """The Diameter box: ``"auto"`` or pixels."""
        value = float(self.diameter_spin.value())
        return "auto" if value <= 0 else value

    def _source_changed(self) -> None:
        self.stack.update_for(self.source.layers.layer(), self.source.selected_channel())

    def _show_count(self, count: int) -> None:
        self.count_label.setText(f"Cells: {count}")

    # ------------------------------------------------------------------ run
    def _prepare(self) -> tuple[Callable[[], Segmenter], np.ndarray]:
        """Check the image (on the Qt thread: cheap) and return a function that loads the
        model (run in the worker: loading a model file takes seconds) and the image."""
        from napari_cellfocus.engine.checkpoint import default_model_path

        source = self.source.get()
        entry, device = self.state.model, self.state.device
        if entry.kind == "builtin" and not default_model_path().exists():
            raise ValueError(
                "The built-in model is not installed with this copy of napari-cellfocus. "
                "Choose 'Load model file…' under Model, or train one in 'Correct and fine-tune'."
            )
        image = check_image(source.data, name=source.layer.name, ndim=range(2, 6))
        stack = self.stack.mode(source.layer.name)
        if stack is not None and len(stack.axes) != image.ndim - 2:
            stack = None  # the Stack box has not caught up with a changed layer
        self._stack = stack
        self._input = source

        def load() -> Segmenter:
            try:
                return self.state.segmenter(entry, device)
            except ValueError as err:
                raise ValueError(f"Model '{entry.name}' cannot be used: {err}") from err

        return load, image

    def tile_size(self) -> int | None:
        """The tile side chosen in the widget, ``None`` for "auto" (the device's default)."""
        value = int(self.tile_spin.value())
        return None if value == self.tile_spin.minimum() else value

    def run(self) -> None:
        """Start segmenting (shows a notification and changes nothing on bad input)."""
        if self.panel.running:
            return
        try:
            segmenter, image = self._prepare()
        except ValueError as err:
            self.panel.report(str(err))
            return
        self._segmenter = None
        self._model_name = self.state.model.name
        self._source_name = self._input.layer.name
        self._saved = snapshot_outputs(self.viewer, self._source_name)
        self._run_probs = None
        self._prob_layers = []
        self._z_scale = layer_z_scale(self._input.layer, self._input.scale)
        self.panel.start(
            segment_job,
            segmenter,
            image,
            self.tile_size(),
            self.state.post_method if self.state.post_user_set else None,
            self.state.post_kwargs() if self.state.post_user_set else None,
            self._input.layer.name,
            diameter=self.diameter,
            stack=self._stack,
            z_scale=self._z_scale[0] if self._stack is not None else 1.0,
            status=f"Loading '{self._model_name}'…",
            progress_format="%v / %m tiles",
            yielded=self._on_tile,
            done=self._on_done,
            stopped=self._on_stopped,
            cancelled="Cancelled {}; the earlier layers were kept.",
        )

    def cancel(self) -> None:
        """Ask the running segmentation to stop after the current tile."""
        self.panel.cancel()

    def _show_probs(self, probs: np.ndarray, queued: bool = False) -> None:
        """Show ``probs`` in the image's probability layers; ``queued``: new layers are
        added one per event-loop turn (:class:`LayerQueue`) while the tiles stream."""
        src = self._input
        first = self._run_probs is None
        self._prob_layers = put_probabilities(
            self.viewer,
            probs,
            self._segmenter.info.classes,
            src.scale,
            src.translate,
            source=self._source_name,
            queue=self._queue if queued else None,
        )
        self._run_probs = probs
        if first:  # the tiles stream in on top, not under a newer image
            move_to_top(self.viewer, self._prob_layers)

    def _on_tile(self, update: Any) -> None:
        if isinstance(update, ModelReady):
            self._segmenter = update.segmenter
            self.status.setText(
                f"Segmenting '{self._source_name}' on {update.segmenter.device_name}…"
            )
            return
        if isinstance(update, DiameterFound):
            self._show_diameter(update)
            return
        if update.probs is not self._run_probs:
            self._show_probs(update.probs, queued=True)
            self._last_refresh = time.perf_counter()
        elif time.perf_counter() - self._last_refresh > _REFRESH_S or update.done == update.total:
            for layer in probability_layers(self.viewer, self._source_name):
                layer.refresh()  # invisible ones return at once; large ones are multiscale
            self._last_refresh = time.perf_counter()
        self.progress.set_progress(update.done, update.total)
        if update.message:
            show_warning(update.message)
            self.status.setText(update.message)

    def _show_diameter(self, found: DiameterFound) -> None:
        if found.diameter is None:
            text = "this model has no scale: the image is used as it is"
        elif found.estimated:
            text = f"estimated {found.diameter:.1f} px"
        else:
            text = f"{found.diameter:.1f} px as given"
        zoom = self._segmenter.zoom_for(found.diameter) if self._segmenter else 1.0
        if zoom != 1.0:
            text += f"; predicted at {zoom:.2f}x"
        self.diameter_label.setText(text)
        self.last_diameter = found.diameter

    def _on_stopped(self, outcome: Cancelled | Failed) -> None:
        self._queue.clear()  # layers not added yet: not at all
        restore_outputs(self.viewer, self._saved)

    def _on_done(self, result: SegmentDone) -> None:
        self._queue.clear()  # layers not added yet: added below
        src = self._input
        self._show_probs(result.probs)
        for layer in self._prob_layers:
            layer.refresh()
        labels = put_labels(
            self.viewer, result.labels, src.scale, src.translate, source=self._source_name
        )
        move_to_top(self.viewer, [*self._prob_layers, labels])
        self.viewer.layers.selection.active = labels
        if not self.state.post_user_set:
            self.state.set_post(result.method, result.params or {}, by_user=False)
        self.state.set_count(result.count)
        self.state.set_result(
            Segmentation(
                probs=result.probs,
                image=src.data,
                layer_name=self._source_name,
                channel=src.channel,
                spatial_dims=self._segmenter.spatial_dims,
                scale=src.scale,
                translate=src.translate,
                model_name=self._model_name,
                stack=result.stack,
                generation=self.state.new_generation(),
            )
        )
        how = ""
        if result.stack is not None:
            z_scale, source = self._z_scale
            ortho = result.stack.z_mode == "ortho"
            z_note = f", z scale {z_scale:g} from {source}" if ortho else ""
            how = f" ({result.stack.text}{z_note})"
        per_frame = ""
        if result.frame_counts:
            counts = result.frame_counts
            per_frame = (
                f" Per frame: {min(counts)}-{max(counts)} cells "
                f"(mean {np.mean(counts):.1f}, {len(counts)} frames)."
            )
        self.status.setText(
            f"{result.count} cells in '{src.layer.name}'{how}: {result.tiles} tile(s) in "
            f"{result.seconds:.1f} s on {self._segmenter.device_name} "
            f"with {self._model_name}.{per_frame}"
        )
