"""Training pairs for learned multi-focus fusion (thesis **T** 6.2.1), numpy only.

Two sources of pairs, both with an all-in-focus ground truth ``y`` and a focus map:

1. **Instance blur, eq. 6.1.** From any sharp image ``y`` and its instance mask ``g``
   (the simulator's scenes, or a user's image + labels): a random subset ``Gamma`` of
   the objects (the background, object 0, included, as in T 6.2.1) forms the binary
   focus map ``g^b``; ``ybar = y * h_sigma`` with ``sigma ~ U(1, 5)``, and

   ``x = (ybar * g^b + y * (1 - g^b),  ybar * (1 - g^b) + y * g^b)``   (eq. 6.1)

   so source A is blurred where ``g^b = 1`` and source B elsewhere.
2. **Simulated focus stacks.** Two focal planes of a
   :func:`~napari_cellfocus.core.simulate.simulate_focus_stack` scene whose nuclei lie at
   random depths between the planes, with the simulator's per-slice shot and read
   noise, and the noiseless all-in-focus image as ``y``.

The focus map convention follows :func:`napari_cellfocus.engine.losses.bce_loss`:
``focus`` is the probability of taking *source A* (``z0`` of eq. 6.2,
``f = z0 xA + z1 xB``), i.e. ``focus = 1 - g^b`` for eq. 6.1 pairs; 0.5 marks pixels
where both sources are equally good (flat background of a stack pair). (Eq. 6.3 as
printed pairs ``g^b`` with ``log z0``, which with eq. 6.1 and 6.2 would train the
network to take the *blurred* source; we use the consistent reading.)

Optional noise on the sources (joint denoising and fusion, T 6.3.8): Gaussian noise
of signal-dependent variance ``k * max(x, 0) + r^2`` (a Poisson-Gaussian camera
approximation), drawn independently per source; the target stays noiseless.

All arrays of a :class:`FusionSample` are float32 and normalised together by the
percentile stretch of the sources (as at inference, where the whole stack shares one
stretch).

3. **Real-content focus stacks** (issue 14; the thesis's eq. 6.1 idea, blurring the
   objects of real images, carried to whole stacks): :func:`real_focus_stack` turns a
   real sharp image and its instance mask into a multi-slice stack: a depth per object,
   a smooth background depth map, depth-variant defocus from a PSF family (Gaussian,
   disc, mixed; :func:`defocus`) growing with ``|slice - depth|``, bleaching between
   slices, small lateral shifts, Poisson-Gaussian noise, 8- or 16-bit. The real data set
   is split **by image** with :func:`real_image_split` (fixed seed: the validation images
   are never seen in training); :class:`RealImagePool` crops training images and
   :class:`RealStackPairSampler` mixes real eq. 6.1 pairs, real stack pairs and the
   simulator's pairs. Everything is deterministic given the seed / generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_cellfocus.core.validation import check_labels

__all__ = [
    "PSF_KINDS",
    "FusionPairSampler",
    "FusionSample",
    "RealImagePool",
    "RealStack",
    "RealStackPairSampler",
    "add_camera_noise",
    "defocus",
    "focus_target",
    "instance_blur_pair",
    "load_real_image",
    "normalise_sample",
    "random_stack_params",
    "real_focus_stack",
    "real_image_split",
    "smooth_depth_map",
    "stack_pair",
]


@dataclass
class FusionSample:
    """One training example.

    a, b : float32 (C, Y, X) sources; target : float32 (C, Y, X) all-in-focus image;
    focus : float32 (Y, X) in [0, 1], the probability of taking source A (see module
    docstring). All on the same intensity scale.
    """

    a: np.ndarray
    b: np.ndarray
    target: np.ndarray
    focus: np.ndarray

    def swapped(self) -> FusionSample:
        """The same example with the sources in the other order (T 6.2.3): the
        all-in-focus target is unchanged and the focus map becomes ``1 - focus``."""
        return FusionSample(self.b, self.a, self.target, 1.0 - self.focus)


def _channels_first(image: np.ndarray) -> np.ndarray:
    """(Y, X) -> (1, Y, X); (Y, X, C) -> (C, Y, X)."""
    arr = np.asarray(image, dtype=np.float32)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (Y, X) or (Y, X, C) over the two spatial axes."""
    sig = (sigma, sigma) if image.ndim == 2 else (sigma, sigma, 0.0)
    return ndi.gaussian_filter(image, sig, mode="reflect")


def instance_blur_pair(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | int | None = None,
    sigma_range: tuple[float, float] = (1.0, 5.0),
    p_select: float = 0.5,
    sigma: float | None = None,
    selected: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Build the source pair of **T** eq. 6.1 from a sharp image and its instances.

    Parameters
    ----------
    image : (Y, X) grey or (Y, X, C) colour, the sharp image ``y``.
    labels : (Y, X) int instance mask ``g`` (0 = background, itself an object of
        ``Gamma``'s choice, as in T 6.2.1).
    rng : generator or seed.
    sigma_range : the blur sigma is drawn from ``U(sigma_range)`` (T: ``U(1, 5)``), px.
    p_select : probability that an object (background included) belongs to ``Gamma``.
    sigma, selected : fix the blur sigma / the selected object ids instead of drawing
        them (for tests and reproducible figures).

    Returns
    -------
    (xa, xb, gb, sigma_used)
        ``xa``, ``xb`` float32 with the shape of ``image``; ``gb`` float32 (Y, X) the binary
        focus map ``g^b`` (1 where source A is blurred); ``sigma_used`` as a 0-d array.
    """
    y = np.asarray(image, dtype=np.float32)
    lab = check_labels(labels, name="labels", ndim=(2,))
    if y.ndim not in (2, 3):
        raise ValueError(
            f"image: expected (Y, X) or (Y, X, C), got shape {y.shape} ({y.ndim} dimensions)."
        )
    if y.shape[:2] != lab.shape:
        raise ValueError(
            f"image and labels must have the same (Y, X) shape, got {y.shape[:2]} and {lab.shape}."
        )
    if not np.all(np.isfinite(y)):
        raise ValueError("image: contains NaN or infinite values.")
    lo, hi = (float(v) for v in sigma_range)
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range: expected 0 < min <= max, got {sigma_range!r}.")
    if not 0.0 <= p_select <= 1.0:
        raise ValueError(f"p_select: expected a probability in [0, 1], got {p_select!r}.")
    rng = np.random.default_rng(rng)
    s = float(rng.uniform(lo, hi)) if sigma is None else float(sigma)
    if s <= 0:
        raise ValueError(f"sigma: expected > 0, got {s}.")
    ids = np.unique(lab)
    if selected is None:
        chosen = ids[rng.random(len(ids)) < p_select]
    else:
        chosen = np.asarray(list(selected), dtype=lab.dtype)
    gb = np.isin(lab, chosen).astype(np.float32)
    ybar = _blur(y, s)
    g = gb if y.ndim == 2 else gb[..., None]
    xa = ybar * g + y * (1.0 - g)
    xb = ybar * (1.0 - g) + y * g
    return xa.astype(np.float32), xb.astype(np.float32), gb, np.asarray(s, np.float32)


def add_camera_noise(
    image: np.ndarray, rng: np.random.Generator, k: float, read: float
) -> np.ndarray:
    """Gaussian noise of variance ``k * max(x, 0) + read^2`` (shot + read noise), float32."""
    x = np.asarray(image, dtype=np.float32)
    if k < 0 or read < 0:
        raise ValueError(f"noise parameters must be >= 0, got k={k}, read={read}.")
    std = np.sqrt(np.float32(k) * np.maximum(x, 0.0) + np.float32(read) ** 2)
    return (x + std * rng.standard_normal(x.shape).astype(np.float32)).astype(np.float32)


def normalise_sample(
    a: np.ndarray,
    b: np.ndarray,
    target: np.ndarray,
    focus: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
) -> FusionSample:
    """Stretch a pair and its target by the ``low`` / ``high`` percentiles of both sources.

    Inputs are (Y, X) or (Y, X, C) images; the result is a :class:`FusionSample` with
    channels first. This is the stretch applied to a whole stack at inference
    (``core.normalize.PercentileNormalization`` with the same percentiles).
    """
    both = np.concatenate([np.ravel(a), np.ravel(b)])
    p_lo, p_hi = np.percentile(both, [low, high])
    scale = np.float32(1.0 / (p_hi - p_lo)) if p_hi > p_lo else np.float32(1.0)
    off = np.float32(p_lo)
    return FusionSample(
        (_channels_first(a) - off) * scale,
        (_channels_first(b) - off) * scale,
        (_channels_first(target) - off) * scale,
        np.asarray(focus, dtype=np.float32),
    )


def stack_pair(
    shape: tuple[int, int],
    rng: np.random.Generator,
    params: dict[str, Any] | None = None,
    defocus_range: tuple[float, float] = (0.75, 4.0),
    clean_a_probability: float = 0.25,
    tie_tolerance: float = 0.004,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A two-plane simulated focus stack pair with its all-in-focus ground truth.

    Nuclei get random depths in [0, 1] (slice units) and the blur grows by
    ``defocus_per_slice ~ U(defocus_range)`` per slice of defocus; both slices carry the
    simulator's shot and read noise, except that with probability
    ``clean_a_probability`` source A is noiseless (it then stands for the already fused,
    cleaner image of iterated fusion, T 6.2). The focus map is computed from the
    noiseless slices: 1 where slice A is closer to the all-in-focus image (absolute
    error smoothed by a Gaussian of sigma 1), 0 where B is, 0.5 where they differ by
    less than ``tie_tolerance`` of the full scale.

    Returns
    -------
    (a, b, y, focus) as float32 (Y, X) arrays on the camera's scale (ADU).
    """
    from napari_cellfocus.core.simulate import random_scene_params, simulate_focus_stack

    p = dict(params) if params is not None else random_scene_params(rng)
    p.pop("out_of_focus", None)
    seed = int(rng.integers(2**31))
    dps = float(rng.uniform(*defocus_range))
    kw = {"n_slices": 2, "depth_range": (0.0, 1.0), "defocus_per_slice": dps, "seed": seed}
    noisy = simulate_focus_stack(shape, **kw, **p)
    clean = simulate_focus_stack(shape, **kw, **{**p, "photons": np.inf, "read_noise": 0.0})
    y = clean.all_in_focus.astype(np.float32)
    ca, cb = (s.astype(np.float32) for s in clean.stack)
    full = float(noisy.params.get("full_scale", 255.0))
    ea = ndi.gaussian_filter(np.abs(ca - y), 1.0)
    eb = ndi.gaussian_filter(np.abs(cb - y), 1.0)
    tol = tie_tolerance * full
    focus = np.full(y.shape, 0.5, np.float32)
    focus[ea < eb - tol] = 1.0
    focus[eb < ea - tol] = 0.0
    a = ca if rng.random() < clean_a_probability else noisy.stack[0].astype(np.float32)
    return a, noisy.stack[1].astype(np.float32), y, focus


class FusionPairSampler:
    """Endless supply of normalised training pairs from the simulator (T 6.2.1).

    Each call draws, with probability ``stack_fraction``, a focus-stack pair
    (:func:`stack_pair`), otherwise an eq. 6.1 pair (:func:`instance_blur_pair`) built
    on the noiseless in-focus image of a random :func:`simulate_cells` scene, with
    camera noise on the sources when ``noise`` is set (source A noiseless with
    probability ``clean_a_probability``). Scene parameters come from
    :func:`~napari_cellfocus.core.simulate.random_scene_params` (8/16-bit, sparse to
    crowded, dim to saturated).

    Parameters
    ----------
    shape : (Y, X) size of each example (the simulated field).
    stack_fraction : share of focus-stack pairs.
    noise : add camera noise to eq. 6.1 sources (joint denoising, T 6.3.8).
    sigma_range : blur of eq. 6.1 (T: ``U(1, 5)``).
    """

    def __init__(
        self,
        shape: tuple[int, int] = (128, 128),
        stack_fraction: float = 0.5,
        noise: bool = True,
        sigma_range: tuple[float, float] = (1.0, 5.0),
        clean_a_probability: float = 0.25,
    ) -> None:
        if not 0.0 <= stack_fraction <= 1.0:
            raise ValueError(f"stack_fraction: expected [0, 1], got {stack_fraction!r}.")
        self.shape = (int(shape[0]), int(shape[1]))
        self.stack_fraction = float(stack_fraction)
        self.noise = bool(noise)
        self.sigma_range = sigma_range
        self.clean_a_probability = float(clean_a_probability)

    def __call__(self, rng: np.random.Generator) -> FusionSample:
        if rng.random() < self.stack_fraction:
            a, b, y, focus = stack_pair(
                self.shape, rng, clean_a_probability=self.clean_a_probability
            )
            return normalise_sample(a, b, y, focus)
        from napari_cellfocus.core.simulate import random_scene_params, simulate_cells

        params = random_scene_params(rng)
        scene = simulate_cells(self.shape, seed=int(rng.integers(2**31)), **params)
        y = scene.clean
        xa, xb, gb, _ = instance_blur_pair(y, scene.labels, rng, self.sigma_range)
        if self.noise:
            k = float(np.exp(rng.uniform(np.log(1e-4), np.log(2e-2))))
            read = float(rng.uniform(0.0, 0.02))
            if rng.random() >= self.clean_a_probability:
                xa = add_camera_noise(xa, rng, k, read)
            xb = add_camera_noise(xb, rng, k, read)
        return normalise_sample(xa, xb, y, 1.0 - gb)


# --------------------------------------------------------------------------- real content
#: Point-spread-function families of :func:`defocus` (see its docstring).
PSF_KINDS = ("gaussian", "disc", "mixed")


def _disc_kernel(radius: float) -> np.ndarray:
    """Normalised pill-box kernel of ``radius`` px, anti-aliased by 4x4 supersampling."""
    half = int(np.ceil(radius + 0.5))
    sub = (np.arange(4) + 0.5) / 4.0 - 0.5
    grid = np.arange(-half, half + 1, dtype=np.float64)
    fine = (grid[:, None] + sub[None, :]).ravel()
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
    k = inside.reshape(len(grid), 4, len(grid), 4).mean(axis=(1, 3))
    return (k / k.sum()).astype(np.float32)


def defocus(image: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """Blur a (Y, X) float image by a defocus PSF of size ``amount`` px (reflect borders).

    ``kind``: "gaussian" (sigma = ``amount``), "disc" (geometric-optics defocus, a
    pill-box of radius ``amount``), "mixed" (a disc of radius ``amount`` then a Gaussian
    of sigma ``0.3 * amount``: a disc softened by aberrations). ``amount < 0.25`` returns
    the image unchanged. Every kernel sums to 1 (intensity is kept).
    """
    if kind not in PSF_KINDS:
        raise ValueError(f"kind: expected one of {PSF_KINDS}, got {kind!r}.")
    img = np.asarray(image, dtype=np.float32)
    if amount < 0.25:
        return img.copy()
    if kind == "gaussian":
        return ndi.gaussian_filter(img, float(amount), mode="reflect")
    from scipy.signal import fftconvolve

    k = _disc_kernel(float(amount))
    h = k.shape[0] // 2
    padded = np.pad(img, h, mode="reflect") if h < min(img.shape) else np.pad(img, h, "edge")
    out = fftconvolve(padded, k, mode="valid").astype(np.float32)
    if kind == "mixed":
        out = ndi.gaussian_filter(out, 0.3 * float(amount), mode="reflect")
    return out


def smooth_depth_map(
    shape: tuple[int, int], rng: np.random.Generator, low: float, high: float
) -> np.ndarray:
    """A smooth random (Y, X) float32 field spanning ``[low, high]`` (slice units): white
    noise low-passed by a Gaussian of sigma ``max(shape) / 4``, stretched to the range
    (a tilted / curved coverslip or tissue surface)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    field = ndi.gaussian_filter(noise, max(shape) / 4.0, mode="reflect")
    span = float(field.max() - field.min())
    unit = (field - field.min()) / span if span > 0 else np.zeros(shape, np.float32)
    return (low + (high - low) * unit).astype(np.float32)


@dataclass
class RealStack:
    """A focus stack built from a real sharp image.

    stack : (Z, Y, X) uint8 / uint16 noisy slices (camera ADU).
    truth : (Y, X) float32 noiseless, unbleached, unshifted all-in-focus image on the
        stack's ADU scale (offset + gain * photons * sharp image).
    depth : (Y, X) float32 in-focus depth of every pixel (slice units; objects at their
        own depth, the background on a smooth map).
    labels : (Y, X) the instance mask used for the object depths.
    params : what was drawn (psf, defocus_per_slice, photons, read_noise, gain, offset,
        bleach, shifts (Z, 2) px, object_depths ...).
    clean : (Z, Y, X) float32 noiseless slices (defocused, bleached, shifted) on the
        sharp image's scale (``truth = offset + gain * photons * sharp``).
    sharp : (Y, X) float32 the sharp image scaled to [0, 1].
    """

    stack: np.ndarray
    truth: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    params: dict[str, Any]
    clean: np.ndarray
    sharp: np.ndarray


def random_stack_params(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the acquisition parameters of :func:`real_focus_stack` (the training family):
    3-9 slices, any PSF kind, defocus 0.5-3 px per slice, 8- or 16-bit, 15-2000 photons
    at the brightest pixel (log-uniform), read noise 0-4 e-, bleaching 0-6 % per slice
    with probability 1/2, lateral shifts of sigma 0-0.7 px with probability 1/2."""
    return {
        "n_slices": int(rng.integers(3, 10)),
        "psf": str(rng.choice(PSF_KINDS)),
        "defocus_per_slice": float(rng.uniform(0.5, 3.0)),
        "bit_depth": 8 if rng.random() < 0.6 else 16,
        "photons": float(np.exp(rng.uniform(np.log(15.0), np.log(2000.0)))),
        "read_noise": float(rng.uniform(0.0, 4.0)),
        "bleach": float(rng.uniform(0.0, 0.06)) if rng.random() < 0.5 else 0.0,
        "shift_std": float(rng.uniform(0.0, 0.7)) if rng.random() < 0.5 else 0.0,
    }


def _layered_slice(
    sharp: np.ndarray, amount: np.ndarray, kind: str, step: float = 0.18
) -> np.ndarray:
    """Depth-variant defocus of an additive (fluorescence) scene: every pixel's light is
    spread by the PSF of its own ``amount`` (px). Amounts are quantised on a log scale
    (relative step ``step``, exact below 0.25 px = sharp) and each level's pixels blurred
    once, then summed."""
    level = np.where(amount < 0.25, -1, np.round(np.log(np.maximum(amount, 0.25)) / step))
    out = np.zeros_like(sharp)
    for lv in np.unique(level):
        mask = level == lv
        layer = np.where(mask, sharp, 0.0).astype(np.float32)
        out += layer if lv < 0 else defocus(layer, kind, float(np.exp(lv * step)))
    return out


def real_focus_stack(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | int | None = None,
    *,
    n_slices: int = 7,
    psf: str = "gaussian",
    defocus_per_slice: float = 1.5,
    bit_depth: int = 8,
    photons: float = 200.0,
    read_noise: float = 1.0,
    bleach: float = 0.0,
    shift_std: float = 0.0,
    object_depths: dict[int, float] | None = None,
    background_depth: float | np.ndarray | None = None,
) -> RealStack:
    """A multi-slice focus stack from a real sharp image and its instance mask.

    Every object (label > 0) gets an in-focus depth ``~ U(0, n_slices - 1)`` (slice
    units), the background a smooth depth map (:func:`smooth_depth_map` over a random
    sub-range). Slice ``k`` is the sharp image with every pixel's light spread by the PSF
    ``psf`` of size ``defocus_per_slice * |k - depth|`` px (additive, as fluorescence;
    :func:`defocus`), dimmed by bleaching ``exp(-bleach * k)``, shifted laterally by
    ``shifts[k] ~ N(0, shift_std)`` px (bilinear, reflect), then detected: Poisson photon
    noise (``photons`` = expected photons at the sharp image's maximum; ``inf`` = none),
    Gaussian read noise (``read_noise`` e-), gain and offset, quantised to ``bit_depth``
    (8 or 16) with saturation.

    Parameters
    ----------
    image : (Y, X) real sharp image (any numeric dtype; scaled by its maximum).
    labels : (Y, X) int instance mask of ``image``.
    rng : generator or seed: the same seed gives the same stack.
    object_depths : fix the depth of objects by label (others drawn).
    background_depth : a constant or a (Y, X) map instead of the smooth random map.

    Returns
    -------
    RealStack
    """
    lab = check_labels(labels, name="labels", ndim=(2,))
    img = np.asarray(image, dtype=np.float32)
    if img.shape != lab.shape:
        raise ValueError(f"image and labels shapes differ: {img.shape} and {lab.shape}.")
    if n_slices < 1 or bit_depth not in (8, 16) or psf not in PSF_KINDS:
        raise ValueError(
            f"expected n_slices >= 1, bit_depth 8 or 16, psf in {PSF_KINDS}; got "
            f"{n_slices}, {bit_depth}, {psf!r}."
        )
    if defocus_per_slice < 0 or read_noise < 0 or bleach < 0 or shift_std < 0 or photons <= 0:
        raise ValueError("defocus_per_slice, read_noise, bleach, shift_std >= 0, photons > 0.")
    rng = np.random.default_rng(rng)
    sharp = np.clip(img - img.min(), 0, None)
    sharp /= max(float(sharp.max()), 1e-12)
    top = float(n_slices - 1)
    if background_depth is None:
        lo, hi = np.sort(rng.uniform(0.0, top, 2))
        bg = smooth_depth_map(lab.shape, rng, float(lo), float(hi))
    else:
        bg = np.broadcast_to(np.asarray(background_depth, np.float32), lab.shape).copy()
    ids = [int(i) for i in np.unique(lab) if i > 0]
    drawn = rng.uniform(0.0, top, len(ids)) if ids else np.zeros(0)
    depths = {i: float(d) for i, d in zip(ids, drawn, strict=True)}
    depths.update({int(k): float(v) for k, v in (object_depths or {}).items()})
    depth = bg.copy()
    if ids:
        lut = np.zeros(int(lab.max()) + 1, np.float32)
        for i, d in depths.items():
            if i <= lab.max():
                lut[i] = d
        depth = np.where(lab > 0, lut[lab], bg).astype(np.float32)
    full = 255.0 if bit_depth == 8 else 65535.0
    fill = float(rng.uniform(0.5, 0.9)) if bit_depth == 8 else float(rng.uniform(0.05, 0.6))
    offset = float(rng.uniform(0.0, 8.0)) if bit_depth == 8 else float(rng.uniform(100.0, 500.0))
    finite = bool(np.isfinite(photons))
    gain = fill * full / (photons if finite else 1.0)
    shifts = (
        rng.normal(0.0, shift_std, (n_slices, 2)) if shift_std > 0 else np.zeros((n_slices, 2))
    )
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    slices, cleans = [], []
    for k in range(n_slices):
        s = _layered_slice(sharp, defocus_per_slice * np.abs(k - depth), psf)
        s *= np.float32(np.exp(-bleach * k))
        if shifts[k].any():
            s = ndi.shift(s, shifts[k], order=1, mode="reflect")
        cleans.append(s)
        e = np.maximum(s, 0.0) * (photons if finite else 1.0)
        if finite:
            e = rng.poisson(e).astype(np.float32)
        if read_noise > 0:
            e = e + np.float32(read_noise) * rng.standard_normal(e.shape).astype(np.float32)
        adu = offset + gain * e
        slices.append(np.clip(np.round(adu), 0, full).astype(dtype))
    truth = (offset + gain * sharp * (photons if finite else 1.0)).astype(np.float32)
    params = {
        "n_slices": int(n_slices),
        "psf": psf,
        "defocus_per_slice": float(defocus_per_slice),
        "bit_depth": int(bit_depth),
        "photons": float(photons),
        "read_noise": float(read_noise),
        "gain": gain,
        "offset": offset,
        "bleach": float(bleach),
        "shift_std": float(shift_std),
        "shifts": shifts.tolist(),
        "object_depths": depths,
    }
    return RealStack(
        np.stack(slices), np.minimum(truth, full), depth, lab, params, np.stack(cleans), sharp
    )


# --------------------------------------------------------------------------- real data set
def real_image_split(
    index: Sequence[dict[str, Any]] | str | Any, seed: int = 0, val_fraction: float = 0.2
) -> tuple[list[str], list[str]]:
    """Split a real data set *by image* into (train, validation) file names.

    ``index``: the list of entries of ``index.json`` (each with a ``"file"``), or the data
    folder holding ``index.json``. Files are sorted, permuted by
    ``default_rng(seed)`` and the first ``round(val_fraction * n)`` are the validation
    (held-out) images: the same seed always gives the same split. For
    ``dsb2018-train`` (428 images), seed 0 and fraction 0.2 hold out 86 images.
    """
    import json
    from pathlib import Path

    if not isinstance(index, (list, tuple)):
        index = json.loads((Path(index) / "index.json").read_text())
    files = sorted(str(e["file"]) for e in index)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected (0, 1), got {val_fraction!r}.")
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = round(val_fraction * len(files))
    val = sorted(files[i] for i in order[:n_val])
    train = sorted(files[i] for i in order[n_val:])
    return train, val


def load_real_image(root: Any, file: str) -> tuple[np.ndarray, np.ndarray]:
    """Image (Y, X) and instance mask (Y, X) of ``file`` in a folder with ``images/``
    and ``masks/`` (the dsb2018-train layout)."""
    from pathlib import Path

    import tifffile

    root = Path(root)
    image = tifffile.imread(root / "images" / file)
    if image.ndim == 3:  # colour: grey by channel mean
        image = image[..., :3].mean(axis=-1)
    return np.asarray(image), np.asarray(tifffile.imread(root / "masks" / file))


def _crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    ny, nx = labels.shape
    y0 = int(rng.integers(0, max(1, ny - size + 1)))
    x0 = int(rng.integers(0, max(1, nx - size + 1)))
    win = (slice(y0, y0 + size), slice(x0, x0 + size))
    img, lab = image[win], labels[win]
    if img.shape != (size, size):  # smaller than the crop: reflect up to it
        pad = ((0, size - img.shape[0]), (0, size - img.shape[1]))
        img, lab = np.pad(img, pad, mode="reflect"), np.pad(lab, pad, mode="reflect")
    k = int(rng.integers(4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


class RealImagePool:
    """Real sharp images with their instance masks, loaded once, cropped at random.

    root : data folder (``images/``, ``masks/``); files : the names to use (e.g. the
    training part of :func:`real_image_split`).
    """

    def __init__(self, root: Any, files: Sequence[str]) -> None:
        if not files:
            raise ValueError("files: expected at least one image.")
        self.items = [load_real_image(root, f) for f in files]

    def crop(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A random ``size`` x ``size`` crop (rotated / mirrored) of a random image."""
        image, labels = self.items[int(rng.integers(len(self.items)))]
        return _crop(image, labels, size, rng)


def focus_target(stack_clean: np.ndarray, truth: np.ndarray, tie: float) -> np.ndarray:
    """Per-slice target distribution (Z, Y, X) float32 for a whole-stack focus map: the
    slices whose noiseless image is within ``tie`` (absolute units) of the best one's
    smoothed error to ``truth`` share the weight equally (all of them in flat regions).
    """
    err = np.stack([ndi.gaussian_filter(np.abs(s - truth), 1.0) for s in stack_clean])
    good = (err <= err.min(axis=0, keepdims=True) + tie).astype(np.float32)
    return good / good.sum(axis=0, keepdims=True)


class RealStackPairSampler:
    """Training pairs (T 6.2.1) from real images, mixed with the simulator's.

    Each call draws (probabilities in this order): a simulator pair
    (:class:`FusionPairSampler`, ``sim_fraction``), an eq. 6.1 pair on a real crop with
    a Gaussian or disc blur of size ``U(1, 5)`` and camera noise (``pair_fraction``), or
    two slices of a :func:`real_focus_stack` of the crop (the rest), whose focus map is
    1 / 0 where the noiseless slice A / B is nearer the truth and 0.5 at ties.
    """

    def __init__(
        self,
        pool: RealImagePool,
        shape: tuple[int, int] = (96, 96),
        sim_fraction: float = 0.25,
        pair_fraction: float = 0.35,
    ) -> None:
        self.pool = pool
        self.shape = (int(shape[0]), int(shape[1]))
        self.sim = FusionPairSampler(self.shape)
        self.sim_fraction = float(sim_fraction)
        self.pair_fraction = float(pair_fraction)

    def __call__(self, rng: np.random.Generator) -> FusionSample:
        u = rng.random()
        if u < self.sim_fraction:
            return self.sim(rng)
        image, labels = self.pool.crop(rng, self.shape[0])
        y = image.astype(np.float32) / max(float(image.max()), 1.0)
        if u < self.sim_fraction + self.pair_fraction:
            kind = "gaussian" if rng.random() < 0.5 else str(rng.choice(["disc", "mixed"]))
            ids = np.unique(labels)
            chosen = ids[rng.random(len(ids)) < 0.5]
            gb = np.isin(labels, chosen).astype(np.float32)
            ybar = defocus(y, kind, float(rng.uniform(1.0, 5.0)))
            xa, xb = ybar * gb + y * (1 - gb), ybar * (1 - gb) + y * gb
            k = float(np.exp(rng.uniform(np.log(1e-4), np.log(3e-2))))
            read = float(rng.uniform(0.0, 0.02))
            if rng.random() >= 0.25:
                xa = add_camera_noise(xa, rng, k, read)
            xb = add_camera_noise(xb, rng, k, read)
            return normalise_sample(xa, xb, y, 1.0 - gb)
        p = random_stack_params(rng)
        p["n_slices"] = 2
        st = real_focus_stack(image, labels, int(rng.integers(2**31)), **p)
        tie = 0.01 * max(float(st.sharp.max()), 1e-6)
        ea = ndi.gaussian_filter(np.abs(st.clean[0] - st.sharp), 1.0)
        eb = ndi.gaussian_filter(np.abs(st.clean[1] - st.sharp), 1.0)
        focus = np.full(st.sharp.shape, 0.5, np.float32)
        focus[ea < eb - tie] = 1.0
        focus[eb < ea - tie] = 0.0
        a, b = (s.astype(np.float32) for s in st.stack)
        return normalise_sample(a, b, st.truth, focus)
