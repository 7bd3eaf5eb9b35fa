"""Segmenter.predict at another scale with the result summed on the device (as on a GPU):
every tile's region must be complete when it is resampled back to the image's grid."""

from __future__ import annotations

import numpy as np
import torch

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.segment import Segmenter

torch.set_num_threads(1)


def test_rescaled_prediction_on_the_device_path_equals_the_host_path():
    """A 160 x 160 image at zoom 2 in 128-px tiles (several tiles per plane), without a
    tile callback (no streaming asked): the device-summed path (normalize_on_device,
    which a GPU takes) gives the host path's probabilities. Before the fix the regions
    of all but a plane's last tiles were resampled before the device copied them back."""
    seg = Segmenter("default", device="cpu")
    image = simulate_cells(shape=(160, 160), seed=3).image
    assert seg.zoom_for(10.0) == 2.0
    host = seg.predict(image, diameter=10.0, tile_size=128)
    device = seg.predict(image, diameter=10.0, tile_size=128, normalize_on_device=True)
    np.testing.assert_allclose(device, host, atol=1e-4)
    stack = np.stack([image, image[::-1]])  # planes too: each plane's regions in turn
    np.testing.assert_allclose(
        seg.predict(stack, diameter=10.0, tile_size=128, normalize_on_device=True),
        seg.predict(stack, diameter=10.0, tile_size=128),
        atol=1e-4,
    )
