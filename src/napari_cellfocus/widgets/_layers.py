"""The plugin's own output layers: found by a metadata marker, never a user's layer.

Every layer the widgets create carries ``layer.metadata["cellfocus"] = {"role": ...}``.
Writing a result (:func:`put_image`, :func:`put_labels`, :func:`put_probabilities`) updates
the layer of that role in place when it exists; otherwise a new layer is added (napari
gives it a unique name if the user already has a layer of that name).

A labels layer the user has painted on is *theirs*: the next write does not overwrite
it but renames it ``"<name> (edited)"``, drops the marker (remembering in
``metadata["cellfocus_from"]`` where it came from) and adds a fresh output layer.

All functions must run on the Qt main thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

MARK = "cellfocus"
FROM = "cellfocus_from"

#: Layer name, colormap and visibility of each class-probability map.
CLASS_STYLE: dict[str, tuple[str, str, bool]] = {
    "background": ("background probability", "gray", False),
    "cell": ("cell probability", "green", True),
    "touching": ("touching probability", "magenta", True),
    "gap": ("gap probability", "cyan", False),
}
LABELS_ROLE = "labels"
LABELS_NAME = "cellfocus labels"
BOXES_ROLE = "boxes"
BOXES_NAME = "cellfocus TP / FP / FN"


def role_of(layer: Layer) -> str | None:
    """The output role of ``layer`` or ``None`` for a user's layer."""
    mark = layer.metadata.get(MARK)
    return mark.get("role") if isinstance(mark, dict) else None


def own_layer(viewer: napari.Viewer, role: str) -> Layer | None:
    """The plugin's output layer with this role, if any."""
    for layer in viewer.layers:
        if role_of(layer) == role:
            return layer
    return None


def probability_role(class_name: str) -> str:
    return f"probability:{class_name}"


def probability_layers(viewer: napari.Viewer) -> list[Layer]:
    """All the plugin's probability layers."""
    return [layer for layer in viewer.layers if (role_of(layer) or "").startswith("probability:")]


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
    role = role_of(layer)
    layer.metadata.pop(MARK, None)
    layer.metadata[FROM] = role
    layer.name = f"{layer.name} (edited)"


def _reusable(layer: Layer | None, kind: str, ndim: int) -> bool:
    return (
        layer is not None
        and type(layer).__name__.lower() == kind
        and layer.ndim == ndim
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
) -> Layer:
    layer = own_layer(viewer, role)
    ndim = int(np.ndim(data))
    if layer is not None and not _reusable(layer, kind, ndim):
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
        add = getattr(viewer, f"add_{kind}")
        layer = add(data, name=name, metadata={MARK: {"role": role}}, **geometry, **kwargs)
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
    **kwargs: Any,
) -> Layer:
    """Show ``data`` in the Image layer of ``role`` (updated in place or added)."""
    return _put(viewer, "image", role, data, name, scale, translate, kwargs)


def put_labels(
    viewer: napari.Viewer,
    data: np.ndarray,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    role: str = LABELS_ROLE,
    name: str = LABELS_NAME,
    **kwargs: Any,
) -> Layer:
    """Show instance labels in the plugin's Labels layer (an edited one is kept aside)."""
    return _put(viewer, "labels", role, data, name, scale, translate, kwargs)


def put_probabilities(
    viewer: napari.Viewer,
    probs: np.ndarray,
    classes: Sequence[str],
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
) -> list[Layer]:
    """One Image layer per class showing ``probs[c]`` (views, so in-place filling shows)."""
    layers = []
    for c, class_name in enumerate(classes):
        label, colormap, visible = CLASS_STYLE.get(
            class_name, (f"{class_name} probability", "gray", False)
        )
        role = probability_role(class_name)
        existing = own_layer(viewer, role)
        kwargs: dict[str, Any] = {}
        if existing is None:
            kwargs = {
                "colormap": colormap,
                "blending": "additive",
                "visible": visible,
                "opacity": 0.7,
            }
        layer = put_image(
            viewer, role, probs[c], label, scale, translate, contrast_limits=(0.0, 1.0), **kwargs
        )
        if tuple(layer.contrast_limits) != (0.0, 1.0):
            layer.contrast_limits_range = (0.0, 1.0)
            layer.contrast_limits = (0.0, 1.0)
        layers.append(layer)
    for layer in probability_layers(viewer):  # classes of an earlier model with more classes
        if layer not in layers:
            viewer.layers.remove(layer)
    return layers


def remove_own(viewer: napari.Viewer, role: str) -> None:
    layer = own_layer(viewer, role)
    if layer is not None:
        viewer.layers.remove(layer)


def snapshot_outputs(viewer: napari.Viewer) -> dict[str, tuple[Layer, Any]]:
    """``{role: (layer, data)}`` of the probability and labels outputs, to restore later."""
    saved = {}
    for layer in [*probability_layers(viewer), own_layer(viewer, LABELS_ROLE)]:
        if layer is not None:
            saved[role_of(layer)] = (layer, layer.data)
    return saved


def restore_outputs(viewer: napari.Viewer, saved: dict[str, tuple[Layer, Any]]) -> None:
    """Put back the outputs of :func:`snapshot_outputs`; remove outputs added since."""
    for layer in [*probability_layers(viewer), own_layer(viewer, LABELS_ROLE)]:
        if layer is None:
            continue
        role = role_of(layer)
        entry = saved.get(role)
        if entry is None or entry[0] is not layer:
            viewer.layers.remove(layer)
        elif layer.data is not entry[1]:
            layer.data = entry[1]
