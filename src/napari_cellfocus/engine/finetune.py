"""Planning a fine-tune from a user's annotations: checked inputs, the planes to learn
from, dense or weak mode, crop size and steps. No Qt here: the Correct & fine-tune widget
and ``cellfocus train --weak auto`` use the same plan.

Dense mode learns every pixel (the labels hold every cell); weak mode (W3, thesis 4.2)
learns the drawn cells and their surroundings only, so cells left undrawn are not taught
as background. "auto" picks weak unless the annotations cover almost the whole image
(:data:`DENSE_COVERAGE` of the pixels within :data:`NEAR_PX` of a drawn cell) or come
from a segmentation (every cell is there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from napari_cellfocus.core.validation import check_labels

__all__ = [
    "DENSE_COVERAGE",
    "MAX_CROP",
    "MODES",
    "NEAR_PX",
    "FinetunePlan",
    "annotation_coverage",
    "choose_mode",
    "plan_finetune",
]

#: Annotations are dense when this share of the image lies within ``NEAR_PX`` of them.
DENSE_COVERAGE = 0.9
#: "Near an annotation": the distance beyond which W3 stops trusting background (thesis beta).
NEAR_PX = 30
#: Crop side of the quick fine-tune (engine.train.quick_finetune_config).
MAX_CROP = 192
#: Steps of the one-click fine-tune (engine.train.quick_finetune_config; 4 crops each).
QUICK_STEPS = 30
#: Smallest image side a fine-tune accepts (px).
MIN_SIDE = 16
#: Fine-tune modes: "auto" (from the annotations), "dense", "weak".
MODES = ("auto", "dense", "weak")


def annotation_coverage(labels: np.ndarray, near: float = NEAR_PX) -> float:
    """Share of pixels within ``near`` pixels of an annotated (label > 0) pixel.

    ``labels``: (Y, X) or a stack of planes (*lead, Y, X); distances are measured
    within each plane. 1.0 when every pixel is close to an annotation.
    """
    lab = np.asarray(labels)
    planes = lab.reshape(-1, *lab.shape[-2:])
    close = 0
    for plane in planes:
        if plane.any():
            close += int((ndimage.distance_transform_edt(plane == 0) <= near).sum())
    return close / lab.size if lab.size else 0.0


def choose_mode(
    labels: np.ndarray | list[np.ndarray], from_segmentation: bool = False
) -> tuple[bool, str]:
    """``(weak, reason)`` of the "auto" mode for annotations ``labels`` (the annotated
    planes, or a list of label images whose coverage is pooled over their pixels);
    ``from_segmentation``: the labels are a segmentation's output (dense)."""
    if from_segmentation:
        return False, "dense: the labels come from a segmentation (every cell is there)"
    arrays = labels if isinstance(labels, list) else [labels]
    total = sum(np.asarray(a).size for a in arrays)
    covered = sum(annotation_coverage(a) * np.asarray(a).size for a in arrays)
    coverage = covered / total if total else 0.0
    if coverage >= DENSE_COVERAGE:
        return False, f"dense: the annotations cover {100 * coverage:.0f}% of the image"
    return True, (
        f"weak: the annotations cover {100 * coverage:.0f}% of the image, so only the "
        "drawn cells and their surroundings teach"
    )


@dataclass
class FinetunePlan:
    """What a fine-tune will learn from.

    ``image`` / ``annotations``: the whole checked image (float32) and labels (same
    shape); ``images`` / ``labels``: the annotated planes of them, (Y, X) each;
    ``planes``: their indices in the stack (``[()]`` for a 2D image); ``names``: one per
    plane, for messages; ``weak`` and ``reason``: the mode and why; ``settings``:
    TrainConfig fields (steps, crop size and the caller's overrides).
    """

    image: np.ndarray
    annotations: np.ndarray
    images: list[np.ndarray]
    labels: list[np.ndarray]
    planes: list[tuple[int, ...]]
    names: list[str]
    weak: bool
    reason: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.settings["steps"])


def plan_finetune(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    image_name: str = "image",
    labels_name: str = "annotations",
    mode: str = "auto",
    from_segmentation: bool = False,
    steps: int = QUICK_STEPS,
    overrides: dict[str, Any] | None = None,
) -> FinetunePlan:
    """Check a fine-tune's inputs and plan it.

    Parameters
    ----------
    image : (Y, X) or (*lead, Y, X) grey image (a z-stack or a movie: planes).
    labels : annotations of the same shape, 0 = not annotated, > 0 one id per cell.
    image_name, labels_name : names for the messages (layers or files).
    mode : "auto", "dense" or "weak" (see :func:`choose_mode`).
    from_segmentation : the labels are a segmentation's (auto chooses dense).
    steps : training steps; ``overrides``: further TrainConfig fields.

    Raises
    ------
    ValueError
        Naming the layer / file: shapes differ, the image is smaller than 16 px a side,
        no cell is annotated, an unknown mode, or labels that are not instances.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}.")
    lab = check_labels(np.asarray(labels), name=f"'{labels_name}'", ndim=(2, 3, 4))
    img = np.asarray(image, dtype=np.float32)
    if lab.shape != img.shape:
        raise ValueError(
            f"Annotations '{labels_name}' have shape {lab.shape} but the image "
            f"'{image_name}' has shape {img.shape}: they must match. Use labels "
            "drawn on this image ('New annotation layer' makes one of the right size)."
        )
    if min(img.shape[-2:]) < MIN_SIDE:
        raise ValueError(
            f"'{image_name}' is {img.shape[-2:]} pixels: too small to train on "
            f"(at least {MIN_SIDE} x {MIN_SIDE})."
        )
    if not lab.any():
        raise ValueError(
            f"No cell is annotated in '{labels_name}': paint at least one cell "
            "(label > 0), then press Fine-tune."
        )
    lead = img.shape[:-2]
    planes = [idx for idx in np.ndindex(*lead) if lab[idx].any()] if lead else [()]
    if mode == "auto":
        drawn = np.stack([lab[i] for i in planes]) if lead else lab
        weak, reason = choose_mode(drawn, from_segmentation)
    else:
        weak, reason = mode == "weak", f"{mode} (chosen)"
    images = [img[i] for i in planes]
    crop = max(MIN_SIDE, min(MAX_CROP, *(min(im.shape) for im in images)))
    settings: dict[str, Any] = {"steps": int(steps), "crop_size": crop}
    settings.update(overrides or {})
    return FinetunePlan(
        image=img,
        annotations=lab,
        images=images,
        labels=[lab[i] for i in planes],
        planes=planes,
        names=[f"{image_name} {i}" if i else image_name for i in planes],
        weak=weak,
        reason=reason,
        settings=settings,
    )
