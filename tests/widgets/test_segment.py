"""Segment widget: layers stream in tile by tile, labels and count appear, re-runs are safe."""

from __future__ import annotations

import numpy as np
from widget_helpers import PLUGIN, dock, errors_since, n_records, segment, wait_idle

from napari_cellfocus.engine.segment import Segmenter, postprocess_planes
from napari_cellfocus.widgets._layers import labels_name, probability_name, role_of
from napari_cellfocus.widgets.segment import DiameterFound, ModelReady


def test_segment_sample_shows_probabilities_labels_and_count(
    make_napari_viewer, qtbot, tiny_model
):
    """The simulated sample (512 x 512, via the manifest) is segmented: one probability
    layer per class, an instance labels layer, and the count shown equals the number of
    labels. The probabilities equal a direct Segmenter prediction with the same tiles."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    widget = segment(viewer, qtbot, tiny_model, image_name="cells (simulated)")
    names = [layer.name for layer in viewer.layers]
    for cls in ("background", "cell", "touching"):
        assert f"cells (simulated) {cls} probability" in names
    labels_layer = viewer.layers["cells (simulated) labels"]
    labels = np.asarray(labels_layer.data)
    assert labels.shape == (512, 512)
    count = len(np.unique(labels[labels > 0]))
    assert count > 20  # the tiny model finds the crowded nuclei
    assert widget.count_label.text() == f"Cells: {count}"
    assert widget.state.count == count
    image = viewer.layers["cells (simulated)"].data
    expected = Segmenter(tiny_model, device="cpu").predict(image, tile_size=512)
    cell = viewer.layers[probability_name("cells (simulated)", "cell")].data
    np.testing.assert_allclose(cell, expected[1], atol=1e-5)
    result = widget.state.result
    assert result is not None and result.layer_name == "cells (simulated)"
    np.testing.assert_array_equal(
        labels,
        postprocess_planes(result.probs, 2, widget.state.post_method, widget.state.post_kwargs())[
            0
        ],
    )
    assert "CPU" in widget.device_picker.in_use.text()
    assert "Memory: RAM" in widget.device_picker.memory.text()


def test_probabilities_stream_tile_by_tile(viewer, qtbot, tiny_model):
    """With 128-pixel tiles on a 384 x 384 image the worker yields once per tile; the
    probability layers exist from the first tile on, before the prediction finishes."""
    viewer.add_image(np.tile(viewer.layers["nuclei"].data, (3, 3)), name="big")
    widget = dock(viewer, "Segment")
    widget.use_model(tiny_model, "tiny")
    widget.source.layers.set_layer(viewer.layers["big"])
    assert widget.tile_spin.text() == "auto" and widget.tile_size() is None  # the default
    widget.tile_spin.setValue(128)
    assert widget.tile_size() == 128
    seen = []

    def on_tile(update):
        if isinstance(update, (ModelReady, DiameterFound)):  # once each, before the tiles
            return
        seen.append((update.done, update.total, "big cell probability" in viewer.layers))

    widget.run()
    widget.worker.yielded.connect(on_tile)
    wait_idle(qtbot, widget)
    totals = {t for _, t, _ in seen}
    assert len(totals) == 1
    total = totals.pop()
    assert total > 1
    assert [d for d, _, _ in seen] == list(range(1, total + 1))
    assert seen[0][2]  # layer present at the first tile
    assert widget.progress.value() == widget.progress.maximum() == total


def test_rerun_replaces_own_layers_and_never_a_users_layer(viewer, qtbot, tiny_model):
    """A second run updates the plugin's layers in place (same objects, no new layers);
    a user's layer called like an output is left untouched and the output gets a new name."""
    users = viewer.add_image(np.full((128, 128), 7.0, np.float32), name="nuclei cell probability")
    widget = segment(viewer, qtbot, tiny_model)
    np.testing.assert_array_equal(users.data, 7.0)
    assert role_of(users) is None
    own = [layer for layer in viewer.layers if role_of(layer) is not None]
    assert len(own) == 4  # 3 probabilities + labels
    own_cell = next(layer for layer in own if role_of(layer) == "probability:cell")
    assert own_cell.name != "nuclei cell probability"
    before = list(viewer.layers)
    widget.run()
    wait_idle(qtbot, widget)
    assert list(viewer.layers) == before
    np.testing.assert_array_equal(users.data, 7.0)


def test_cancel_restores_previous_outputs(viewer, qtbot, tiny_model):
    """Cancel at the first tile: the run stops early, no half-filled layer is left and the
    outputs of the earlier run are back."""
    widget = segment(viewer, qtbot, tiny_model)
    labels_before = np.array(viewer.layers["nuclei labels"].data)
    cell_before = viewer.layers["nuclei cell probability"].data
    names_before = [layer.name for layer in viewer.layers]
    big = np.tile(viewer.layers["nuclei"].data, (4, 4))  # 512 x 512
    viewer.add_image(big, name="big")
    widget.source.layers.set_layer(viewer.layers["big"])
    widget.tile_spin.setValue(128)
    widget.run()
    done = []

    def on_update(update):
        if not isinstance(update, (ModelReady, DiameterFound)):  # cancel at the first tile
            done.append((update.done, update.total))
            widget.cancel()

    widget.worker.yielded.connect(on_update)
    wait_idle(qtbot, widget)
    assert done and done[-1][0] < done[-1][1]
    assert "Cancelled" in widget.status.text()
    assert widget.progress.value() == 0 and widget.progress.format() == ""  # nothing stale
    assert [layer.name for layer in viewer.layers] == [*names_before, "big"]  # no "big ..."
    assert viewer.layers["nuclei cell probability"].data is cell_before
    np.testing.assert_array_equal(viewer.layers["nuclei labels"].data, labels_before)
    assert widget.state.result.layer_name == "nuclei"


def test_stack_and_channel_selection(make_napari_viewer, qtbot, tiny_model, scene):
    """A (2, Y, X) layer: with channel 'axis 0: channel 1' the second plane is segmented
    as a 2D image (outputs are 2D, the channel axis' scale is dropped). With no channel,
    two planes whose axis label says nothing may be channels: Run refuses and asks; once
    'z-stack: each plane on its own' is chosen the planes are segmented one by one
    (labels unique across planes)."""
    viewer = make_napari_viewer()
    data = np.stack([np.zeros_like(scene.image), scene.image]).astype(np.uint16) * 200
    viewer.add_image(data, name="two", scale=(5.0, 0.5, 0.5))
    widget = dock(viewer, "Segment")
    widget.use_model(tiny_model, "tiny")
    widget.source.set_source(viewer.layers["two"], (0, 1))
    assert widget.source.selected_channel() == (0, 1)
    widget.run()
    wait_idle(qtbot, widget)
    labels = viewer.layers["two labels"]
    assert labels.data.shape == (128, 128)
    assert tuple(labels.scale) == (0.5, 0.5)
    single = np.asarray(labels.data).copy()
    widget.source.set_channel(None)
    start = n_records()
    widget.run()
    assert widget.worker is None
    (message,) = errors_since(start)
    assert "'two' has 2 planes" in message and "Channel" in message and "Stack" in message
    widget.stack.setCurrentIndex(widget.stack.findText("z-stack: each plane on its own"))
    widget.run()
    wait_idle(qtbot, widget)
    stack = np.asarray(viewer.layers["two labels"].data)
    assert stack.shape == (2, 128, 128)
    np.testing.assert_array_equal(stack[1] > 0, single > 0)
    ids0, ids1 = set(np.unique(stack[0])) - {0}, set(np.unique(stack[1])) - {0}
    assert not ids0 & ids1
    assert widget.state.count == len(ids0 | ids1)


def test_model_from_file_and_16_bit_image(make_napari_viewer, qtbot, tiny_model, scene, tmp_path):
    """A saved model loaded through 'Load model file' segments a 16-bit image exactly as the
    in-memory model segments the 8-bit one (percentile normalisation)."""
    from napari_cellfocus.engine.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "tiny.pt", *tiny_model)
    viewer = make_napari_viewer()
    viewer.add_image(scene.image.astype(np.uint16) * 257, name="sixteen")
    widget = dock(viewer, "Segment")
    assert widget.load_model_file(path)
    assert widget.state.model.name == "tiny.pt"
    assert widget.model_combo.currentText() == "tiny.pt"
    widget.run()
    wait_idle(qtbot, widget)
    expected = Segmenter(tiny_model, device="cpu").segment(scene.image)  # model defaults
    np.testing.assert_array_equal(viewer.layers["sixteen labels"].data, expected.labels)


def test_model_defaults_and_diameter_reach_the_widget(viewer, qtbot, tiny_model):
    """A model that stores a scale and WT defaults: with Diameter on auto the widget
    shows the estimate, segments at it with the stored WT thresholds and size filter
    (the same labels as the API), and Tune's state shows those settings. A typed
    diameter is used as given."""
    import copy

    model, info = tiny_model
    info = copy.deepcopy(info)
    info.defaults = {
        "diameter": 14.0,
        "method": "wt",
        "post_params": {"tau0": 0.45, "tau1": 0.85},
        "min_size_fraction": 0.2,
    }
    widget = dock(viewer, "Segment")
    widget.use_model((model, info), "scaled tiny")
    assert widget.diameter == "auto" and widget.diameter_spin.text() == "auto"
    widget.run()
    wait_idle(qtbot, widget)
    image = viewer.layers["nuclei"].data
    api = Segmenter((model, info), device="cpu").segment(image)
    assert widget.last_diameter == api.diameter and api.diameter is not None
    assert widget.diameter_label.text().startswith(f"estimated {api.diameter:.1f} px")
    np.testing.assert_array_equal(viewer.layers[labels_name("nuclei")].data, api.labels)
    assert widget.state.post_method == "wt" and not widget.state.post_user_set
    assert widget.state.post_kwargs() == api.post_params
    widget.diameter_spin.setValue(20.0)
    widget.run()
    wait_idle(qtbot, widget)
    given = Segmenter((model, info), device="cpu").segment(image, diameter=20.0)
    assert widget.diameter_label.text().startswith("20.0 px as given")
    np.testing.assert_array_equal(viewer.layers[labels_name("nuclei")].data, given.labels)


def _volume(scene, planes: int = 6):
    """A (Z, Y, X) volume: the scene repeated over ``planes`` planes (each nucleus spans
    every plane), and its 3D ground truth."""
    return np.stack([scene.image] * planes), np.stack([scene.labels] * planes)


def test_z_stack_planes_are_joined_into_3d_cells(make_napari_viewer, qtbot, tiny_model, scene):
    """A 6-plane z-stack labelled 'z': the Stack box offers 3D cells (from orthogonal
    views) by default; with 'planes joined by overlap' chosen the labels
    are the per-plane labels joined across z (core.stitch.stitch_planes), the count is
    that of one plane, not six times it, and the status says how the planes were used."""
    from napari_cellfocus.core.postprocess import postprocess
    from napari_cellfocus.core.stitch import stitch_planes

    viewer = make_napari_viewer()
    volume, _ = _volume(scene)
    viewer.add_image(volume, name="vol", axis_labels=("z", "y", "x"))
    widget = dock(viewer, "Segment")
    widget.use_model(tiny_model, "tiny")
    widget.source.set_source(viewer.layers["vol"])
    assert widget.stack.currentText().startswith("z-stack: 3D cells")
    assert widget.stack.currentData().z_mode == "ortho"  # the default; stitching chosen here
    widget.stack.setCurrentIndex(
        widget.stack.findText("z-stack: 3D cells (planes joined by overlap)")
    )
    widget.run()
    wait_idle(qtbot, widget)
    labels = np.asarray(viewer.layers["vol labels"].data)
    probs = widget.state.result.probs
    method, params = widget.state.post_method, widget.state.post_kwargs()
    planes = np.stack([postprocess(probs[:, z], method=method, **params)[0] for z in range(6)])
    offsets = np.cumsum([0] + [int(p.max()) for p in planes[:-1]])
    planes = np.where(planes > 0, planes + offsets[:, None, None], 0).astype(np.int32)
    np.testing.assert_array_equal(labels, stitch_planes(planes))
    assert widget.state.count == int(labels.max()) == int(planes[0].max())
    assert "3D cells" in widget.status.text()
    # Tune re-labels the same way (3D cells), not plane by plane
    tune = dock(viewer, "Tune")
    tune.min_size.setValue(tune.min_size.value() + 1)
    qtbot.waitUntil(lambda: tune.last_relabel_ms is not None, timeout=10_000)
    wait_idle(qtbot, tune)
    relabelled = np.asarray(viewer.layers["vol labels"].data)
    assert int(relabelled.max()) <= int(planes[0].max())


def test_time_series_keeps_ids_and_counts_each_frame(make_napari_viewer, qtbot, tiny_model, scene):
    """A 3-frame movie labelled 't' (the scene shifted 1 px per frame): the default is
    'each frame, ids kept'; a cell keeps its id from frame to frame, and the status gives
    the cells per frame."""
    viewer = make_napari_viewer()
    movie = np.stack([np.roll(scene.image, t, axis=1) for t in range(3)])
    viewer.add_image(movie, name="movie", axis_labels=("t", "y", "x"))
    widget = dock(viewer, "Segment")
    widget.use_model(tiny_model, "tiny")
    widget.source.set_source(viewer.layers["movie"])
    assert widget.stack.currentText() == "time series: each frame, ids kept across frames"
    widget.run()
    wait_idle(qtbot, widget)
    labels = np.asarray(viewer.layers["movie labels"].data)
    per_frame = [set(np.unique(frame)) - {0} for frame in labels]
    assert len(per_frame[1] & per_frame[0]) >= 0.8 * len(per_frame[0])  # ids kept
    counts = [len(ids) for ids in per_frame]
    assert f"Per frame: {min(counts)}-{max(counts)} cells" in widget.status.text()
