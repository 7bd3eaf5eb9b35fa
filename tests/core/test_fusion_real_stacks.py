"""Real-content focus stacks (core.fusion_data, issue 14): hand-made objects at known
depths, shapes and dtypes, determinism, shifts, bleaching, PSFs, the by-image split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_cellfocus.core.fusion_data import (
    PSF_KINDS,
    RealImagePool,
    RealStackPairSampler,
    defocus,
    focus_target,
    random_stack_params,
    real_focus_stack,
    real_image_split,
    smooth_depth_map,
)


def _scene():
    """64 x 64 dark field, two textured bright squares: label 1 (top left), 2 (bottom
    right). The texture (a checkerboard) is what defocus destroys."""
    yy, xx = np.mgrid[:64, :64]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)
    image = np.zeros((64, 64), np.float32)
    labels = np.zeros((64, 64), np.uint16)
    labels[8:24, 8:24] = 1
    labels[40:56, 40:56] = 2
    image[labels > 0] = (100.0 + 100.0 * checker)[labels > 0]
    return image, labels


def _laplacian_energy(img: np.ndarray, mask: np.ndarray) -> float:
    return float((ndi.laplace(img.astype(np.float64)) ** 2)[mask].mean())


def test_object_at_known_depth_is_sharp_in_its_slice_noise_free():
    image, labels = _scene()
    st = real_focus_stack(
        image,
        labels,
        0,
        n_slices=7,
        defocus_per_slice=1.5,
        photons=np.inf,
        read_noise=0.0,
        object_depths={1: 2.0, 2: 5.0},
        background_depth=0.0,
    )
    # slice 2 equals the sharp image on object 1 up to quantisation (+ the dim light
    # that the far-away, defocused object 2 spreads onto it: none this far)
    win1 = labels == 1
    assert np.abs(st.stack[2].astype(np.float32) - st.truth)[win1].max() <= 0.5 + 1e-3
    win2 = labels == 2
    assert np.abs(st.stack[5].astype(np.float32) - st.truth)[win2].max() <= 0.5 + 1e-3
    # and each object is sharpest (max Laplacian energy) in its own slice
    e1 = [_laplacian_energy(s, win1) for s in st.stack]
    e2 = [_laplacian_energy(s, win2) for s in st.stack]
    assert int(np.argmax(e1)) == 2 and int(np.argmax(e2)) == 5
    # blur grows with the distance from the object's depth
    assert e1[2] > e1[3] > e1[4] > e1[5]
    assert st.depth[win1].tolist() == [2.0] * int(win1.sum())
    assert st.params["object_depths"] == {1: 2.0, 2: 5.0}


@pytest.mark.parametrize("psf", PSF_KINDS)
def test_object_at_known_depth_with_noise(psf):
    image, labels = _scene()
    st = real_focus_stack(
        image,
        labels,
        3,
        n_slices=5,
        psf=psf,
        defocus_per_slice=2.0,
        photons=400.0,
        read_noise=1.0,
        object_depths={1: 1.0, 2: 3.0},
        background_depth=0.0,
    )
    win1 = labels == 1
    # the in-focus slice equals the truth within the noise: std of Poisson-Gaussian noise
    # at the object's brightest pixels, in ADU, is gain * sqrt(photons + read^2)
    gain = st.params["gain"]
    sigma = gain * np.sqrt(400.0 + 1.0)
    err = st.stack[1].astype(np.float64) - st.truth
    assert abs(err[win1].mean()) < 0.2 * sigma
    assert err[win1].std() < 1.2 * sigma
    e1 = [_laplacian_energy(s, win1) for s in st.stack]
    e2 = [_laplacian_energy(s, labels == 2) for s in st.stack]
    assert int(np.argmax(e1)) == 1 and int(np.argmax(e2)) == 3


def test_shapes_dtypes_and_scale():
    image, labels = _scene()
    for bits, dtype, full in ((8, np.uint8, 255), (16, np.uint16, 65535)):
        st = real_focus_stack(image, labels, 1, n_slices=4, bit_depth=bits)
        assert st.stack.shape == (4, 64, 64) and st.stack.dtype == dtype
        assert st.truth.shape == (64, 64) and st.truth.dtype == np.float32
        assert st.depth.shape == (64, 64) and st.depth.dtype == np.float32
        assert st.clean.shape == (4, 64, 64) and st.sharp.max() == pytest.approx(1.0)
        assert st.truth.max() <= full and st.stack.max() <= full
        # background depth is a smooth map inside [0, n - 1]
        bg = st.depth[labels == 0]
        assert bg.min() >= 0.0 and bg.max() <= 3.0
        # truth = offset + gain * photons * sharp
        p = st.params
        assert np.allclose(st.truth, p["offset"] + p["gain"] * p["photons"] * st.sharp, rtol=1e-5)


def test_deterministic_given_a_seed():
    image, labels = _scene()
    kw = {"n_slices": 5, "psf": "mixed", "bleach": 0.02, "shift_std": 0.5}
    a = real_focus_stack(image, labels, 7, **kw)
    b = real_focus_stack(image, labels, 7, **kw)
    c = real_focus_stack(image, labels, 8, **kw)
    assert np.array_equal(a.stack, b.stack) and np.array_equal(a.depth, b.depth)
    assert a.params == b.params
    assert not np.array_equal(a.stack, c.stack)
    p1 = random_stack_params(np.random.default_rng(4))
    assert p1 == random_stack_params(np.random.default_rng(4))


def test_lateral_shifts_move_the_slices_by_the_drawn_amount():
    image = np.zeros((64, 64), np.float32)
    labels = np.zeros((64, 64), np.uint16)
    image[28:36, 28:36] = 200.0
    labels[28:36, 28:36] = 1
    st = real_focus_stack(
        image, labels, 2, n_slices=6, defocus_per_slice=0.0, photons=np.inf, read_noise=0.0,
        shift_std=1.0,
    )  # fmt: skip
    shifts = np.asarray(st.params["shifts"])
    assert shifts.shape == (6, 2) and np.abs(shifts).max() > 0.3
    c0 = np.asarray(ndi.center_of_mass(st.sharp))
    for k in range(6):
        moved = np.asarray(ndi.center_of_mass(st.clean[k])) - c0
        assert np.allclose(moved, shifts[k], atol=0.02)
    # no shifts without shift_std
    st0 = real_focus_stack(image, labels, 2, n_slices=3, defocus_per_slice=0.0)
    assert not np.asarray(st0.params["shifts"]).any()


def test_bleaching_dims_each_slice_by_exp_minus_bleach_k():
    image, labels = _scene()
    st = real_focus_stack(
        image, labels, 5, n_slices=5, defocus_per_slice=1.0, photons=np.inf, read_noise=0.0,
        bleach=0.1, background_depth=0.0,
    )  # fmt: skip
    totals = st.clean.sum(axis=(1, 2))
    assert np.allclose(totals / totals[0], np.exp(-0.1 * np.arange(5)), rtol=1e-3)


def test_psf_kernels_keep_intensity_and_grow():
    img = np.zeros((41, 41), np.float32)
    img[20, 20] = 1.0
    for kind in PSF_KINDS:
        small, big = defocus(img, kind, 2.0), defocus(img, kind, 5.0)
        assert small.sum() == pytest.approx(1.0, abs=1e-4)
        assert big.sum() == pytest.approx(1.0, abs=1e-4)
        assert big.max() < small.max()
    disc = defocus(img, "disc", 4.0)
    # a pill-box of radius 4: flat inside, nothing beyond radius 5
    assert disc[20, 20] == pytest.approx(disc[20, 22], rel=1e-3)
    assert disc[20, 26] == pytest.approx(0.0, abs=1e-6)
    assert np.array_equal(defocus(img, "gaussian", 0.1), img)
    with pytest.raises(ValueError, match="kind"):
        defocus(img, "airy", 1.0)


def test_smooth_depth_map_spans_its_range():
    d = smooth_depth_map((50, 60), np.random.default_rng(0), 1.5, 4.0)
    assert d.shape == (50, 60) and d.dtype == np.float32
    assert d.min() == pytest.approx(1.5) and d.max() == pytest.approx(4.0)
    assert np.abs(np.diff(d, axis=0)).max() < 0.5  # smooth


def test_focus_target_puts_weight_on_the_sharp_slice():
    truth = np.zeros((40, 40), np.float32)
    truth[5:15, 5:15] = 1.0
    blurred = ndi.gaussian_filter(truth, 3.0)
    t = focus_target(np.stack([blurred, truth, blurred]), truth, tie=0.01)
    assert t.shape == (3, 40, 40) and np.allclose(t.sum(axis=0), 1.0)
    assert t[1, 5, 5] == 1.0 and t[0, 5, 5] == 0.0
    assert np.allclose(t[:, 39, 39], 1 / 3)  # flat far corner: a tie between all


def test_real_image_split_is_by_image_and_fixed():
    index = [{"file": f"img{i:03d}.tif"} for i in range(50)]
    train, val = real_image_split(index, seed=0, val_fraction=0.2)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and set(train) | set(val) == {e["file"] for e in index}
    assert (train, val) == real_image_split(list(reversed(index)), seed=0)
    assert real_image_split(index, seed=1)[1] != val


def test_pair_sampler_on_a_folder(tmp_path):
    image, labels = _scene()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "images" / f"a{i}.tif", np.roll(image, 5 * i).astype(np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"a{i}.tif", np.roll(labels, 5 * i))
    (tmp_path / "index.json").write_text(json.dumps([{"file": f"a{i}.tif"} for i in range(3)]))
    train, val = real_image_split(tmp_path, val_fraction=0.34)
    assert len(val) == 1 and len(train) == 2
    pool = RealImagePool(tmp_path, train)
    sampler = RealStackPairSampler(pool, (48, 48))
    kinds = set()
    for seed in range(12):
        s = sampler(np.random.default_rng(seed))
        assert s.a.shape == s.b.shape == s.target.shape == (1, 48, 48)
        assert s.focus.shape == (48, 48) and s.a.dtype == np.float32
        assert 0.0 <= s.focus.min() and s.focus.max() <= 1.0
        kinds.add(round(float(s.focus.mean()), 3))
    assert len(kinds) > 3
