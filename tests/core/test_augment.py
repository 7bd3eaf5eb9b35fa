"""Augmentations: the thesis' touching-region contrast modulation and joint geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellfocus.core.augment import (
    AugmentConfig,
    augment_sample,
    median_at,
    touching_contrast_modulation,
)


def test_touching_contrast_modulation_hand_case():
    """Thesis 4.2.2: x_a = (1 - a) x + a * median7(x) on touching pixels only.
    Image: 9x9 zeros with a bright vertical line (value 10) at column 4, which is the
    touching class. The 7x7 median around any line pixel is 0 (7 of 49 pixels are 10),
    so x_a = (1 - a) * 10 there: a = 0.5 -> 5 (weaker edge), a = -1 -> 20 (stronger)."""
    image = np.zeros((9, 9), np.float32)
    image[:, 4] = 10
    target = np.zeros((9, 9), np.uint8)
    target[:, 4] = 2
    target[:, 2] = 1  # cell pixels are never modulated
    image[:, 2] = 3
    weaker = touching_contrast_modulation(image, target, a=0.5)
    stronger = touching_contrast_modulation(image, target, a=-1.0)
    np.testing.assert_allclose(weaker[:, 4], 5.0)
    np.testing.assert_allclose(stronger[:, 4], 20.0)
    for out in (weaker, stronger):
        np.testing.assert_array_equal(
            out[:, [0, 1, 2, 3, 5, 6, 7, 8]], image[:, [0, 1, 2, 3, 5, 6, 7, 8]]
        )
    np.testing.assert_array_equal(touching_contrast_modulation(image, target, a=0.0), image)


def test_median_at_hand_case_and_edge_reflection():
    """3-box medians at chosen pixels. Row 0 of [[1, 2, 9], [4, 5, 6], [7, 8, 3]]:
    at (0, 0) the edge repeats (scipy "reflect"), box {1,1,2,1,1,2,4,4,5} -> median 2;
    at (1, 1) the box is the whole image -> median 5."""
    image = np.array([[1, 2, 9], [4, 5, 6], [7, 8, 3]], np.float32)
    where = np.zeros((3, 3), bool)
    where[0, 0] = where[1, 1] = True
    np.testing.assert_array_equal(median_at(image, where, 3), [2.0, 5.0])
    with pytest.raises(ValueError, match="odd"):
        median_at(image, where, 4)


@pytest.mark.parametrize("shape", [(64, 48), (5, 20, 17), (2, 9)])
@pytest.mark.parametrize("window", [3, 7])
def test_median_at_equals_the_full_median_filter(shape, window):
    """Only the wanted pixels, but the same values as scipy's median filter (2D, 3D, axes
    shorter than the window; chunking across the pixel list)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    image = rng.random(shape).astype(np.float32)
    where = rng.random(shape) < 0.3
    expected = ndi.median_filter(image, size=window, mode="reflect")[where]
    np.testing.assert_array_equal(median_at(image, where, window, chunk=50), expected)


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(a, k)
    return out[:, ::-1] if flip else out


def test_geometry_moves_image_target_and_weight_together():
    """With only flips/rotations on, every output is one of the 8 dihedral transforms of the
    input, the same one for image, target and weights, and the class counts are kept."""
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    target = (rng.random((16, 16)) * 3).astype(np.uint8)
    weight = rng.random((16, 16)).astype(np.float32)
    only_geometry = AugmentConfig(
        elastic_prob=0, gamma_range=(1, 1), brightness=0, noise_std=0, touch_contrast=False
    )
    for seed in range(8):
        img, tgt, wgt = augment_sample(
            image, target, weight, np.random.default_rng(seed), only_geometry
        )
        found = False
        for k in range(4):
            for flip in (False, True):
                if np.array_equal(img, _dihedral(image, k, flip)):
                    np.testing.assert_array_equal(tgt, _dihedral(target, k, flip))
                    np.testing.assert_array_equal(wgt, _dihedral(weight, k, flip))
                    found = True
        assert found


def test_elastic_warp_keeps_classes_and_is_seeded():
    rng = np.random.default_rng(1)
    image = rng.random((32, 32)).astype(np.float32)
    target = np.zeros((32, 32), np.uint8)
    target[8:24, 8:24] = 1
    target[15:17, 8:24] = 2
    weight = np.ones((32, 32), np.float32)
    cfg = AugmentConfig(elastic_prob=1.0, elastic_alpha=3.0)
    a = augment_sample(image, target, weight, np.random.default_rng(5), cfg)
    b = augment_sample(image, target, weight, np.random.default_rng(5), cfg)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert set(np.unique(a[1])) <= {0, 1, 2}  # nearest-neighbour: no invented classes
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint8 and a[2].dtype == np.float32
    assert abs(int((a[1] == 1).sum()) - int((target == 1).sum())) < 0.2 * (target == 1).sum()


@pytest.mark.parametrize("shape", [(16, 24), (4, 16, 16)])
def test_shapes_kept_for_non_square_and_3d(shape):
    rng = np.random.default_rng(2)
    image = rng.random(shape).astype(np.float32)
    out = augment_sample(image, np.zeros(shape, np.uint8), np.ones(shape, np.float32), rng)
    assert all(o.shape == shape for o in out)
