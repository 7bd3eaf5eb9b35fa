"""The plugin's own output layers: found by a metadata marker, never a user's layer.

Every layer the widgets create carries ``layer.metadata["cellfocus"] = {"role": ...}``;
the results of a segmentation also name the image they came from
(``{"role": "labels", "source": "nuclei"}``), so every source image has its own
output layers (``"nuclei labels"``, ``"nuclei cell probability"``, ...) and
segmenting another image never replaces them. Writing a result (:func:`put_image`,
:func:`put_labels`, :func:`put_probabilities`) updates the layer of that role and
source in place when it exists; otherwise a new layer is added (napari gives it a
unique name if the user already has a layer of that name).

A labels layer the user has painted on is *theirs*: the next write does not overwrite
it but renames it ``"<name> (edited)"``, drops the marker (remembering in
``metadata["cellfocus_from"]`` the role and in ``metadata["cellfocus_from_image"]``
the image it came from) and adds a fresh output layer.

All functions must run on the Qt main thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

MARK = "cellfocus"
FROM = "cellfocus_from"
FROM_IMAGE = "cellfocus_from_image"

#: Layer name (after the image's name), colormap and visibility of each class map.
CLASS_STYLE: dict[str, tuple[str, str, bool]] = {
    "background": ("background probability", "gray", False),
    "cell": ("cell probability", "green", True),
    "touching": ("touching probability", "magenta", True),
    "gap": ("gap probability", "cyan", False),
}
#: Probability maps whose planes are larger than this (pixels along Y or X) are shown
#: as napari multiscale layers (see :func:`display_levels`).
MULTISCALE_ABOVE = 2048
#: Side (pixels) at or under which the coarsest level of such a layer stops.
COARSEST_SIDE = 512
LABELS_ROLE = "labels"
#: Name of a labels output that belongs to no image (``source=None``).
LABELS_NAME = "cellfocus labels"
BOXES_ROLE = "boxes"
BOXES_NAME = "cellfocus TP / FP / FN"


def role_of(layer: Layer) -> str | None:
    """The output role of ``layer`` or ``None`` for a user's layer."""
    mark = layer.metadata.get(MARK)
    return mark.get("role") if isinstance(mark, dict) else None


def source_of(layer: Layer) -> str | None:
    """Name of the image an output came from (also for labels handed over to the user)."""
    mark = layer.metadata.get(MARK)
    if isinstance(mark, dict):
        return mark.get("source")
    return layer.metadata.get(FROM_IMAGE)


def labels_name(source: str | None) -> str:
    """Name of the labels output of the image ``source``: ``"<source> labels"``."""
    return LABELS_NAME if source is None else f"{source} labels"


def probability_name(source: str | None, class_name: str) -> str:
    """Name of a class-probability output: ``"<source> cell probability"``."""
    label = CLASS_STYLE.get(class_name, (f"{class_name} probability",))[0]
    return label if source is None else f"{source} {label}"


def own_layer(viewer: napari.Viewer, role: str, source: str | None = None) -> Layer | None:
    """The plugin's output layer with this role made from the image ``source``, if any."""
    for layer in viewer.layers:
        if role_of(layer) == role and source_of(layer) == source:
            return layer
    return None


def own_labels(viewer: napari.Viewer, source: str | None) -> Layer | None:
    """The labels output of the image ``source`` (e.g. ``state.result.layer_name``)."""
    return own_layer(viewer, LABELS_ROLE, source)


def probability_role(class_name: str) -> str:
    return f"probability:{class_name}"


def probability_layers(viewer: napari.Viewer, source: str | None = None) -> list[Layer]:
    """The plugin's probability layers of the image ``source``."""
    return [
        layer
        for layer in viewer.layers
        if (role_of(layer) or "").startswith("probability:") and source_of(layer) == source
    ]


def output_layers(viewer: napari.Viewer, source: str | None) -> list[Layer]:
    """The probability layers and the labels layer of ``source`` (those that exist)."""
    labels = own_labels(viewer, source)
    return [*probability_layers(viewer, source), *([labels] if labels is not None else [])]


def is_edited(layer: Layer) -> bool:
    mark = layer.metadata.get(MARK)
    return bool(isinstance(mark, dict) and mark.get("edited"))


def _mark_edited(event: Any) -> None:
    """``paint`` event handler: the user changed an output labels layer."""
    layer = event.source
    mark = layer.metadata.get(MARK)
    if isinstance(mark, dict):
        mark["edited"] = True


def detach(layer: Layer) -> None:
    """Hand an output layer over to the user: rename it and drop the marker."""
    role, source = role_of(layer), source_of(layer)
    layer.metadata.pop(MARK, None)
    layer.metadata[FROM] = role
    if source is not None:
        layer.metadata[FROM_IMAGE] = source
    layer.name = f"{layer.name} (edited)"


def display_levels(array: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """``array`` itself, or for planes over ``MULTISCALE_ABOVE`` pixels a napari
    multiscale pyramid of *strided views* of it: ``[a, a[..., ::2, ::2], a[..., ::4,
    ::4], ...]`` down to ``COARSEST_SIDE``.

    Views share memory with ``array``, so tiles written into it show at every level
    without copying, and napari draws only the level that fits the screen and, at
    full resolution, only the part in view: refreshing a streamed 4096 x 4096 map then
    uploads about a screen's worth of pixels, not 16 million. (Nearest-neighbour
    levels are for display only; the data itself is ``levels[0]``.)
    """
    side = max(array.shape[-2:])
    if side <= MULTISCALE_ABOVE:
        return array
    levels, step = [array], 2
    while side / step >= COARSEST_SIDE:
        levels.append(array[..., ::step, ::step])
        step *= 2
    return levels


def _ndim(data: Any) -> int:
    return int(np.ndim(data[0] if isinstance(data, list) else data))


def _reusable(layer: Layer | None, kind: str, ndim: int, multiscale: bool) -> bool:
    return (
        layer is not None
        and type(layer).__name__.lower() == kind
        and layer.ndim == ndim
        and bool(getattr(layer, "multiscale", False)) == multiscale
        and not is_edited(layer)
    )


def _put(
    viewer: napari.Viewer,
    kind: str,
    role: str,
    data: Any,
    name: str,
    scale: Sequence[float] | None,
    translate: Sequence[float] | None,
    kwargs: dict[str, Any],
    source: str | None = None,
) -> Layer:
    layer = own_layer(viewer, role, source)
    ndim = _ndim(data)
    multiscale = isinstance(data, list)
    if layer is not None and not _reusable(layer, kind, ndim, multiscale):
        if is_edited(layer):
            detach(layer)
        else:
            viewer.layers.remove(layer)
        layer = None
    geometry: dict[str, Any] = {}
    if scale is not None:
        geometry["scale"] = tuple(scale)
    if translate is not None:
        geometry["translate"] = tuple(translate)
    if layer is None:
        mark: dict[str, Any] = {"role": role}
        if source is not None:
            mark["source"] = source
        add = getattr(viewer, f"add_{kind}")
        if multiscale:
            kwargs = {**kwargs, "multiscale": True}
        layer = add(data, name=name, metadata={MARK: mark}, **geometry, **kwargs)
        if kind == "labels":
            layer.events.paint.connect(_mark_edited)
        return layer
    for key, value in geometry.items():
        if tuple(getattr(layer, key)) != tuple(value):
            setattr(layer, key, value)
    layer.data = data
    return layer


def put_image(
    viewer: napari.Viewer,
    role: str,
    data: np.ndarray,
    name: str,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    source: str | None = None,
    **kwargs: Any,
) -> Layer:
    """Show ``data`` in the Image layer of ``role`` (and ``source``), updated or added."""
    return _put(viewer, "image", role, data, name, scale, translate, kwargs, source)


def put_labels(
    viewer: napari.Viewer,
    data: np.ndarray,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    role: str = LABELS_ROLE,
    name: str | None = None,
    source: str | None = None,
    **kwargs: Any,
) -> Layer:
    """Show instance labels in the Labels layer of the image ``source`` (named
    ``"<source> labels"`` unless ``name`` is given); an edited one is kept aside."""
    name = labels_name(source) if name is None else name
    return _put(viewer, "labels", role, data, name, scale, translate, kwargs, source)


class LayerQueue:
    """Layer writes run one per turn of the Qt event loop.

    Adding a napari layer costs the Qt thread 100-300 ms (its controls, its GL
    program, the first upload); adding four in one go froze the viewer for about a
    second. Writes put here run one at a time, each from a zero-delay timer, so the
    viewer redraws and reacts between them. :meth:`clear` drops what has not run
    (before putting earlier layers back on Cancel).
    """

    def __init__(self) -> None:
        self._pending: deque[Callable[[], Any]] = deque()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._next)

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, write: Callable[[], Any]) -> None:
        self._pending.append(write)
        if not self._timer.isActive():
            self._timer.start()

    def _next(self) -> None:
        if self._pending:
            self._pending.popleft()()
        if self._pending:
            self._timer.start()

    def clear(self) -> None:
        self._pending.clear()
        self._timer.stop()


def put_probability(
    viewer: napari.Viewer,
    probs: np.ndarray,
    index: int,
    class_name: str,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    source: str | None = None,
) -> Layer:
    """Show ``probs[index]`` (a view) in the Image layer of ``class_name`` and ``source``."""
    _, colormap, visible = CLASS_STYLE.get(class_name, ("", "gray", False))
    role = probability_role(class_name)
    kwargs: dict[str, Any] = {}
    if own_layer(viewer, role, source) is None:
        kwargs = {"colormap": colormap, "blending": "additive", "visible": visible, "opacity": 0.7}
    layer = put_image(
        viewer,
        role,
        display_levels(probs[index]),
        probability_name(source, class_name),
        scale,
        translate,
        source,
        contrast_limits=(0.0, 1.0),
        **kwargs,
    )
    if tuple(layer.contrast_limits) != (0.0, 1.0):
        layer.contrast_limits_range = (0.0, 1.0)
        layer.contrast_limits = (0.0, 1.0)
    return layer


def put_probabilities(
    viewer: napari.Viewer,
    probs: np.ndarray,
    classes: Sequence[str],
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    source: str | None = None,
    queue: LayerQueue | None = None,
) -> list[Layer]:
    """One Image layer per class showing ``probs[c]`` (views, so in-place filling shows),
    the layers of the image ``source``; other images' layers are left alone. Planes
    over ``MULTISCALE_ABOVE`` pixels are shown as multiscale layers of views
    (:func:`display_levels`).

    With a ``queue``, at most one *new* layer is added now (the visible classes first);
    the other new ones are put on the queue, and the layers returned are those that
    exist now. Layers that exist are always updated at once.
    """
    order = sorted(
        range(len(classes)), key=lambda c: not CLASS_STYLE.get(classes[c], ("", "", False))[2]
    )
    layers: dict[int, Layer] = {}
    added = False
    for c in order:
        fresh = own_layer(viewer, probability_role(classes[c]), source) is None
        args = (viewer, probs, c, classes[c], scale, translate, source)
        if fresh and added and queue is not None:
            queue.put(lambda args=args: put_probability(*args))
            continue
        layers[c] = put_probability(*args)
        added = added or fresh
    wanted = {probability_role(name) for name in classes}
    for layer in probability_layers(viewer, source):  # classes of a model with more classes
        if role_of(layer) not in wanted:
            viewer.layers.remove(layer)
    return [layers[c] for c in sorted(layers)]


def move_to_top(viewer: napari.Viewer, layers: Sequence[Layer]) -> None:
    """Move ``layers`` to the top of the layer list, the last one topmost."""
    for layer in layers:
        if layer in viewer.layers:
            index = viewer.layers.index(layer)
            if index != len(viewer.layers) - 1:
                viewer.layers.move(index, len(viewer.layers))


def remove_own(viewer: napari.Viewer, role: str, source: str | None = None) -> None:
    layer = own_layer(viewer, role, source)
    if layer is not None:
        viewer.layers.remove(layer)


Snapshot = dict[str, Any]


def snapshot_outputs(viewer: napari.Viewer, source: str | None = None) -> Snapshot:
    """The probability and labels outputs of the image ``source``: ``{"layers":
    {role: (layer, data)}, "order": {role: index in the layer list}}``, to restore later."""
    saved: dict[str, tuple[Layer, Any]] = {}
    order: dict[str, int] = {}
    for layer in output_layers(viewer, source):
        role = role_of(layer)
        saved[role] = (layer, layer.data)
        order[role] = viewer.layers.index(layer)
    return {"source": source, "layers": saved, "order": order}


def restore_outputs(viewer: napari.Viewer, saved: Snapshot) -> None:
    """Put back the outputs of :func:`snapshot_outputs` (data and place in the layer
    list); remove the outputs of that image added since. Other images' are untouched."""
    if not saved:
        return
    layers, order = saved["layers"], saved["order"]
    for layer in output_layers(viewer, saved["source"]):
        role = role_of(layer)
        entry = layers.get(role)
        if entry is None or entry[0] is not layer:
            viewer.layers.remove(layer)
        elif layer.data is not entry[1]:
            layer.data = entry[1]
    # back to their old places: moving in order of the old index rebuilds the old list
    for role in sorted(order, key=order.get):
        layer = layers[role][0]
        if layer not in viewer.layers:
            continue
        index = viewer.layers.index(layer)
        target = min(order[role], len(viewer.layers) - 1)
        if index != target:
            viewer.layers.move(index, target if target < index else target + 1)
