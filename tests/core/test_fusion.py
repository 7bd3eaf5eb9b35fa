"""Classical multi-focus fusion, Near (T eq. 6.6), iterated fusion and dtype handling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cellfocus.core.fusion import (
    CLASSICAL_METHODS,
    focus_measure,
    fuse_classical,
    fuse_iteratively,
    guided_filter,
    haar_dwt2,
    haar_idwt2,
    near,
    prepare_stack,
    restore_dtype,
)


# --------------------------------------------------------------------------- helpers
def _one_sharp_slice_stack(n: int = 3, size: int = 96, seed: int = 0):
    """A textured sharp image ``y`` cut into ``n`` vertical bands; slice ``k`` shows band
    ``k`` sharp and every other band blurred (Gaussian, sigma 3), so every region is
    sharp in exactly one slice. Returns (stack (n, Y, X) float32 in [0, 1], y, regions)."""
    rng = np.random.default_rng(seed)
    y = ndi.gaussian_filter(rng.random((size, size)), 1.0)
    y = ((y - y.min()) / (y.max() - y.min())).astype(np.float32)
    blur = ndi.gaussian_filter(y, 3.0)
    regions = np.minimum(np.arange(size) * n // size, n - 1)[None, :].repeat(size, axis=0)
    stack = np.stack([np.where(regions == k, y, blur) for k in range(n)]).astype(np.float32)
    return stack, y, regions


def _interior(regions: np.ndarray, margin: int = 10) -> np.ndarray:
    """Pixels at least ``margin`` px away from a region border and from the image edge."""
    inner = np.zeros(regions.shape, bool)
    for k in np.unique(regions):
        inner |= ndi.binary_erosion(regions == k, iterations=margin, border_value=0)
    return inner


# --------------------------------------------------------------------------- dtype / input
def test_restore_dtype_rounds_and_clips_to_the_integer_range():
    """uint8: -3.2 -> 0 (clipped), 0.4 -> 0, 1.6 -> 2 (nearest), 254.6 -> 255, 300 -> 255;
    uint16: 70000 -> 65535; floats are a plain cast."""
    x = np.array([-3.2, 0.4, 1.6, 254.6, 300.0])
    out = restore_dtype(x, np.uint8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [0, 0, 2, 255, 255])
    out16 = restore_dtype(np.array([70000.0, 12.4]), np.uint16)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, [65535, 12])
    assert restore_dtype(x, np.float32).dtype == np.float32


def test_prepare_stack_moves_the_stack_axis_first():
    """A (Y=4, Z=3, X=5) array with axis=1: slice k of the result is ``array[:, k, :]``."""
    arr = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    ps = prepare_stack(arr, axis=1)
    assert ps.data.shape == (3, 4, 5, 1) and ps.data.dtype == np.float32
    for k in range(3):
        np.testing.assert_array_equal(ps.data[k, ..., 0], arr[:, k, :])
    assert ps.dtype == np.uint16 and not ps.rgb
    ps_neg = prepare_stack(arr, axis=-2)
    np.testing.assert_array_equal(ps_neg.data, ps.data)


def test_prepare_stack_errors():
    with pytest.raises(ValueError, match="single 2D image"):
        prepare_stack(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="axis 3 does not exist"):
        prepare_stack(np.zeros((2, 8, 8)), axis=3)
    bad = np.zeros((2, 8, 8))
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prepare_stack(bad)
    with pytest.raises(ValueError, match="same shape"):
        prepare_stack([np.zeros((8, 8)), np.zeros((8, 9))])
    with pytest.raises(ValueError, match="numeric"):
        prepare_stack(np.array([[["a"]]]))
    with pytest.raises(ValueError, match="unknown classical fusion method"):
        fuse_classical(np.zeros((2, 8, 8)), "median")
    with pytest.raises(ValueError, match="unknown parameter"):
        fuse_classical(np.zeros((2, 8, 8)), "max-focus", sigma=3)


# --------------------------------------------------------------------------- Near
def test_near_two_sources_hand_values_ties_go_to_b():
    """Eq. 6.6 with fused (0.4, 0.6, 0.5), xA = 0, xB = 1: squared distances to A are
    (0.16, 0.36, 0.25), to B (0.36, 0.16, 0.25) -> A, B and, on the tie, B."""
    fused = np.array([[0.4, 0.6, 0.5]])
    a = np.zeros((1, 3), np.uint8)
    b = np.ones((1, 3), np.uint8)
    out, idx = near(fused, [a, b])
    np.testing.assert_array_equal(idx, [[0, 1, 1]])
    np.testing.assert_array_equal(out, [[0, 1, 1]])
    assert out.dtype == np.uint8


def test_near_returns_source_pixels_exactly():
    """Whatever the fused image, every output pixel equals the same pixel of one source,
    bit for bit (16-bit sources, 4 sources, random fused image)."""
    rng = np.random.default_rng(1)
    srcs = rng.integers(0, 65536, size=(4, 20, 30)).astype(np.uint16)
    fused = rng.random((20, 30)) * 65535
    out, idx = near(fused, srcs)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.take_along_axis(srcs, idx[None], 0)[0])
    # and it is the nearest: no source is strictly closer
    dist = np.abs(srcs.astype(float) - fused)
    assert np.all(np.abs(out.astype(float) - fused) <= dist.min(axis=0) + 1e-9)


def test_near_colour_uses_the_distance_over_channels():
    """fused (0.6, 0.6, 0), A (0, 0, 0): d^2 = 0.72; B (1, 1, 1): d^2 = 0.16 + 0.16 + 1 = 1.32
    -> the whole pixel from A, although B is nearer in two of the three channels."""
    fused = np.array([[[0.6, 0.6, 0.0]]])
    a = np.zeros((1, 1, 3))
    b = np.ones((1, 1, 3))
    out, idx = near(fused, np.stack([a, b]))
    assert idx[0, 0] == 0
    np.testing.assert_array_equal(out, a)


def test_near_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        near(np.zeros((4, 4)), np.zeros((2, 4, 5)))


# --------------------------------------------------------------------------- iterated fusion
def test_fuse_iteratively_is_the_functional_power():
    """f = pixel-wise maximum with weight 1 where the new slice wins: sources 1, 5, 3 ->
    f(f(1, 5), 3) = 5; the depth is 1 (slice 1 won at step 1, slice 2 lost at step 2).
    Without a weight, the depth comes from Near: same answer."""
    srcs = [np.full((2, 2), v, np.float32) for v in (1.0, 5.0, 3.0)]
    calls = []

    def fmax(a, b):
        calls.append((float(a[0, 0]), float(b[0, 0])))
        return np.maximum(a, b), (b > a).astype(np.float32)

    fused, depth = fuse_iteratively(srcs, fmax)
    assert calls == [(1.0, 5.0), (5.0, 3.0)]
    np.testing.assert_array_equal(fused, 5.0)
    np.testing.assert_array_equal(depth, 1.0)
    fused2, depth2 = fuse_iteratively(srcs, lambda a, b: (np.maximum(a, b), None))
    np.testing.assert_array_equal(fused2, 5.0)
    np.testing.assert_array_equal(depth2, 1.0)


# --------------------------------------------------------------------------- building blocks
def test_focus_measures_hand_values():
    """A single 1 in a 5 x 5 zero image. Laplacian (5-point): -4 at the centre, 1 at its 4
    neighbours -> energy with window 1 is 16 and 1. Local variance in the 3 x 3 window at
    the centre: mean 1/9, mean of squares 1/9 -> 1/9 - 1/81 = 8/81."""
    img = np.zeros((5, 5), np.float32)
    img[2, 2] = 1
    lap = focus_measure(img, "laplacian", window=1)
    assert lap[2, 2] == pytest.approx(16.0)
    assert lap[1, 2] == pytest.approx(1.0) and lap[0, 0] == pytest.approx(0.0)
    var = focus_measure(img, "variance", window=3)
    assert var[2, 2] == pytest.approx(8 / 81, rel=1e-5)
    # a stack is measured slice by slice
    both = focus_measure(np.stack([img, 2 * img]), "laplacian", window=1)
    assert both[1, 2, 2] == pytest.approx(64.0)
    with pytest.raises(ValueError, match="measure"):
        focus_measure(img, "tenengrad")


def test_haar_transform_hand_values_and_round_trip():
    """Block [[1, 2], [3, 4]]: approx (1+2+3+4)/2 = 5, h (1-2+3-4)/2 = -1,
    v (1+2-3-4)/2 = -2, d (1-2-3+4)/2 = 0; the inverse gives the block back."""
    block = np.array([[1.0, 2.0], [3.0, 4.0]])[..., None]
    a, h, v, d = haar_dwt2(block)
    assert (a.item(), h.item(), v.item(), d.item()) == (5.0, -1.0, -2.0, 0.0)
    rng = np.random.default_rng(0)
    x = rng.random((3, 8, 6, 2))
    np.testing.assert_allclose(haar_idwt2(*haar_dwt2(x)), x, atol=1e-12)


def test_guided_filter_keeps_a_constant_input():
    """p = 0.3 everywhere: cov(I, p) = 0 -> a = 0, b = 0.3 -> q = 0.3 for any guide."""
    rng = np.random.default_rng(0)
    q = guided_filter(rng.random((20, 20)), np.full((20, 20), 0.3), r=3, eps=0.01)
    np.testing.assert_allclose(q, 0.3, atol=1e-6)


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("method", list(CLASSICAL_METHODS))
def test_each_method_recovers_the_sharp_image(method):
    """Three slices, each band sharp in exactly one slice. Inside the bands (10 px from the
    borders, where the 3-px blur of the other slices and the methods' windows do not
    reach across) the fused image must be the sharp image: the error is under a tenth
    of the error of a blurred slice (max-focus takes source pixels: exactly zero), and
    the depth map names the band's slice."""
    stack, y, regions = _one_sharp_slice_stack()
    result = fuse_classical(stack, method)
    inner = _interior(regions)
    err = np.abs(result.fused - y)[inner].mean()
    blurred_err = np.abs(ndi.gaussian_filter(y, 3.0) - y)[inner].mean()
    assert err < 0.1 * blurred_err
    if method == "max-focus":
        assert err == 0.0
    assert np.mean(result.depth[inner] == regions[inner]) > 0.97
    assert result.fused.shape == y.shape and result.fused.dtype == np.float32
    assert result.depth.shape == y.shape and result.depth.dtype == np.float32


@pytest.mark.parametrize("method", list(CLASSICAL_METHODS))
def test_methods_keep_8_and_16_bit_and_colour(method):
    """An 8-bit stack gives an 8-bit image, a 16-bit stack a 16-bit image, a colour
    (Z, Y, X, 3) stack a (Y, X, 3) image; the stack axis can be any axis."""
    stack, y, regions = _one_sharp_slice_stack(size=64)
    s8 = np.round(stack * 255).astype(np.uint8)
    r8 = fuse_classical(s8, method)
    assert r8.fused.dtype == np.uint8 and r8.fused.shape == (64, 64)
    s16 = np.round(stack * 60000).astype(np.uint16)
    r16 = fuse_classical(np.moveaxis(s16, 0, 2), method, axis=2)
    assert r16.fused.dtype == np.uint16 and r16.fused.shape == (64, 64)
    rgb = np.stack([s8, s8 // 2, s8 // 3], axis=-1)
    rc = fuse_classical(rgb, method)
    assert rc.fused.shape == (64, 64, 3) and rc.fused.dtype == np.uint8
    inner = _interior(regions)
    y8 = np.round(y * 255)
    assert (
        np.abs(rc.fused[..., 0].astype(float) - y8)[inner].mean()
        < np.abs(np.round(ndi.gaussian_filter(y, 3) * 255) - y8)[inner].mean() * 0.1 + 0.5
    )


def test_single_slice_is_returned_unchanged():
    img = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    result = fuse_classical(img, "gff")
    np.testing.assert_array_equal(result.fused, img[0])
    np.testing.assert_array_equal(result.depth, 0)


def test_max_focus_median_smoothing_removes_isolated_picks():
    """With a 1 x 1 window and no smoothing, one noisy pixel of slice 1 wins inside a
    region where slice 0 is sharp; a 5 x 5 median on the depth map puts it back to 0."""
    stack, _, _ = _one_sharp_slice_stack(n=2, size=64)
    stack[1, 10, 10] += 5.0  # a hot pixel in the blurred slice
    raw = fuse_classical(stack, "max-focus", window=1, smooth=0)
    assert raw.depth[10, 10] == 1
    smooth = fuse_classical(stack, "max-focus", window=1, smooth=5)
    assert smooth.depth[10, 10] == 0


# --------------------------------------------------------------------------- training pairs
def test_instance_blur_pair_is_eq_6_1():
    """Eq. 6.1 with objects {0 (background), 1, 2}, Gamma = {1} and sigma = 2:
    xA = ybar * gb + y * (1 - gb) is blurred on object 1 only, xB = ybar * (1 - gb) + y * gb
    everywhere else; so xA + xB = y + ybar at every pixel and gb marks object 1."""
    from napari_cellfocus.core.fusion_data import instance_blur_pair

    rng = np.random.default_rng(0)
    y = rng.random((32, 40)).astype(np.float32)
    labels = np.zeros((32, 40), int)
    labels[4:14, 4:14] = 1
    labels[18:28, 20:36] = 2
    xa, xb, gb, sigma = instance_blur_pair(y, labels, sigma=2.0, selected=[1])
    ybar = ndi.gaussian_filter(y, 2.0, mode="reflect")
    np.testing.assert_array_equal(gb, (labels == 1).astype(np.float32))
    np.testing.assert_allclose(xa[labels == 1], ybar[labels == 1], atol=1e-6)
    np.testing.assert_allclose(xa[labels != 1], y[labels != 1], atol=1e-6)
    np.testing.assert_allclose(xb[labels == 1], y[labels == 1], atol=1e-6)
    np.testing.assert_allclose(xb[labels != 1], ybar[labels != 1], atol=1e-6)
    np.testing.assert_allclose(xa + xb, y + ybar, atol=1e-5)
    assert float(sigma) == 2.0
    # drawn sigma stays in U(1, 5); colour images blur per channel only in Y and X
    _, _, _, s = instance_blur_pair(y, labels, rng=1)
    assert 1.0 <= float(s) <= 5.0
    rgb = np.stack([y, 2 * y, 3 * y], axis=-1)
    ca, _, _, _ = instance_blur_pair(rgb, labels, sigma=2.0, selected=[1])
    np.testing.assert_allclose(ca[..., 1], 2 * xa, atol=1e-5)
    with pytest.raises(ValueError, match="same"):
        instance_blur_pair(y, labels[:10])
    with pytest.raises(ValueError, match="sigma_range"):
        instance_blur_pair(y, labels, sigma_range=(0.0, 5.0))


def test_samples_normalised_swapped_and_simulated():
    """normalise_sample maps the 1st / 99.8th percentile of both sources to 0 / 1 (same
    stretch for the target); swapped() exchanges the sources and complements the focus
    map (T 6.2.3). The simulator-backed sampler gives (1, Y, X) float32 arrays and focus
    values in {0, 0.5, 1} for stack pairs."""
    from napari_cellfocus.core.fusion_data import (
        FusionPairSampler,
        normalise_sample,
        stack_pair,
    )

    a = np.linspace(0, 100, 1000, dtype=np.float32).reshape(20, 50)
    b = a[::-1].copy()
    focus = np.ones((20, 50), np.float32)
    smp = normalise_sample(a, b, a, focus)
    lo, hi = np.percentile(np.concatenate([a.ravel(), b.ravel()]), [1, 99.8])
    np.testing.assert_allclose(smp.a[0], (a - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(smp.target, smp.a, atol=1e-6)
    sw = smp.swapped()
    assert sw.a is smp.b and sw.b is smp.a and sw.target is smp.target
    np.testing.assert_array_equal(sw.focus, 0.0)
    rng = np.random.default_rng(3)
    *_, f = stack_pair((48, 48), rng)
    assert set(np.unique(f)) <= {0.0, 0.5, 1.0}
    sample = FusionPairSampler((40, 40))(np.random.default_rng(4))
    assert sample.a.shape == sample.b.shape == sample.target.shape == (1, 40, 40)
    assert sample.a.dtype == np.float32 and sample.focus.shape == (40, 40)
    assert 0.0 <= sample.focus.min() and sample.focus.max() <= 1.0
