"""Object size and rescaling (core.size): hand-computed diameters, round trips, crops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.core.size import (
    crop_window,
    disc_area,
    equivalent_diameters,
    median_diameter,
    rescale,
    resize,
    resize_block,
    zoom_for,
)


def test_equivalent_diameter_of_squares_by_hand():
    """A 10 x 10 square has area 100: d = 2 sqrt(100 / pi) = 11.284 px; a 4 x 4 one
    4.514 px; the median of three objects is the middle one."""
    lab = np.zeros((40, 40), np.int32)
    lab[0:10, 0:10] = 1
    lab[20:24, 20:24] = 2
    lab[30:36, 30:36] = 5  # ids need not be consecutive
    d = equivalent_diameters(lab)
    np.testing.assert_allclose(
        d, [2 * math.sqrt(100 / math.pi), 2 * math.sqrt(16 / math.pi), 2 * math.sqrt(36 / math.pi)]
    )
    assert median_diameter(lab) == pytest.approx(2 * math.sqrt(36 / math.pi))
    assert median_diameter(np.zeros((5, 5), int)) is None
    assert disc_area(2 * math.sqrt(36 / math.pi)) == pytest.approx(36)


def test_single_pixel_specks_do_not_move_the_median():
    lab = np.zeros((50, 50), np.int32)
    lab[0:10, 0:10] = 1
    for i, (y, x) in enumerate([(30, 30), (32, 40), (40, 45)], start=2):
        lab[y, x] = i
    assert median_diameter(lab) == pytest.approx(2 * math.sqrt(100 / math.pi))


def test_zoom_for_model_scale():
    assert zoom_for(10.0, 20.0) == pytest.approx(2.0)
    assert zoom_for(40.0, 20.0) == pytest.approx(0.5)
    assert zoom_for(20.5, 20.0) == 1.0  # negligible change: no resampling
    assert zoom_for(None, 20.0) == 1.0 and zoom_for(10.0, None) == 1.0


@pytest.mark.parametrize("zoom", [0.5, 2.0])
def test_rescaling_round_trip_keeps_label_geometry(zoom):
    """Labels rescaled by 2 and back are unchanged; by 0.5 and back every cell keeps its
    place and shape (IoU > 0.8 with its original: only its outline is requantised), and
    the median diameter scales by the zoom."""
    scene = simulate_cells(shape=(128, 128), seed=4, radius=(8, 11))
    lab = scene.labels
    there = rescale(lab, zoom, order=0)
    assert there.shape == (round(128 * zoom),) * 2 and there.dtype == lab.dtype
    assert median_diameter(there) == pytest.approx(zoom * median_diameter(lab), rel=0.05)
    back = resize(there, lab.shape, order=0)
    if zoom == 2.0:
        np.testing.assert_array_equal(back, lab)
    else:
        res = evaluate(lab, back)
        assert res["recall"] == 1.0 and res["precision"] == 1.0
        assert res["sq"] > 0.8


def test_linear_resize_keeps_probabilities_summing_to_one_and_centres_fixed():
    rng = np.random.default_rng(0)
    p = rng.random((3, 40, 50)).astype(np.float32)
    p /= p.sum(0)
    for shape in [(80, 100), (20, 25), (37, 61)]:
        q = resize(p, shape, order=1)
        assert q.shape == (3, *shape) and q.dtype == np.float32
        np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    # a bright pixel stays centred: pixel centres map onto pixel centres
    img = np.zeros((11, 11), np.float32)
    img[5, 5] = 1.0
    up = resize(img, (33, 33), order=1)
    assert np.unravel_index(up.argmax(), up.shape) == (16, 16)


def test_resize_block_equals_the_full_resize():
    rng = np.random.default_rng(1)
    a = rng.random((2, 90, 70)).astype(np.float32)
    for shape in [(45, 35), (200, 150)]:
        full = resize(a, shape, order=1)
        block = (slice(10, shape[0] // 2), slice(3, shape[1] - 4))
        np.testing.assert_allclose(
            resize_block(a, shape, block, order=1), full[(slice(None), *block)], atol=1e-4
        )


def test_crop_window_at_zoom_one_is_a_plain_crop_and_marks_outside_pixels():
    rng = np.random.default_rng(2)
    img = rng.random((60, 80)).astype(np.float32)
    lab = (rng.random((60, 80)) * 5).astype(np.int32)
    out_img, out_lab, inside = crop_window(img, lab, [10.0, 20.0], 1.0, 32)
    np.testing.assert_allclose(out_img, img[10:42, 20:52], atol=1e-6)
    np.testing.assert_array_equal(out_lab, lab[10:42, 20:52])
    assert inside.all()
    _, out_lab, inside = crop_window(img, lab, [-8.0, 60.0], 1.0, 32)
    assert not inside[:8].any() and inside[8:, :20].all() and not inside[:, 20:].any()
    assert (out_lab[~inside] == 0).all()


def test_crop_window_zoom_scales_the_cells():
    scene = simulate_cells(shape=(256, 256), seed=2, radius=(9, 10), density=0.2)
    d = median_diameter(scene.labels)
    _, big, _ = crop_window(scene.image, scene.labels, [64.0, 64.0], 2.0, 200)
    # cut cells at the crop's edge pull the median down a little
    assert median_diameter(big) == pytest.approx(2 * d, rel=0.2)


def test_typical_diameter_sets_fragments_aside():
    """Four 20 x 20 nuclei and ten 3 x 3 fragments: the plain median is a fragment's
    diameter, the typical diameter is the nuclei's (2 sqrt(400 / pi) = 22.6 px)."""
    from napari_cellfocus.core.size import typical_diameter

    lab = np.zeros((100, 100), np.int32)
    for i, (y, x) in enumerate([(0, 0), (0, 30), (30, 0), (30, 30)], start=1):
        lab[y : y + 20, x : x + 20] = i
    for j in range(10):
        lab[70 + (j // 5) * 10 : 73 + (j // 5) * 10, 5 + 10 * (j % 5) : 8 + 10 * (j % 5)] = 10 + j
    assert median_diameter(lab) == pytest.approx(2 * math.sqrt(9 / math.pi))
    assert typical_diameter(lab) == pytest.approx(2 * math.sqrt(400 / math.pi))
    assert typical_diameter(np.zeros((4, 4), int)) is None
