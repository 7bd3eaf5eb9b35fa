"""The papers' comparisons on simulated data, and the correction curve (project issue #6).

    python benchmarks/bench_papers.py                  # reduced size for a 2-core CPU (~1 h)
    python benchmarks/bench_papers.py --device cuda    # full size on a GPU
    python benchmarks/bench_papers.py --quick          # smoke test (tiny, a few minutes)
    python benchmarks/bench_papers.py --estimate       # 10 steps per method, extrapolated time
    python benchmarks/bench_papers.py --device cuda --max-minutes 9 [--resume]
                                                       # in calls of <= 9 min, e.g. on a lent GPU

1. Loss-function comparison. Two simulated datasets: *crowded* (many touching nuclei, full
   labels) and *weak* (the same training images, 30-50 % of the cells unannotated, every
   remaining contour eroded or dilated by 1-2 px; validation and test labels complete). The
   same U-Net, seed, batches and augmentations are trained under each loss (UNET2, UNET3,
   DWM, SAW, W3, J3, J4, soft Jaccard), plus J4 in weak mode (J4-W3) on the weak set, and
   UNet1 (plain CE, the DDT paper's baseline), DDT+UNet1, DDT+UNet2 (D's mode,
   ``detach_ddt=True``) and the residual counting U-Net on the crowded set. Each model is
   post-processed with MAP, TH and WT (thresholds tuned for PQ on the validation split) and
   scored on the test split: P, R, F1, SQ, RQ, PQ (IoU > 0.5, pooled over images), contour F1
   at radii 2-7, BDE and WDMC, count MAE.
2. Correction curve: the built-in model on a simulated domain outside its training range
   (larger, elongated, irregular, dimmer nuclei); a simulated user annotates k cells
   (k = 0, 5, 10, 20, 50) in weak mode; one-click fine-tune (``quick_finetune_config``);
   PQ on the rest of the image, on the cells no k annotates, and on a second image of the
   domain; wall time of each fine-tune.

Progress is saved after every trained method (``<out>/papers*_progress.json``, git-ignored):
``--resume`` goes on from an interrupted or ``--max-minutes``-limited call (exit code 3 = not
finished yet), and the result equals that of one uninterrupted run.

Writes ``<out>/papers[_quick|_estimate].json``; full runs also write ``docs/papers.md`` and
``docs/images/papers_*.png``; quick runs draw their plots into ``<out>/papers_quick_images/``
(to test the plotting code) and never touch docs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_cellfocus.core.metrics import (
    boundary_displacement_error,
    centroid_match_f1,
    contour_f1,
    count_errors,
    evaluate,
    mean_iou,
    weighted_dice_multiclass,
)
from napari_cellfocus.core.postprocess import postprocess, search_thresholds
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.core.size import median_diameter
from napari_cellfocus.core.targets import class_target
from napari_cellfocus.core.weights import weight_map
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.train import (
    TrainConfig,
    Trainer,
    ddt_network,
    quick_finetune_config,
    target_and_weight,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 20261122
RADII = (2, 3, 4, 5, 6, 7)
POSTS = ("map", "th", "wt")
#: Exit code of a call stopped by ``--max-minutes`` (progress saved, run again with --resume).
INCOMPLETE = 3

# --------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------
#: Presets. "cpu" is the reduced size for a 2-core CPU (60 min measured on 2026-11-22 with other
#: work beside it, within the 2-hour budget), "gpu" the full size, "quick" the CI smoke test.
#: The gpu preset has never run: 2000 steps (3000 before) is a guess at ~1.5 min per method on
#: an H100 (crop preparation in 8 threads, ~15 ms per 256² crop on one core), ~35 min in all;
#: run ``--estimate --device cuda`` first, then the full run in ``--max-minutes`` calls.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "size": 80,
        "n_train": 2,
        "n_val": 1,
        "n_test": 1,
        "radius": (5.0, 7.0),
        "depth": 3,
        "width": 8,
        "steps": 8,
        "batch_size": 2,
        "crop_size": 64,
        "lr": 1e-3,
        "grid": "coarse",
        "corr_size": 96,
        "corr_radius": (9.0, 12.0),
        "corr_ks": (0, 5),
        "corr_repeats": 1,
        "corr_overrides": {"steps": 2, "batch_size": 2, "crop_size": 64},
    },
    "cpu": {
        "size": 256,
        "n_train": 6,
        "n_val": 2,
        "n_test": 4,
        "radius": (7.0, 12.0),
        "depth": 4,
        "width": 12,
        "steps": 1000,
        "batch_size": 4,
        "crop_size": 96,
        "lr": 1e-3,
        "grid": "default",
        "corr_size": 768,
        "corr_radius": (27.0, 36.0),
        "corr_ks": (0, 5, 10, 20, 50),
        "corr_repeats": 3,
        "corr_overrides": {},
    },
    "gpu": {
        "size": 512,
        "n_train": 24,
        "n_val": 4,
        "n_test": 8,
        "radius": (7.0, 14.0),
        "depth": 4,
        "width": 24,
        "steps": 2000,
        "batch_size": 8,
        "crop_size": 256,
        "lr": 1e-3,
        "grid": "default",
        "corr_size": 768,
        "corr_radius": (27.0, 36.0),
        "corr_ks": (0, 5, 10, 20, 50),
        "corr_repeats": 3,
        "corr_overrides": {},
    },
}

#: Coarse threshold grids of the quick mode (the full runs use core.postprocess.default_grid).
COARSE_GRIDS = {
    "th": {"gamma1": [0.4, 0.6], "gamma2": [0.1, 0.3]},
    "wt": {"tau0": [0.4, 0.6], "tau1": [0.7, 0.9]},
    "binary": {"threshold": [0.3, 0.5, 0.7]},
}

#: Simulator settings of the crowded dataset (inside the default model's range except the
#: crowding, which is at its upper end: confluent, clumped, mostly pressed together).
CROWDED = {
    "density": 0.55,
    "cluster_fraction": 1.0,
    "cluster_size": 8.0,
    "touching": 0.9,
    "irregularity": 0.1,
    "elongation": 0.25,
    "photons": 300.0,
    "blur_sigma": 1.2,
    "bit_depth": 8,
}

#: Correction-curve domain: outside the default model's training range (docs/default_model.md:
#: radius 4-25 px, irregularity 0-0.2, elongation 0.05-0.45, texture 0-0.6), dim (12 photons
#: per pixel, near the low end of 8-5000).
UNSEEN = {
    "density": 0.5,
    "cluster_fraction": 1.0,
    "cluster_size": 6.0,
    "touching": 0.9,
    "irregularity": 0.3,
    "elongation": 0.6,
    "photons": 12.0,
    "read_noise": 4.0,
    "blur_sigma": 1.5,
    "texture": 0.6,
    "bit_depth": 8,
}


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------
def method_specs(depth: int, width: int) -> dict[str, dict[str, Any]]:
    """Every compared method: TrainConfig fields, network and dataset(s) it runs on.

    UNET2 is the 3-class network whose touching class is merged into background in the
    training target (binary cell / not-cell learning with the U-Net near-objects map), see
    :func:`_merge_touching_into_background`.
    """
    unet = {"architecture": "unet", "depth": depth, "width": width, "norm": "batch", "dims": 2}
    # D's mode: the class loss stops at the DDT (detach_ddt=True), as in its two-stage training
    ddt = {"depth": depth, "width": width, "norm": "batch", "dims": 2}
    both = ("crowded", "weak")
    return {
        "UNET2": {
            "cfg": {"loss": "wce", "weights": "unet"},
            "net": unet,
            "binary": True,
            "data": both,
        },
        "UNET3": {"cfg": {"loss": "wce", "weights": "unet"}, "net": unet, "data": both},
        "DWM": {"cfg": {"loss": "wce", "weights": "dwm"}, "net": unet, "data": both},
        "SAW": {"cfg": {"loss": "wce", "weights": "saw"}, "net": unet, "data": both},
        "W3": {"cfg": {"loss": "wce", "weak": True}, "net": unet, "data": both},
        "J3": {"cfg": {"loss": "j3", "weights": "none"}, "net": unet, "data": both},
        "J4": {
            "cfg": {"loss": "j4", "weights": "none", "n_classes": 4},
            "net": unet,
            "data": both,
        },
        # J4 in the Trainer's weak mode (W3-weighted mean CE over the annotated zone, J over
        # that zone only); the J3 / J4 rows above treat the weak labels as complete, as T
        # 5.2.2's plain CE + J does on its weakly annotated T-cells
        "J4-W3": {
            "cfg": {"loss": "j4", "n_classes": 4, "weak": True},
            "net": unet,
            "data": ("weak",),
        },
        "Jaccard": {"cfg": {"loss": "jaccard", "weights": "none"}, "net": unet, "data": both},
        "UNet1": {"cfg": {"loss": "wce", "weights": "none"}, "net": unet, "data": ("crowded",)},
        "DDT+UNet1": {
            "cfg": {"loss": "wce", "weights": "none"},
            "net": ddt_network("ddt", paper=True, **ddt),
            "data": ("crowded",),
        },
        "DDT+UNet2": {
            "cfg": {"loss": "wce", "weights": "none"},
            "net": ddt_network("ddt+image", paper=True, **ddt),
            "data": ("crowded",),
        },
        "ResCount": {
            "cfg": {"loss": "wce", "weights": "overcrowding"},
            "net": {
                "architecture": "residual_unet",
                "depth": depth,
                "width": width,
                "norm": "batch",
                "dims": 2,
            },
            "counting": True,
            "data": ("crowded",),
        },
    }


def _merge_touching_into_background(trainer: Trainer) -> None:
    """UNET2: touching pixels become background in the target, and the U-Net near-objects
    weight map is recomputed from that binary target (its class-balance term then sees two
    classes). The network keeps three outputs; the third is never a target, so its
    probability goes to zero and the softmax over the other two is the 2-class model's."""
    for sample in [*trainer.train_samples, *trainer.val]:
        sample.target[sample.target == 2] = 0
        sample.weight = weight_map("unet", sample.labels, target=sample.target).astype(np.float32)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def simulate_split(
    n: int, size: int, radius: tuple[float, float], seed: Sequence[int], params: dict[str, Any]
) -> list[Any]:
    """``n`` scenes of side ``size`` with the given simulator settings, seeded."""
    children = np.random.SeedSequence(list(seed)).spawn(n)
    return [
        simulate_cells((size, size), radius=radius, seed=np.random.default_rng(c), **params)
        for c in children
    ]


def weaken_labels(
    labels: np.ndarray,
    rng: np.random.Generator,
    drop: tuple[float, float] = (0.3, 0.5),
    max_shift: int = 2,
) -> np.ndarray:
    """Weak annotation of an instance image (2D): a fraction U(drop) of the cells is left out
    and every remaining contour is eroded or dilated by 1..``max_shift`` px (dilation only into
    background, so annotations never overlap). Returns int32 labels."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    n_drop = round(rng.uniform(*drop) * ids.size)
    keep = rng.permutation(ids)[n_drop:]
    out = np.zeros(labels.shape, np.int32)
    taken = labels > 0
    for cell in np.sort(keep):
        mask = labels == cell
        shift = int(rng.integers(1, max_shift + 1))
        if rng.random() < 0.5:
            new = ndi.binary_erosion(mask, iterations=shift)
            if not new.any():
                new = mask
        else:
            grown = ndi.binary_dilation(mask, iterations=shift)
            new = mask | (grown & ~taken & (out == 0))
        out[new & (out == 0)] = cell
    return out


def make_datasets(p: dict[str, Any], seed: int) -> dict[str, dict[str, list]]:
    """Crowded (full labels) and weak (weakened training and validation labels of the same
    images; test labels complete) datasets."""
    scenes = {
        split: simulate_split(p[f"n_{split}"], p["size"], p["radius"], (seed, i), CROWDED)
        for i, split in enumerate(("train", "val", "test"))
    }
    crowded = {
        f"{split}_{kind}": [getattr(s, attr) for s in scenes[split]]
        for split in scenes
        for kind, attr in (("images", "image"), ("labels", "labels"))
    }
    rng = np.random.default_rng([seed, 99])
    weak = dict(crowded)
    weak["train_labels"] = [weaken_labels(lab, rng) for lab in crowded["train_labels"]]
    return {"crowded": crowded, "weak": weak}


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------
def pooled_scores(results: list[dict]) -> dict[str, float]:
    """P, R, F1 (= RQ), SQ, PQ from true positives pooled over images."""
    tp = sum(r["tp"] for r in results)
    n_true = sum(r["n_true"] for r in results)
    n_pred = sum(r["n_pred"] for r in results)
    iou_sum = sum(r["mean_matched_iou"] * r["tp"] for r in results)
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    rq = 2.0 * tp / (n_true + n_pred) if n_true + n_pred else 1.0
    sq = iou_sum / tp if tp else 0.0
    return {"precision": p, "recall": r, "f1": rq, "rq": rq, "sq": sq, "pq": sq * rq}


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _grid(p: dict[str, Any], method: str) -> dict[str, list[float]] | None:
    return COARSE_GRIDS[method] if p["grid"] == "coarse" else None


def tune_thresholds(
    val_probs: list[np.ndarray], val_labels: list[np.ndarray], p: dict[str, Any], counting: bool
) -> dict[str, dict[str, float]]:
    """TH and WT thresholds maximising PQ on the validation split (binary cutoff maximising F1
    for the counting network, as in C 5.1)."""
    out = {}
    for method in ("th", "wt"):
        res = search_thresholds(
            val_probs, val_labels, method=method, grid=_grid(p, method), metric="pq"
        )
        out[method] = res.best_params
    if counting:
        res = search_thresholds(
            val_probs, val_labels, method="binary", grid=_grid(p, "binary"), metric="f1"
        )
        out["binary"] = res.best_params
    return out


def centroid_f1(
    labels: list[np.ndarray], preds: list[np.ndarray], max_distance: float, matching: str
) -> float:
    """Centroid-matching F1 (C 5.1) with true positives pooled over images."""
    res = [
        centroid_match_f1(gt, pd, max_distance=max_distance, matching=matching)
        for gt, pd in zip(labels, preds, strict=True)
    ]
    tp = sum(r["tp"] for r in res)
    total = sum(r["n_true"] + r["n_pred"] for r in res)
    return 2.0 * tp / total if total else 1.0


def score_model(
    probs: list[np.ndarray],
    labels: list[np.ndarray],
    thresholds: dict[str, dict[str, float]],
    centroid_distance: float | None = None,
) -> dict[str, Any]:
    """Every score of one model on the test split, for each post-processing. With
    ``centroid_distance`` (the counting network) the binary post-processing is also scored
    by centroid F1: C 5.1's nearest-prediction rule and the optimal assignment, pairs closer
    than that distance (C: 50 px, its mean cell diameter)."""
    out: dict[str, Any] = {}
    posts = [*POSTS, *(["binary"] if "binary" in thresholds else [])]
    for post in posts:
        preds = [postprocess(pr, method=post, **thresholds.get(post, {}))[0] for pr in probs]
        res = [evaluate(gt, pd) for gt, pd in zip(labels, preds, strict=True)]
        scores = pooled_scores(res)
        scores["contour_f1"] = {
            str(r): float(
                np.mean(
                    [
                        contour_f1(gt, pd, radius=r)["f1"]
                        for gt, pd in zip(labels, preds, strict=True)
                    ]
                )
            )
            for r in RADII
        }
        bde = [boundary_displacement_error(gt, pd) for gt, pd in zip(labels, preds, strict=True)]
        finite = [b for b in bde if math.isfinite(b)]
        scores["bde"] = _finite_or_none(float(np.mean(finite))) if finite else None
        scores["bde_undefined_images"] = len(bde) - len(finite)
        counts = count_errors([r["n_true"] for r in res], [r["n_pred"] for r in res])
        scores["count_mae"] = counts["mae"]
        scores["count_median_ae"] = counts["median_ae"]
        scores["mean_iou"] = float(
            np.mean([mean_iou(gt, pd) for gt, pd in zip(labels, preds, strict=True)])
        )
        if post == "binary" and centroid_distance is not None:
            for rule in ("nearest", "optimal"):
                scores[f"centroid_f1_{rule}"] = centroid_f1(labels, preds, centroid_distance, rule)
            scores["centroid_distance"] = float(centroid_distance)
        out[post] = scores
    # WDMC of the class map (argmax, 3-class schemes; the gap class of J4 counts as background)
    wdmc = []
    for pr, gt in zip(probs, labels, strict=True):
        cls = pr.argmax(0)
        cls[cls == 3] = 0
        wdmc.append(weighted_dice_multiclass(class_target(gt, 3), cls))
    out["wdmc"] = float(np.mean(wdmc))
    return out


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
def train_one(
    name: str,
    spec: dict[str, Any],
    data: dict[str, list],
    p: dict[str, Any],
    seed: int,
    device: str,
    steps: int,
) -> dict[str, Any]:
    """Train one method on one dataset, tune on validation, score on test."""
    cfg = TrainConfig(
        steps=steps,
        batch_size=p["batch_size"],
        crop_size=p["crop_size"],
        lr=p["lr"],
        lr_schedule="cosine",
        checkpoint_every=0,
        seed=seed,
        **spec["cfg"],
    )
    t0 = time.perf_counter()
    trainer = Trainer(
        data["train_images"], data["train_labels"], cfg, network=dict(spec["net"]), device=device
    )
    if spec.get("binary"):
        _merge_touching_into_background(trainer)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, info = trainer.run()
    t_train = time.perf_counter() - t0
    losses = [float(h["loss"]) for h in trainer.history]
    trainer.release()

    t0 = time.perf_counter()
    seg = Segmenter((model, info), device=device)
    val_probs = [seg.predict(im) for im in data["val_images"]]
    test_probs = [seg.predict(im) for im in data["test_images"]]
    thresholds = tune_thresholds(val_probs, data["val_labels"], p, bool(spec.get("counting")))
    # C's 50 px is its mean cell diameter; ours is about the sum of the radius range's ends
    centroid = float(sum(p["radius"])) if spec.get("counting") else None
    scores = score_model(test_probs, data["test_labels"], thresholds, centroid)
    t_eval = time.perf_counter() - t0
    return {
        "method": name,
        "config": {
            k: v for k, v in {**spec["cfg"], "network": info.network}.items() if k != "augment"
        },
        "steps": trainer.step,
        "prep_s": t_prep,
        "train_s": t_train,
        "eval_s": t_eval,
        "s_per_step": t_train / max(1, trainer.step),
        "loss_curve": losses,
        "thresholds": thresholds,
        "test": scores,
        "_example_probs": test_probs[0],
    }


# --------------------------------------------------------------------------------------
# correction curve
# --------------------------------------------------------------------------------------
def _drop_touching(pred: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Predicted objects overlapping any pixel of ``cells`` (bool mask) removed."""
    hit = np.unique(pred[cells])
    return np.where(np.isin(pred, hit[hit > 0]), 0, pred)


def correction_curve(p: dict[str, Any], seed: int, device: str, ft_steps: int | None) -> dict:
    """PQ of the built-in model after a one-click weak fine-tune on k annotated cells."""
    size, radius = p["corr_size"], p["corr_radius"]
    scene, other = simulate_split(2, size, radius, (seed, 7), UNSEEN)
    gt = scene.labels
    ids = np.unique(gt)
    ids = ids[ids > 0]
    ks = [k for k in p["corr_ks"] if k <= max(0, ids.size - 5)]
    kmax = max(ks)
    overrides = dict(p["corr_overrides"])
    if ft_steps is not None:
        overrides["steps"] = ft_steps
    base = Segmenter("default", device=device)
    rows = []
    for rep in range(p["corr_repeats"]):
        order = np.random.default_rng([seed, 11, rep]).permutation(ids)
        never = np.isin(gt, order[:kmax])  # cells annotated at the largest k
        for k in ks:
            ann = order[:k]
            annotated = np.isin(gt, ann)
            t0 = time.perf_counter()
            if k == 0:
                seg, time_s, steps = base, 0.0, 0
            else:
                cfg = quick_finetune_config(weak=True, seed=seed + rep, **overrides)
                weak = np.where(annotated, gt, 0).astype(np.int32)
                trainer = Trainer([scene.image], [weak], cfg, init="default", device=device)
                model, info = trainer.run()
                steps = trainer.step
                trainer.release()
                time_s = time.perf_counter() - t0
                seg = Segmenter((model, info), device=device)
            # as the widget shows it: after a fine-tune the image is predicted at the
            # annotated cells' diameter (the scale it trained at); with no annotation the
            # diameter is estimated ("auto"). The starting model at the same diameter
            # separates what the fine-tune taught from what the diameter alone gives.
            diameter = float(median_diameter(np.where(annotated, gt, 0))) if k else "auto"
            pred = seg.segment(scene.image, method="map", diameter=diameter).labels
            rest = evaluate(np.where(annotated, 0, gt), _drop_touching(pred, annotated))
            common = evaluate(np.where(never, 0, gt), _drop_touching(pred, never))
            far = evaluate(other.labels, seg.segment(other.image, method="map").labels)
            same = rest
            if k:
                base_pred = base.segment(scene.image, method="map", diameter=diameter).labels
                same = evaluate(np.where(annotated, 0, gt), _drop_touching(base_pred, annotated))
            rows.append(
                {
                    "repeat": rep,
                    "k": int(k),
                    "steps": steps,
                    "finetune_s": time_s,
                    "diameter": diameter,
                    "pq_rest": rest["pq"],
                    "pq_rest_start_model": same["pq"],
                    "f1_rest": rest["f1"],
                    "sq_rest": rest["sq"],
                    "n_rest": rest["n_true"],
                    "pq_common": common["pq"],
                    "n_common": common["n_true"],
                    "pq_other_image": far["pq"],
                    "f1_other_image": far["f1"],
                }
            )
            print(
                f"  correction k={k:3d} rep {rep}: PQ rest {rest['pq']:.3f} (starting "
                f"model at that diameter {same['pq']:.3f}), common "
                f"{common['pq']:.3f}, other image {far['pq']:.3f}, fine-tune {time_s:.1f} s",
                flush=True,
            )
    return {
        "shape": [size, size],
        "radius": list(radius),
        "simulator": UNSEEN,
        "n_cells": int(ids.size),
        "n_cells_other_image": int(other.labels.max()),
        "ks": ks,
        "finetune_config": {
            k: v
            for k, v in vars(quick_finetune_config(weak=True, **overrides)).items()
            if k != "augment"
        },
        "rows": rows,
    }


# --------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------
def make_plots(result: dict, examples: dict, folder: Path, prefix: str = "papers_") -> list[str]:
    """Training curves, PQ bars, correction curve and overlays as PNG files in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    datasets = sorted({r["dataset"] for r in result["rows"]})

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for r in result["rows"]:
            if r["dataset"] != ds:
                continue
            y = np.asarray(r["loss_curve"], float)
            win = max(1, len(y) // 25)
            smooth = np.convolve(y, np.ones(win) / win, mode="valid") if y.size >= win else y
            ax.plot(np.arange(smooth.size) + win, smooth, label=r["method"], lw=1.2)
        ax.set(title=f"{ds}: training loss (moving mean)", xlabel="step", ylabel="loss")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    written.append(_save(fig, folder / f"{prefix}training_curves.png"))

    fig, axes = plt.subplots(len(datasets), 1, figsize=(10, 3.2 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets, strict=True):
        rows = [r for r in result["rows"] if r["dataset"] == ds]
        x = np.arange(len(rows))
        for j, post in enumerate(POSTS):
            ax.bar(
                x + (j - 1) * 0.27, [r["test"][post]["pq"] for r in rows], 0.27, label=post.upper()
            )
        ax.set_xticks(x, [r["method"] for r in rows], fontsize=8)
        ax.set(title=f"{ds}: PQ on the test split", ylabel="PQ", ylim=(0, 1))
        ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    written.append(_save(fig, folder / f"{prefix}pq_bars.png"))

    corr = result.get("correction")
    if corr:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        rows = corr["rows"]
        ks = corr["ks"]

        def mean_of(key: str) -> list[float]:
            return [
                float(np.mean([r.get(key, r["pq_rest"]) for r in rows if r["k"] == k])) for k in ks
            ]

        n_reps = len({r["repeat"] for r in rows})
        series = [("pq_rest", "o-", "rest of the image")]
        if any("pq_rest_start_model" in r for r in rows):
            series.append(
                ("pq_rest_start_model", "o-.", "rest, starting model at the annotated diameter")
            )
        for key, style, label in (
            *series,
            ("pq_common", "s--", f"cells no k annotates (k <= {max(ks)})"),
            ("pq_other_image", "^:", "another image of the domain"),
        ):
            (line,) = ax[0].plot(ks, mean_of(key), style, label=f"{label} (mean)")
            if n_reps > 1:  # every repetition, so the spread shows
                ax[0].scatter(
                    [r["k"] for r in rows],
                    [r.get(key, r["pq_rest"]) for r in rows],
                    s=12,
                    color=line.get_color(),
                    alpha=0.45,
                    marker=style[0],
                )
        ax[0].set(
            xlabel="annotated cells k",
            ylabel="PQ (MAP)",
            ylim=(0, 1),
            title=f"Correction curve ({n_reps} draw(s) of the annotated cells; dots: each)",
        )
        ax[0].legend(fontsize=8)
        ax[1].bar([str(k) for k in ks], mean_of("finetune_s"))
        ax[1].set(
            xlabel="annotated cells k",
            ylabel="s",
            title=f"one-click fine-tune wall time ({result['meta']['device']})",
        )
        fig.tight_layout()
        written.append(_save(fig, folder / f"{prefix}correction_curve.png"))

    test = examples.get("test")
    if test is not None and examples.get("probs"):
        shown = [
            m for m in ("UNET2", "UNET3", "SAW", "W3", "J4", "DDT+UNet2") if m in examples["probs"]
        ]
        shown = shown or list(examples["probs"])[:4]
        fig, axes = plt.subplots(
            2, len(shown) + 1, figsize=(2.6 * (len(shown) + 1), 5.4), squeeze=False
        )
        img = test["image"].astype(np.float32)
        lo, hi = np.percentile(img, (1, 99.8))
        img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
        axes[0, 0].imshow(img, cmap="gray")
        axes[0, 0].set_title("image", fontsize=8)
        axes[1, 0].imshow(img, cmap="gray")
        axes[1, 0].contour(
            find_boundaries(test["labels"]), levels=[0.5], colors="lime", linewidths=0.4
        )
        axes[1, 0].set_title("ground truth", fontsize=8)
        thresholds = {
            r["method"]: r["thresholds"] for r in result["rows"] if r["dataset"] == "crowded"
        }
        for j, m in enumerate(shown, start=1):
            pr = examples["probs"][m]
            rgb = np.stack([pr[0], pr[1], pr[2:].sum(0)], -1)  # bg / cell / touching(+gap)
            axes[0, j].imshow(np.clip(rgb, 0, 1))
            axes[0, j].set_title(f"{m}: bg/cell/touch", fontsize=8)
            lab = postprocess(pr, method="wt", **thresholds.get(m, {}).get("wt", {}))[0]
            axes[1, j].imshow(img, cmap="gray")
            axes[1, j].contour(find_boundaries(lab), levels=[0.5], colors="red", linewidths=0.4)
            axes[1, j].set_title(f"{m}: WT instances", fontsize=8)
        for a in axes.ravel():
            a.set_axis_off()
        fig.tight_layout()
        written.append(_save(fig, folder / f"{prefix}overlays.png"))
    meta = result.get("meta", {})
    radius = meta.get("preset_values", {}).get("radius", PRESETS["cpu"]["radius"])
    written.append(
        weight_map_figure(
            folder / f"{prefix}weight_maps.png", radius, int(meta.get("seed", DEFAULT_SEED))
        )
    )
    return written


def weight_map_figure(path: Path, radius: Sequence[float], seed: int, size: int = 128) -> str:
    """The weight maps whose reading changed (issue 18) on a simulated crowded crop: SAW's
    contour term with plain Gaussian passes (the old reading) and with the contour values
    kept (the current one), on one colour scale, and the overcrowding map (C 4.2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from napari_cellfocus.core.weights import class_balance_weights, shape_aware_weight_map

    scene = simulate_split(1, size, tuple(radius), (seed, 42), CROWDED)[0]
    lab = scene.labels
    base = class_balance_weights(class_target(lab, 3)) + 1.0
    terms = {
        rule: shape_aware_weight_map(lab, propagation=rule) - base for rule in ("blur", "keep")
    }
    # the map the Trainer builds: sigma = the cells' median radius (C: the average radius)
    crowd = target_and_weight(lab, TrainConfig(weights="overcrowding"))[1]
    img = scene.image.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    fig, axes = plt.subplots(1, 4, figsize=(15, 4))
    axes[0].imshow(img, cmap="gray")
    axes[0].contour(find_boundaries(lab), levels=[0.5], colors="lime", linewidths=0.4)
    axes[0].set_title("crowded crop, labels", fontsize=9)
    for ax, (rule, title) in zip(
        axes[1:3], (("blur", "plain passes (old)"), ("keep", "values kept")), strict=True
    ):
        im = ax.imshow(terms[rule], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"SAW contour term, {title}\nmax {terms[rule].max():.2f}", fontsize=8)
    fig.colorbar(im, ax=axes[1:3], fraction=0.025)
    im = axes[3].imshow(crowd, cmap="magma")
    axes[3].set_title(
        f"overcrowding map, sigma = median radius\n1 on cells, max {crowd.max():.2f}",
        fontsize=8,
    )
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    for a in axes:
        a.set_axis_off()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# --------------------------------------------------------------------------------------
# docs
# --------------------------------------------------------------------------------------
PAPERS_FIGURES = """\
### What the papers report (their data, not ours)

Thesis T, Table 2 (fully supervised T-cells, **test** set), contour F1 at radius 2..7:

| method | 2 | 3 | 4 | 5 | 6 | 7 |
|---|---|---|---|---|---|---|
| UNET2 | 0.6158 | 0.7116 | 0.7368 | 0.7627 | 0.7721 | 0.7828 |
| UNET3 | 0.6529 | 0.7505 | 0.7770 | 0.8021 | 0.8158 | 0.8238 |
| DWM | 0.6749 | 0.7847 | 0.8156 | 0.8398 | 0.8531 | 0.8604 |
| SAW | 0.7332 | 0.8298 | 0.8499 | 0.8699 | 0.8800 | 0.8860 |

T Table 3 (test set, Jaccard > 0.5): precision / recall / F1: UNET2 0.5546 / 0.2311 / 0.3262,
UNET3 0.7013 / 0.3717 / 0.4858, DWM 0.7046 / 0.5195 / 0.5980, SAW 0.8113 / 0.6713 / 0.7347.

T Table 4 (weak labels, T-cells; PQ per post-processing):

| method | MAP PQ | TH PQ | WT PQ |
|---|---|---|---|
| BWM (class balance) | 0.4858 | 0.7476 | 0.7437 |
| UNET (near-objects map) | 0.4556 | 0.7492 | 0.7621 |
| W3 | 0.5513 | 0.7604 | 0.7896 |

T Table 5 (tuned thresholds): W3 TH gamma1 0.6, gamma2 0.2; WT tau0 0.4, tau1 0.9; UNET WT 0.6 / 0.7.

T Table 6 (T-cells, P05 / RQ / SQ / PQ): W3 MAP 0.7384 / 0.6305 / 0.8721 / 0.5513; W3 WT
0.9028 / 0.8775 / 0.8995 / 0.7896; J3 MAP 0.9127 / 0.9069 / 0.8733 / 0.7921; J4 MAP
0.9334 / 0.9353 / 0.8689 / 0.8132. T Table 7: PQ J3 / J4 = 0.7633 / 0.7841 (DIC-HeLa),
0.7237 / 0.7764 (HeLa, zero-shot), 0.7921 / 0.8132 (T-cells).

DDT paper D, Tables 2-3 (BBBC006, 5-fold): UNet1 BDE 0.628, WDMC 0.930, F1 0.946; DDT+UNet1
0.821 / 0.924 / 0.922; DDT+UNet2 0.614 / 0.938 / 0.938.

Counting paper C, Table 1: F1 0.87, MAE 0.85 cells, MedAE 1, mean IoU 0.74.

The papers' rankings: SAW > DWM > UNET3 > UNET2 (T Tables 2-3); W3 > UNET, BWM under WT (T
Table 4); J4 > J3 > W3 with MAP (T Table 6); DDT+UNet2 >= UNet1 > DDT+UNet1 on BDE/WDMC (D).
"""


def _protocol(p: dict[str, Any] | None, label: str = "this run") -> str:
    sizes = ""
    if p is not None:
        sizes = (
            f"\nSizes of {label}: {p['n_train']} training, {p['n_val']} validation, {p['n_test']} "
            f"test images of {p['size']}x{p['size']} px, nucleus radius {p['radius'][0]:g}-"
            f"{p['radius'][1]:g} px; U-Net depth {p['depth']}, width {p['width']}; {p['steps']} "
            f"steps of {p['batch_size']} crops of {p['crop_size']} px, Adam lr {p['lr']:g} with "
            "cosine decay. Correction curve on a "
            f"{p['corr_size']}x{p['corr_size']} image, nucleus radius {p['corr_radius'][0]:g}-"
            f"{p['corr_radius'][1]:g} px, k in {list(p['corr_ks'])}, {p['corr_repeats']} draw(s).\n"
        )
    return f"""\
## Protocol

- **Data** (`core.simulate.simulate_cells`, seeded): *crowded* = confluent, clumped nuclei,
  90 % of contacting pairs pressed together (`CROWDED` in the script: density 0.55, cluster
  fraction 1, touching 0.9, 300 photons/pixel, 8-bit). *weak* = the same training images with
  weakened training labels: 30-50 % of the cells left unannotated (background in the labels)
  and every remaining contour eroded or dilated by 1-2 px (dilation only into background).
  Validation and test labels are complete in both datasets (thresholds are tuned and scores
  computed against full ground truth).
- **Training**: one `engine.train.Trainer` per method and dataset, same seed (hence the same
  network initialisation, crop positions and augmentations at every step), same U-Net, Adam with
  cosine decay. Losses: UNET2 / UNET3 = weighted CE with the U-Net near-objects map on 2 / 3
  classes; DWM, SAW = weighted CE with those maps (SAW's contour term propagated by the 20
  Gaussian passes without losing its contour values, docs/methods.md); W3 = weighted CE with
  the triplex map (`weak=True`, also on the crowded set); J3 / J4 = CE + Youden regulariser
  (3 / 4 classes, no weight map, as in T 5.2.2; on the weak set the unannotated cells are
  background for them, as for every method but W3); J4-W3 (weak set only) = J4 in the
  Trainer's weak mode: W3-weighted mean CE over the annotated zone (within 30 px of an
  annotated cell) + J over that zone; Jaccard = soft Jaccard; UNet1 = plain CE (the DDT
  paper's baseline); DDT+UNet1 / DDT+UNet2 = DDT backbone (MAE) + top U-Net on [DDT] /
  [DDT, image] with CE, in one run with the class loss stopped at the DDT (`ddt_network`,
  `detach_ddt=True`: D's two-stage training); ResCount = residual U-Net (C 4.4) with the
  overcrowding map (Gaussians of sigma = the cells' median radius summed on background only,
  floored at 1, times the class weights 1 / 1.5).
- **Post-processing**: MAP; TH (gamma1, gamma2) and WT (tau0, tau1) with thresholds chosen by
  grid search for the best PQ on the validation split (`core.postprocess.search_thresholds`);
  for ResCount also the counting paper's binary threshold + size-aware watershed, cutoff chosen
  by F1 on validation (C 5.1).
- **Scores** on the test split: precision, recall, F1 (= RQ), SQ, PQ with IoU > 0.5, true
  positives pooled over images; contour F1 at radii 2-7 (mean over images); BDE (mean over
  images, images without any predicted boundary counted separately); WDMC (0.3 / 0.3 / 0.4) of
  the argmax class map against the 3-class target; count MAE over test images; for ResCount
  also centroid F1 (C 5.1, pairs closer than a mean cell diameter) with C's
  nearest-prediction rule and with the optimal assignment.
- **Correction curve**: the built-in model (`init="default"`), an image from a simulated domain
  outside its training range (`UNSEEN` in the script: nucleus radius 27-36 px against 4-25,
  irregularity 0.3 against 0-0.2, elongation 0.6 against 0.05-0.45; dim, 12 photons/pixel,
  near the low end of 8-5000; crowded and clumped). A simulated user annotates k cells (a seeded random order; the k
  cells are the first k of it, so the sets are nested) with their exact contours, everything
  else unannotated (weak mode). One-click fine-tune `quick_finetune_config(weak=True)` (30
  steps of 4 crops of 192 px with the encoder frozen, lr 5e-4, frozen batch norm, pseudo-labels
  outside the annotated zone; until issue 16: 100 steps of every weight), at the scale of the
  annotated cells (the image resampled so their median diameter is the model's 20 px). PQ
  (MAP) on the rest of the image: ground truth without the annotated cells, prediction
  without the objects overlapping them, the image predicted at the annotated cells' diameter
  as the widget does after a fine-tune (k = 0: at the estimated diameter); beside it the
  starting model at that same diameter, so the fine-tune's share and the diameter's are
  apart. Also PQ on the cells no k annotates (the same cells for every k) and on a second
  image of the same domain (its diameter estimated). Wall time of each fine-tune (including
  the target construction and the pseudo-label prediction).
{sizes}
### Choices and deviations

- UNET2: the benchmark trains the 3-class network with the touching class merged into
  background in the target and the U-Net map recomputed from that binary target; the third
  output is never a target and its probability goes to zero, so the model is the 2-class one
  up to an unused logit. The package now has a real 2-class mode (`TrainConfig(n_classes=2)`,
  `cellfocus train --classes 2`, 2-class MAP / TH / WT, docs/methods.md); the benchmark
  still uses the merged target, which the runs on this page were made with.
- The counting network's output is 3-class here (Trainer), not the paper's 1-channel sigmoid;
  its foreground is 1 - p(background).
- W3 samples 90 % of its crops around annotated pixels (the Trainer's weak mode), so its crop
  positions differ from the other methods'; every other method sees the same crops.
- Learning rate 1e-3 with cosine decay (the thesis uses 1e-4 for many epochs); the budget is
  a thousand steps on the CPU (`cpu` preset), far from the papers' convergence.
- The thesis' T-cell, DIC-HeLa and BBBC006 data are not used: simulated data only. Absolute
  figures are not comparable to the papers'; rankings are.
"""


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


#: The papers' orderings, checked against ours: (source, dataset, post-processing, score,
#: methods in the papers' order best first, True when lower is better).
PAPER_RANKINGS: tuple[tuple[str, str, str, str, tuple[str, ...], bool], ...] = (
    (
        "T Table 2 (contour F1, r = 2)",
        "crowded",
        "wt",
        "cf2",
        ("SAW", "DWM", "UNET3", "UNET2"),
        False,
    ),
    ("T Table 3 (F1)", "crowded", "wt", "f1", ("SAW", "DWM", "UNET3", "UNET2"), False),
    ("T Table 4 (weak labels, WT PQ)", "weak", "wt", "pq", ("W3", "UNET3"), False),
    ("T Table 4 (weak labels, MAP PQ)", "weak", "map", "pq", ("W3", "UNET3"), False),
    ("T Table 6 (MAP PQ)", "crowded", "map", "pq", ("J4", "J3", "W3"), False),
    ("T Table 6 (weak labels, MAP PQ)", "weak", "map", "pq", ("J4", "J3", "W3"), False),
    ("D Tables 2-3 (BDE)", "crowded", "wt", "bde", ("DDT+UNet2", "UNet1", "DDT+UNet1"), True),
    ("D Tables 2-3 (WDMC)", "crowded", "-", "wdmc", ("DDT+UNet2", "UNet1", "DDT+UNet1"), False),
)

ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"


def _score(row: dict, post: str, key: str) -> float | None:
    if key == "wdmc":
        return row["test"]["wdmc"]
    s = row["test"][post]
    return s["contour_f1"]["2"] if key == "cf2" else s[key]


def ranking_checks(result: dict) -> list[dict[str, Any]]:
    """Each ordering of the papers next to ours on the same score (methods run only)."""
    checks = []
    for source, ds, post, key, order, lower in PAPER_RANKINGS:
        rows = {r["method"]: r for r in result["rows"] if r["dataset"] == ds}
        present = [m for m in order if m in rows and _score(rows[m], post, key) is not None]
        if len(present) < 2:
            continue
        values = {m: _score(rows[m], post, key) for m in present}
        ours = sorted(present, key=lambda m: values[m], reverse=not lower)
        checks.append(
            {
                "source": source,
                "dataset": ds,
                "papers": [m for m in order if m in present],
                "ours": ours,
                "values": values,
                "agrees": ours == [m for m in order if m in present],
            }
        )
    return checks


def _kept_analysis(path: Path | None) -> str | None:
    """The hand-written analysis of an existing docs/papers.md, to survive a re-render."""
    if path is None or not path.exists():
        return None
    text = path.read_text()
    if ANALYSIS_START in text and ANALYSIS_END in text:
        return text[text.index(ANALYSIS_START) + len(ANALYSIS_START) : text.index(ANALYSIS_END)]
    return None


def render_markdown(result: dict | None, previous: Path | None = None) -> str:
    """docs/papers.md: protocol, papers' figures and (after a full run) our tables.

    The text between the analysis markers of ``previous`` (the page being replaced) is
    kept, so a re-run updates the tables without losing the written comparison.
    """
    head = """\
# The papers' comparisons on simulated data

`benchmarks/bench_papers.py` retrains the losses and networks of the thesis (T), the DDT paper
(D) and the counting paper (C) on the project's simulated data and compares them as the papers
do, and measures the plugin's correction curve (PQ against the number of annotated cells).

```bash
.venv/bin/python benchmarks/bench_papers.py                 # reduced size, 2-core CPU, ~1 h
.venv/bin/python benchmarks/bench_papers.py --device cuda   # full size on a GPU
.venv/bin/python benchmarks/bench_papers.py --quick         # smoke test (CI), no docs
.venv/bin/python benchmarks/bench_papers.py --estimate      # time estimate of the full run
```

Every trained method is saved as it finishes: an interrupted run goes on with `--resume`, and
`--max-minutes M` splits a long run into calls of at most about M minutes (exit code 3 until
the last call writes the result), e.g. `--device cuda --max-minutes 9 --resume` on a GPU
machine lent in short sessions.
"""
    if result is None:
        p = PRESETS["cpu"]
        return (
            head
            + "\n**Status: the tables are pending the first full run.** No figure on this page\n"
            "comes from our runs yet; the numbers below are the papers' own.\n\n"
            + "<!-- time estimate -->\n\n"
            + _protocol(p, "the `cpu` preset")
            + "\n"
            + PAPERS_FIGURES
        )
    meta = result["meta"]
    p = meta["preset_values"]
    lines = [head]
    lines.append(
        f"Latest full run: `{meta['command']}`, seed {meta['seed']}, device {meta['device']}, "
        f"{meta['date']}, commit `{meta['commit']}`, total {meta['total_s'] / 60:.0f} min "
        f"(preset `{meta['preset']}`).\n"
    )
    if meta.get("sessions"):
        calls = "; ".join(
            f"{c['date']}, `{c['commit']}`, {c['total_s'] / 60:.0f} min, {c['runs']} run(s) done"
            for c in meta["sessions"]
        )
        lines.append(f"Made in {len(meta['sessions'])} resumed calls: {calls}.\n")
    lines.append(_protocol(p))
    for ds in ("crowded", "weak"):
        rows = [r for r in result["rows"] if r["dataset"] == ds]
        if not rows:
            continue
        lines.append(f"\n## Results: {ds} dataset\n")
        lines.append(
            f"Like T Table 2: contour F1 at radius 2..7 (WT, test, {ds}).\n\n"
            "| method | " + " | ".join(str(r) for r in RADII) + " |\n|---|" + "---|" * len(RADII)
        )
        for r in rows:
            cf = r["test"]["wt"]["contour_f1"]
            lines.append(
                f"| {r['method']} | " + " | ".join(_fmt(cf[str(k)]) for k in RADII) + " |"
            )
        lines.append(
            "\nLike T Tables 3, 4 and 6: detection and panoptic scores per post-processing (test).\n\n"
            "| method | post | P | R | F1 | SQ | RQ | PQ | count MAE |\n|---|---|---|---|---|---|---|---|---|"
        )
        for r in rows:
            posts = [*POSTS, *(["binary"] if "binary" in r["test"] else [])]
            for post in posts:
                s = r["test"][post]
                lines.append(
                    f"| {r['method']} | {post.upper()} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | "
                    f"{_fmt(s['f1'])} | {_fmt(s['sq'])} | {_fmt(s['rq'])} | {_fmt(s['pq'])} | "
                    f"{_fmt(s['count_mae'], 2)} |"
                )
        lines.append(
            "\nLike T Table 5: thresholds tuned on the validation split (best PQ).\n\n"
            "| method | gamma1 | gamma2 | tau0 | tau1 | train s | s/step |\n|---|---|---|---|---|---|---|"
        )
        for r in rows:
            th, wt = r["thresholds"]["th"], r["thresholds"]["wt"]
            lines.append(
                f"| {r['method']} | {th['gamma1']:.2f} | {th['gamma2']:.2f} | {wt['tau0']:.2f} | "
                f"{wt['tau1']:.2f} | {r['train_s']:.0f} | {r['s_per_step']:.2f} |"
            )
        if ds == "crowded":
            ddt = [r for r in rows if r["method"] in ("UNet1", "DDT+UNet1", "DDT+UNet2")]
            if ddt:
                lines.append(
                    "\nLike D Tables 2-3 (WT instances for BDE, P, R, F1; argmax class map for WDMC).\n\n"
                    "| pipeline | BDE (px) | WDMC | P | R | F1 |\n|---|---|---|---|---|---|"
                )
                for r in ddt:
                    s = r["test"]["wt"]
                    lines.append(
                        f"| {r['method']} | {_fmt(s['bde'])} | {_fmt(r['test']['wdmc'])} | "
                        f"{_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} |"
                    )
            cnt = [r for r in rows if "binary" in r["test"]]
            for r in cnt:
                s = r["test"]["binary"]
                centroid = ""
                if "centroid_f1_nearest" in s:
                    centroid = (
                        f" Centroid F1 (centroids closer than {s['centroid_distance']:g} px): "
                        f"{_fmt(s['centroid_f1_nearest'])} with C's nearest-prediction rule, "
                        f"{_fmt(s['centroid_f1_optimal'])} with the optimal assignment."
                    )
                lines.append(
                    f"\nLike C Table 1 ({r['method']}, binary threshold + watershed, cutoff "
                    f"{r['thresholds']['binary']['threshold']:.2f}): F1 {_fmt(s['f1'])}, count MAE "
                    f"{_fmt(s['count_mae'], 2)}, MedAE {_fmt(s['count_median_ae'], 2)}, mean IoU "
                    f"{_fmt(s['mean_iou'])}.{centroid}"
                )
        ranking = sorted(rows, key=lambda r: -r["test"]["wt"]["pq"])
        lines.append(
            "\nOur ranking by WT PQ: "
            + " > ".join(f"{r['method']} ({r['test']['wt']['pq']:.3f})" for r in ranking)
            + "."
        )
    corr = result.get("correction")
    if corr:
        lines.append("\n## Correction curve\n")
        cm = result.get("correction_meta")
        if cm:
            when = cm.get("note") or "Re-run on its own after the tables above"
            lines.append(
                f"{when}: `{cm['command']}`, seed {cm['seed']}, "
                f"device {cm['device']}, {cm['date']}, commit `{cm['commit']}`, "
                f"{cm['total_s'] / 60:.0f} min.\n"
            )
        lines.append(
            "PQ rest: on the cells not annotated (predictions touching an annotated cell left "
            "out), the image predicted at the annotated cells' median diameter after a "
            "fine-tune (as the widget shows it) and at the estimated diameter for k = 0; "
            "starting model: the built-in model at that same diameter, no fine-tune. PQ "
            "other image: another image of the domain at its estimated diameter.\n"
        )
        lines.append(
            "| k | PQ rest | PQ rest, starting model | F1 rest | PQ common cells | PQ other image "
            "| fine-tune s |\n|---|---|---|---|---|---|---|"
        )
        for k in corr["ks"]:
            rs = [r for r in corr["rows"] if r["k"] == k]
            start = [r["pq_rest_start_model"] for r in rs if "pq_rest_start_model" in r]
            lines.append(
                f"| {k} | {np.mean([r['pq_rest'] for r in rs]):.3f} | "
                f"{_fmt(float(np.mean(start))) if start else '-'} | "
                f"{np.mean([r['f1_rest'] for r in rs]):.3f} | "
                f"{np.mean([r['pq_common'] for r in rs]):.3f} | {np.mean([r['pq_other_image'] for r in rs]):.3f} | "
                f"{np.mean([r['finetune_s'] for r in rs]):.1f} |"
            )
        lines.append("\n![correction curve](images/papers_correction_curve.png)\n")
    lines.append(
        "\n## Plots\n\n![training curves](images/papers_training_curves.png)\n\n"
        "![PQ bars](images/papers_pq_bars.png)\n\n![overlays](images/papers_overlays.png)\n\n"
        "![weight maps](images/papers_weight_maps.png)\n"
    )
    lines.append("\n## Where our ranking differs from the papers'\n")
    lines.append(
        "Computed from this run: each ordering the papers report, and ours on the same score "
        "(best first; BDE lower is better).\n\n"
        "| papers' claim | dataset | papers' order | our order (values) | same? |\n"
        "|---|---|---|---|---|"
    )
    for c in ranking_checks(result):
        values = ", ".join(f"{m} {_fmt(c['values'][m])}" for m in c["ours"])
        lines.append(
            f"| {c['source']} | {c['dataset']} | {' > '.join(c['papers'])} | "
            f"{' > '.join(c['ours'])} ({values}) | {'yes' if c['agrees'] else '**no**'} |"
        )
    kept = _kept_analysis(previous)
    lines.append(
        "\n"
        + ANALYSIS_START
        + (
            kept
            if kept is not None
            else "\n*To be written by whoever reads this run:* the likely reason for each "
            "difference (simulated vs real data, training budget, dataset size).\n"
        )
        + ANALYSIS_END
    )
    lines.append("\n" + PAPERS_FIGURES)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _progress_paths(out: Path, suffix: str) -> tuple[Path, Path]:
    """Where an unfinished run keeps its finished rows (JSON) and example maps (npz)."""
    return out / f"papers{suffix}_progress.json", out / f"papers{suffix}_progress_probs.npz"


def _load_progress(
    paths: tuple[Path, Path], key: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
    """The saved progress of a run with the same settings (``key``), or None."""
    path, probs_path = paths
    if not path.exists():
        return None, {}
    saved = json.loads(path.read_text())
    if saved.get("key") != _jsonable(key):
        raise SystemExit(
            f"{path} holds a run with other settings ({saved.get('key')}); delete it to start "
            "afresh, or drop --resume."
        )
    probs = {}
    if probs_path.exists():
        with np.load(probs_path) as npz:
            probs = {name: npz[name].astype(np.float32) for name in npz.files}
    return saved, probs


def _save_progress(
    paths: tuple[Path, Path],
    key: dict[str, Any],
    rows: list[dict],
    correction: dict | None,
    chunks: list[dict],
    probs: dict[str, np.ndarray],
) -> None:
    """Write the finished part of a run (atomically) so ``--resume`` can go on from it."""
    path, probs_path = paths
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"key": key, "rows": rows, "correction": correction, "chunks": chunks}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1))
    tmp.replace(path)
    tmp_npz = probs_path.with_name(probs_path.stem + ".tmp.npz")
    np.savez_compressed(tmp_npz, **{k: v.astype(np.float16) for k, v in probs.items()})
    tmp_npz.replace(probs_path)


def _correction_estimate_s(p: dict[str, Any], rows: list[dict]) -> float:
    """Rough time of the correction curve: one-click fine-tunes at the measured s/step."""
    if not rows:
        return 0.0
    per_step = float(np.median([r["s_per_step"] for r in rows]))
    n_finetunes = p["corr_repeats"] * sum(1 for k in p["corr_ks"] if k > 0)
    steps = p["corr_overrides"].get("steps", quick_finetune_config().steps)
    # fine-tune crops are larger than the benchmark's, and each fine-tune also builds its
    # targets, predicts pseudo-labels and scores three images: x2 per step plus 10 s, generous
    return n_finetunes * (steps * per_step * 2.0 + 10.0)


def run(args: argparse.Namespace) -> dict:
    """Run the whole benchmark; returns the result dict (with in-memory examples).

    After every trained method the finished rows are saved next to the result
    (``papers*_progress.json``); ``--resume`` goes on from there, and ``--max-minutes`` stops
    before a step that would not fit (the result then has ``"incomplete": True``). The
    finished result is the same as that of one uninterrupted run.
    """
    preset = (
        "quick"
        if args.quick
        else args.preset or ("gpu" if args.device.startswith("cuda") else "cpu")
    )
    p = copy.deepcopy(PRESETS[preset])
    if getattr(args, "draws", None):
        p["corr_repeats"] = args.draws
    steps = 10 if args.estimate else (args.steps or p["steps"])
    ft_steps = 5 if args.estimate else args.finetune_steps
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    budget_s = math.inf if args.max_minutes is None else 60.0 * args.max_minutes
    specs = method_specs(p["depth"], p["width"])
    wanted = set(args.methods.split(",")) if args.methods else set(specs)
    unknown = wanted - set(specs)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose among {sorted(specs)}")
    print(f"preset {preset}: {p}", flush=True)
    suffix = _suffix(args)
    paths = _progress_paths(args.out, suffix)
    key = {
        "preset": preset,
        "preset_values": p,
        "seed": args.seed,
        "steps": steps,
        "methods": sorted(wanted),
        "correction": not args.no_correction,
        "finetune_steps": ft_steps,
        "device": args.device,
    }
    saved, probs = _load_progress(paths, key) if args.resume else (None, {})
    rows: list[dict] = list(saved["rows"]) if saved else []
    correction = saved["correction"] if saved else None
    chunks: list[dict] = list(saved["chunks"]) if saved else []
    if saved:
        print(f"resuming {paths[0]}: {len(rows)} run(s) done", flush=True)
    done = {(r["dataset"], r["method"]) for r in rows}
    datasets = make_datasets(p, args.seed)
    examples: dict[str, Any] = {"probs": probs}
    examples["test"] = {
        "image": datasets["crowded"]["test_images"][0],
        "labels": datasets["crowded"]["test_labels"][0],
    }
    todo = [
        (ds, name)
        for ds in ("crowded", "weak")
        for name, spec in specs.items()
        if name in wanted and ds in spec["data"] and (ds, name) not in done
    ]

    def out_of_time(next_s: float) -> bool:
        return time.perf_counter() - t_start + next_s > budget_s

    def checkpoint() -> None:
        chunk = {**_stamp(args, time.perf_counter() - t_start), "runs": len(rows)}
        _save_progress(paths, key, rows, correction, [*chunks, chunk], examples["probs"])

    incomplete = False
    ran = 0
    for ds, name in todo:
        own = rows[-ran:] if ran else []  # this call's runs time the next one
        if own and out_of_time(np.mean([r["prep_s"] + r["train_s"] + r["eval_s"] for r in own])):
            incomplete = True
            break
        spec = specs[name]
        row = train_one(name, spec, datasets[ds], p, args.seed, args.device, steps)
        row["dataset"] = ds
        example_probs = row.pop("_example_probs")
        if ds == "crowded":
            examples["probs"][name] = example_probs
        wt = row["test"]["wt"]
        print(
            f"{ds:8s} {name:10s} {row['steps']} steps {row['train_s']:.1f} s "
            f"({row['s_per_step']:.3f} s/step), eval {row['eval_s']:.1f} s: "
            f"WT PQ {wt['pq']:.3f} F1 {wt['f1']:.3f}, MAP PQ {row['test']['map']['pq']:.3f}",
            flush=True,
        )
        rows.append(_jsonable(row))
        ran += 1
        checkpoint()
    if not incomplete and not args.no_correction and correction is None:
        if ran and out_of_time(_correction_estimate_s(p, rows)):
            incomplete = True
        else:
            correction = _jsonable(correction_curve(p, args.seed, args.device, ft_steps))
            checkpoint()
    elapsed = time.perf_counter() - t_start
    if incomplete:
        todo_left = len(todo) - ran + (0 if args.no_correction or correction else 1)
        print(
            f"stopped within --max-minutes {args.max_minutes}: {len(rows)} run(s) done, "
            f"{todo_left} step(s) left (saved in {paths[0]}); run the same command with "
            "--resume to go on.",
            flush=True,
        )
        return {"incomplete": True, "_examples": examples}
    total = elapsed + sum(c["total_s"] for c in chunks)
    stamp = _stamp(args, total)
    if chunks:  # a resumed run lists the calls it was made in
        last = {**stamp, "total_s": elapsed, "runs": len(rows)}
        stamp["sessions"] = [
            {k: c[k] for k in ("date", "commit", "total_s", "runs")} for c in [*chunks, last]
        ]
    result = {
        "meta": {
            **stamp,
            "preset": preset,
            "preset_values": p,
            "machine": platform.platform(),
            "steps": steps,
        },
        "rows": rows,
        "correction": correction,
    }
    if args.estimate:
        full_steps = args.steps or p["steps"]
        train = sum(r["s_per_step"] * full_steps + r["prep_s"] + r["eval_s"] for r in rows)
        corr = 0.0
        if correction:
            ft_full = quick_finetune_config().steps
            for r in correction["rows"]:
                if r["steps"]:
                    corr += r["finetune_s"] / r["steps"] * ft_full
        result["estimate"] = {
            "full_steps": full_steps,
            "training_and_eval_s": train,
            "correction_s": corr,
            "total_s": train + corr,
        }
        print(f"estimated full run ({preset}): {(train + corr) / 60:.0f} min", flush=True)
    return {**result, "_examples": examples, "_progress": paths}


def _suffix(args: argparse.Namespace) -> str:
    return "_quick" if args.quick else "_estimate" if args.estimate else ""


def _correction_only(args: argparse.Namespace) -> int:
    """Re-run the correction curve alone and put it into the saved full run (``papers.json``
    in ``--out``), recording its own command, date and commit; then re-render the docs."""
    path = args.out / "papers.json"
    if not path.exists():
        raise SystemExit(f"{path}: no saved full run to update; run the full benchmark first.")
    saved = json.loads(path.read_text())
    p = copy.deepcopy(saved["meta"]["preset_values"])
    if args.draws:
        p["corr_repeats"] = args.draws
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    saved["correction"] = correction_curve(p, args.seed, args.device, args.finetune_steps)
    saved["meta"]["preset_values"]["corr_repeats"] = p["corr_repeats"]
    saved["correction_meta"] = _stamp(args, time.perf_counter() - start)
    path.write_text(json.dumps(_jsonable(saved), indent=1))
    print(f"wrote {path}", flush=True)
    if not args.no_docs:
        _write_docs(saved, {}, args.docs)
    return 0


def _stamp(args: argparse.Namespace, total_s: float) -> dict[str, Any]:
    """What the docs name for a run: command, seed, device, threads, date, commit, time."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seed": args.seed,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # the code the run started from (later commits may land while it runs)
        "commit": getattr(args, "start_commit", None) or _commit(),
        "total_s": total_s,
    }


def _write_docs(result: dict, examples: dict, docs: Path) -> None:
    """docs/papers.md (keeping its written analysis) and the plots (the overlays only when
    ``examples`` holds the run's probability maps)."""
    docs.mkdir(parents=True, exist_ok=True)
    page = docs / "papers.md"
    page.write_text(render_markdown(_jsonable(result), previous=page))
    written = make_plots(result, examples, docs / "images")
    print(f"wrote {page} and {', '.join(Path(w).name for w in written)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; docs untouched")
    parser.add_argument("--estimate", action="store_true", help="10 steps per method, extrapolate")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="default: cpu, or gpu with --device cuda"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--steps", type=int, help="override the preset's training steps")
    parser.add_argument("--methods", help="comma-separated subset, e.g. SAW,W3,J4")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-correction", action="store_true")
    parser.add_argument(
        "--correction-only",
        action="store_true",
        help="re-run only the correction curve and update the saved full run and docs",
    )
    parser.add_argument("--draws", type=int, help="override the preset's correction draws")
    parser.add_argument(
        "--finetune-steps",
        type=int,
        help="steps of each correction fine-tune instead of the one-click budget (30)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from the saved progress of an interrupted or time-limited run",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        help=f"stop (exit code {INCOMPLETE}, progress saved) before a method that would not "
        "fit; at least one method runs per call",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--no-docs", action="store_true", help="full run without writing docs")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rewrite docs/papers.md and its plots from a saved full run (not the overlays)",
    )
    args = parser.parse_args(argv)
    args.start_commit = _commit()
    if args.correction_only:
        return _correction_only(args)
    if args.render:
        _write_docs(json.loads(args.render.read_text()), {}, args.docs)
        return 0
    result = run(args)
    examples = result.pop("_examples")
    if result.get("incomplete"):
        return INCOMPLETE
    suffix = _suffix(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"papers{suffix}.json"
    path.write_text(json.dumps(_jsonable(result), indent=1))
    print(f"wrote {path}", flush=True)
    for done in result.pop("_progress"):
        done.unlink(missing_ok=True)
    if args.quick or args.estimate:
        written = make_plots(result, examples, args.out / f"papers{suffix}_images")
        print("plots:", ", ".join(written), flush=True)
    elif not args.no_docs:
        _write_docs(result, examples, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
