"""Helpers shared by the widget tests (imported as ``from widget_helpers import ...``)."""

from __future__ import annotations

import numpy as np

PLUGIN = "napari-cellfocus"


def dock(viewer, name: str):
    """Load a widget through the plugin manifest, as the Plugins menu does."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_idle(qtbot, widget, attr: str = "worker", timeout: int = 60_000) -> None:
    """Wait until the widget's worker has finished (its callbacks ran)."""
    qtbot.waitUntil(lambda: getattr(widget, attr) is None, timeout=timeout)


def segment(viewer, qtbot, model, image_name: str = "nuclei"):
    """Dock Segment, inject ``model``, segment ``image_name``; returns the widget."""
    widget = dock(viewer, "Segment")
    widget.use_model(model, "tiny test model")
    widget.source.layers.set_layer(viewer.layers[image_name])
    widget.run()
    wait_idle(qtbot, widget)
    return widget


def errors_since(start: int) -> list[str]:
    """Messages of the error notifications shown since ``start`` records."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [
        str(n.message)
        for n in notification_manager.records[start:]
        if n.severity == NotificationSeverity.ERROR
    ]


def n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def layer_snapshot(viewer) -> dict[str, np.ndarray]:
    """Name -> copy of the data of every layer (to check that nothing changed)."""
    return {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}
