"""The built-in model's nucleus-size estimate on simulated images rescaled by known factors."""

from __future__ import annotations

import pytest

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.core.size import median_diameter, rescale
from napari_cellfocus.engine.segment import Segmenter


@pytest.fixture(scope="module")
def segmenter():
    seg = Segmenter("default", device="cpu")
    assert seg.model_diameter is not None, "the built-in model stores its scale"
    return seg


@pytest.fixture(scope="module")
def scene():
    """Nuclei of about 17 px across, sparse to touching, 8-bit."""
    return simulate_cells(shape=(256, 256), seed=21, radius=(7.5, 9.5), density=0.25)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_diameter_estimate_follows_a_known_rescaling(segmenter, scene, factor):
    """The same scene at 0.5x, 1x and 2x: each estimate is within 10 % of the median
    equivalent diameter of the rescaled ground truth (about 8.5, 17 and 34 px)."""
    image = scene.image if factor == 1.0 else rescale(scene.image, factor, order=1)
    labels = scene.labels if factor == 1.0 else rescale(scene.labels, factor, order=0)
    truth = median_diameter(labels)
    estimate = segmenter.estimate_diameter(image)
    assert estimate == pytest.approx(truth, rel=0.10)
