"""Segment widget, Stack row: the orthogonal-views mode, with the z scale of the layer."""

from __future__ import annotations

import numpy as np
import tifffile
from widget_helpers import dock, wait_idle

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.segment import Segmenter, postprocess_planes
from napari_cellfocus.widgets._stack import (
    ORTHO_TEXT,
    layer_z_scale,
    stack_options,
    z_scale_of,
)


def test_z_scale_from_the_layer_scale():
    assert z_scale_of((2.0, 0.5, 0.5)) == 4.0
    assert z_scale_of((1.0, 2.0, 1.0, 1.0)) == 2.0  # T, Z, Y, X
    assert z_scale_of((0.5, 0.5)) == 1.0 and z_scale_of(None) == 1.0
    assert z_scale_of((0.0, 1.0, 1.0)) == 1.0


def test_ortho_stack_mode_uses_the_layer_z_scale(make_napari_viewer, qtbot, tiny_model):
    """A (12, 64, 64) simulated volume labelled z, y, x with scale (2, 1, 1): the Stack
    row offers the orthogonal views; run, the labels are the API's
    segment(z_mode='ortho', z_scale=2) of the same image (z scale taken from the
    layer), 3D cells, and the status says which mode made them; Tune re-labels them
    in 3D."""
    scene = simulate_cells(shape=(12, 64, 64), radius=8, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(scene.image, name="vol", axis_labels=("z", "y", "x"), scale=(2, 1, 1))
    widget = dock(viewer, "Segment")
    widget.use_model(tiny_model, "tiny")
    widget.source.set_source(viewer.layers["vol"])
    index = widget.stack.findText(f"z-stack: {ORTHO_TEXT}")
    assert index >= 0
    widget.stack.setCurrentIndex(index)
    widget.run()
    wait_idle(qtbot, widget)
    labels = np.asarray(viewer.layers["vol labels"].data)
    assert labels.shape == (12, 64, 64)
    assert widget.state.result.stack.z_mode == "ortho"
    assert ORTHO_TEXT in widget.status.text()
    assert "z scale 2 from the layer's scale" in widget.status.text()
    api = Segmenter(tiny_model, device="cpu").segment(
        scene.image,
        axes="ZYX",
        z_mode="ortho",
        z_scale=2.0,
        diameter=widget.last_diameter,
        tile_size=widget.tile_size(),
    )
    np.testing.assert_array_equal(labels, api.labels)
    np.testing.assert_allclose(widget.state.result.probs, api.probs, atol=1e-5)
    assert widget.state.count == api.count == int(labels.max()) > 0
    # Tune re-labels the same 3D probabilities in 3D (not plane by plane)
    tune = dock(viewer, "Tune")
    tune.min_size.setValue(tune.min_size.value() + 1)
    qtbot.waitUntil(lambda: tune.last_relabel_ms is not None, timeout=10_000)
    wait_idle(qtbot, tune)
    relabelled = np.asarray(viewer.layers["vol labels"].data)
    method, params = widget.state.post_method, widget.state.post_kwargs()
    expected, _ = postprocess_planes(
        api.probs, 2, method, params, **stack_options(widget.state.result.stack, scene.image)
    )
    np.testing.assert_array_equal(relabelled, expected)
    assert int(relabelled.max()) <= api.count


def test_z_scale_from_the_file_a_layer_was_opened_from(make_napari_viewer, tmp_path):
    """napari's TIFF reader leaves the scale at 1: the voxel size then comes from the
    file's ImageJ metadata (planes 3 um apart, 0.5 um pixels: 6)."""
    path = tmp_path / "vol.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 32, 32), np.uint16),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 3.0, "unit": "micron"},
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari")
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)
    assert layer_z_scale(layer, tuple(layer.scale)) == (6.0, "the file's metadata")
    layer.scale = (2.0, 1.0, 1.0)  # a scale the user set wins
    assert layer_z_scale(layer, tuple(layer.scale)) == (2.0, "the layer's scale")
    plain = viewer.add_image(np.zeros((4, 8, 8)), name="plain")
    assert layer_z_scale(plain, tuple(plain.scale)) == (1.0, "no voxel size known")
