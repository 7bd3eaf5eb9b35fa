"""Scoring a segmentation model on annotated images, and choosing its defaults there.

Used by ``scripts/train_default_model.py`` (the defaults stored in the shipped model) and
``benchmarks/bench_realdata.py`` (its figures). Every image is segmented as a user gets
it: the nucleus diameter estimated by the model (``diameter="auto"``), the probabilities
mapped back to the image's grid, then post-processed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_cellfocus.core.methods import candidate_settings
from napari_cellfocus.core.metrics import evaluate, pool_scores
from napari_cellfocus.core.postprocess import postprocess
from napari_cellfocus.core.size import disc_area, median_diameter
from napari_cellfocus.engine.segment import Segmenter

#: Post-processing settings tried when choosing a model's defaults: MAP, and TH / WT on a
#: small grid around the thesis' values (T Tables 4-6); each method's coarse grid is its
#: registry entry's ``candidates`` (``core.methods``; ``choose_defaults`` reads the registry
#: when it runs, so a method registered later is tried too).
CANDIDATE_METHODS: tuple[tuple[str, dict[str, float]], ...] = candidate_settings()
#: Relative size filters tried on the best method: objects below this share of a
#: typical nucleus' area (at the estimated diameter) are dropped.
CANDIDATE_MIN_SIZE_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Prediction:
    """One image segmented at its estimated diameter: probabilities on its own grid."""

    name: str
    shape: tuple[int, ...]
    labels: np.ndarray  # ground truth
    probs: np.ndarray
    diameter: float | None  # estimated (px)
    true_diameter: float | None  # median of the ground truth (px)
    seconds: float  # estimate + prediction


def predict_all(
    segmenter: Segmenter,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    diameter: float | str | Sequence[float | None] | None = "auto",
) -> list[Prediction]:
    """Estimate the diameter of and predict every image (see :class:`Prediction`);
    ``diameter`` as in :meth:`Segmenter.segment`, or one value per image."""
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    per_image = (
        list(diameter)
        if isinstance(diameter, Sequence) and not isinstance(diameter, str)
        else [diameter] * len(images)
    )
    out = []
    for name, image, lab, wanted in zip(names, images, labels, per_image, strict=True):
        t = time.perf_counter()
        diam = segmenter.resolve_diameter(image, wanted)
        probs = segmenter.predict(image, diameter=diam)
        seconds = time.perf_counter() - t
        out.append(Prediction(name, image.shape, lab, probs, diam, median_diameter(lab), seconds))
    return out


def score(
    predictions: Sequence[Prediction],
    method: str,
    params: dict[str, Any],
    min_size_fraction: float,
) -> list[dict[str, Any]]:
    """:func:`~napari_cellfocus.core.metrics.evaluate` of every prediction post-processed
    with ``method`` / ``params`` and the size filter relative to its estimated diameter."""
    return [
        evaluate(p.labels, post_labels(p, method, params, min_size_fraction)) for p in predictions
    ]


def post_labels(
    pred: Prediction, method: str, params: dict[str, Any], min_size_fraction: float
) -> np.ndarray:
    """Instance labels of one prediction: ``method`` / ``params`` and objects under
    ``min_size_fraction`` of a typical nucleus' area (at its estimated diameter) dropped."""
    kw = dict(params)
    if min_size_fraction and pred.diameter:
        kw["min_size"] = max(1, round(min_size_fraction * disc_area(pred.diameter)))
    return postprocess(pred.probs, method=method, **kw)[0]


def choose_defaults(
    model: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    device: str = "auto",
    objective: str = "pq",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post-processing defaults that maximise the pooled ``objective`` on the images.

    Returns ``(defaults, table)``: ``defaults`` holds ``method``, ``post_params`` and
    ``min_size_fraction`` (to store in :attr:`ModelInfo.defaults`); ``table`` the pooled
    scores of every candidate and the diameter estimates' errors, for the record.
    """
    seg = Segmenter(model, device=device)
    preds = predict_all(seg, images, labels)

    def candidate(method: str, params: dict[str, Any], fraction: float) -> dict[str, Any]:
        pooled = pool_scores(score(preds, method, params, fraction))
        return {
            "method": method,
            "post_params": params,
            "min_size_fraction": fraction,
            **{k: pooled[k] for k in ("pq", "f1", "precision", "recall", "sq")},
        }

    # the method and thresholds first (no size filter), then the size filter for the best
    candidates = [candidate(m, p, 0.0) for m, p in candidate_settings()]
    first = max(candidates, key=lambda c: c[objective])
    candidates += [
        candidate(first["method"], first["post_params"], f) for f in CANDIDATE_MIN_SIZE_FRACTIONS
    ]
    best = max(candidates, key=lambda c: c[objective])
    defaults = {
        "method": best["method"],
        "post_params": dict(best["post_params"]),
        "min_size_fraction": best["min_size_fraction"],
        "chosen_by": f"pooled {objective} on {len(preds)} validation images",
    }
    table = {"candidates": candidates, "diameter": diameter_errors(preds)}
    return defaults, table


def diameter_errors(predictions: Sequence[Prediction]) -> dict[str, float]:
    """Relative error of the diameter estimates against the ground truth's median."""
    rel = [
        p.diameter / p.true_diameter - 1.0 for p in predictions if p.diameter and p.true_diameter
    ]
    if not rel:
        return {}
    arr = np.abs(np.array(rel))
    return {
        "n": len(rel),
        "median_abs_rel_error": float(np.median(arr)),
        "p90_abs_rel_error": float(np.percentile(arr, 90)),
        "within_10pct": float(np.mean(arr <= 0.10)),
        "within_25pct": float(np.mean(arr <= 0.25)),
    }
