"""Tests for napari_cellfocus.core.weights (expected values worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_cellfocus.core import weights as wm
from napari_cellfocus.core.targets import class_target

BAD_INPUTS = [
    np.array([[0, 1.5], [0, 0]]),  # fractional
    np.array([[0, -1], [0, 1]]),  # negative
    np.zeros(5, dtype=int),  # 1D
    np.zeros((2, 2, 2, 2), dtype=int),  # 4D
]

LABEL_FUNCTIONS = [
    wm.unet_weight_map,
    wm.distance_weight_map,
    wm.shape_aware_weight_map,
    wm.triplex_weight_map,
    wm.overcrowding_map,
]


def _layout_touching() -> np.ndarray:
    """7 x 10: A (5) rows 1-3 cols 1-3 and B (900) rows 1-3 cols 4-6 touch; C (2) rows 5-6
    cols 8-9 is isolated. Its 3-class target (k = 2, > 1 rule) has touching = rows 1-3 x
    cols 2-5 (12 px), cell = A col 1, B col 6 and C (10 px), background 48 px."""
    g = np.zeros((7, 10), dtype=np.int32)
    g[1:4, 1:4] = 5
    g[1:4, 4:7] = 900
    g[5:7, 8:10] = 2
    return g


def _relabelled(g: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(g)
    for old, new in mapping.items():
        out[g == old] = new
    return out


# --------------------------------------------------------------------------- balance
def test_class_balance_weights_normalisations():
    """12 pixels: 6 of class 0, 4 of class 1, 2 of class 2.

    mean: w_l = N / (L n_l) = 12/18, 12/12, 12/6 = 2/3, 1, 2 (mean (4 + 4 + 4) / 12 = 1);
    max:  w_l = n_min / n_l = 1/3, 1/2, 1;   none: 1/6, 1/4, 1/2."""
    t = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 2, 2]])
    expected = {
        "mean": {0: 2 / 3, 1: 1.0, 2: 2.0},
        "max": {0: 1 / 3, 1: 0.5, 2: 1.0},
        "none": {0: 1 / 6, 1: 0.25, 2: 0.5},
    }
    for norm, per_class in expected.items():
        w = wm.class_balance_weights(t, normalize=norm)
        assert w.dtype == np.float32 and w.shape == t.shape
        exp = np.vectorize(per_class.get)(t)
        np.testing.assert_allclose(w, exp, rtol=1e-6)
    assert wm.class_balance_weights(t).mean() == pytest.approx(1.0)


def test_class_balance_weights_absent_class_and_3d():
    """Classes {0, 2} only, 9 + 3 pixels in a (2, 2, 3) volume: L = 2, so 'mean' gives
    12 / (2 * 9) = 2/3 and 12 / (2 * 3) = 2."""
    t = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2]).reshape(2, 2, 3)
    w = wm.class_balance_weights(t)
    np.testing.assert_allclose(w, np.where(t == 2, 2.0, 2 / 3), rtol=1e-6)


def test_class_balance_weights_errors():
    t = np.array([[0, 1], [2, 2]])
    with pytest.raises(ValueError, match="class values"):
        wm.class_balance_weights(t, n_classes=2)
    with pytest.raises(ValueError, match="normalize"):
        wm.class_balance_weights(t, normalize="sum")
    for bad in BAD_INPUTS:
        with pytest.raises(ValueError):
            wm.class_balance_weights(bad)


# --------------------------------------------------------------------------- U-Net
def _unet_layout() -> np.ndarray:
    """3 x 11: A (40) cols 0-1, B (7) cols 6-8, C (1000) col 10, all rows; background cols
    2-5 and 9 (15 px), cells 18 px."""
    g = np.zeros((3, 11), dtype=np.int32)
    g[:, 0:2] = 40
    g[:, 6:9] = 7
    g[:, 10] = 1000
    return g


def _unet_expected(n_slices: int | None = None) -> np.ndarray:
    """w_c ('mean', 2 classes): background 33 / (2 * 15) = 1.1, cells 33 / (2 * 18) = 11/12.
    Cells span all rows, so distances are horizontal. Background col c in 2..5: d(A) = c - 1,
    d(B) = 6 - c (d(C) = 10 - c is larger except at c = 5 where d(A) = 4 < 5), so
    d1 + d2 = 5 and w = 1.1 + 10 exp(-25 / 50). Col 9: d(B) = d(C) = 1 -> w = 1.1 + 10 exp(-4/50).
    """
    e = np.full((3, 11), 11 / 12)
    e[:, 2:6] = 1.1 + 10 * math.exp(-0.5)
    e[:, 9] = 1.1 + 10 * math.exp(-0.08)
    return e if n_slices is None else np.stack([e] * n_slices)


def test_unet_weight_map_2d_hand_example():
    w = wm.unet_weight_map(_unet_layout())
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, _unet_expected(), rtol=1e-5)


def test_unet_weight_map_3d():
    """Two identical slices: pixel fractions and (in-plane) distances are unchanged."""
    w = wm.unet_weight_map(np.stack([_unet_layout()] * 2))
    np.testing.assert_allclose(w, _unet_expected(2), rtol=1e-5)


def test_unet_weight_map_single_cell_has_no_separation_term():
    """One cell: no second-nearest cell, so w = w_c: 3 cell px of 9 -> 9/6 = 1.5 on cells,
    9/12 = 0.75 on background."""
    g = np.zeros((3, 3), dtype=int)
    g[1, :] = 3
    np.testing.assert_allclose(wm.unet_weight_map(g), np.where(g > 0, 1.5, 0.75), rtol=1e-6)


def test_unet_weight_map_truncation():
    """truncate = 0.5 -> cut-off 2.5 px, windows grown by ceil(2.5) = 3 columns: A's window is
    cols 0-4, B's cols 3-10, C's cols 7-10. Column 2 lies only in A's window: its second
    distance is unknown (inf) and the term is dropped -> w = 1.1. Column 9 (d1 = d2 = 1) is
    exact: 1.1 + 10 exp(-4/50)."""
    w = wm.unet_weight_map(_unet_layout(), truncate=0.5)
    np.testing.assert_allclose(w[:, 2], 1.1, rtol=1e-6)
    np.testing.assert_allclose(w[:, 9], 1.1 + 10 * math.exp(-0.08), rtol=1e-6)


# --------------------------------------------------------------------------- DWM
def _dwm_layout() -> np.ndarray:
    """3 x 9: A (12) cols 0-1, B (5) cols 6-8; 3 columns apart so no touching class."""
    g = np.zeros((3, 9), dtype=np.int32)
    g[:, 0:2] = 12
    g[:, 6:9] = 5
    return g


def test_distance_weight_map_2d_hand_example():
    """w_B ('mean'): 27 px, 12 background -> 27/24 = 1.125; 15 cell -> 27/30 = 0.9.
    phi_h on columns 2, 3, 4, 5 = 1, 2, 2, 1. With beta = 3:
    phi = 1 -> 1.125 (1 - 1/3) + 1 = 1.75; phi = 2 -> 1.125 / 3 + 1 = 1.375; cells 1.9.
    With the default beta = 30: 1.125 * 29/30 + 1 and 1.125 * 28/30 + 1."""
    g = _dwm_layout()
    w = wm.distance_weight_map(g, beta=3)
    exp = np.full(g.shape, 1.9)
    exp[:, [2, 5]] = 1.75
    exp[:, [3, 4]] = 1.375
    np.testing.assert_allclose(w, exp, rtol=1e-6)

    w30 = wm.distance_weight_map(g)
    exp30 = np.full(g.shape, 1.9)
    exp30[:, [2, 5]] = 1.125 * 29 / 30 + 1
    exp30[:, [3, 4]] = 1.125 * 28 / 30 + 1
    np.testing.assert_allclose(w30, exp30, rtol=1e-6)


def test_distance_weight_map_saturates_beyond_beta():
    """beta = 1.5: phi = 2 > beta -> min(.) = 1 -> w = 1; phi = 1 -> 1.125 / 3 + 1."""
    w = wm.distance_weight_map(_dwm_layout(), beta=1.5)
    np.testing.assert_allclose(w[:, 3], 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[:, 2], 1.125 / 3 + 1, rtol=1e-6)


def test_distance_weight_map_touching_class():
    """Touching layout, 70 px: w_B = 70/(3*48), 70/(3*10), 70/(3*12) for classes 0, 1, 2.
    Touching pixels: w_B2 + 1; cell pixels w_B1 + 1; background (0, 0) is sqrt(2) from
    (1, 1): w_B0 (1 - sqrt(2)/30) + 1."""
    w = wm.distance_weight_map(_layout_touching())
    wb0, wb1, wb2 = 70 / 144, 70 / 30, 70 / 36
    np.testing.assert_allclose(w[1:4, 2:6], wb2 + 1, rtol=1e-6)
    np.testing.assert_allclose(w[1:4, 1], wb1 + 1, rtol=1e-6)
    np.testing.assert_allclose(w[5:7, 8:10], wb1 + 1, rtol=1e-6)
    assert w[0, 0] == pytest.approx(wb0 * (1 - math.sqrt(2) / 30) + 1, rel=1e-6)


def test_distance_weight_map_3d():
    w = wm.distance_weight_map(np.stack([_dwm_layout()] * 2), beta=3)
    np.testing.assert_allclose(w[:, :, 3], 1.375, rtol=1e-6)
    np.testing.assert_allclose(w[:, :, 2], 1.75, rtol=1e-6)
    np.testing.assert_allclose(w[:, :, 0], 1.9, rtol=1e-6)


def test_distance_weight_map_rejects_small_beta():
    with pytest.raises(ValueError, match="beta"):
        wm.distance_weight_map(_dwm_layout(), beta=0.5)


# --------------------------------------------------------------------------- SAW
def _bar() -> np.ndarray:
    """7 x 9 image, one cell (label 6) rows 2-4 x cols 1-7."""
    g = np.zeros((7, 9), dtype=np.int32)
    g[2:5, 1:8] = 6
    return g


def test_shape_aware_weight_map_bar_no_smoothing():
    """n_passes = 0 so w = w_B + w^c + 1.

    w_B: 63 px, 21 cell -> 63/42 = 1.5, 42 background -> 63/84 = 0.75.
    Hull of the bar = the bar, so r is empty. Thinning a 3-wide bar leaves its middle row
    without the end pixels: K = (3, 2..6). Contour = rows 2 and 4 plus (3, 1), (3, 7).
    phi_K = 1 for (2|4, 2..6) and (3, 1), (3, 7); sqrt(2) for the four corners.
    tau = 2: w^c = 1/2 and 1 - sqrt(2)/2. Middle-row pixels (3, 2..6) are not contour: 2.5."""
    g = _bar()
    w = wm.shape_aware_weight_map(g, n_passes=0, tau=2.0)
    exp = np.full(g.shape, 1.75)
    exp[2:5, 1:8] = 1.5 + 0.5 + 1
    exp[3, 2:7] = 2.5
    for r, c in [(2, 1), (2, 7), (4, 1), (4, 7)]:
        exp[r, c] = 1.5 + (1 - math.sqrt(2) / 2) + 1
    np.testing.assert_allclose(w, exp, rtol=1e-6)


def test_shape_aware_weight_map_default_tau_is_supremum():
    """Default tau = sup phi_K on the contour = sqrt(2) (the corners): corners get w^c = 0,
    the other contour pixels 1 - 1/sqrt(2)."""
    w = wm.shape_aware_weight_map(_bar(), n_passes=0)
    assert w[2, 1] == pytest.approx(2.5, rel=1e-6)
    assert w[2, 4] == pytest.approx(2.5 + 1 - 1 / math.sqrt(2), rel=1e-6)
    assert w[3, 1] == pytest.approx(2.5 + 1 - 1 / math.sqrt(2), rel=1e-6)


def _u_shape(size: int = 7, offset: int = 0) -> np.ndarray:
    """A 5x5 block (rows / cols 1-5 shifted by offset) minus a 1-px notch at col 3,
    rows 1-3 (relative), label 4."""
    g = np.zeros((size, size), dtype=np.int32)
    o = offset
    g[o + 1 : o + 6, o + 1 : o + 6] = 4
    g[o + 1 : o + 4, o + 3] = 0
    return g


def test_shape_aware_weight_map_concave_complement():
    """The block's corners are cell pixels, so the hull of the pixel centres is the whole block
    and r = the notch (3 px). A 1-px line is its own skeleton and its own contour, so phi_K = 0
    there and w^c = 1 on the notch. w_B: 49 px, 27 background -> 49/54; the notch (background)
    gets 49/54 + 1 + 1, background away from every contour (corners of the image) 49/54 + 1."""
    g = _u_shape()
    w = wm.shape_aware_weight_map(g, n_passes=0)
    np.testing.assert_allclose(w[1:4, 3], 49 / 54 + 2, rtol=1e-6)
    for r, c in [(0, 0), (6, 6), (0, 6), (6, 0)]:
        assert w[r, c] == pytest.approx(49 / 54 + 1, rel=1e-6)


def test_shape_aware_weight_map_plain_blur_spreads_and_lowers_peaks():
    """propagation="blur": 20 plain Gaussian passes take the contour term to background 5+ px
    from any contour (it was 0 there) and, the filter being an average, far below its peak
    of 1 (the reading that made SAW nearly class balance + 1)."""
    g = _u_shape(size=21, offset=7)
    wb = wm.class_balance_weights(class_target(g, 3))
    term = wm.shape_aware_weight_map(g, propagation="blur") - wb - 1
    assert term[0, 0] > 0
    assert term.max() < 0.2
    assert term.min() >= 0


def test_shape_aware_contour_term_matters_beside_the_class_weights():
    """Default propagation="keep": every pass keeps at least eq. 3.4's contour values, so
    after 20 passes the 1-px notch of the U (its own skeleton: phi_K = 0, w^c = 1) still
    has a contour term of exactly 1. 21x21 image, one cell of 22 px, 419 background:
    w_B = 441 / (2 * 419) = 0.526 on background, 441 / 44 = 10.02 on the cell. The notch
    (background) weighs 0.526 + 1 + 1 = 2.53, nearly 3x the background class weight + 1
    it would get without the term; the plain blur gives it < 0.2. The term spreads: it is
    > 0 on background 5+ px away, and >= w^c on every contour pixel."""
    g = _u_shape(size=21, offset=7)
    h = class_target(g, 3)
    wb = wm.class_balance_weights(h)
    assert wb[0, 0] == pytest.approx(441 / 838, rel=1e-6)
    assert wb[g > 0][0] == pytest.approx(441 / 44, rel=1e-6)
    w = wm.shape_aware_weight_map(g)
    term = w - wb - 1
    notch = (slice(8, 11), 10)
    np.testing.assert_allclose(w[notch], 441 / 838 + 2, rtol=1e-6)
    np.testing.assert_allclose(term[notch], 1.0, atol=1e-6)
    assert term.max() == pytest.approx(1.0, abs=1e-6)
    assert term[notch].min() > 1.5 * wb[0, 0]  # larger than the background class weight
    contour_values = wm.shape_aware_weight_map(g, n_passes=0) - wb - 1
    assert np.all(term >= contour_values - 1e-6)
    assert 0 < term[0, 0] < 0.5
    blurred = wm.shape_aware_weight_map(g, propagation="blur") - wb - 1
    assert blurred[notch].max() < 0.2
    with pytest.raises(ValueError, match="propagation"):
        wm.shape_aware_weight_map(g, propagation="max")


def test_shape_aware_weight_map_3d_box():
    """Box z 1-3, y 1-3, x 1-7 in a 5x5x9 volume; 3D skeleton (Lee) = (2, 2, 2..6); hull =
    box (r empty). Contour = box minus that line. phi_K of contour voxel (z, y, x) =
    sqrt((z-2)^2 + (y-2)^2 + dx^2) with dx = max(2 - x, 0, x - 6) (all <= sqrt(3) < tau = 2).
    w_B: 225 px, 63 cell -> 225/126, 162 background -> 225/324."""
    g = np.zeros((5, 5, 9), dtype=np.int32)
    g[1:4, 1:4, 1:8] = 3
    w = wm.shape_aware_weight_map(g, n_passes=0, tau=2.0)
    wb0, wb1 = 225 / 324, 225 / 126
    exp = np.full(g.shape, wb0 + 1)
    for z, y, x in np.argwhere(g > 0):
        if z == 2 and y == 2 and 2 <= x <= 6:
            exp[z, y, x] = wb1 + 1
        else:
            dx = max(2 - x, 0, x - 6)
            phi = math.sqrt((z - 2) ** 2 + (y - 2) ** 2 + dx**2)
            exp[z, y, x] = wb1 + (1 - phi / 2) + 1
    np.testing.assert_allclose(w, exp, rtol=1e-6)


def test_shape_aware_weight_map_parameter_errors():
    with pytest.raises(ValueError, match="tau"):
        wm.shape_aware_weight_map(_bar(), tau=0)
    with pytest.raises(ValueError, match="n_passes"):
        wm.shape_aware_weight_map(_bar(), n_passes=-1)


# --------------------------------------------------------------------------- W3
def test_triplex_weight_map_2d_hand_example():
    """3x3 cell (label 9) at rows 2-4 x cols 2-4 of a 7x7 image; nu = 10, beta = 30, sigma = 3.
    n_0 = 40, n_1 = 9, no touching. Thinning the square leaves its centre, K = {(3, 3)}.

    * edge-centre contour pixels: phi_K = 1 -> 10/9 + 10 (1 - 1/30)
    * corner contour pixels: phi_K = sqrt(2) -> 10/9 + 10 (1 - sqrt(2)/30)
    * centre: phi_Gamma = 1, nearest contour pixel an edge centre (all four have the same
      weight w_e) -> 10/9 + w_e exp(-1/9)
    * background: phi_h = distance to the square = sqrt(dy^2 + dx^2) with
      dy = max(2 - r, 0, r - 4), dx likewise -> 10/40 + 10 (1 - phi_h/30) / 9."""
    g = np.zeros((7, 7), dtype=np.int32)
    g[2:5, 2:5] = 9
    w = wm.triplex_weight_map(g, balance_contour=False)
    assert w.dtype == np.float32
    exp = np.zeros((7, 7))
    for r in range(7):
        for c in range(7):
            dy, dx = max(2 - r, 0, r - 4), max(2 - c, 0, c - 4)
            phi_h = math.hypot(dy, dx)
            exp[r, c] = 10 / 40 + 10 * (1 - phi_h / 30) / 9
    w_e = 10 / 9 + 10 * (1 - 1 / 30)
    w_k = 10 / 9 + 10 * (1 - math.sqrt(2) / 30)
    exp[2:5, 2:5] = w_e
    for r, c in [(2, 2), (2, 4), (4, 2), (4, 4)]:
        exp[r, c] = w_k
    exp[3, 3] = 10 / 9 + w_e * math.exp(-1 / 9)
    np.testing.assert_allclose(w, exp, rtol=1e-5)


def test_triplex_weight_map_weak_annotation():
    """100 x 100 image; only the cell at rows 5-14 x cols 5-14 is annotated (an unannotated
    cell would sit around (75, 75), which is 0 in the labels). n_0 = 9900, n_1 = 100.

    * background farther than beta = 30 from the cell keeps only nu / n_0 = 10/9900 < 0.05,
      e.g. the unannotated cell's place (75, 75) and (45, 9) (31 px below the cell);
    * at 29 px, (43, 9), the contour term still adds 10 (1/30) / 100;
    * contour pixels of the annotated cell get nu / n_1 + nu (1 - phi_K / 30) >= 1
      (phi_K is at most the square's diagonal 9 sqrt(2), skeleton and contour both lying in it)."""
    g = np.zeros((100, 100), dtype=np.int32)
    g[5:15, 5:15] = 1
    w = wm.triplex_weight_map(g, balance_contour=False)
    far = 10 / 9900
    assert far < 0.05
    np.testing.assert_allclose(w[70:80, 70:80], far, rtol=1e-5)
    assert w[45, 9] == pytest.approx(far, rel=1e-5)
    assert w[43, 9] == pytest.approx(far + 10 * (1 / 30) / 100, rel=1e-5)
    contour = np.zeros_like(g, dtype=bool)
    contour[5:15, 5:15] = True
    contour[6:14, 6:14] = False
    assert w[contour].min() >= 10 / 100 + 10 * (1 - 9 * math.sqrt(2) / 30) - 1e-4
    assert w[contour].min() >= 1
    # background next to the contour weighs more than far background
    assert w[4, 9] == pytest.approx(far + 10 * (29 / 30) / 100, rel=1e-5)


def test_triplex_weight_map_touching_is_nu_over_n2():
    """Touching layout: 12 touching pixels -> nu / n_2 = 10 / 12."""
    w = wm.triplex_weight_map(_layout_touching())
    np.testing.assert_allclose(w[1:4, 2:6], 10 / 12, rtol=1e-6)


def test_triplex_weight_map_3d_box():
    """Box z 1-3, y 1-3, x 1-7 in 5x5x9; skeleton (Lee) = (2, 2, 2..6); n_1 = 63, n_0 = 162.
    Contour voxel: 10/63 + 10 (1 - phi_K/30), phi_K = sqrt((z-2)^2 + (y-2)^2 + dx^2),
    dx = max(2 - x, 0, x - 6). Interior (2, 2, 2..6): every nearest contour voxel (distance 1)
    has phi_K = 1 -> 10/63 + w_1 exp(-1/9) with w_1 = 10/63 + 10 * 29/30.
    Background: 10/162 + 10 (1 - phi_h/30) / 63, phi_h = distance to the box."""
    g = np.zeros((5, 5, 9), dtype=np.int32)
    g[1:4, 1:4, 1:8] = 77
    w = wm.triplex_weight_map(g, balance_contour=False)
    w1 = 10 / 63 + 10 * 29 / 30
    exp = np.zeros(g.shape)
    for z, y, x in np.ndindex(g.shape):
        if g[z, y, x] == 0:
            d = [max(1 - z, 0, z - 3), max(1 - y, 0, y - 3), max(1 - x, 0, x - 7)]
            phi_h = math.sqrt(sum(v * v for v in d))
            exp[z, y, x] = 10 / 162 + 10 * (1 - phi_h / 30) / 63
        elif z == 2 and y == 2 and 2 <= x <= 6:
            exp[z, y, x] = 10 / 63 + w1 * math.exp(-1 / 9)
        else:
            dx = max(2 - x, 0, x - 6)
            phi_k = math.sqrt((z - 2) ** 2 + (y - 2) ** 2 + dx**2)
            exp[z, y, x] = 10 / 63 + 10 * (1 - phi_k / 30)
    np.testing.assert_allclose(w, exp, rtol=1e-5)


def test_triplex_weight_map_balanced_contour_hand_example():
    """Default reading (contour term divided by n_1, see the docstring): same 3x3 cell in
    7x7 as above, n_0 = 40, n_1 = 9.
    * edge-centre contour: 10/9 + 10 (1 - 1/30) / 9
    * corner contour: 10/9 + 10 (1 - sqrt(2)/30) / 9
    * centre: 10/9 + w_e exp(-1/9)
    * background unchanged: 10/40 + 10 (1 - phi_h/30) / 9."""
    g = np.zeros((7, 7), dtype=np.int32)
    g[2:5, 2:5] = 9
    w = wm.triplex_weight_map(g)
    w_e = 10 / 9 + 10 * (1 - 1 / 30) / 9
    w_k = 10 / 9 + 10 * (1 - math.sqrt(2) / 30) / 9
    assert w[2, 3] == pytest.approx(w_e, rel=1e-5)
    assert w[2, 2] == pytest.approx(w_k, rel=1e-5)
    assert w[3, 3] == pytest.approx(10 / 9 + w_e * math.exp(-1 / 9), rel=1e-5)
    assert w[0, 0] == pytest.approx(10 / 40 + 10 * (1 - math.hypot(2, 2) / 30) / 9, rel=1e-5)


def test_triplex_weight_map_no_cells():
    """Nothing annotated: every pixel is background with weight nu / n_0 = 10 / 16."""
    np.testing.assert_allclose(wm.triplex_weight_map(np.zeros((4, 4), int)), 10 / 16)


# --------------------------------------------------------------------------- overcrowding
def test_overcrowding_map_single_cell():
    """3x3 cell in a 5x5 image, sigma = 1. The Gaussians are summed on background only:
    S = e^-0.5 next to the cell (d = 1 to its contour), e^-1 at the image corners
    (sqrt(2)), 0 on the cell. multiply: cell 1, background 1.5 * max(S, 1) = 1.5;
    add: cell 1, background 1.5 + S."""
    g = np.zeros((5, 5), dtype=np.int32)
    g[1:4, 1:4] = 8
    s = np.full((5, 5), math.exp(-0.5))
    s[1:4, 1:4] = 0.0
    for r, c in [(0, 0), (0, 4), (4, 0), (4, 4)]:
        s[r, c] = math.exp(-1)
    cls = np.where(g > 0, 1.0, 1.5)
    np.testing.assert_allclose(wm.overcrowding_map(g, sigma=1), cls * np.maximum(s, 1))
    np.testing.assert_allclose(wm.overcrowding_map(g, sigma=1, combine="add"), cls + s, rtol=1e-6)


def test_overcrowding_map_gap_between_close_cells_outweighs_cells():
    """C's default sigma = 25. Cells A (rows 15-24, cols 10-19) and B (cols 22-31) leave a
    2-px gap; C (cols 220-229) is alone, 188 px from B (beyond truncate * sigma = 125).
    Gap pixel (19, 20): 1 px from A's contour (col 19), 2 px from B's (col 22):
    S = e^(-1/1250) + e^(-4/1250) ~ 1.996, w = 1.5 S ~ 2.99. Next to C, (19, 230): S =
    e^(-1/1250) < 1, floored: w = 1.5. Cell pixels: 1, interiors and contours alike (the
    old reading summed the Gaussians inside cells too and gave them ~2)."""
    g = np.zeros((40, 260), dtype=np.int32)
    g[15:25, 10:20] = 1
    g[15:25, 22:32] = 2
    g[15:25, 220:230] = 3
    w = wm.overcrowding_map(g)
    gap = 1.5 * (math.exp(-1 / 1250) + math.exp(-4 / 1250))
    assert w[19, 20] == pytest.approx(gap, rel=1e-6)
    assert w[19, 230] == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_array_equal(w[g > 0], 1.0)
    assert w[19, 20] > 2.9 and w[19, 21] > 2.9  # the whole gap column pair
    assert w[g == 0].min() == pytest.approx(1.5)
    add = wm.overcrowding_map(g, combine="add")
    assert add[19, 20] == pytest.approx(1.5 + gap / 1.5, rel=1e-6)
    np.testing.assert_array_equal(add[g > 0], 1.0)


def _crowd_expected(c: int) -> float:
    """Sum of both cells' terms at column c for sigma = 2: A's contour is column 1 (column 0
    lies on the image edge, not a contour), B's is column 5, distances |c - 1| and |c - 5|."""
    return math.exp(-((c - 1) ** 2) / 8) + math.exp(-((c - 5) ** 2) / 8)


def test_overcrowding_map_contributions_add_up():
    """3 x 9: A (4) cols 0-1, B (2) cols 5-8, sigma = 2; on the background columns 2-4
    w = 1.5 * max(S(c), 1) with S the sum of both cells' terms, on cells 1."""
    g = np.zeros((3, 9), dtype=np.int32)
    g[:, 0:2] = 4
    g[:, 5:9] = 2
    w = wm.overcrowding_map(g, sigma=2)
    exp = np.array([1.5 * max(_crowd_expected(c), 1) if g[0, c] == 0 else 1.0 for c in range(9)])
    np.testing.assert_allclose(w, np.broadcast_to(exp, g.shape), rtol=1e-6)
    # the middle background column gets both cells' share: 2 e^-0.5 = 1.21 > 1
    assert w[0, 3] == pytest.approx(1.5 * 2 * math.exp(-0.5), rel=1e-6)

    w3 = wm.overcrowding_map(np.stack([g, g]), sigma=2)
    np.testing.assert_allclose(w3, np.broadcast_to(exp, (2, 3, 9)), rtol=1e-6)


def test_overcrowding_map_parameter_errors():
    g = np.ones((3, 3), dtype=int)
    with pytest.raises(ValueError, match="combine"):
        wm.overcrowding_map(g, combine="max")
    with pytest.raises(ValueError, match="sigma"):
        wm.overcrowding_map(g, sigma=0)


# --------------------------------------------------------------------------- shared
@pytest.mark.parametrize("func", LABEL_FUNCTIONS)
def test_weight_maps_invariant_to_label_numbering(func):
    g = _layout_touching()
    a = func(g)
    b = func(_relabelled(g, {5: 1, 900: 2, 2: 3}))
    c = func(_relabelled(g, {5: 31, 900: 7, 2: 10**7}))
    assert a.dtype == np.float32 and a.shape == g.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("func", LABEL_FUNCTIONS)
@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_weight_maps_reject_bad_labels(func, bad):
    with pytest.raises(ValueError):
        func(bad)


def test_target_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        wm.distance_weight_map(_dwm_layout(), target=np.zeros((2, 2), dtype=int))


def test_weight_map_dispatcher():
    g = _layout_touching()
    np.testing.assert_array_equal(
        wm.weight_map("balance", g), wm.class_balance_weights(class_target(g, 3))
    )
    np.testing.assert_array_equal(
        wm.weight_map("balance", g, n_classes=4),
        wm.class_balance_weights(class_target(g, 4)),
    )
    pairs = {
        "unet": wm.unet_weight_map,
        "dwm": wm.distance_weight_map,
        "saw": wm.shape_aware_weight_map,
        "w3": wm.triplex_weight_map,
        "overcrowding": wm.overcrowding_map,
    }
    for name, func in pairs.items():
        np.testing.assert_array_equal(wm.weight_map(name, g), func(g))
    np.testing.assert_array_equal(
        wm.weight_map("DWM", g, beta=3), wm.distance_weight_map(g, beta=3)
    )
    with pytest.raises(ValueError, match="unknown weight map"):
        wm.weight_map("focal", g)
