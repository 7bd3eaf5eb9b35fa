"""Fusion metrics (T 6.3.2) on hand-made images whose values follow from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_cellfocus.core.fusion_metrics import (
    NO_REFERENCE,
    fusion_metrics,
    phase_congruency,
    psnr,
    q_cb,
    q_g,
    q_mi,
    q_ncie,
    q_p,
    q_s,
    q_te,
    ssim,
)

# Three pairwise independent binary images with equal halves (4 x 4): every pair of them
# shows each of the four value combinations on exactly 4 pixels.
A = np.tile(np.array([0, 0, 1, 1], float), (4, 1))
B = A.T.copy()
XOR = (A != B).astype(float)


def _texture(seed: int = 0, shape=(48, 48)) -> np.ndarray:
    return 1.0 + np.random.default_rng(seed).random(shape)


# --------------------------------------------------------------------------- full reference
def test_psnr_hand_value():
    """One pixel of four off by 10 in 8-bit: MSE = 100 / 4 = 25,
    PSNR = 10 log10(255^2 / 25) = 10 log10(2601) = 34.1514 dB; identical -> inf."""
    ref = np.zeros((2, 2), np.uint8)
    img = ref.copy()
    img[1, 1] = 10
    assert psnr(ref, img) == pytest.approx(10 * math.log10(2601), abs=1e-4)
    assert psnr(ref, ref) == math.inf
    assert psnr(ref.astype(float), img.astype(float), data_range=255) == pytest.approx(
        34.1514, abs=1e-4
    )


def test_ssim_of_two_constants_is_the_luminance_term():
    """Flat images 0.5 and 0.25 (range 1): variances and covariance are 0, so
    SSIM = (2 * 0.5 * 0.25 + C1) / (0.5^2 + 0.25^2 + C1), C1 = (0.01 * 1)^2
    = 0.2501 / 0.3126 = 0.80006; identical images give 1."""
    a = np.full((16, 16), 0.5)
    b = np.full((16, 16), 0.25)
    c1 = 1e-4
    assert ssim(a, b, data_range=1.0) == pytest.approx((0.25 + c1) / (0.3125 + c1), rel=1e-6)
    tex = _texture()
    assert ssim(tex, tex) == pytest.approx(1.0)


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 2 sources"):
        q_mi([A], A)
    with pytest.raises(ValueError, match="same shape"):
        q_g([A, A], np.zeros((4, 5)))
    bad = A.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        q_s([A, bad], A)
    with pytest.raises(ValueError, match="unknown metric"):
        fusion_metrics([A, B], A, which=["Q_X"])


# --------------------------------------------------------------------------- information theory
def test_q_mi_hand_values():
    """Hossny: Q_MI = 2 [MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))].
    F = A = B (1 bit each, MI 1 bit): 2 (1/2 + 1/2) = 2.
    B constant (H = 0, MI = 0), F = A: 2 (1/2 + 0) = 1.
    F independent of A = B (MI 0): 0."""
    assert q_mi([A, A], A) == pytest.approx(2.0)
    assert q_mi([A, np.zeros_like(A)], A) == pytest.approx(1.0)
    assert q_mi([A, A], B) == pytest.approx(0.0, abs=1e-12)


def test_q_te_hand_values():
    """I_q(X, F) = (1 - sum p(x,f)^q / (p(x) p(f))^(q-1)) / (1 - q).
    F independent of the sources: every term is (1/4)^q / (1/4)^(q-1) = 1/4, the sum 1,
    so I_q = 0 and Q_TE = 0. F = A with sources (A, B), B independent of A:
    I_q(A, A) = (1 - 2 (1/2)^(2-q)) / (1 - q) = I, I_q(B, A) = 0, I_q(B, B) = I, so
    Q_TE = (I + 0) / (I + I) = 1/2; F = A = B gives 1."""
    q = 1.85
    assert q_te([A, A], B, q=q) == pytest.approx(0.0, abs=1e-12)
    assert q_te([A, B], A, q=q) == pytest.approx(0.5)
    assert q_te([A, A], A, q=q) == pytest.approx(1.0)
    i_aa = (1 - 2 * 0.5 ** (2 - q)) / (1 - q)
    assert i_aa == pytest.approx(0.944119, abs=1e-6)  # 2^0.85 = 1.802501


def test_q_ncie_hand_values():
    """NCIE = 1 + sum_i (l_i / 3) log_3(l_i / 3) over the eigenvalues l_i of the 3 x 3
    nonlinear correlation matrix (b = 2 rank bins; for these equal-half binary images the
    rank bins are the values themselves).
    A, B, XOR pairwise independent: R = I, eigenvalues 1, 1, 1 -> 1 + 3 (1/3) log_3(1/3) = 0.
    Identical images: R all ones, eigenvalues 3, 0, 0 -> 1 + log_3(1) = 1.
    Sources A, A and F = B: R = [[1,1,0],[1,1,0],[0,0,1]], eigenvalues 2, 1, 0 ->
    1 + (2/3) log_3(2/3) + (1/3) log_3(1/3) = 2/3 + (2/3) ln(2/3) / ln(3) = 0.420620."""
    assert q_ncie([A, B], XOR, bins=2) == pytest.approx(0.0, abs=1e-12)
    assert q_ncie([A, A], A, bins=2) == pytest.approx(1.0)
    expected = 2 / 3 + (2 / 3) * math.log(2 / 3) / math.log(3)
    assert expected == pytest.approx(0.420620, abs=1e-6)
    assert q_ncie([A, A], B, bins=2) == pytest.approx(expected)


# --------------------------------------------------------------------------- feature based
def test_q_g_identical_images_hand_value():
    """F = A = B: G = 1 and A = 1 everywhere, so
    Q_G = Gamma_g / (1 + exp(-15 (1 - 0.5))) * Gamma_a / (1 + exp(-22 (1 - 0.8)))
    = 0.9994 / (1 + e^-7.5) * 0.9879 / (1 + e^-4.4) = 0.97479."""
    tex = _texture()
    expected = 0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4))
    assert expected == pytest.approx(0.974794, abs=1e-6)
    assert q_g([tex, tex], tex) == pytest.approx(expected, rel=1e-9)


def test_q_g_flat_fused_image_preserves_no_edge():
    """F flat: G^AF = 0 wherever A has an edge, so Q_g <= 0.9994 / (1 + e^7.5) < 6e-4."""
    tex = _texture()
    assert q_g([tex, tex], np.zeros_like(tex)) < 6e-4
    assert q_g([np.ones((8, 8)), np.ones((8, 8))], np.ones((8, 8))) == 1.0


def test_phase_congruency_is_higher_on_a_step_edge_than_in_flat_parts():
    """A vertical step: phase congruency peaks on the edge column and is ~0 far from it;
    the maximum moment (edge strength) also peaks there."""
    img = np.zeros((64, 64))
    img[:, 32:] = 1.0
    pc, big, small = phase_congruency(img)
    edge = pc[20:44, 31:33].mean()
    flat = pc[20:44, 8:16].mean()
    assert edge > 0.5 and flat < 0.05
    assert big[20:44, 31:33].mean() > 10 * big[20:44, 8:16].mean() + 1e-6
    assert np.all(small <= big + 1e-12)


def test_q_p_identical_and_independent():
    """F equal to a source: every correlation C^k_AF is 1, so Q_P = 1. F independent
    noise: the correlations are ~0, so the product of the three is ~0."""
    tex = _texture(shape=(64, 64))
    other = _texture(seed=1, shape=(64, 64))
    assert q_p([tex, other], tex) == pytest.approx(1.0, abs=1e-9)
    assert abs(q_p([tex, other], _texture(seed=2, shape=(64, 64)))) < 0.05


# ------------------------------------------------------------------ structural / perceptual
def test_q_s_hand_values():
    """F = A = B: Q0 = 1 in every window -> 1. F = 2A (A = B, textured, positive):
    Q0 = (2 * 2 s^2 / (s^2 + 4 s^2)) (2 * 2 m^2 / (m^2 + 4 m^2)) = (4/5)(4/5) = 0.64 in
    every window, whatever the weights -> 0.64."""
    tex = _texture()
    assert q_s([tex, tex], tex) == pytest.approx(1.0)
    assert q_s([tex, tex], 2 * tex) == pytest.approx(0.64, abs=1e-9)


def _q_s_brute_force(a: np.ndarray, b: np.ndarray, f: np.ndarray, window: int) -> float:
    """Piella-Heijmans Q_S from its definition, window by window: every window x window
    block fully inside the image, population means / variances / covariance in it."""

    def q0(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        mx, my = x.mean(), y.mean()
        vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
        cxy = ((x - mx) * (y - my)).mean()
        return (2 * cxy / (vx + vy)) * (2 * mx * my / (mx * mx + my * my)), vx

    values = []
    for r in range(a.shape[0] - window + 1):
        for c in range(a.shape[1] - window + 1):
            win = (slice(r, r + window), slice(c, c + window))
            qa, sa = q0(a[win], f[win])
            qb, sb = q0(b[win], f[win])
            lam = sa / (sa + sb)
            values.append(lam * qa + (1 - lam) * qb)
    return float(np.mean(values))


@pytest.mark.parametrize(("shape", "window"), [((13, 17), 8), ((12, 10), 7), ((9, 8), 8)])
def test_q_s_is_the_mean_over_all_windows(shape, window):
    """Random sources and fused image: Q_S equals the brute-force mean over all
    (Y - w + 1)(X - w + 1) windows, including the last row and column of windows (the
    even 8x8 window used to lose them)."""
    rng = np.random.default_rng(7)
    a, b = 1 + rng.random(shape), 1 + rng.random(shape)
    f = 0.5 * (a + b) + 0.1 * rng.random(shape)
    assert q_s([a, b], f, window=window) == pytest.approx(
        _q_s_brute_force(a, b, f, window), rel=1e-9
    )


def test_q_cb_identical_scaled_and_flat():
    """F = A = B -> preservation 1 everywhere -> 1. F = 2A: the CSF filter is linear and the
    contrast a ratio, so C'_F = C'_A -> 1. F flat: C'_F = 0 where C'_A > 0 -> 0."""
    tex = _texture()
    assert q_cb([tex, tex], tex) == pytest.approx(1.0)
    assert q_cb([tex, tex], 2 * tex) == pytest.approx(1.0, abs=1e-9)
    assert q_cb([tex, tex], np.full_like(tex, 1.5)) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- all together
def test_fusion_metrics_all_keys_colour_and_n_sources():
    """All metrics at once: with a reference SSIM and PSNR come first; colour images are
    scored on their grey image (so a colour image and its grey copy score the same);
    three sources are accepted."""
    tex = _texture()
    other = _texture(seed=3)
    res = fusion_metrics([tex, other, tex], tex, reference=tex)
    assert list(res) == ["SSIM", "PSNR", *NO_REFERENCE]
    assert res["SSIM"] == pytest.approx(1.0) and res["PSNR"] == math.inf
    rgb = np.stack([tex] * 3, axis=-1)
    grey = fusion_metrics([tex, other], tex, which=["Q_MI", "Q_S"])
    colour = fusion_metrics([rgb, np.stack([other] * 3, -1)], rgb, which=["Q_MI", "Q_S"])
    assert colour == pytest.approx(grey)
