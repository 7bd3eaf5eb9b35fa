"""Fine-tune planning without Qt (engine.finetune): checks with messages naming the
inputs, the annotated planes, the auto mode and the crop size."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellfocus.engine.finetune import MAX_CROP, choose_mode, plan_finetune


def _disc_labels(shape, centres, r=5):
    yy, xx = np.indices(shape[-2:])
    lab = np.zeros(shape[-2:], np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return lab


def test_plan_of_a_stack_learns_the_annotated_planes_only():
    image = np.random.default_rng(0).random((3, 300, 400)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    labels[1] = _disc_labels((300, 400), [(50, 50), (200, 300)])
    plan = plan_finetune(image, labels, image_name="stack", labels_name="ann", steps=7)
    assert plan.planes == [(1,)] and plan.names == ["stack (1,)"]
    assert len(plan.images) == 1 and np.array_equal(plan.images[0], image[1])
    assert plan.weak and plan.reason.startswith("weak: the annotations cover")
    assert plan.steps == 7 and plan.settings["crop_size"] == MAX_CROP
    small = plan_finetune(image[1, 30:70, 30:90], labels[1, 30:70, 30:90], mode="dense")
    assert small.planes == [()] and small.settings["crop_size"] == 40
    assert not small.weak and small.reason == "dense (chosen)"


def test_auto_is_dense_for_full_or_segmented_labels():
    lab = _disc_labels((64, 64), [(16, 16), (16, 48), (48, 16), (48, 48)])
    assert choose_mode(lab)[0] is False  # every pixel within 30 px of a cell
    assert choose_mode(lab, from_segmentation=True) == (
        False,
        "dense: the labels come from a segmentation (every cell is there)",
    )
    big = _disc_labels((400, 400), [(20, 20)])
    assert choose_mode(big)[0] is True
    # pooled over several images: one dense small image does not make a big one dense
    assert choose_mode([lab, big])[0] is True


@pytest.mark.parametrize(
    ("image", "labels", "message"),
    [
        (np.zeros((64, 64)), np.zeros((64, 65), np.int32), r"'ann' have shape \(64, 65\)"),
        (np.zeros((10, 64)), np.ones((10, 64), np.int32), r"'img' is \(10, 64\) pixels"),
        (np.zeros((64, 64)), np.zeros((64, 64), np.int32), r"No cell is annotated in 'ann'"),
    ],
    ids=["shape", "small", "empty"],
)
def test_bad_inputs_name_the_layer(image, labels, message):
    with pytest.raises(ValueError, match=message):
        plan_finetune(image, labels, image_name="img", labels_name="ann")
    with pytest.raises(ValueError, match="mode: expected one of auto, dense, weak"):
        plan_finetune(np.zeros((64, 64)), np.ones((64, 64), np.int32), mode="half")
