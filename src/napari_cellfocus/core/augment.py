"""Data augmentation for training crops (numpy / scipy only).

Every function takes a numpy ``Generator`` so training is deterministic under a
seed. Geometric transforms are applied jointly to the image, the class target and
the weight map (nearest-neighbour for the target, linear for image and weights);
photometric ones only to the image.

References: thesis (T) 4.2.2 touching-region contrast modulation; T 4.3 and the
counting paper (C) 4.1 for rotations, mirroring, warping, gamma, noise, brightness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_cellfocus.core.targets import TOUCHING


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strong they are.

    flips_rotations : random mirror and 90-degree rotations (the dihedral group).
    elastic_prob : probability of a smooth random warp; ``elastic_alpha`` is the
        displacement amplitude in pixels, ``elastic_sigma`` its smoothness in pixels.
    gamma_range : log-uniform range of the exponent of ``sign(x) * |x| ** gamma``.
    brightness : maximum multiplicative gain change (0.2 = x0.8 .. x1.2) and offset.
    noise_std : maximum std of added Gaussian noise (in normalised intensity units).
    touch_contrast : apply the thesis' touching-region contrast modulation.
    blur_prob : probability of a Gaussian blur of the image (sigma uniform in
        ``blur_sigma`` px), for out-of-focus and low-resolution recordings.
    background : maximum amplitude of an added linear intensity ramp across the crop
        (uneven illumination), in normalised intensity units; 0 = none.
    """

    flips_rotations: bool = True
    elastic_prob: float = 0.3
    elastic_alpha: float = 6.0
    elastic_sigma: float = 12.0
    gamma_range: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.2
    noise_std: float = 0.05
    touch_contrast: bool = True
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    background: float = 0.0


def touching_contrast_modulation(
    image: np.ndarray, target: np.ndarray, a: float, window: int = 7
) -> np.ndarray:
    """Thesis 4.2.2: ``x_a(p) = (1 - a) x(p) + a * median_w(x)(p)`` where ``target == 2``.

    Parameters
    ----------
    image : float array (Y, X) or (Z, Y, X)
    target : class map of the same shape (2 = touching)
    a : modulation strength; a < 0 increases, a > 0 decreases the contrast of
        touching pixels against their surroundings (the thesis draws a ~ U(-1, 1)).
    window : side of the median filter window (7 in the thesis).

    Returns a new array; pixels outside the touching class are unchanged.
    """
    touching = target == TOUCHING
    out = np.array(image, dtype=np.float32, copy=True)
    if not touching.any() or a == 0:
        return out
    med = median_at(out, touching, window)
    out[touching] = (1.0 - a) * out[touching] + a * med
    return out


def median_at(image: np.ndarray, where: np.ndarray, window: int, chunk: int = 65536) -> np.ndarray:
    """Median of the ``window``-sided box around each pixel where ``where`` is true.

    Equal to ``ndi.median_filter(image, size=window, mode="reflect")[where]`` (odd
    ``window``), but only the wanted pixels are computed: touching pixels are ~10 % of a
    crowded crop, and the full filter was ~80 % of the time of augmenting a 256² crop.

    Parameters
    ----------
    image : float array (Y, X) or (Z, Y, X).
    where : bool mask of the same shape.
    window : odd box side in pixels.
    chunk : pixels per batch (bounds the temporary copy to chunk * window**ndim values).

    Returns a 1-D array of ``where.sum()`` medians, in C order of ``where``.
    """
    if window % 2 != 1:
        raise ValueError(f"window must be odd, got {window}.")
    half = window // 2
    # scipy's "reflect" repeats the edge pixel (d c b a | a b c d), numpy calls it symmetric
    padded = np.pad(image, half, mode="symmetric")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (window,) * image.ndim)
    coords = np.nonzero(where)
    out = np.empty(coords[0].size, image.dtype)
    for start in range(0, out.size, chunk):
        part = tuple(c[start : start + chunk] for c in coords)
        boxes = windows[part].reshape(len(part[0]), -1)
        out[start : start + chunk] = np.median(boxes, axis=1)
    return out


def _dihedral(arrays: list[np.ndarray], k: int, flip: bool) -> list[np.ndarray]:
    out = []
    for arr in arrays:
        a = np.rot90(arr, k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def elastic_fields(
    shape: tuple[int, ...], alpha: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement fields, shape (ndim, *shape), amplitude ~``alpha`` px."""
    fields = []
    for _ in shape:
        noise = rng.standard_normal(shape).astype(np.float32)
        field = ndi.gaussian_filter(noise, sigma, mode="reflect")
        peak = float(np.abs(field).max()) or 1.0
        fields.append(field * (alpha / peak))
    return np.stack(fields)


def warp(array: np.ndarray, fields: np.ndarray, order: int) -> np.ndarray:
    """Resample ``array`` at ``grid + fields`` (order 0 for labels, 1 for intensities)."""
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in array.shape), indexing="ij")
    coords = [g + f for g, f in zip(grid, fields, strict=True)]
    return ndi.map_coordinates(array, coords, order=order, mode="reflect")


def augment_sample(
    image: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Augment one training crop.

    Parameters
    ----------
    image : float32 (Y, X) or (Z, Y, X), normalised intensities (~[0, 1]).
    target : uint8 class map of the same shape.
    weight : float32 per-pixel loss weights of the same shape.
    extra : optional float32 map of the same shape (e.g. the DDT distance target) that
        follows the geometric transforms only.

    Returns
    -------
    (image, target, weight) augmented -- plus ``extra`` when given -- with the same shapes
    and dtypes (square crops keep their shape under rotation; non-square crops are only
    flipped).
    """
    image = np.asarray(image, np.float32)
    if config.touch_contrast:
        image = touching_contrast_modulation(image, target, float(rng.uniform(-1.0, 1.0)))
    arrays = [image, target, weight] + ([] if extra is None else [np.asarray(extra, np.float32)])
    if config.flips_rotations:
        square = image.shape[-1] == image.shape[-2]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        arrays = _dihedral(arrays, k, bool(rng.integers(2)))
    if config.elastic_prob > 0 and rng.random() < config.elastic_prob:
        fields = elastic_fields(image.shape, config.elastic_alpha, config.elastic_sigma, rng)
        arrays = [warp(a, fields, order=0 if i == 1 else 1) for i, a in enumerate(arrays)]
    image, target, weight = arrays[:3]
    # Blur and background (optional; off by default so earlier training runs stay the same)
    if config.blur_prob > 0 and rng.random() < config.blur_prob:
        image = ndi.gaussian_filter(image, float(rng.uniform(*config.blur_sigma)))
    if config.background > 0:
        ramp_dir = rng.normal(size=image.ndim)
        ramp_dir /= np.linalg.norm(ramp_dir) or 1.0
        axes = np.meshgrid(*(np.linspace(-0.5, 0.5, n) for n in image.shape), indexing="ij")
        ramp = sum(a * c for a, c in zip(axes, ramp_dir, strict=True))
        image = image + float(rng.uniform(0, config.background)) * ramp.astype(np.float32)
    # Photometric: sign-preserving gamma (normalised data may dip below 0), then
    # gain/offset and noise.
    lo, hi = config.gamma_range
    gamma = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    image = np.sign(image) * np.abs(image) ** gamma
    gain = 1.0 + rng.uniform(-config.brightness, config.brightness)
    offset = rng.uniform(-config.brightness, config.brightness) * 0.25
    image = image * gain + offset
    if config.noise_std > 0:
        image = image + rng.normal(0.0, rng.uniform(0, config.noise_std), image.shape)
    out = (image.astype(np.float32), target.astype(np.uint8), weight.astype(np.float32))
    return out if extra is None else (*out, arrays[3].astype(np.float32))
