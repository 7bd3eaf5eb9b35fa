"""Results per source image: every segmented image keeps its own output layers, named after
it, on top of the layer list; Tune, Measure and fine-tuning work on the image segmented last."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import dock, segment, wait_idle

from napari_cellfocus.core.postprocess import postprocess
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.widgets import tune as tune_module
from napari_cellfocus.widgets._layers import (
    labels_name,
    output_layers,
    probability_name,
    put_labels,
    put_probabilities,
    restore_outputs,
    role_of,
    snapshot_outputs,
    source_of,
)

CLASSES = ("background", "cell", "touching")


@pytest.fixture
def two_images(viewer, scene):
    """The viewer with a second image ("second": the scene turned by 90 degrees)."""
    viewer.add_image(np.ascontiguousarray(np.rot90(scene.image)), name="second")
    return viewer


def _run(widget, qtbot, viewer, name):
    widget.source.layers.set_layer(viewer.layers[name])
    widget.run()
    wait_idle(qtbot, widget)


def _outputs_on_top(viewer, name):
    """The outputs of ``name`` are the topmost layers, its labels the very top, selected."""
    own = output_layers(viewer, name)
    assert len(own) == len(CLASSES) + 1
    top = list(viewer.layers)[-len(own) :]
    assert set(map(id, top)) == set(map(id, own))
    labels = viewer.layers[labels_name(name)]
    assert top[-1] is labels
    assert viewer.layers.selection.active is labels
    assert viewer.layers.selection == {labels}


def test_two_images_keep_their_own_results(two_images, qtbot, tiny_model, scene):
    """Segment "nuclei", then "second" (a newer layer, above the first results): both label
    layers exist, each equal to the Segmenter's labels of its image, and the probability
    layers of each image are its own. The second image's outputs are on top of the list
    (not hidden under it) and its labels are selected."""
    viewer = two_images
    widget = segment(viewer, qtbot, tiny_model)
    _outputs_on_top(viewer, "nuclei")
    first = {layer.name: layer for layer in output_layers(viewer, "nuclei")}
    first_labels = np.array(viewer.layers["nuclei labels"].data)
    viewer.layers.move(viewer.layers.index(viewer.layers["second"]), len(viewer.layers))
    _run(widget, qtbot, viewer, "second")

    segmenter = Segmenter(tiny_model, device="cpu")
    for name in ("nuclei", "second"):
        image = viewer.layers[name].data
        expected = segmenter.segment(image)
        labels = viewer.layers[labels_name(name)]
        assert role_of(labels) == "labels" and source_of(labels) == name
        np.testing.assert_array_equal(labels.data, expected.labels)
        cell = viewer.layers[probability_name(name, "cell")]
        np.testing.assert_allclose(cell.data, expected.probs[1], atol=1e-5)
    assert not np.array_equal(viewer.layers["second labels"].data, first_labels)
    # the first image's layers are untouched: same objects, same labels
    for name, layer in first.items():
        assert viewer.layers[name] is layer
    np.testing.assert_array_equal(viewer.layers["nuclei labels"].data, first_labels)
    _outputs_on_top(viewer, "second")
    assert widget.state.result.layer_name == "second"


def test_rerun_on_first_image_updates_only_its_layers(two_images, qtbot, tiny_model):
    """After "nuclei" then "second", a re-run on "nuclei" with other settings updates the
    nuclei layers in place (the same layer objects, moved back on top, labels selected)
    and leaves the second image's layers and data alone; no layer is added."""
    viewer = two_images
    widget = segment(viewer, qtbot, tiny_model)
    nuclei = output_layers(viewer, "nuclei")
    _run(widget, qtbot, viewer, "second")
    second = output_layers(viewer, "second")
    second_data = [np.array(layer.data) for layer in second]
    old_labels = np.array(viewer.layers["nuclei labels"].data)
    n_layers = len(viewer.layers)
    widget.state.set_post("th", {"gamma1": 0.9, "gamma2": 0.1, "min_size": 16})
    _run(widget, qtbot, viewer, "nuclei")

    assert len(viewer.layers) == n_layers
    assert output_layers(viewer, "nuclei") == nuclei  # updated in place
    assert not np.array_equal(viewer.layers["nuclei labels"].data, old_labels)
    expected = Segmenter(tiny_model, device="cpu").segment(
        viewer.layers["nuclei"].data,
        method="th",
        post_params={"gamma1": 0.9, "gamma2": 0.1, "min_size": 16},
    )
    np.testing.assert_array_equal(viewer.layers["nuclei labels"].data, expected.labels)
    assert output_layers(viewer, "second") == second
    for layer, data in zip(second, second_data, strict=True):
        np.testing.assert_array_equal(layer.data, data)
    _outputs_on_top(viewer, "nuclei")


def test_restore_puts_back_data_and_places(make_napari_viewer):
    """snapshot_outputs / restore_outputs of one image (what Cancel does): the data and the
    places in the layer list come back, a class added since is removed, and the outputs
    of another image and a user's layers stay as they are."""
    viewer = make_napari_viewer()
    probs = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    labels = np.zeros((8, 8), np.int32)
    labels[2:4, 2:4] = 1
    viewer.add_image(probs[0], name="a")
    put_probabilities(viewer, probs, CLASSES, source="a")
    put_labels(viewer, labels, source="a")
    viewer.add_image(probs[1], name="b")
    put_labels(viewer, labels * 2, source="b")
    before = list(viewer.layers)
    saved = snapshot_outputs(viewer, "a")
    data_before = [layer.data for layer in before]

    new = np.ones((4, 8, 8), np.float32) / 4
    a_layers = put_probabilities(viewer, new, (*CLASSES, "gap"), source="a")
    put_labels(viewer, labels * 5, source="a")
    for layer in [*a_layers, viewer.layers["a labels"]]:
        viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))
    assert "a gap probability" in viewer.layers
    restore_outputs(viewer, saved)
    assert list(viewer.layers) == before
    for layer, data in zip(before, data_before, strict=True):
        assert layer.data is data


def test_tune_measure_and_finetune_follow_the_last_image(two_images, qtbot, tiny_model):
    """After segmenting "nuclei" then "second": a Tune slider re-labels the second image's
    labels only; Measure measures "second labels" with the "second" image; fine-tuning
    starts from "second" and its labels. Segmenting "nuclei" again switches them back."""
    viewer = two_images
    measure = dock(viewer, "Measure")
    finetune = dock(viewer, "Correct and fine-tune")
    widget = segment(viewer, qtbot, tiny_model)
    tune = dock(viewer, "Tune")
    _run(widget, qtbot, viewer, "second")
    assert measure.labels.layer() is viewer.layers["second labels"]
    assert measure.intensity.layers.layer() is viewer.layers["second"]
    assert finetune.source.layers.layer() is viewer.layers["second"]
    assert finetune.annotations.layer() is viewer.layers["second labels"]

    nuclei_labels = np.array(viewer.layers["nuclei labels"].data)
    second = viewer.layers["second labels"]
    before = np.array(second.data)
    tune.set_method("th")
    tune.sliders["gamma1"].setValue(0.9)
    qtbot.waitUntil(lambda: not np.array_equal(second.data, before), timeout=10_000)
    qtbot.wait(3 * tune_module.THROTTLE_MS)
    wait_idle(qtbot, tune)
    probs = tune.state.result.probs
    expected = postprocess(probs, "th", gamma1=0.9, gamma2=0.1, min_size=16)[0]
    np.testing.assert_array_equal(second.data, expected)
    np.testing.assert_array_equal(viewer.layers["nuclei labels"].data, nuclei_labels)

    _run(widget, qtbot, viewer, "nuclei")
    assert measure.labels.layer() is viewer.layers["nuclei labels"]
    assert measure.intensity.layers.layer() is viewer.layers["nuclei"]
    assert finetune.source.layers.layer() is viewer.layers["nuclei"]
    assert finetune.annotations.layer() is viewer.layers["nuclei labels"]
