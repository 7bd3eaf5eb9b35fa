"""Tests of the fluorescence nuclei simulator (napari_cellfocus.core.simulate)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from napari_cellfocus.core.simulate import (
    SimulatedScene,
    _acquire,
    _adjacent_pairs,
    _carve_gaps,
    _expected_adu,
    _resolve_params,
    random_scene_params,
    simulate_cells,
    simulate_dataset,
    simulate_focus_stack,
)

SHAPE = (128, 128)


def _face_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(int(v) for v in row) for row in _adjacent_pairs(labels, full=False)}


# --------------------------------------------------------------------------- helpers by hand


def test_adjacent_pairs_hand_made():
    """Face (4-) vs full (8-) adjacency on a hand-made array.

    1 and 2 share a vertical edge (4-adjacent); 3 touches 2 only through a
    corner (8- but not 4-adjacent); 4 is isolated.
    """
    lab = np.array(
        [
            [1, 2, 0, 0, 0],
            [1, 2, 0, 0, 4],
            [0, 0, 3, 0, 0],
        ]
    )
    assert _face_pairs(lab) == {(1, 2)}
    full = {tuple(r) for r in _adjacent_pairs(lab, full=True).tolist()}
    assert full == {(1, 2), (2, 3)}


def test_carve_gaps_hand_made():
    """Two rectangles sharing a vertical border, gap g=2 -> a = ceil(2/2) = 1 per side.

    Each cell loses the pixels closer than a + 0.5 = 1.5 px to the other, i.e.
    exactly its column next to the border: columns 3 and 4 become background, a
    2-px gap. g=1 -> one side loses one column (distance 1 < 1.5), the other
    nothing (g - a = 0): a 1-px gap.
    """
    lab = np.zeros((6, 8), dtype=np.int32)
    lab[1:5, 1:4] = 1
    lab[1:5, 4:7] = 2
    rng = np.random.default_rng(0)
    out = _carve_gaps(lab, np.array([[1, 2]]), np.array([2]), rng)
    assert np.all(out[:, 3:5] == 0)
    assert np.all(out[1:5, 1:3] == 1) and np.all(out[1:5, 5:7] == 2)
    out1 = _carve_gaps(lab, np.array([[1, 2]]), np.array([1]), rng)
    assert int((out1 == 0).sum() - (lab == 0).sum()) == 4  # one column of 4 px
    assert _face_pairs(out1) == set()
    assert {tuple(r) for r in _adjacent_pairs(out1, full=True).tolist()} == set()


def test_camera_chain_by_hand():
    """Without noise, ADU = offset + gain * photons * signal, rounded, clipped.

    With photons = inf (no shot noise), read_noise = 0, gain = 2, offset 10:
    signal 0 -> 10, 3.2 -> 10 + 2 * 3.2 = 16.4 -> 16, 200 -> 410 -> clipped to 255.
    """
    p = _resolve_params({"photons": np.inf, "read_noise": 0.0, "bit_depth": 8})
    cam = {"full_scale": 255.0, "gain": 2.0, "offset_adu": 10.0}
    sig = np.array([[0.0, 3.2, 200.0]])
    out = _acquire(np.random.default_rng(0), sig, cam, p)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[10, 16, 255]])
    np.testing.assert_allclose(_expected_adu(sig, cam, p), [[10.0, 16.4, 410.0]])


def test_shot_noise_variance_is_poisson():
    """A flat signal s with photons N and gain 1: variance of ADU ~ N * s (Poisson)."""
    p = _resolve_params({"photons": 50.0, "read_noise": 0.0, "bit_depth": None})
    cam = {"full_scale": 1e9, "gain": 1.0, "offset_adu": 0.0}
    out = _acquire(np.random.default_rng(1), np.full((200, 200), 2.0), cam, p)
    assert out.mean() == pytest.approx(100.0, rel=0.01)
    assert out.var() == pytest.approx(100.0, rel=0.05)


# --------------------------------------------------------------------------- simulate_cells


def test_deterministic_under_seed():
    a = simulate_cells(SHAPE, seed=7)
    b = simulate_cells(SHAPE, seed=7)
    c = simulate_cells(SHAPE, seed=8)
    for name in ("image", "labels", "clean"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize(
    ("bit_depth", "dtype"), [(8, np.uint8), (16, np.uint16), (None, np.float32)]
)
def test_dtype_shape_bit_depth(bit_depth, dtype):
    s = simulate_cells((96, 120), bit_depth=bit_depth, seed=1)
    assert isinstance(s, SimulatedScene)
    assert s.image.shape == s.labels.shape == s.clean.shape == (96, 120)
    assert s.image.dtype == dtype
    assert s.labels.dtype == np.int32
    assert s.clean.dtype == np.float32
    assert 0.0 <= s.clean.min() and s.clean.max() <= 1.0
    assert s.stack is None and s.all_in_focus is None and s.depth is None
    if bit_depth == 16:
        assert s.image.max() > 255  # uses the 16-bit range (fill 0.8 of 65535)
    if bit_depth is None:
        assert 0.0 <= s.image.min() and s.image.max() <= 1.0


def test_labels_consecutive_and_sensible_areas():
    s = simulate_cells(SHAPE, density=0.4, cluster_fraction=0.8, seed=3)
    n = int(s.labels.max())
    assert n > 10
    assert s.params["n_cells"] == n
    np.testing.assert_array_equal(np.unique(s.labels), np.arange(n + 1))
    areas = np.bincount(s.labels.ravel())[1:]
    assert areas.min() >= 6
    # interior cells: area of the order of pi r^2 for r in (6, 12)
    assert np.median(areas) > np.pi * 6**2 * 0.5
    assert np.median(areas) < np.pi * 12**2 * 1.2
    # every label is one face-connected piece
    for i, sl in enumerate(ndi.find_objects(s.labels), start=1):
        _, k = ndi.label(s.labels[sl] == i)
        assert k == 1


def test_touching_pairs_exist_with_clusters_and_not_without():
    clumped = simulate_cells(SHAPE, density=0.4, cluster_fraction=1.0, touching=1.0, seed=2)
    assert len(_face_pairs(clumped.labels)) >= 5
    lone = simulate_cells(SHAPE, density=0.4, cluster_fraction=0.0, seed=2)
    assert lone.labels.max() > 5
    assert _face_pairs(lone.labels) == set()
    assert len(_adjacent_pairs(lone.labels, full=True)) == 0


def test_nearly_touching_gaps_are_one_to_three_pixels():
    """touching=0 in clumps: no shared border, but clumped neighbours 1-3 px apart.

    Growing every label by 2 px (expand_labels) closes a gap of up to 4 px, so
    pairs that are not adjacent before and adjacent after are at most 4 px apart.
    """
    s = simulate_cells(SHAPE, density=0.4, cluster_fraction=1.0, touching=0.0, seed=4)
    assert _adjacent_pairs(s.labels, full=True).shape[0] == 0
    near = _face_pairs(expand_labels(s.labels, 2))
    assert len(near) >= 5


def test_cells_brighter_than_background():
    s = simulate_cells(SHAPE, density=0.2, seed=5, bit_depth=16)
    far_bg = ~ndi.binary_dilation(s.labels > 0, iterations=6)
    inside = s.image[s.labels > 0].astype(float).mean()
    outside = s.image[far_bg].astype(float).mean()
    assert inside > 3.0 * outside


def test_noise_high_vs_low_photons():
    kw = {"seed": 6, "out_of_focus": 0.0, "bit_depth": 16}
    hi = simulate_cells(SHAPE, photons=1e6, read_noise=0.0, **kw)
    lo = simulate_cells(SHAPE, photons=5.0, read_noise=3.0, **kw)
    np.testing.assert_array_equal(hi.labels, lo.labels)  # same scene, other camera
    full = hi.params["full_scale"]
    r_hi = np.corrcoef(hi.image.ravel() / full, hi.clean.ravel())[0, 1]
    r_lo = np.corrcoef(lo.image.ravel() / full, lo.clean.ravel())[0, 1]
    assert r_hi > 0.999
    assert r_lo < r_hi
    assert np.std(lo.image / full - lo.clean) > 5 * np.std(hi.image / full - hi.clean)


def test_n_cells_zero_gives_empty_scene():
    """No nuclei: exposure as if a nucleus of emission 1 were there, so the
    background (0.08 of it) stays dark, around 0.08 * fill * 255 ~ 16 ADU."""
    s = simulate_cells((64, 64), n_cells=0, seed=0)
    assert s.labels.max() == 0
    assert s.image.shape == (64, 64)
    assert s.image.mean() < 40


def test_3d_volume():
    s = simulate_cells((24, 64, 64), radius=(6, 9), density=0.3, seed=1)
    assert s.image.shape == s.labels.shape == (24, 64, 64)
    n = int(s.labels.max())
    assert n >= 3
    np.testing.assert_array_equal(np.unique(s.labels), np.arange(n + 1))
    assert s.image[s.labels > 0].mean() > 2 * s.image[s.labels == 0].mean()
    # nuclei extend over several z steps (ellipsoids, not single slices)
    for sl in ndi.find_objects(s.labels):
        assert sl[0].stop - sl[0].start >= 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radius": -3}, "radius"),
        ({"radius": (8, 4)}, "radius"),
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"bit_depth": 12}, "bit_depth"),
        ({"shape": (256,)}, "shape"),
        ({"shape": (0, 256)}, "shape"),
        ({"shape": (10, 10, 10, 10)}, "shape"),
        ({"photons": 0}, "photons"),
        ({"read_noise": -1}, "read_noise"),
        ({"cluster_fraction": 1.2}, "cluster_fraction"),
        ({"illumination_gradient": 1.0}, "illumination_gradient"),
        ({"n_cells": -1}, "n_cells"),
        ({"n_cells": 2.5}, "n_cells"),
        ({"no_such_param": 1}, "unknown"),
    ],
)
def test_parameter_validation(kwargs, match):
    kw = {"shape": (32, 32), **kwargs}
    with pytest.raises(ValueError, match=match):
        simulate_cells(**kw)


# --------------------------------------------------------------------------- focus stacks


@pytest.fixture(scope="module")
def stack_scene() -> SimulatedScene:
    return simulate_focus_stack(
        SHAPE,
        n_slices=5,
        defocus_per_slice=1.5,
        seed=3,
        photons=1e5,
        read_noise=0.0,
        bit_depth=16,
        density=0.15,
        cluster_fraction=0.3,
    )


def test_focus_stack_outputs(stack_scene):
    s = stack_scene
    assert s.stack.shape == (5, *SHAPE) and s.stack.dtype == np.uint16
    assert s.all_in_focus.shape == SHAPE and s.all_in_focus.dtype == np.uint16
    assert s.depth.shape == SHAPE and s.depth.dtype == np.float32
    assert np.all(s.depth[s.labels == 0] == -1.0)
    fg = s.depth[s.labels > 0]
    assert fg.min() >= 0.0 and fg.max() <= 4.0
    for i in range(1, int(s.labels.max()) + 1):  # one depth per nucleus
        assert np.ptp(s.depth[s.labels == i]) == 0


def test_focus_stack_cell_sharpest_at_its_depth(stack_scene):
    """Laplacian variance inside each nucleus peaks at the slice nearest its depth.

    Slice z blurs nucleus k with sigma^2 = psf^2 + (1.5 |d_k - z|)^2, smallest
    at z = round(d_k); blur lowers high frequencies, hence the Laplacian energy.
    """
    s = stack_scene
    full = s.params["full_scale"]
    lap = np.stack([ndi.laplace(z.astype(float) / full) for z in s.stack])
    depths = s.params["cell_depths"]
    checked = 0
    for i in range(1, int(s.labels.max()) + 1):
        m = ndi.binary_erosion(s.labels == i)
        if m.sum() < 10:
            continue
        energy = [lap[z][m].var() for z in range(s.stack.shape[0])]
        assert int(np.argmax(energy)) == round(float(depths[i - 1]))
        checked += 1
    assert checked >= 5


def test_all_in_focus_closer_to_clean_than_any_slice(stack_scene):
    s = stack_scene
    full = s.params["full_scale"]
    err_aif = np.mean((s.all_in_focus / full - s.clean) ** 2)
    err_slices = [np.mean((z / full - s.clean) ** 2) for z in s.stack]
    assert err_aif < 0.1 * min(err_slices)


def test_focus_stack_fresh_noise_per_slice():
    s = simulate_focus_stack((64, 64), n_slices=3, defocus_per_slice=0.0, seed=1)
    # no defocus: slices differ only by their noise
    assert not np.array_equal(s.stack[0], s.stack[1])
    d = s.stack[0].astype(float) - s.stack[1].astype(float)
    assert abs(d.mean()) < 0.5 and d.std() > 0


def test_focus_stack_validation():
    with pytest.raises(ValueError, match="n_slices"):
        simulate_focus_stack((64, 64), n_slices=0)
    with pytest.raises(ValueError, match="depth_range"):
        simulate_focus_stack((64, 64), depth_range=(3, 1))
    with pytest.raises(ValueError, match="shape"):
        simulate_focus_stack((16, 64, 64))
    with pytest.raises(ValueError, match="defocus_per_slice"):
        simulate_focus_stack((64, 64), defocus_per_slice=-1)


# --------------------------------------------------------------------------- training data


def test_random_scene_params_varied_and_usable():
    rng = np.random.default_rng(0)
    draws = [random_scene_params(rng) for _ in range(200)]
    r_mid = np.array([0.5 * sum(d["radius"]) for d in draws])
    assert r_mid.min() < 6 and r_mid.max() > 18
    assert all(4 * 0.6 < d["radius"][0] and d["radius"][1] < 25 * 1.4 for d in draws)
    dens = np.array([d["density"] for d in draws])
    assert dens.min() < 0.06 and dens.max() > 0.4
    ph = np.array([d["photons"] for d in draws])
    assert ph.min() < 20 and ph.max() > 1000
    assert {d["bit_depth"] for d in draws} == {8, 16}
    assert random_scene_params(5) == random_scene_params(5)
    for d in draws[:3]:  # accepted by simulate_cells as they are
        s = simulate_cells((64, 64), seed=0, **d)
        assert s.image.shape == (64, 64)


def test_simulate_dataset():
    a = simulate_dataset(3, seed=1, shape=(64, 64))
    b = simulate_dataset(3, seed=1, shape=(64, 64))
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
    assert not np.array_equal(a[0].image, a[1].image)
    fixed = simulate_dataset(2, seed=1, shape=(64, 64), vary=False, bit_depth=16)
    assert all(s.image.dtype == np.uint16 for s in fixed)
    with pytest.raises(ValueError, match="n"):
        simulate_dataset(-1)
