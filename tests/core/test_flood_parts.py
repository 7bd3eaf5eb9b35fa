"""Flooding the watershed's unknown region part by part gives the labels of one flood of
the whole image (WT's linear-time path, project issue 16): exactly where the relief has no
ties; with ties only where the tie is broken otherwise (skimage queues all marker pixels
at the same age, so equal-valued markers leave its queue in an order set by the queue's
whole content)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from napari_cellfocus.core.postprocess import _dilate_face, _flood_in_parts


@pytest.mark.parametrize("ties", [False, True], ids=["no-ties", "ties"])
@pytest.mark.parametrize("shape", [(120, 170), (12, 40, 50)], ids=["2d", "3d"])
@pytest.mark.parametrize("part", [30, 400, 10**9], ids=["tiny", "small", "whole"])
def test_parts_equal_one_flood(shape, part, ties):
    rng = np.random.default_rng(sum(shape) + part % 97)
    # a smooth random relief (rounded: plateaus of equal values) and scattered markers
    relief = ndimage.gaussian_filter(rng.random(shape), 2.0).astype(np.float32)
    if ties:
        relief = np.round(relief, 2)
    seeds = rng.random(shape) < 0.01
    markers, n = ndimage.label(seeds)
    markers = markers.astype(np.int32)
    markers[(rng.random(shape) < 0.6) & (markers == 0)] = n + 1  # one "background" id
    for axis in range(-2, 0):  # 3-px walls of background every 15 px: many components
        wall = [slice(None)] * len(shape)
        for start in range(10, shape[axis] - 3, 15):
            wall[axis] = slice(start, start + 3)
            markers[tuple(wall)] = n + 1
    region = _dilate_face(markers == 0)
    assert ndimage.label(region)[1] > 10
    want = np.where(
        region,
        watershed(relief, np.where(region, markers, 0), mask=region, connectivity=1),
        markers,
    )
    got = _flood_in_parts(relief, markers, region, part=part)
    assert got.dtype == markers.dtype
    if ties and part < 10**9:
        assert (got != want).mean() < 0.005  # only where a tie is broken otherwise
        comp = ndimage.label(region)[0]  # every label comes from its own component
        for c in range(1, comp.max() + 1):
            inside = comp == c
            assert set(np.unique(got[inside])) <= set(np.unique(markers[inside]))
    else:
        np.testing.assert_array_equal(got, want)
    assert (got[region] > 0).all()  # every pixel of the region is flooded


def test_markers_are_not_modified():
    markers = np.zeros((20, 20), np.int32)
    markers[5, 5], markers[15, 15] = 1, 2
    region = np.ones_like(markers, bool)
    keep = markers.copy()
    out = _flood_in_parts(np.zeros((20, 20), np.float32), markers, region, part=50)
    np.testing.assert_array_equal(markers, keep)
    assert set(np.unique(out)) == {1, 2}
