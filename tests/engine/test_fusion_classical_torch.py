"""Classical fusion in torch (engine.fusion_classical) against the numpy reference
(core.fusion), and the rule of engine.fusion.classical_device.

Tolerances (measured when written, random, quantised and simulated stacks up to 9
slices, CPU; the CUDA test uses the same):

* intensities: |torch - numpy| <= 1e-5 of the stack's range (float32 rounding; measured
  at most 4.2e-7), i.e. at most one grey level after rounding to 8/16 bits; max-focus and
  wavelet take the same source pixels / coefficients, so they are exactly equal;
* depth maps: identical.

On large stacks the pyramid can pick another slice at a coarse level where two energies
are equal to within float32 rounding: a few pixels per million then differ by more
(measured on simulated 8-bit 20 x 1024 x 1024: 37 pixels, at most 6 grey levels; see
``engine/fusion_classical.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_cellfocus.core.fusion import (
    CLASSICAL_METHODS,
    fuse_classical,
    guided_filter,
)
from napari_cellfocus.engine.fusion import classical_device, fuse_stack, iter_fuse
from napari_cellfocus.engine.fusion_classical import (
    box_filter,
    fuse_classical_torch,
    gaussian_filter,
    median_filter,
)
from napari_cellfocus.engine.fusion_classical import (
    guided_filter as guided_filter_torch,
)

#: Largest accepted |torch - numpy| of a fused image, as a fraction of the stack's range.
INTENSITY_TOLERANCE = 1e-5

METHODS = list(CLASSICAL_METHODS)

#: Non-default parameters: even windows, no smoothing, one pyramid level, wide guided
#: filters on a small image (windows larger than the image: repeated reflection).
PARAMS = [
    ("max-focus", {"measure": "variance", "window": 4, "smooth": 4}),
    ("max-focus", {"window": 1, "smooth": 0}),
    ("pyramid", {"levels": 1}),
    ("pyramid", {"levels": 3, "window": 4, "smooth": 6}),
    ("gff", {"r1": 3, "r2": 2, "base_size": 4, "eps2": 1e-3}),
    ("wavelet", {"levels": 2, "window": 2, "consistency": 5}),
    ("wavelet", {"consistency": 0}),
]


def _one_sharp_slice_stack(n: int = 3, size: int = 96, seed: int = 0):
    """Textured image cut into ``n`` vertical bands; slice ``k`` is sharp on band ``k`` and
    blurred (sigma 3) elsewhere (as in tests/core/test_fusion.py)."""
    rng = np.random.default_rng(seed)
    y = ndi.gaussian_filter(rng.random((size, size)), 1.0)
    y = ((y - y.min()) / (y.max() - y.min())).astype(np.float32)
    blur = ndi.gaussian_filter(y, 3.0)
    regions = np.minimum(np.arange(size) * n // size, n - 1)[None, :].repeat(size, axis=0)
    stack = np.stack([np.where(regions == k, y, blur) for k in range(n)]).astype(np.float32)
    return stack, y, regions


def _assert_close(numpy_result, torch_result, stack) -> None:
    span = float(np.ptp(stack)) or 1.0
    a = numpy_result.fused.astype(np.float64)
    b = torch_result.fused.astype(np.float64)
    assert torch_result.fused.dtype == numpy_result.fused.dtype
    assert b.shape == a.shape
    assert np.abs(a - b).max() <= INTENSITY_TOLERANCE * span
    assert torch_result.depth.dtype == np.float32
    np.testing.assert_array_equal(torch_result.depth, numpy_result.depth)


# --------------------------------------------------------------------------- filters
@pytest.mark.parametrize("size", [1, 3, 4, 91])
def test_box_filter_is_scipy_uniform_filter_with_reflect_and_nearest(size):
    """Odd and even windows, and a 91-px window on a 20 x 23 image (the border is
    reflected more than once), for both border modes."""
    rng = np.random.default_rng(0)
    a = rng.random((2, 20, 23)).astype(np.float32)
    for mode in ("reflect", "nearest"):
        ref = ndi.uniform_filter(a, size=(1, size, size), mode=mode)
        out = box_filter(torch.from_numpy(a), size, mode).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_gaussian_median_and_guided_filter_match_scipy_and_numpy():
    rng = np.random.default_rng(1)
    a = rng.random((17, 21)).astype(np.float32)
    t = torch.from_numpy(a)
    ref = ndi.gaussian_filter(a, 5.0, mode="reflect", truncate=1.0)
    np.testing.assert_allclose(gaussian_filter(t, 5.0, 5).numpy(), ref, atol=1e-6)
    idx = rng.integers(0, 4, (17, 21))
    for size in (3, 4, 5):
        out = median_filter(torch.from_numpy(idx), size).numpy()
        np.testing.assert_array_equal(out, ndi.median_filter(idx, size=size, mode="nearest"))
    p = (rng.random((17, 21)) > 0.5).astype(np.float32)
    ref = guided_filter(a, p, 4, 1e-6)
    out = guided_filter_torch(t, torch.from_numpy(p), 4, 1e-6).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


# --------------------------------------------------------------------------- vs numpy
@pytest.mark.parametrize("method", METHODS)
def test_torch_matches_numpy_on_random_and_band_stacks(method):
    """Defaults, on a random (4, 37, 45) stack (odd sizes: the wavelet pads) and on the
    noisy band stack: intensities within INTENSITY_TOLERANCE, identical depth maps."""
    rng = np.random.default_rng(2)
    random = rng.random((4, 37, 45)).astype(np.float32)
    bands, _, _ = _one_sharp_slice_stack(n=3, size=64, seed=3)
    bands = bands + rng.normal(0, 0.01, bands.shape).astype(np.float32)
    for stack in (random, bands):
        _assert_close(
            fuse_classical(stack, method),
            fuse_classical_torch(stack, method, device="cpu"),
            stack,
        )


@pytest.mark.parametrize(("method", "params"), PARAMS)
def test_torch_matches_numpy_with_other_parameters(method, params):
    rng = np.random.default_rng(4)
    stack = rng.random((5, 33, 40)).astype(np.float32)
    _assert_close(
        fuse_classical(stack, method, **params),
        fuse_classical_torch(stack, method, device="cpu", **params),
        stack,
    )


@pytest.mark.parametrize("method", METHODS)
def test_exact_ties_go_to_the_same_slice(method):
    """A (5, 40, 40) uint8 stack of three grey levels: many exactly equal focus measures,
    activities and votes; both implementations give ties to the first slice."""
    rng = np.random.default_rng(6)
    stack = np.round(rng.random((5, 40, 40)) * 2).astype(np.uint8)
    other = {"wavelet": {"consistency": 4}, "gff": {"r2": 2}}.get(method, {"window": 4})
    for params in ({}, other):
        _assert_close(
            fuse_classical(stack, method, **params),
            fuse_classical_torch(stack, method, device="cpu", **params),
            stack,
        )


@pytest.mark.parametrize("method", METHODS)
def test_torch_recovers_the_sharp_image(method):
    """Every band sharp in exactly one slice: inside the bands the fused image is the
    sharp one (error < a tenth of a blurred slice's; max-focus exactly) and the depth map
    names the band's slice (as the numpy test in tests/core/test_fusion.py)."""
    stack, y, regions = _one_sharp_slice_stack()
    result = fuse_classical_torch(stack, method, device="cpu")
    inner = np.zeros(regions.shape, bool)
    for k in np.unique(regions):
        inner |= ndi.binary_erosion(regions == k, iterations=10, border_value=0)
    err = np.abs(result.fused - y)[inner].mean()
    assert err < 0.1 * np.abs(ndi.gaussian_filter(y, 3.0) - y)[inner].mean()
    if method == "max-focus":
        assert err == 0.0
    assert np.mean(result.depth[inner] == regions[inner]) > 0.97


@pytest.mark.parametrize("method", METHODS)
def test_torch_keeps_16_bit_and_colour(method):
    """uint16 in -> uint16 out (same values as numpy up to 1 grey level of rounding), a
    (Z, Y, X, 3) uint8 stack -> (Y, X, 3) uint8, the stack axis anywhere."""
    stack, _, _ = _one_sharp_slice_stack(size=48)
    s16 = np.round(stack * 60000).astype(np.uint16)
    r16 = fuse_classical_torch(np.moveaxis(s16, 0, 2), method, axis=2, device="cpu")
    ref16 = fuse_classical(s16, method)
    assert r16.fused.dtype == np.uint16 and r16.fused.shape == (48, 48)
    assert np.abs(r16.fused.astype(int) - ref16.fused.astype(int)).max() <= 1
    s8 = np.round(stack * 255).astype(np.uint8)
    rgb = np.stack([s8, s8 // 2, s8 // 3], axis=-1)
    rc = fuse_classical_torch(rgb, method, device="cpu")
    assert rc.fused.shape == (48, 48, 3) and rc.fused.dtype == np.uint8
    assert np.abs(rc.fused.astype(int) - fuse_classical(rgb, method).fused.astype(int)).max() <= 1


def test_torch_bad_input_gives_the_numpy_errors():
    bad = np.zeros((3, 16, 16), np.float32)
    bad[1, 2, 2] = np.nan
    for fn in (fuse_classical, fuse_classical_torch):
        with pytest.raises(ValueError, match="contains NaN or infinite values"):
            fn(bad, "gff", name="bad.tif")
        with pytest.raises(ValueError, match="single 2D image"):
            fn(np.zeros((8, 8)), "gff")
        with pytest.raises(ValueError, match=r"gff: unknown parameter\(s\) \['r3'\]"):
            fn(np.zeros((2, 8, 8)), "gff", r3=1)
        with pytest.raises(ValueError, match="measure: expected"):
            fn(np.zeros((2, 8, 8)), "max-focus", measure="sobel")
    with pytest.raises(ValueError, match="contains NaN"):
        fuse_stack(bad, "wavelet", device="cpu")


def test_single_slice_is_returned_unchanged():
    img = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    result = fuse_classical_torch(img, "pyramid", device="cpu")
    np.testing.assert_array_equal(result.fused, img[0])
    assert result.fused.dtype == np.uint16
    np.testing.assert_array_equal(result.depth, 0)


# --------------------------------------------------------------------------- engine rule
def test_classical_device_rule():
    """None / "numpy": numpy; "auto": CUDA if present, else numpy; a named device: torch."""
    assert classical_device(None) is None
    assert classical_device("numpy") is None
    assert classical_device(" NumPy ") is None
    auto = classical_device("auto")
    assert (auto is None) if not torch.cuda.is_available() else (auto.type == "cuda")
    assert classical_device("cpu") == torch.device("cpu")
    assert classical_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        classical_device("tpu")


def test_fuse_stack_runs_the_torch_code_when_a_device_is_named():
    """device="cpu" goes through torch (info says so) and gives the numpy result;
    "numpy" and, without CUDA, the default "auto" run numpy."""
    stack, _, _ = _one_sharp_slice_stack(size=48)
    stack = np.round(stack * 255).astype(np.uint8)
    on_cpu = fuse_stack(stack, "gff", device="cpu")
    assert on_cpu.info["implementation"] == "torch"
    assert on_cpu.info["device"].startswith("CPU")
    ref = fuse_stack(stack, "gff", device="numpy")
    assert ref.info["implementation"] == "numpy"
    np.testing.assert_array_equal(on_cpu.fused, ref.fused)
    np.testing.assert_array_equal(on_cpu.depth, ref.depth)
    updates = list(iter_fuse(stack, "max-focus", device="cpu", window=5))
    assert updates[-1].result is not None and updates[-1].result.info["window"] == 5
    if not torch.cuda.is_available():
        assert fuse_stack(stack, "wavelet").info["implementation"] == "numpy"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_numpy(method):
    rng = np.random.default_rng(5)
    stack = rng.random((5, 70, 90)).astype(np.float32)
    result = fuse_stack(stack, method, device="cuda")
    assert result.info["implementation"] == "torch" and result.info["device"].startswith("CUDA")
    _assert_close(fuse_classical(stack, method), result, stack)
    assert fuse_stack(stack, method).info["implementation"] == "torch"  # auto -> GPU
