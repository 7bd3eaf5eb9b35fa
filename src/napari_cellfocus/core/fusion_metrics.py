"""Quality metrics of multi-focus fusion (numpy / scipy / scikit-image), thesis **T** 6.3.2.

Full reference (a ground-truth all-in-focus image exists): :func:`ssim`, :func:`psnr`.

No reference (the fused image against its sources), the seven metrics of T 6.3.2 as
reviewed by Z. Liu, E. Blasch, Z. Xue, J. Zhao, R. Laganiere, W. Wu, "Objective
assessment of multiresolution image fusion algorithms for context enhancement in night
vision: a comparative study", IEEE TPAMI 34(1), 2012 ("Liu 2012" below):

* :func:`q_mi` - normalised mutual information, Hossny's definition;
* :func:`q_te` - Tsallis-entropy mutual information (Cvejic et al.);
* :func:`q_ncie` - nonlinear correlation information entropy (Wang et al.);
* :func:`q_g` - gradient-based edge preservation (Xydeas and Petrovic);
* :func:`q_p` - phase-congruency-based (Zhao et al.);
* :func:`q_s` - Piella and Heijmans' structural similarity based metric;
* :func:`q_cb` - Chen and Blum's human-perception-inspired metric.

The definitions are for two sources ``A`` and ``B``; every function accepts ``n >= 2``
sources (a list or an ``(n, Y, X)`` array) with the generalisation stated in its
docstring, which reduces to the published one for ``n = 2``. Colour images
(``(Y, X, C)``) are scored on their grey (channel mean) image. All metrics work on 2D
images (they are defined for 2D images). Higher is better for every metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "fusion_metrics",
    "phase_congruency",
    "psnr",
    "q_cb",
    "q_g",
    "q_mi",
    "q_ncie",
    "q_p",
    "q_s",
    "q_te",
    "ssim",
]


# --------------------------------------------------------------------------- input helpers
def _grey(image: Any, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64).mean(axis=-1)
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2D image (Y, X) or colour (Y, X, C), got shape {arr.shape}."
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name}: expected numeric intensities, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values.")
    return arr


def _inputs(sources: Any, fused: Any) -> tuple[list[np.ndarray], np.ndarray]:
    if isinstance(sources, (np.ndarray, list, tuple)) and np.ndim(sources) != 0:
        srcs = list(sources)
    else:
        raise ValueError(
            "sources: expected a sequence of images or an (n, Y, X) array of n >= 2 sources."
        )
    if len(srcs) < 2:
        raise ValueError(f"sources: expected at least 2 sources, got {len(srcs)}.")
    f = _grey(fused, "fused")
    out = [_grey(s, f"source {i}") for i, s in enumerate(srcs)]
    for i, s in enumerate(out):
        if s.shape != f.shape:
            raise ValueError(
                f"source {i} and fused must have the same shape, got {s.shape} and {f.shape}."
            )
    return out, f


# --------------------------------------------------------------------------- full reference
def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range: expected > 0, got {data_range!r}.")
        return float(data_range)
    if np.issubdtype(reference.dtype, np.integer):
        info = np.iinfo(reference.dtype)
        return float(info.max - min(info.min, 0))
    rng = float(np.max(reference) - np.min(reference))
    return rng if rng > 0 else 1.0


def psnr(reference: Any, image: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(R^2 / MSE)``.

    ``R`` is ``data_range``, by default the dtype's range for integer ``reference``
    (255 for 8-bit, 65535 for 16-bit) and ``max - min`` of ``reference`` for floats.
    Identical images give ``inf``. Any shape (grey or colour), same for both inputs.
    """
    ref = np.asarray(reference)
    img = np.asarray(image)
    if ref.shape != img.shape:
        raise ValueError(
            f"reference and image must have the same shape, got {ref.shape} and {img.shape}."
        )
    r = _data_range(ref, data_range)
    mse = float(np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(r * r / mse))


def ssim(reference: Any, image: Any, data_range: float | None = None) -> float:
    """Structural similarity (Z. Wang, A. Bovik, H. Sheikh, E. Simoncelli, IEEE TIP 2004).

    ``skimage.metrics.structural_similarity`` with its defaults (7 x 7 uniform window,
    K1 = 0.01, K2 = 0.03); colour images ``(Y, X, C)`` are averaged over channels.
    ``data_range`` as in :func:`psnr`. 2D images.
    """
    from skimage.metrics import structural_similarity

    ref = np.asarray(reference)
    img = np.asarray(image)
    if ref.shape != img.shape:
        raise ValueError(
            f"reference and image must have the same shape, got {ref.shape} and {img.shape}."
        )
    if ref.ndim not in (2, 3):
        raise ValueError(f"expected (Y, X) or (Y, X, C) images, got shape {ref.shape}.")
    r = _data_range(ref, data_range)
    kw = {"channel_axis": -1} if ref.ndim == 3 else {}
    return float(
        structural_similarity(ref.astype(np.float64), img.astype(np.float64), data_range=r, **kw)
    )


# --------------------------------------------------------------------------- information theory
def _quantise(images: Sequence[np.ndarray], bins: int) -> list[np.ndarray]:
    """Integer bin index 0..bins-1 of each image, over the common [min, max] of all."""
    lo = min(float(i.min()) for i in images)
    hi = max(float(i.max()) for i in images)
    if hi <= lo:
        return [np.zeros(i.shape, np.intp) for i in images]
    scale = bins / (hi - lo)
    return [np.minimum(((i - lo) * scale).astype(np.intp), bins - 1) for i in images]


def _joint(x: np.ndarray, y: np.ndarray, bins: int) -> np.ndarray:
    h = np.bincount((x * bins + y).ravel(), minlength=bins * bins).astype(np.float64)
    return h.reshape(bins, bins) / x.size


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def q_mi(sources: Any, fused: Any, bins: int = 256) -> float:
    """Normalised mutual information, Hossny's definition (T 6.3.2; Liu 2012, Q_MI).

    M. Hossny, S. Nahavandi, D. Creighton, "Comments on 'Information measure for
    performance of image fusion'", Electronics Letters 44(18), 2008:

    ``Q_MI = 2 [ MI(A, F) / (H(A) + H(F)) + MI(B, F) / (H(B) + H(F)) ]``

    with Shannon entropies ``H`` and mutual information ``MI`` of the grey-level
    histograms (``bins`` levels over the common intensity range of all images). For
    ``n`` sources: ``(4 / n) sum_i MI(X_i, F) / (H(X_i) + H(F))`` (the same for ``n = 2``).
    A term whose two images are both constant (``H(X) + H(F) = 0``) counts 0. Range [0, 2].
    """
    srcs, f = _inputs(sources, fused)
    q = _quantise([*srcs, f], bins)
    qf = q[-1]
    hf = _entropy(np.bincount(qf.ravel(), minlength=bins) / qf.size)
    total = 0.0
    for qs in q[:-1]:
        joint = _joint(qs, qf, bins)
        hs = _entropy(joint.sum(axis=1))
        mi = hs + hf - _entropy(joint)
        denom = hs + hf
        total += mi / denom if denom > 0 else 0.0
    return float(4.0 / len(srcs) * total)


def _tsallis_mi(joint: np.ndarray, q: float) -> float:
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)
    nz = joint > 0
    outer = np.outer(px, py)
    s = float((joint[nz] ** q / outer[nz] ** (q - 1.0)).sum())
    return (1.0 - s) / (1.0 - q)


def q_te(sources: Any, fused: Any, q: float = 1.85, bins: int = 256) -> float:
    """Tsallis-entropy metric (T 6.3.2; Liu 2012, Q_TE).

    N. Cvejic, C. N. Canagarajah, D. R. Bull, "Image fusion metric based on mutual
    information and Tsallis entropy", Electronics Letters 42(11), 2006, define the
    Tsallis mutual information of order ``q``

    ``I_q(X, F) = 1 / (1 - q) * (1 - sum_{x,f} p(x,f)^q / (p(x) p(f))^(q-1))``

    and the metric ``I_q(A, F) + I_q(B, F)``. That sum grows with the number of
    histogram bins, so it is normalised here by its value for a fused image equal to
    each source: ``Q_TE = sum_i I_q(X_i, F) / sum_i I_q(X_i, X_i)`` (1 when ``F`` and all
    sources are the same image, 0 when ``F`` is independent of them). This
    normalisation is ours: the one Liu 2012 reports (after Nava et al.) is not
    reproduced, so values are not comparable with T Table 8. ``q = 1.85`` by default;
    ``bins`` grey levels over the common range.
    """
    if not q > 0 or q == 1:
        raise ValueError(f"q: expected q > 0 and q != 1, got {q!r}.")
    srcs, f = _inputs(sources, fused)
    quant = _quantise([*srcs, f], bins)
    qf = quant[-1]
    num = sum(_tsallis_mi(_joint(qs, qf, bins), q) for qs in quant[:-1])
    den = sum(_tsallis_mi(_joint(qs, qs, bins), q) for qs in quant[:-1])
    if den == 0:
        return 1.0 if num == 0 else 0.0
    return float(num / den)


def _rank_bins(x: np.ndarray, bins: int) -> np.ndarray:
    order = np.argsort(x.ravel(), kind="stable")
    ranks = np.empty(order.size, np.intp)
    ranks[order] = np.arange(order.size)
    return np.minimum(ranks * bins // order.size, bins - 1)


def _ncc(x: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Nonlinear correlation coefficient, ``H_r(X) + H_r(Y) - H_r(X, Y)`` with base-``b`` logs
    on the ``b x b`` rank grid (Wang et al.)."""
    joint = _joint(x, y, bins)

    def h(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum() / np.log(bins))

    return h(joint.sum(axis=1)) + h(joint.sum(axis=0)) - h(joint)


def q_ncie(sources: Any, fused: Any, bins: int = 256) -> float:
    """Nonlinear correlation information entropy (T 6.3.2; Liu 2012, Q_NCIE).

    Q. Wang, Y. Shen, J. Q. Zhang, "A nonlinear correlation measure for multivariable
    data set", Physica D 200, 2005; Q. Wang, Y. Shen, J. Jin, "Performance evaluation
    of image fusion techniques", in Image Fusion (Elsevier), 2008.

    Each image's pixels are ranked and put into ``b`` equal-count bins; the nonlinear
    correlation coefficient of two images is
    ``NCC(X, Y) = 2 + sum_{i,j} (n_ij / N) log_b(n_ij / N)`` (= ``H_r(X) + H_r(Y) - H_r(X, Y)``
    with base-``b`` entropies, the marginal ones being 1), 1 for identical and 0 for
    independent images. With the ``K x K`` matrix ``R`` of the NCCs of the ``K`` images
    (sources and fused; diagonal 1) and its eigenvalues ``lambda_i``,

    ``Q_NCIE = 1 + sum_i (lambda_i / K) log_K(lambda_i / K)``,

    ``K = 3`` for two sources (``K = n + 1`` in general). Ties in the ranking are broken
    by pixel order.
    """
    srcs, f = _inputs(sources, fused)
    images = [*srcs, f]
    k = len(images)
    ranked = [_rank_bins(i, bins) for i in images]
    r = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            r[i, j] = r[j, i] = _ncc(ranked[i], ranked[j], bins)
    lam = np.linalg.eigvalsh(r)
    lam = lam[lam > 1e-12] / k
    return float(1.0 + (lam * np.log(lam) / np.log(k)).sum())


# --------------------------------------------------------------------------- feature based
def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = ndi.sobel(img, axis=1, mode="reflect")
    sy = ndi.sobel(img, axis=0, mode="reflect")
    g = np.hypot(sx, sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sx != 0, np.arctan(sy / np.where(sx != 0, sx, 1.0)), 0.0)
    alpha = np.where((sx == 0) & (sy != 0), np.pi / 2, alpha)
    return g, alpha


def q_g(
    sources: Any,
    fused: Any,
    gamma_g: float = 0.9994,
    kappa_g: float = -15.0,
    sigma_g: float = 0.5,
    gamma_a: float = 0.9879,
    kappa_a: float = -22.0,
    sigma_a: float = 0.8,
    weight_power: float = 1.0,
) -> float:
    """Gradient-based fusion metric (T 6.3.2; Liu 2012, Q_G).

    C. S. Xydeas, V. Petrovic, "Objective image fusion performance measure",
    Electronics Letters 36(4), 2000. Sobel gradients give the edge strength ``g`` and
    orientation ``alpha = arctan(s_y / s_x)``. For a source ``A`` and the fused ``F``:
    ``G^AF = g_F / g_A`` if ``g_A > g_F`` else ``g_A / g_F`` (1 where both are 0),
    ``A^AF = 1 - |alpha_A - alpha_F| / (pi / 2)`` (orientation difference folded into
    [0, pi/2]), ``Q_g^AF = Gamma_g / (1 + exp(kappa_g (G^AF - sigma_g)))``,
    ``Q_a^AF = Gamma_a / (1 + exp(kappa_a (A^AF - sigma_a)))``, ``Q^AF = Q_g^AF Q_a^AF``;

    ``Q_G = sum_p (Q^AF w^A + Q^BF w^B) / sum_p (w^A + w^B)``, ``w^X = g_X^L`` (``L = 1``).

    Constants are the published ones (Gamma_g 0.9994, kappa_g -15, sigma_g 0.5,
    Gamma_a 0.9879, kappa_a -22, sigma_a 0.8). For ``n`` sources the sums run over all
    of them. Sources without any edge: 1 if ``F`` has none either, else 0.
    """
    srcs, f = _inputs(sources, fused)
    gf, af = _sobel(f)
    num = den = 0.0
    for s in srcs:
        gs, a_s = _sobel(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(gs > gf, gf / np.where(gs > 0, gs, 1), gs / np.where(gf > 0, gf, 1))
        ratio = np.where((gs == 0) & (gf == 0), 1.0, ratio)
        d = np.abs(a_s - af)
        d = np.minimum(d, np.pi - d)
        orient = 1.0 - d / (np.pi / 2)
        qg = gamma_g / (1.0 + np.exp(kappa_g * (ratio - sigma_g)))
        qa = gamma_a / (1.0 + np.exp(kappa_a * (orient - sigma_a)))
        w = gs**weight_power
        num += float((qg * qa * w).sum())
        den += float(w.sum())
    if den == 0:
        return 1.0 if not np.any(gf) else 0.0
    return float(num / den)


def phase_congruency(
    image: Any,
    n_scales: int = 4,
    n_orient: int = 6,
    min_wavelength: float = 3.0,
    mult: float = 2.1,
    sigma_onf: float = 0.55,
    k: float = 2.0,
    cutoff: float = 0.5,
    g: float = 10.0,
    eps: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase congruency and its maximum / minimum moments (P. Kovesi), 2D.

    Log-Gabor filters (``n_scales`` scales from ``min_wavelength`` px, ratio ``mult``,
    bandwidth ``sigma_onf``; ``n_orient`` orientations with a raised-cosine angular
    spread), computed by FFT. Per orientation ``o`` the local energy
    ``E_o = sum_s (e_s cos phi + o_s sin phi - |e_s sin phi - o_s cos phi|)`` (``phi`` the
    mean phase), minus the noise threshold ``T = mu + k sigma`` estimated from the
    median amplitude of the smallest scale (Rayleigh model), floored at 0, weighted by
    the sigmoid of the filter-response spread (``cutoff``, ``g``) and divided by the sum of
    amplitudes: ``PC_o``. Returned: the overall ``PC = sum_o E_o / sum_o sum_s A_so`` and
    the maximum / minimum moments ``M``, ``m`` of the ``PC_o`` covariance over orientations
    (P. Kovesi, "Phase congruency detects corners and edges", DICTA 2003).

    Returns
    -------
    (pc, M, m) float64 arrays of the image shape.
    """
    img = _grey(image, "image")
    ny, nx = img.shape
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(nx)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    theta = np.arctan2(-fy, fx)
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** 30)
    log_gabor = []
    for s in range(n_scales):
        fo = 1.0 / (min_wavelength * mult**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / (2 * np.log(sigma_onf) ** 2)) * lowpass
        lg[0, 0] = 0.0
        log_gabor.append(lg)
    spectrum = np.fft.fft2(img)
    energy_all = np.zeros_like(img)
    amp_all = np.zeros_like(img)
    cx2 = np.zeros_like(img)
    cy2 = np.zeros_like(img)
    cxy = np.zeros_like(img)
    for o in range(n_orient):
        angle = o * np.pi / n_orient
        ds = np.sin(theta) * np.cos(angle) - np.cos(theta) * np.sin(angle)
        dc = np.cos(theta) * np.cos(angle) + np.sin(theta) * np.sin(angle)
        dtheta = np.minimum(np.abs(np.arctan2(ds, dc)) * n_orient / 2, np.pi)
        spread = (np.cos(dtheta) + 1) / 2
        sum_e = np.zeros_like(img)
        sum_o = np.zeros_like(img)
        sum_a = np.zeros_like(img)
        max_a = np.zeros_like(img)
        responses = []
        tau = 0.0
        for s in range(n_scales):
            eo = np.fft.ifft2(spectrum * log_gabor[s] * spread)
            amp = np.abs(eo)
            responses.append(eo)
            sum_e += eo.real
            sum_o += eo.imag
            sum_a += amp
            max_a = np.maximum(max_a, amp)
            if s == 0:
                tau = float(np.median(amp)) / np.sqrt(np.log(4))
        x_energy = np.hypot(sum_e, sum_o) + eps
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = np.zeros_like(img)
        for eo in responses:
            e, od = eo.real, eo.imag
            energy += e * mean_e + od * mean_o - np.abs(e * mean_o - od * mean_e)
        total_tau = tau * (1 - (1 / mult) ** n_scales) / (1 - 1 / mult)
        threshold = total_tau * np.sqrt(np.pi / 2) + k * total_tau * np.sqrt((4 - np.pi) / 2)
        energy = np.maximum(energy - threshold, 0.0)
        width = (sum_a / (max_a + eps) - 1) / max(n_scales - 1, 1)
        weight = 1.0 / (1.0 + np.exp((cutoff - width) * g))
        pc_o = weight * energy / (sum_a + eps)
        energy_all += weight * energy
        amp_all += sum_a
        cx, cy = pc_o * np.cos(angle), pc_o * np.sin(angle)
        cx2 += cx * cx
        cy2 += cy * cy
        cxy += cx * cy
    cx2 /= n_orient / 2
    cy2 /= n_orient / 2
    cxy *= 4 / n_orient
    denom = np.sqrt(cxy**2 + (cx2 - cy2) ** 2) + eps
    big = (cy2 + cx2 + denom) / 2
    small = (cy2 + cx2 - denom) / 2
    return energy_all / (amp_all + eps), big, small


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = float(x.std()), float(y.std())
    if sx == 0 or sy == 0:
        return 1.0 if sx == sy and np.allclose(x, y) else 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def q_p(
    sources: Any,
    fused: Any,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    **pc_params: Any,
) -> float:
    """Phase-congruency-based metric (T 6.3.2; Liu 2012, Q_P) - a simplified version.

    J. Zhao, R. Laganiere, Z. Liu, "Performance assessment of combinative pixel-level
    image fusion based on an absolute feature measurement", IJICIC 3(6A), 2007:
    ``Q_P = (P_p)^alpha (P_M)^beta (P_m)^gamma`` with ``p`` the phase congruency, ``M`` and
    ``m`` its maximum and minimum moments (:func:`phase_congruency`), and
    ``P_k = max(C^k_AF, C^k_BF, C^k_SF)``, where ``C^k_XY`` is the correlation coefficient
    of the feature maps ``k`` of ``X`` and ``Y`` and ``S`` the pixel-wise maximum of the
    sources' maps. ``alpha = beta = gamma = 1``.

    Simplifications (stated, as allowed for this metric): the correlation coefficients
    are computed over the whole image (not over local windows), and the phase
    congruency is our FFT implementation of Kovesi's model with his default parameters
    (``pc_params``), so values are close to but not identical with the reference code.
    For ``n`` sources the maximum runs over all of them.
    """
    srcs, f = _inputs(sources, fused)
    feats = [phase_congruency(s, **pc_params) for s in srcs]
    ff = phase_congruency(f, **pc_params)
    result = 1.0
    for idx, power in enumerate((alpha, beta, gamma)):
        maps = [feat[idx] for feat in feats]
        sel = np.maximum.reduce(maps)
        best = max(_corr(m, ff[idx]) for m in [*maps, sel])
        result *= float(np.sign(best) * abs(best) ** power)
    return float(result)


# --------------------------------------------------------------------------- structural similarity
def _local_stats(x: np.ndarray, y: np.ndarray, window: int):
    size = (window, window)
    mx = ndi.uniform_filter(x, size, mode="reflect")
    my = ndi.uniform_filter(y, size, mode="reflect")
    vx = np.maximum(ndi.uniform_filter(x * x, size, mode="reflect") - mx * mx, 0.0)
    vy = np.maximum(ndi.uniform_filter(y * y, size, mode="reflect") - my * my, 0.0)
    cxy = ndi.uniform_filter(x * y, size, mode="reflect") - mx * my
    return mx, my, vx, vy, cxy


def _uiqi(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Wang-Bovik universal image quality index map and the local variance of ``x``.

    ``Q0 = (2 s_xy / (s_x^2 + s_y^2)) (2 m_x m_y / (m_x^2 + m_y^2))``, each factor 1 when its
    denominator is 0 (flat windows / zero means)."""
    mx, my, vx, vy, cxy = _local_stats(x, y, window)
    d1 = vx + vy
    d2 = mx * mx + my * my
    f1 = np.where(d1 > 1e-12, 2 * cxy / np.where(d1 > 1e-12, d1, 1.0), 1.0)
    f2 = np.where(d2 > 1e-12, 2 * mx * my / np.where(d2 > 1e-12, d2, 1.0), 1.0)
    return f1 * f2, vx


def _crop(a: np.ndarray, window: int) -> np.ndarray:
    """The values of ``a`` (a map of ``ndi.uniform_filter(size=window)`` statistics) at the
    centres of all ``window x window`` windows fully inside the image: ``n - window + 1``
    per axis. ``uniform_filter``'s window at index ``i`` covers ``i - window // 2`` to
    ``i + (window - 1 - window // 2)``, so for an even window it is not symmetric (8: i - 4
    to i + 3). An image smaller than the window keeps the whole map."""
    lo = window // 2
    hi = window - 1 - lo
    if window <= 1 or a.shape[0] < window or a.shape[1] < window:
        return a
    return a[lo : a.shape[0] - hi, lo : a.shape[1] - hi]


def q_s(sources: Any, fused: Any, window: int = 8) -> float:
    """Piella and Heijmans' fusion quality index (T 6.3.2; Liu 2012, Q_S).

    G. Piella, H. Heijmans, "A new quality metric for image fusion", ICIP 2003:

    ``Q_S = (1/|W|) sum_w [ lambda(w) Q0(A, F | w) + (1 - lambda(w)) Q0(B, F | w) ]``,
    ``lambda(w) = s(A|w) / (s(A|w) + s(B|w))``

    with ``Q0`` the Wang-Bovik universal image quality index in the window ``w`` and the
    saliency ``s`` the local variance; every ``window x window`` sliding window (8 x 8) fully
    inside the image, ``(Y - window + 1) (X - window + 1)`` of them. For ``n`` sources
    ``lambda_i = s_i / sum_j s_j`` (equal weights where every source is flat).
    """
    srcs, f = _inputs(sources, fused)
    qs, sal = zip(*(_uiqi(s, f, window) for s in srcs), strict=True)
    sal_sum = np.sum(sal, axis=0)
    n = len(srcs)
    lam = [np.where(sal_sum > 0, s / np.where(sal_sum > 0, sal_sum, 1.0), 1.0 / n) for s in sal]
    total = np.sum([lam_i * q for lam_i, q in zip(lam, qs, strict=True)], axis=0)
    return float(_crop(total, window).mean())


# --------------------------------------------------------------------------- human perception
def _csf_dog(shape: tuple[int, int], f0: float, f1: float, a: float, scale: float):
    ny, nx = shape
    v = np.fft.fftfreq(ny)[:, None] * 2 * ny / scale  # normalised frequency * (H / scale)
    u = np.fft.fftfreq(nx)[None, :] * 2 * nx / scale
    r = np.hypot(u, v)
    return np.exp(-((r / f0) ** 2)) - a * np.exp(-((r / f1) ** 2))


def q_cb(
    sources: Any,
    fused: Any,
    f0: float = 15.3870,
    f1: float = 1.3456,
    a: float = 0.7622,
    frequency_scale: float = 30.0,
    sigma1: float = 2.0,
    sigma2: float = 4.0,
    t: float = 1.0,
    h: float = 1.0,
    p: float = 3.0,
    q: float = 2.0,
    z: float = 1e-4,
) -> float:
    """Chen and Blum's human-perception metric (T 6.3.2; Liu 2012, Q_CB).

    Y. Chen, R. S. Blum, "A new automated quality assessment algorithm for image fusion",
    Image and Vision Computing 27(10), 2009:

    1. Contrast sensitivity filtering in the frequency domain with the difference-of-
       Gaussians CSF ``S(r) = exp(-(r/f0)^2) - a exp(-(r/f1)^2)`` (f0 = 15.3870,
       f1 = 1.3456, a = 0.7622), ``r = hypot(W u, H v) / frequency_scale`` with ``u, v`` the
       frequencies normalised to [-1, 1).
    2. Local band-limited contrast (Peli) ``C = (G_sigma1 * I) / (G_sigma2 * I) - 1``
       (Gaussians of sigma 2 and 4 px) and masked contrast
       ``C' = t |C|^p / (h |C|^q + Z)`` (t = h = 1, p = 3, q = 2, Z = 1e-4).
    3. Preservation ``Q_XF = C'_X / C'_F`` if ``C'_X < C'_F`` else ``C'_F / C'_X`` (1 where both
       are 0), saliency ``lambda_X = C'_X^2 / sum_Y C'_Y^2`` over the sources (equal where
       all are 0).
    4. ``Q_CB = mean_p sum_X lambda_X Q_XF``.

    The contrast uses ``|C|`` (contrast magnitude) and a denominator floored at
    ``1e-12`` of the image's largest filtered value. The ``n``-source form sums over all
    sources; it is the published one for ``n = 2``.
    """
    srcs, f = _inputs(sources, fused)
    csf = _csf_dog(f.shape, f0, f1, a, frequency_scale)

    def masked_contrast(img: np.ndarray) -> np.ndarray:
        filt = np.real(np.fft.ifft2(np.fft.fft2(img) * csf))
        num = ndi.gaussian_filter(filt, sigma1, mode="reflect")
        den = ndi.gaussian_filter(filt, sigma2, mode="reflect")
        floor = 1e-12 * max(float(np.abs(filt).max()), 1e-30)
        den = np.where(np.abs(den) < floor, np.where(den < 0, -floor, floor), den)
        c = np.abs(num / den - 1.0)
        return t * c**p / (h * c**q + z)

    cf = masked_contrast(f)
    cs = [masked_contrast(s) for s in srcs]
    sal = [c * c for c in cs]
    sal_sum = np.sum(sal, axis=0)
    n = len(srcs)
    total = np.zeros_like(f)
    for c, s in zip(cs, sal, strict=True):
        lam = np.where(sal_sum > 0, s / np.where(sal_sum > 0, sal_sum, 1.0), 1.0 / n)
        lo = np.minimum(c, cf)
        hi = np.maximum(c, cf)
        pres = np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), 1.0)
        total += lam * pres
    return float(total.mean())


# --------------------------------------------------------------------------- all at once
#: No-reference metrics by name.
NO_REFERENCE = {
    "Q_MI": q_mi,
    "Q_TE": q_te,
    "Q_NCIE": q_ncie,
    "Q_G": q_g,
    "Q_P": q_p,
    "Q_S": q_s,
    "Q_CB": q_cb,
}


def fusion_metrics(
    sources: Any,
    fused: Any,
    reference: Any | None = None,
    data_range: float | None = None,
    which: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every metric of T 6.3.2 for one fused image.

    Parameters
    ----------
    sources : the ``n >= 2`` source slices; fused : the fused image.
    reference : optional all-in-focus ground truth: adds ``SSIM`` and ``PSNR``.
    data_range : for SSIM / PSNR (see :func:`psnr`).
    which : subset of the no-reference metric names (default all of :data:`NO_REFERENCE`).
    """
    out: dict[str, float] = {}
    if reference is not None:
        out["SSIM"] = ssim(reference, fused, data_range)
        out["PSNR"] = psnr(reference, fused, data_range)
    for name in which or NO_REFERENCE:
        if name not in NO_REFERENCE:
            raise ValueError(f"unknown metric {name!r}; expected one of {list(NO_REFERENCE)}.")
        out[name] = NO_REFERENCE[name](sources, fused)
    return out
