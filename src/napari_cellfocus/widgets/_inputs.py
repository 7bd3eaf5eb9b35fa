"""Small input widgets shared by the docks: a layer picker and an image + channel picker.

:class:`ImageSource` turns the chosen napari image layer into the grey array the
engine wants: RGB layers and layers with a channel axis need a channel picked;
the array keeps every other axis (z, time), which the engine handles plane by plane.
Problems raise ``ValueError`` with a message meant for the user (shown as a napari
notification by the widgets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QWidget

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: Axes up to this size (other than the last two) are offered as channel axes.
MAX_CHANNELS = 16
_RGB_NAMES = ("red", "green", "blue", "alpha")
NO_IMAGE = (
    "No image layer: open an image (File > Open) or a sample "
    "(File > Open Sample > CellFocus), then pick it under 'Image'."
)


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one type, kept up to date.

    Parameters
    ----------
    viewer : the napari viewer.
    layer_type : e.g. ``napari.layers.Image``.
    none_text : if given, a first entry meaning "no layer".
    prefer : picks the layer to select when the current one disappears.
    """

    layer_changed = Signal()

    def __init__(
        self,
        viewer: napari.Viewer,
        layer_type: type,
        none_text: str | None = None,
        prefer: Callable[[list[Layer]], Layer | None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self.none_text = none_text
        self.prefer = prefer
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.currentIndexChanged.connect(lambda *_: self.layer_changed.emit())
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered):
            emitter.connect(self.refresh)
        self.refresh()

    def _layers(self) -> list[Layer]:
        return [layer for layer in self.viewer.layers if isinstance(layer, self.layer_type)]

    def _disconnect(self) -> None:
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered):
            emitter.disconnect(self.refresh)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self.refresh)

    def refresh(self, event: Any = None) -> None:
        """Rebuild the list, keeping the selected layer when it still exists."""
        try:
            self.count()
        except RuntimeError:  # the Qt widget is gone (viewer closed): stop listening
            self._disconnect()
            return
        layers = self._layers()
        for layer in layers:
            layer.events.name.connect(self.refresh)
        current = self.layer()
        names = [layer.name for layer in layers]
        if current is not None and current in layers:
            target = current.name
        else:
            preferred = self.prefer(layers) if self.prefer else None
            if preferred is not None:
                target = preferred.name
            elif self.none_text is None and layers:
                target = layers[-1].name
            else:
                target = self.none_text
        items = ([self.none_text] if self.none_text is not None else []) + names
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        if target in items:
            self.setCurrentIndex(items.index(target))
        self.blockSignals(False)
        self.layer_changed.emit()

    def layer(self) -> Layer | None:
        """The selected layer, or ``None``."""
        name = self.currentText()
        if not name or name == self.none_text or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if isinstance(layer, self.layer_type) else None

    def set_layer(self, layer: Layer | None) -> None:
        """Select ``layer`` (or the "none" entry)."""
        text = self.none_text if layer is None else layer.name
        index = self.findText(text) if text is not None else -1
        if index >= 0:
            self.setCurrentIndex(index)


@dataclass
class ImageInput:
    """A grey image taken from a layer.

    data : array (*lead, Y, X): grey values, every axis of the layer but the channel one.
    layer : the layer; channel : ``None`` or ``(axis, index)`` of the layer data.
    scale, translate : of ``data`` in world coordinates.
    """

    data: np.ndarray
    layer: Layer
    channel: tuple[int, int] | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]


def layer_array(layer: Layer) -> Any:
    """The full-resolution data of a layer (level 0 of a multiscale one)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def channel_choices(layer: Layer | None) -> list[tuple[str, tuple[int, int] | None]]:
    """``(text, (axis, index) | None)`` entries of the Channel combo for ``layer``."""
    choices: list[tuple[str, tuple[int, int] | None]] = [("— (grey image)", None)]
    if layer is None:
        return choices
    shape = np.shape(layer_array(layer))
    if getattr(layer, "rgb", False):
        axis = len(shape) - 1
        return choices + [(_RGB_NAMES[i], (axis, i)) for i in range(min(shape[-1], 3))]
    for axis, size in enumerate(shape[:-2]):
        if 1 < size <= MAX_CHANNELS:
            choices += [(f"axis {axis}: channel {i}", (axis, i)) for i in range(size)]
    return choices


def grey_image(layer: Layer | None, channel: tuple[int, int] | None) -> ImageInput:
    """Take ``channel`` of ``layer`` as a grey array; ValueError says what to fix."""
    if layer is None:
        raise ValueError(NO_IMAGE)
    data = layer_array(layer)
    rgb = bool(getattr(layer, "rgb", False))
    if rgb and channel is None:
        raise ValueError(
            f"'{layer.name}' is an RGB colour image, but the model takes grey images: "
            "pick the colour channel that shows the nuclei under 'Channel' "
            "(or convert the layer to grey)."
        )
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    if channel is not None:
        axis, index = channel
        if axis >= np.ndim(data) or index >= np.shape(data)[axis]:
            raise ValueError(
                f"'{layer.name}' has shape {np.shape(data)}: it has no channel {index} "
                f"on axis {axis}; pick another channel."
            )
        data = np.take(np.asarray(data), index, axis=axis)
        if not rgb:
            scale = scale[:axis] + scale[axis + 1 :]
            translate = translate[:axis] + translate[axis + 1 :]
    arr = np.asarray(data)
    if arr.ndim < 2:
        raise ValueError(f"'{layer.name}' has shape {arr.shape}: an image needs 2 dimensions.")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise ValueError(f"'{layer.name}' holds {arr.dtype} values, not intensities.")
    return ImageInput(arr, layer, channel, scale, translate)


class ImageSource(QWidget):
    """Rows "Image" (image layers) and "Channel" (grey, or one channel of the layer)."""

    changed = Signal()

    def __init__(
        self,
        viewer: napari.Viewer,
        label: str = "Image",
        prefer: Callable[[list[Layer]], Layer | None] | None = None,
        none_text: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        from napari.layers import Image

        self.layers = LayerCombo(viewer, Image, none_text=none_text, prefer=prefer)
        self.layers.setToolTip("The image layer to use (2D, z-stack or time series).")
        self.channel = QComboBox()
        self.channel.setToolTip(
            "For RGB or multi-channel layers: the channel that shows the nuclei."
        )
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(label, self.layers)
        form.addRow("Channel", self.channel)
        self.layers.layer_changed.connect(self._fill_channels)
        self.channel.currentIndexChanged.connect(lambda *_: self.changed.emit())
        self._fill_channels()

    def _fill_channels(self) -> None:
        layer = self.layers.layer()
        previous = self.selected_channel()
        self._choices = channel_choices(layer)
        values = [c[1] for c in self._choices]
        self.channel.blockSignals(True)
        self.channel.clear()
        self.channel.addItems([c[0] for c in self._choices])
        self.channel.setCurrentIndex(values.index(previous) if previous in values else 0)
        self.channel.blockSignals(False)
        self.channel.setEnabled(len(self._choices) > 1)
        self.changed.emit()

    def set_source(self, layer: Layer | None, channel: tuple[int, int] | None = None) -> None:
        """Select a layer and a channel (as stored in a Segmentation)."""
        self.layers.set_layer(layer)
        self._fill_channels()
        values = [c[1] for c in self._choices]
        if channel in values:
            self.channel.setCurrentIndex(values.index(channel))

    def set_channel(self, channel: tuple[int, int] | None) -> None:
        """Select a channel of the current layer by ``(axis, index)``."""
        values = [c[1] for c in self._choices]
        if channel not in values:
            raise ValueError(f"no channel {channel} in the Channel list")
        self.channel.setCurrentIndex(values.index(channel))

    def selected_channel(self) -> tuple[int, int] | None:
        choices = getattr(self, "_choices", [])
        index = self.channel.currentIndex()
        return choices[index][1] if 0 <= index < len(choices) else None

    def get(self) -> ImageInput:
        """The chosen grey image (ValueError with a user message when not possible)."""
        return grey_image(self.layers.layer(), self.selected_channel())
