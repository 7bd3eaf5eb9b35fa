"""Folders of annotated images: reading pairs, and a validation split by image.

The layout is the one of the project's real training data (``dsb2018-train``) and of
``cellfocus simulate``: ``images/NAME.tif`` with the instance labels in
``masks/NAME.tif`` (0 = background, one id per cell). Optional ``index.json`` is not
needed: pairs are found by file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_DIR = "images"
MASK_DIR = "masks"


@dataclass
class AnnotatedImage:
    """One image (Y, X) and its instance labels of the same shape; ``name`` is the file stem."""

    name: str
    image: np.ndarray
    labels: np.ndarray


def find_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of every ``images/*.tif`` that has a ``masks/`` partner.

    Raises ``FileNotFoundError`` naming the folder when it has no such pair.
    """
    root = Path(folder)
    images = sorted((root / IMAGE_DIR).glob("*.tif*"))
    pairs = [(p, root / MASK_DIR / p.name) for p in images if (root / MASK_DIR / p.name).exists()]
    if not pairs:
        raise FileNotFoundError(
            f"{root}: no annotated images found (expected {IMAGE_DIR}/NAME.tif with "
            f"{MASK_DIR}/NAME.tif beside it)."
        )
    return pairs


def read_pairs(folder: str | Path) -> list[AnnotatedImage]:
    """Read every annotated image of ``folder`` (see :func:`find_pairs`)."""
    from napari_cellfocus.core.io import read_image

    out = []
    for image_path, mask_path in find_pairs(folder):
        image, labels = read_image(image_path), read_image(mask_path)
        if image.shape != labels.shape:
            raise ValueError(
                f"{mask_path}: shape {labels.shape} differs from its image {image.shape}."
            )
        out.append(AnnotatedImage(image_path.stem, image, labels))
    return out


def split_by_image(
    shapes: list[tuple[int, ...]], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``: about ``fraction`` of the images of every image
    shape go to validation (at least one of each shape that has two or more images), so
    every size the data holds is validated. Deterministic under ``seed``."""
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for shape in sorted(set(shapes)):
        members = [i for i, s in enumerate(shapes) if s == shape]
        n = round(fraction * len(members))
        if len(members) >= 2:
            n = max(1, n)
        val.extend(int(i) for i in rng.permutation(members)[:n])
    val_set = set(val)
    return [i for i in range(len(shapes)) if i not in val_set], sorted(val)
