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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_cellfocus.core.validation import check_labels

__all__ = [
    "FusionPairSampler",
    "FusionSample",
    "add_camera_noise",
    "instance_blur_pair",
    "normalise_sample",
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
