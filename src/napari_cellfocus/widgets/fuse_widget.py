"""Fuse dock widget: a focus stack (one z-stack layer, or several image layers) -> an
all-in-focus "fused" image layer and a "depth map" layer.

The fusion (:func:`napari_cellfocus.engine.fusion.iter_fuse`, learned or classical) runs
in a worker thread and yields after every network tile, so the progress bar moves and
Cancel stops between tiles. The input is copied before the worker starts. Results go to
the plugin's own layers (``metadata["cellfocus"]["role"]`` = ``"fused"`` /
``"depth map"``), updated in place on the next run, never a user's layer. "Fuse then
segment" hands the fused layer to the Segment widget (docked if needed) and runs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from napari_cellfocus.widgets._device import DevicePicker
from napari_cellfocus.widgets._inputs import LayerCombo, layer_array
from napari_cellfocus.widgets._job import JobPanel, WorkerOf
from napari_cellfocus.widgets._layers import put_image
from napari_cellfocus.widgets._state import unwrap
from napari_cellfocus.widgets._workers import Cancelled, Failed

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

FUSED_ROLE = "fused"
DEPTH_ROLE = "depth map"
FUSED_NAME = "fused"
DEPTH_NAME = "depth map"
PLUGIN = "napari-cellfocus"

#: Methods as offered in the combo: (label, method name).
METHOD_CHOICES = (
    ("HF-Seg (learned focus map) — default", "hf-seg"),
    (
        "HF-Reg (learned regression; experimental: below HF-Seg and GFF on the benchmark)",
        "hf-reg",
    ),
    ("Max focus measure (Laplacian)", "max-focus"),
    ("Laplacian pyramid", "pyramid"),
    ("Guided filter (GFF)", "gff"),
    ("Wavelet max-abs", "wavelet"),
)
STACK_MODE = "A z-stack layer"
LAYERS_MODE = "Several image layers"


@dataclass
class FuseDone:
    """Result of :func:`fuse_job`."""

    fused: np.ndarray
    depth: np.ndarray
    method: str
    seconds: float
    n_slices: int


def fuse_job(
    stack: Any,
    method: str,
    kwargs: dict[str, Any],
    name: str,
    cancel: threading.Event,
) -> Iterator[Any]:
    """Worker generator: yield every :class:`FusionProgress`; return :class:`FuseDone`,
    :class:`Cancelled` or :class:`Failed` (also for an expected error, by ``start_job``)."""
    from napari_cellfocus.engine.fusion import iter_fuse

    start = time.perf_counter()
    gen = iter_fuse(stack, method, name=name, **kwargs)
    result = None
    try:
        for update in gen:
            if update.result is not None:
                result = update.result
            yield update
            if cancel.is_set():
                return Cancelled(f"after {update.done} of {update.total} steps")
    finally:
        gen.close()
    if result is None:
        return Failed(f"'{name}': nothing was fused.")
    n = len(stack) if isinstance(stack, list) else int(np.shape(stack)[kwargs.get("axis", 0)])
    return FuseDone(result.fused, result.depth, method, time.perf_counter() - start, n)


class LayerChecklist(QListWidget):
    """Checkable list of the viewer's image layers (kept up to date)."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered):
            emitter.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        from napari.layers import Image

        checked = set(self.checked_names())
        self.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer.metadata.get("cellfocus") is None:
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(
                    Qt.CheckState.Checked if layer.name in checked else Qt.CheckState.Unchecked
                )
                self.addItem(item)

    def checked_names(self) -> list[str]:
        return [
            self.item(i).text()
            for i in range(self.count())
            if self.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_checked(self, names: list[str]) -> None:
        for i in range(self.count()):
            item = self.item(i)
            item.setCheckState(
                Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked
            )


def is_stack(layer: Layer) -> bool:
    """A layer that can be fused as it is: 3 or more axes (an RGB layer's colour axis
    does not count)."""
    return layer.ndim >= 3


def prefer_stack(layers: list[Layer]) -> Layer | None:
    """Default of the Stack box: the topmost grey stack (ndim >= 3, not RGB), else the
    topmost RGB stack, else ``None`` (the box then takes the last layer)."""
    stacks = [layer for layer in reversed(layers) if is_stack(layer)]
    grey = [layer for layer in stacks if not getattr(layer, "rgb", False)]
    return (grey or stacks or [None])[0]


def _classical_in_use() -> str:
    """The "In use" line of a classical method (they always run on ``auto``)."""
    from napari_cellfocus.engine.device import describe_device
    from napari_cellfocus.engine.fusion import classical_device

    device = classical_device("auto")
    if device is None:
        return "numpy on the CPU (classical methods; a CUDA GPU is used when there is one)"
    return f"torch on {describe_device(device)} (classical methods)"


class FuseWidget(QWidget):
    """Dock widget "Fuse"."""

    worker = WorkerOf("panel")  # the running fusion, None when idle

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer = unwrap(napari_viewer)
        self._geometry: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
        self._then_segment = False
        self.fused_layer: Layer | None = None
        self.depth_layer: Layer | None = None

        self.mode_combo = QComboBox()
        self.mode_combo.addItems([STACK_MODE, LAYERS_MODE])
        self.mode_combo.setToolTip(
            "Fuse the slices of one z-stack layer, or several 2D image layers of the same field."
        )
        self.stack_combo = LayerCombo(napari_viewer, Image, prefer=prefer_stack)
        self.stack_combo.setToolTip("The focus stack: a 3D (Z, Y, X) or RGB (Z, Y, X, 3) layer.")
        self.axis_spin = QSpinBox()
        self.axis_spin.setRange(0, 3)
        self.axis_spin.setToolTip("The focus (stack) axis of the layer.")
        self.layer_list = LayerChecklist(napari_viewer)
        self.layer_list.setToolTip("Tick the image layers to fuse (same shape), in focus order.")
        stack_page = QWidget()
        stack_form = QFormLayout(stack_page)
        stack_form.setContentsMargins(0, 0, 0, 0)
        stack_form.addRow("Stack", self.stack_combo)
        stack_form.addRow("Stack axis", self.axis_spin)
        self.pages = QStackedWidget()
        self.pages.addWidget(stack_page)
        self.pages.addWidget(self.layer_list)

        self.method_combo = QComboBox()
        for label, name in METHOD_CHOICES:
            self.method_combo.addItem(label, name)
        self.method_combo.setToolTip(
            "Learned methods use the built-in networks trained on focus stacks made from real "
            "nuclei images (dsb2018) and on simulated stacks; "
            "classical ones run in torch on a CUDA GPU when there is one, else in numpy "
            "on the CPU."
        )
        self.seg_mode = QComboBox()
        self.seg_mode.addItems(["direct", "pairwise"])
        self.seg_mode.setToolTip(
            "HF-Seg: direct = one focus map over the whole stack (default); "
            "pairwise = f(f(x0, x1), x2)…"
        )
        self.near_check = QCheckBox("Near (source pixels only)")
        self.near_check.setToolTip(
            "HF-Reg: snap every pixel to the nearest source value (thesis eq. 6.6); "
            "turns the smoothing off."
        )
        self.device_picker = DevicePicker(
            "auto",
            "Where learned methods run: auto = CUDA GPU, MPS, CPU. Classical methods always "
            "use auto: torch on a CUDA GPU when there is one, numpy on the CPU otherwise.",
        )
        self.device_combo = self.device_picker.combo
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(1024)
        self.tile_spin.setSuffix(" px")

        self.segment_button = QPushButton("Fuse then segment")
        self.segment_button.setToolTip(
            "Fuse, then hand the fused layer to the Segment widget and segment it."
        )
        self.panel = JobPanel(
            "Fuse",
            buttons=[self.segment_button],
            lock=[self.segment_button],
            cancelling="Cancelling after the current tile…",
            device=self.device_picker,
        )
        self.run_button = self.panel.run_button
        self.cancel_button = self.panel.cancel_button
        self.progress = self.panel.progress
        self.status = self.panel.status

        form = QFormLayout()
        form.addRow("Input", self.mode_combo)
        form.addRow(self.pages)
        form.addRow("Method", self.method_combo)
        form.addRow("HF-Seg mode", self.seg_mode)
        form.addRow("", self.near_check)
        form.addRow("Device", self.device_picker)
        form.addRow("Tile size", self.tile_spin)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.panel)
        layout.addStretch(1)

        self.mode_combo.currentIndexChanged.connect(self.pages.setCurrentIndex)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.stack_combo.layer_changed.connect(self._stack_changed)
        napari_viewer.layers.events.inserted.connect(self._layer_added)
        self.run_button.clicked.connect(lambda: self.run(segment=False))
        self.segment_button.clicked.connect(lambda: self.run(segment=True))
        self._method_changed()
        self._stack_changed()

    # ------------------------------------------------------------------ choices
    @property
    def method(self) -> str:
        return str(self.method_combo.currentData())

    def set_method(self, method: str) -> None:
        index = self.method_combo.findData(method)
        if index < 0:
            raise ValueError(f"no fusion method {method!r}")
        self.method_combo.setCurrentIndex(index)

    def _method_changed(self, *_: Any) -> None:
        method = self.method
        learned = method in ("hf-seg", "hf-reg")
        self.seg_mode.setEnabled(method == "hf-seg")
        self.near_check.setEnabled(method == "hf-reg")
        self.device_combo.setEnabled(learned)
        self.device_picker.show_in_use(None if learned else _classical_in_use())
        self.tile_spin.setEnabled(learned)

    def _layer_added(self, *_: Any) -> None:
        """A stack was opened while the Stack box holds a 2D image: pick the stack."""
        try:
            current = self.stack_combo.layer()
        except RuntimeError:  # the widget is gone (viewer closed)
            self.viewer.layers.events.inserted.disconnect(self._layer_added)
            return
        if current is not None and is_stack(current):
            return
        from napari.layers import Image

        stack = prefer_stack([layer for layer in self.viewer.layers if isinstance(layer, Image)])
        if stack is not None:
            self.stack_combo.set_layer(stack)

    def _stack_changed(self, *_: Any) -> None:
        layer = self.stack_combo.layer()
        if layer is None:
            return
        # napari's ndim of an RGB layer leaves the colour axis out
        self.axis_spin.setMaximum(max(0, layer.ndim - 1))

    # ------------------------------------------------------------------ input
    def _gather(self) -> tuple[Any, dict[str, Any], str]:
        """The stack to fuse (a copy), the ``iter_fuse`` keyword arguments and a name."""
        kwargs: dict[str, Any] = {}
        if self.mode_combo.currentText() == STACK_MODE:
            layer = self.stack_combo.layer()
            if layer is None:
                raise ValueError(
                    "No image layer: open a focus stack (File > Open, or File > Open Sample > "
                    "CellFocus > Focus stack), then pick it under 'Stack'."
                )
            data = np.array(layer_array(layer), copy=True)
            rgb = bool(getattr(layer, "rgb", False))
            axis = int(self.axis_spin.value())
            n_axes = data.ndim - (1 if rgb else 0)
            if n_axes != 3:
                raise ValueError(
                    f"'{layer.name}' has shape {data.shape}: a focus stack layer needs exactly "
                    "3 axes (Z, Y, X)"
                    + (" plus RGB" if rgb else "")
                    + "; for separate images choose 'Several image layers'."
                )
            if axis >= n_axes:
                raise ValueError(f"'{layer.name}' has no axis {axis} (shape {data.shape}).")
            kwargs.update(axis=axis, rgb=rgb)
            scale = tuple(float(s) for i, s in enumerate(layer.scale) if i != axis)
            translate = tuple(float(t) for i, t in enumerate(layer.translate) if i != axis)
            if rgb:
                scale, translate = scale[:2], translate[:2]
            self._geometry = (scale, translate)
            return data, kwargs, layer.name
        names = self.layer_list.checked_names()
        if len(names) < 2:
            raise ValueError(
                "Tick at least two image layers to fuse (they must show the same field at "
                "different focus)."
            )
        layers = [self.viewer.layers[n] for n in names]
        arrays = [np.array(layer_array(layer), copy=True) for layer in layers]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                "The ticked layers must have the same shape to be fused, got "
                + ", ".join(f"'{n}' {a.shape}" for n, a in zip(names, arrays, strict=True))
                + "."
            )
        rgb = all(bool(getattr(layer, "rgb", False)) for layer in layers)
        if arrays[0].ndim != (3 if rgb else 2):
            raise ValueError(
                f"'{names[0]}' has shape {arrays[0].shape}: each layer must be one 2D "
                "image (grey or RGB)."
            )
        kwargs.update(axis=0, rgb=rgb)
        first = layers[0]
        self._geometry = (
            tuple(float(s) for s in first.scale[-2:]),
            tuple(float(t) for t in first.translate[-2:]),
        )
        return arrays, kwargs, " + ".join(names)

    # ------------------------------------------------------------------ run
    def run(self, segment: bool = False) -> None:
        """Start fusing (a notification and no change on bad input)."""
        if self.panel.running:
            return
        try:
            stack, kwargs, name = self._gather()
        except ValueError as err:
            self.panel.report(str(err))
            return
        method = self.method
        if method in ("hf-seg", "hf-reg"):
            kwargs.update(
                device=self.device_combo.currentText() or "auto",
                tile_size=int(self.tile_spin.value()),
            )
            if method == "hf-seg":
                kwargs["mode"] = self.seg_mode.currentText()
            else:
                kwargs["near_post"] = self.near_check.isChecked()
        self._then_segment = bool(segment)
        self.panel.start(
            fuse_job,
            stack,
            method,
            kwargs,
            name,
            status=f"Fusing '{name}' with {method}…",
            progress_format="%p%",
            yielded=self._on_progress,
            done=self._on_done,
            cancelled="Fusion cancelled {}; no layer was changed.",
        )

    def cancel(self) -> None:
        """Ask the running fusion to stop after the current tile."""
        self.panel.cancel()

    def _on_progress(self, update: Any) -> None:
        self.panel.show_progress(update.done, max(1, update.total))

    def _on_done(self, result: FuseDone) -> None:
        scale, translate = self._geometry
        self.fused_layer = put_image(
            self.viewer, FUSED_ROLE, result.fused, FUSED_NAME, scale, translate, colormap="gray"
        )
        n = max(result.n_slices - 1, 1)
        self.depth_layer = put_image(
            self.viewer,
            DEPTH_ROLE,
            result.depth,
            DEPTH_NAME,
            scale,
            translate,
            colormap="turbo",
            contrast_limits=(0.0, float(n)),
            visible=False,
        )
        self.status.setText(
            f"Fused {result.n_slices} slices with {result.method} in {result.seconds:.1f} s: "
            f"layers '{self.fused_layer.name}' and '{self.depth_layer.name}'."
        )
        if self._then_segment:
            self.segment_fused()

    # ------------------------------------------------------------------ hand-over
    def segment_widget(self) -> Any:
        """The Segment widget of this viewer, docked if it is not there yet."""
        from napari_cellfocus.widgets.segment import SegmentWidget

        for widget in self.viewer.window.dock_widgets.values():
            if isinstance(widget, SegmentWidget):
                return widget
        try:
            _, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        except Exception:  # manifest not available: dock the class directly
            widget = SegmentWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Segment")
        return widget

    def segment_fused(self) -> Any:
        """Select the fused layer in Segment and start segmenting it; returns the widget."""
        if self.fused_layer is None or self.fused_layer not in self.viewer.layers:
            show_error("Fuse a stack first: there is no fused layer to segment.")
            return None
        widget = self.segment_widget()
        widget.source.layers.set_layer(self.fused_layer)
        if getattr(self.fused_layer, "rgb", False):
            self.status.setText(
                self.status.text() + " The fused image is RGB: pick the nuclei channel in "
                "Segment and press Run."
            )
            return widget
        widget.run()
        return widget
