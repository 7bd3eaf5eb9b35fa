"""Overlay pictures: an image in grey with the outlines of its labelled cells in colour.

Used by ``cellfocus demo`` and ``cellfocus predict --overlay`` (numpy / scikit-image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

#: Outline colour (RGB in [0, 1]): amber, visible on grey.
OUTLINE_COLOUR = (1.0, 0.8, 0.0)


def overlay_rgb(
    image: np.ndarray,
    labels: np.ndarray,
    colour: tuple[float, float, float] = OUTLINE_COLOUR,
) -> np.ndarray:
    """(Y, X, 3) uint8 picture: ``image`` (Y, X) stretched to grey between its 0.5th and
    99.5th percentiles, with the inner boundary pixels of every object of ``labels``
    (same shape) painted in ``colour``."""
    img = np.asarray(image, dtype=np.float32)
    lab = np.asarray(labels)
    if img.ndim != 2 or img.shape != lab.shape:
        raise ValueError(
            f"overlay: expected a 2D image and labels of the same shape, got {img.shape} "
            f"and {lab.shape}."
        )
    lo, hi = np.percentile(img, (0.5, 99.5)) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[find_boundaries(lab, mode="inner")] = colour
    return np.round(rgb * 255).astype(np.uint8)


def write_overlay_png(path: str | Path, image: np.ndarray, labels: np.ndarray) -> Path:
    """Write :func:`overlay_rgb` of ``image`` and ``labels`` as a PNG (parent folders
    created); returns the path."""
    from skimage import io as skio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skio.imsave(path, overlay_rgb(image, labels), check_contrast=False)
    return path
