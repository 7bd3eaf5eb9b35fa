"""Fuse widget in a real viewer: stack or several layers -> "fused" and "depth map" layers,
progress, cancel, errors, and "Fuse then segment"."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import errors_since, n_records, wait_idle

from napari_cellfocus.core.fusion import fuse_classical
from napari_cellfocus.core.simulate import simulate_focus_stack
from napari_cellfocus.widgets._layers import labels_name, role_of
from napari_cellfocus.widgets.fuse_widget import (
    DEPTH_NAME,
    DEPTH_ROLE,
    FUSED_NAME,
    FUSED_ROLE,
    LAYERS_MODE,
    FuseWidget,
)


@pytest.fixture(scope="module")
def stack_scene():
    return simulate_focus_stack((96, 96), n_slices=4, seed=8)


def dock_fuse(viewer) -> FuseWidget:
    """Through the manifest when it lists "Fuse", else the class itself."""
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-cellfocus", "Fuse")
    except Exception:
        widget = FuseWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Fuse")
    return widget


def test_fuse_stack_layer_gives_fused_and_depth_layers(make_napari_viewer, qtbot, stack_scene):
    """A (Z, Y, X) stack layer fused with max-focus: a "fused" layer equal to the engine's
    result (8-bit, Y x X) and a hidden "depth map" layer, both marked as plugin outputs;
    the progress bar ends full. A second run updates the same layers in place."""
    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack, name="stack", scale=(2.0, 0.5, 0.5))
    widget = dock_fuse(viewer)
    widget.stack_combo.set_layer(viewer.layers["stack"])
    widget.set_method("max-focus")
    widget.run()
    wait_idle(qtbot, widget)
    fused = viewer.layers[FUSED_NAME]
    depth = viewer.layers[DEPTH_NAME]
    assert role_of(fused) == FUSED_ROLE and role_of(depth) == DEPTH_ROLE
    expected = fuse_classical(stack_scene.stack, "max-focus")
    np.testing.assert_array_equal(fused.data, expected.fused)
    np.testing.assert_array_equal(depth.data, expected.depth)
    assert fused.data.dtype == np.uint8 and fused.data.shape == (96, 96)
    assert tuple(fused.scale) == (0.5, 0.5)
    assert not depth.visible
    assert widget.progress.value() == widget.progress.maximum()
    n_layers = len(viewer.layers)
    widget.set_method("pyramid")
    widget.run()
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(
        viewer.layers[FUSED_NAME].data, fuse_classical(stack_scene.stack, "pyramid").fused
    )


def test_learned_default_fusion_with_progress(make_napari_viewer, qtbot, stack_scene):
    """The default (learned HF-Seg, direct) runs tile by tile: the worker yields one progress
    per tile (64-px tiles: 9 per pass, one pass per slice = 36) and the fused layer appears."""
    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack, name="stack")
    widget = dock_fuse(viewer)
    assert widget.method == "hf-seg" and widget.seg_mode.currentText() == "direct"
    widget.device_combo.setCurrentText("cpu")
    widget.tile_spin.setValue(64)
    seen = []
    widget.run()
    widget.worker.yielded.connect(lambda u: seen.append((u.done, u.total)))
    wait_idle(qtbot, widget)
    assert seen and seen[-1][0] == seen[-1][1] == 36
    assert viewer.layers[FUSED_NAME].data.shape == (96, 96)


def test_several_layers_and_errors(make_napari_viewer, qtbot, stack_scene):
    """Two ticked 2D layers are fused like a 2-slice stack; fewer than two ticked, or a 2D
    layer chosen as a stack, show an error and add no layer."""
    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack[0], name="near focus")
    viewer.add_image(stack_scene.stack[3], name="far focus")
    widget = dock_fuse(viewer)
    start = n_records()
    widget.stack_combo.set_layer(viewer.layers["near focus"])
    widget.run()
    assert widget.worker is None
    assert any("3 axes" in m for m in errors_since(start))
    widget.mode_combo.setCurrentText(LAYERS_MODE)
    widget.layer_list.set_checked(["near focus"])
    widget.run()
    assert any("at least two" in m for m in errors_since(start))
    assert FUSED_NAME not in viewer.layers
    widget.layer_list.set_checked(["near focus", "far focus"])
    widget.set_method("gff")
    widget.run()
    wait_idle(qtbot, widget)
    expected = fuse_classical(stack_scene.stack[[0, 3]], "gff").fused
    np.testing.assert_array_equal(viewer.layers[FUSED_NAME].data, expected)


def test_cancel_changes_nothing(make_napari_viewer, qtbot, stack_scene):
    """Cancel right after Run: the job stops after its first tile and no layer is added."""
    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack, name="stack")
    widget = dock_fuse(viewer)
    widget.device_combo.setCurrentText("cpu")
    widget.tile_spin.setValue(64)
    widget.run()
    widget.cancel()
    wait_idle(qtbot, widget)
    assert "cancelled" in widget.status.text()
    assert FUSED_NAME not in viewer.layers and DEPTH_NAME not in viewer.layers


def test_fuse_then_segment_hands_the_fused_layer_to_segment(
    make_napari_viewer, qtbot, stack_scene, tiny_model
):
    """ "Fuse then segment": after fusing, the Segment widget's image is the fused layer and
    a segmentation of it runs (labels layer of the fused image's shape)."""
    from napari_cellfocus.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack, name="stack")
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    segment.use_model(tiny_model, "tiny test model")
    widget = dock_fuse(viewer)
    widget.stack_combo.set_layer(viewer.layers["stack"])
    widget.set_method("max-focus")
    widget.run(segment=True)
    wait_idle(qtbot, widget)
    assert widget.segment_widget() is segment
    assert segment.source.layers.layer() is viewer.layers[FUSED_NAME]
    wait_idle(qtbot, segment)
    labels = viewer.layers[labels_name(FUSED_NAME)]
    assert labels.data.shape == (96, 96)
    assert segment.state.result.layer_name == FUSED_NAME


def test_stack_box_defaults_to_a_stack(make_napari_viewer, stack_scene):
    """A (Z, Y, X) stack, then a 2D image and a 2D RGB image on top of it: the Stack box of
    a newly docked Fuse picks the stack, not the last layer. Docked with only a 2D image,
    the box switches to a stack once one is opened, and keeps it when more 2D images
    come; a user's choice of another stack is kept too."""
    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack, name="stack")
    viewer.add_image(stack_scene.stack[0], name="one slice")
    viewer.add_image(np.zeros((96, 96, 3), np.uint8), name="colour", rgb=True)
    widget = dock_fuse(viewer)
    assert widget.stack_combo.layer() is viewer.layers["stack"]

    other = make_napari_viewer()
    other.add_image(stack_scene.stack[0], name="one slice")
    widget = dock_fuse(other)
    assert widget.stack_combo.layer() is other.layers["one slice"]  # nothing better yet
    other.add_image(stack_scene.stack, name="stack")
    assert widget.stack_combo.layer() is other.layers["stack"]
    other.add_image(stack_scene.stack[1], name="another slice")
    assert widget.stack_combo.layer() is other.layers["stack"]
    other.add_image(stack_scene.stack[::-1], name="reversed")
    widget.stack_combo.set_layer(other.layers["reversed"])
    other.add_image(stack_scene.stack[::2], name="every other")
    assert widget.stack_combo.layer() is other.layers["reversed"]


def test_device_row_says_where_each_method_runs(make_napari_viewer, stack_scene):
    """Fuse's Device row: a classical method says it runs in numpy on the CPU (no GPU
    here) and greys the box out; a learned one describes the chosen device; both show
    the memory in use."""
    import torch

    viewer = make_napari_viewer()
    viewer.add_image(stack_scene.stack, name="stack")
    widget = dock_fuse(viewer)
    picker = widget.device_picker
    widget.set_method("hf-seg")
    assert picker.combo.isEnabled() and "CPU" in picker.in_use.text()
    classical = next(
        widget.method_combo.itemData(i)
        for i in range(widget.method_combo.count())
        if widget.method_combo.itemData(i) not in ("hf-seg", "hf-reg")
    )
    widget.set_method(classical)
    assert not picker.combo.isEnabled()
    if not torch.cuda.is_available():
        assert "numpy on the CPU" in picker.in_use.text()
    assert "Memory: RAM" in picker.memory.text()
