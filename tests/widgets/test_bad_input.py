"""Bad input in a widget: one error notification saying what to do, and no layer changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from widget_helpers import dock, errors_since, layer_snapshot, n_records, segment, wait_idle

from napari_cellfocus.widgets._layers import labels_name


class Unchanged:
    """Context manager: the viewer's layers (names and data) are the same at exit,
    and exactly one error notification was shown; ``.message`` holds it."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.message = ""

    def __enter__(self):
        self.before = layer_snapshot(self.viewer)
        self.start = n_records()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        after = layer_snapshot(self.viewer)
        assert list(after) == list(self.before)
        for name, data in self.before.items():
            np.testing.assert_array_equal(after[name], data)
        errors = errors_since(self.start)
        assert len(errors) == 1, errors
        self.message = errors[0]
        return False


def test_no_image_layer(make_napari_viewer):
    """Segment, fine-tune and measure with an empty viewer say what to open."""
    viewer = make_napari_viewer()
    seg = dock(viewer, "Segment")
    with Unchanged(viewer) as check:
        seg.run()
    assert "No image layer" in check.message and "Open Sample" in check.message
    assert seg.worker is None
    tune = dock(viewer, "Correct and fine-tune")
    with Unchanged(viewer) as check:
        tune.start()
    assert "No image layer" in check.message
    measure = dock(viewer, "Measure")
    with Unchanged(viewer) as check:
        measure.measure()
    assert "No labels layer" in check.message


def test_rgb_image_into_grey_model(make_napari_viewer, qtbot, tiny_model, scene):
    """An RGB layer with no channel picked: the message names the layer and the Channel
    control; after picking 'green' the same layer segments fine."""
    viewer = make_napari_viewer()
    rgb = np.zeros((*scene.image.shape, 3), np.uint8)
    rgb[..., 1] = scene.image
    viewer.add_image(rgb, name="colour")
    assert viewer.layers["colour"].rgb
    seg = dock(viewer, "Segment")
    seg.use_model(tiny_model, "tiny")
    with Unchanged(viewer) as check:
        seg.run()
    assert "'colour' is an RGB" in check.message and "Channel" in check.message
    seg.source.set_channel((2, 1))
    seg.run()
    wait_idle(qtbot, seg)
    assert viewer.layers[labels_name("colour")].data.shape == scene.image.shape


def test_labels_of_another_shape(viewer, qtbot, tiny_model):
    """Annotations (fine-tune) and ground truth (Measure) of another shape are refused."""
    segment(viewer, qtbot, tiny_model)
    small = np.zeros((64, 64), np.int32)
    small[10:20, 10:20] = 1
    viewer.add_labels(small, name="small labels")
    ft = dock(viewer, "Correct and fine-tune")
    ft.annotations.set_layer(viewer.layers["small labels"])
    with Unchanged(viewer) as check:
        ft.start()
    assert "(64, 64)" in check.message and "(128, 128)" in check.message
    assert "must match" in check.message
    assert ft.worker is None
    measure = dock(viewer, "Measure")
    measure.gt.set_layer(viewer.layers["small labels"])
    with Unchanged(viewer) as check:
        measure.measure()
    assert "Ground truth 'small labels' has shape (64, 64)" in check.message


def test_empty_annotations(viewer, qtbot, tiny_model):
    """A fresh annotation layer with nothing painted: asks to paint at least one cell."""
    segment(viewer, qtbot, tiny_model)
    ft = dock(viewer, "Correct and fine-tune")
    ft.new_annotation_layer()
    with Unchanged(viewer) as check:
        ft.start()
    assert "No cell is annotated in 'annotations'" in check.message
    assert "paint at least one cell" in check.message
    assert ft.worker is None


@pytest.mark.parametrize("kind", ["garbage", "other torch file", "missing"])
def test_model_file_that_is_not_a_model(viewer, tmp_path, kind):
    """Loading a file that is not a napari-cellfocus model: an error naming the file,
    and the model in use stays the same."""
    path = tmp_path / "model.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a model")
    elif kind == "other torch file":
        torch.save({"weights": torch.zeros(3)}, path)
    seg = dock(viewer, "Segment")
    before = seg.state.model
    with Unchanged(viewer) as check:
        assert seg.load_model_file(path) is False
    assert str(path) in check.message and "Cannot use this model file" in check.message
    assert seg.state.model is before
    assert seg.model_combo.currentText() == before.name


def test_missing_builtin_model(viewer, monkeypatch, tmp_path):
    """When the built-in model file is absent, Segment says how to get a model."""
    import napari_cellfocus.engine.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "default_model_path", lambda: tmp_path / "none.pt")
    seg = dock(viewer, "Segment")
    assert seg.state.model.kind == "builtin"
    with Unchanged(viewer) as check:
        seg.run()
    assert "built-in model is not installed" in check.message
    assert "Load model file" in check.message


def test_image_too_large_for_the_memory_left(viewer, qtbot, tiny_model, monkeypatch):
    """Segment checks the memory its maps and labels need before the first tile: a run that
    will not fit says so (layer, need, what is free, the block-by-block CLI) and changes
    nothing."""
    seg = dock(viewer, "Segment")
    seg.use_model(tiny_model, "tiny")
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "100M")
    with Unchanged(viewer) as check:
        seg.run()
        wait_idle(qtbot, seg)
    assert "'nuclei' (128 x 128) needs about 0.7 GiB more memory" in check.message
    assert "0.1 GiB is available" in check.message and "block by block" in check.message
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "64G")
    seg.run()
    wait_idle(qtbot, seg)
    assert labels_name("nuclei") in viewer.layers


def test_widget_memory_check_counts_the_orthogonal_views(monkeypatch):
    from types import SimpleNamespace

    from napari_cellfocus.core.memory import ortho_bytes, whole_image_bytes
    from napari_cellfocus.widgets.segment import memory_problem

    seg = SimpleNamespace(n_classes=3, zoom_for=lambda d: 1.0)
    volume = np.zeros((40, 512, 512), np.uint16)
    plain = whole_image_bytes(volume.size, 2) - volume.nbytes
    ortho = ortho_bytes(volume.size, 2, 3, 1.0, 2.0) - volume.nbytes
    between = (plain + ortho) / 2 / 0.8  # a limit that fits the one but not the other
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", str(int(between)))
    assert memory_problem(seg, volume, None, "vol") is None
    message = memory_problem(seg, volume, None, "vol", ortho_z_scale=2.0)
    assert message and "'vol' (40 x 512 x 512)" in message
    assert "three orthogonal views" in message
