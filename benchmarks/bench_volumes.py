"""Volumes and movies with the built-in 2D model: orthogonal views vs z stitching vs plane
by plane, linking.

Run from the repository root (about 15 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/bench_volumes.py [--volumes 3] [--device cpu]

* **Volumes**: simulated (24, 128, 128) volumes (``core.simulate.simulate_cells``, its
  default settings: touching nuclei in clumps, radius 6-12 px, z step twice the pixel
  size, so a nucleus spans about 6-12 planes), segmented by the built-in 2D model with
  the diameter estimated, once with z stitching (``z_mode="stitch"``, IoU >= 0.25; the
  same per-plane labels also stitched at 0.1 and 0.5), once plane by plane, and once
  from orthogonal views (``z_mode="ortho"``, ``z_scale`` = the simulator's
  ``z_anisotropy``: YX planes, ZX and ZY slices of the z-rescaled volume, class
  probabilities averaged, post-processed in 3D; variants from the same three views:
  boundary classes by maximum, MAP instead of TH, no z cut, the YX view alone in 3D).
  3D PQ, F1 (IoU > 0.5) and count error against the 3D ground truth
  (``core.metrics.evaluate`` works in 3D), time per volume.
* **2D reference**: the same model on 2D images simulated with the same settings
  (128 x 128): 2D PQ. The issue's criterion: 3D PQ within 0.1 of 2D PQ, count within 10 %.
* **Movie**: a (6, 128, 128) movie made of a 2D scene shifted by 1 px per frame
  (``np.roll``), segmented with ``link_frames=True``: the fraction of ground-truth cells
  matched (IoU > 0.5) in every frame that keep one predicted id through all frames.

Writes ``benchmarks/results/volumes.json`` and the section between the ``volumes``
markers at the end of ``docs/benchmarks.md`` (appended the first time; other sections
are left as they are).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_cellfocus.core.metrics import evaluate, match_instances  # noqa: E402
from napari_cellfocus.core.postprocess import postprocess  # noqa: E402
from napari_cellfocus.core.simulate import simulate_cells  # noqa: E402
from napari_cellfocus.core.stitch import combine_views, stitch_planes, trim_z  # noqa: E402
from napari_cellfocus.engine.segment import (  # noqa: E402
    DEFAULT_Z_MODE,
    ORTHO_POST_PARAMS,
    Segmenter,
    postprocess_planes,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "volumes.json"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- volumes:start -->", "<!-- volumes:end -->"
VOLUME_SHAPE = (24, 128, 128)
PLANE_SHAPE = (128, 128)
THRESHOLDS = (0.1, 0.25, 0.5, 0.7)
#: z cuts compared with the default (0.6): share of a cell's brightest plane kept.
Z_TRIMS = (0.5, 0.6, 0.7)
#: Variants of the orthogonal views' combination and 3D post-processing, from the same
#: three views: (boundary combination, method, parameters or None = ortho's own, z cut).
ORTHO_VARIANTS = {
    "ortho_max": ("max", "th", None, 0.6),
    "ortho_no_cut": ("mean", "th", None, None),
    "ortho_th_0.5": ("mean", "th", {"gamma1": 0.5, "gamma2": 0.3}, 0.6),
    "ortho_map": ("mean", "map", {}, 0.6),
    "ortho_max_map": ("max", "map", {}, 0.6),
    "ortho_yx_only": ("yx", "th", None, 0.6),
}


def _scores(gt: np.ndarray, pred: np.ndarray) -> dict:
    ev = evaluate(gt, pred)
    n_true, n_pred = int(ev["n_true"]), int(ev["n_pred"])
    return {
        "pq": float(ev["pq"]),
        "f1": float(ev["f1"]),
        "n_true": n_true,
        "n_pred": n_pred,
        "count_error": (n_pred - n_true) / max(1, n_true),
    }


def _ortho_variants(scene, res, views: list[np.ndarray]) -> dict:
    """Scores of :data:`ORTHO_VARIANTS` post-processed from the three views of ``res``."""
    out = {}
    for key, (boundary, method, params, cut) in ORTHO_VARIANTS.items():
        probs = views[0] if boundary == "yx" else combine_views(views, boundary)
        params = dict(ORTHO_POST_PARAMS) if params is None else dict(params)
        params["min_size"] = res.post_params["min_size"]
        labels, _ = postprocess(probs, method=method, **params)
        if cut:
            labels = trim_z(labels, scene.image, cut)
        out[key] = _scores(scene.labels, labels)
    return out


def run_volumes(seg: Segmenter, n: int) -> dict:
    per = []
    for seed in range(n):
        scene = simulate_cells(shape=VOLUME_SHAPE, seed=100 + seed)
        z_scale = float(scene.params["z_anisotropy"])
        t0 = time.perf_counter()
        res = seg.segment(scene.image, axes="ZYX", z_mode="stitch")
        t_stitch = time.perf_counter() - t0
        views: list[np.ndarray] = []
        t0 = time.perf_counter()
        ortho = seg.segment(
            scene.image, axes="ZYX", z_mode="ortho", z_scale=z_scale, ortho_views=views
        )
        t_ortho = time.perf_counter() - t0
        t0 = time.perf_counter()
        planes, _ = postprocess_planes(res.probs, 2, res.method, res.post_params or {})
        t_planes_post = time.perf_counter() - t0
        row = {
            "seed": 100 + seed,
            "diameter_px": res.diameter,
            "z_scale": z_scale,
            "seconds_per_volume": t_stitch,
            "seconds_per_volume_ortho": t_ortho,
            "seconds_stitching_only": None,
            "stitch": _scores(scene.labels, res.labels),
            "planes": _scores(scene.labels, planes),
            "ortho": _scores(scene.labels, ortho.labels),
            "ortho_min_size": ortho.post_params["min_size"],
            **_ortho_variants(scene, ortho, views),
        }
        t0 = time.perf_counter()
        for thr in THRESHOLDS:
            row[f"stitch_{thr}"] = _scores(scene.labels, stitch_planes(planes, thr))
        row["seconds_stitching_only"] = (time.perf_counter() - t0) / len(THRESHOLDS)
        stitched = stitch_planes(planes, 0.25)
        for frac in Z_TRIMS:
            row[f"trim_{frac}"] = _scores(scene.labels, trim_z(stitched, scene.image, frac))
        # diagnosis: 2D PQ of each plane against the ground truth's cut through it
        cut = [z for z in range(planes.shape[0]) if scene.labels[z].any()]
        row["slice_pq_2d"] = float(
            np.mean([evaluate(scene.labels[z], planes[z])["pq"] for z in cut])
        )
        row["seconds_postprocess_planes"] = t_planes_post
        per.append(row)
        print(
            f"volume {seed}: true {row['stitch']['n_true']}, stitched {row['stitch']['n_pred']} "
            f"(PQ {row['stitch']['pq']:.3f}), planes {row['planes']['n_pred']} "
            f"(PQ {row['planes']['pq']:.3f}), {t_stitch:.1f} s; ortho {row['ortho']['n_pred']} "
            f"(PQ {row['ortho']['pq']:.3f}), {t_ortho:.1f} s",
            flush=True,
        )
    return {"per_volume": per}


def run_2d(seg: Segmenter, n: int) -> dict:
    per = []
    for seed in range(n):
        scene = simulate_cells(shape=PLANE_SHAPE, seed=200 + seed)
        res = seg.segment(scene.image)
        per.append({"seed": 200 + seed, **_scores(scene.labels, res.labels)})
    print(f"2D: PQ {np.mean([r['pq'] for r in per]):.3f} over {n} images", flush=True)
    return {"per_image": per}


def run_movie(seg: Segmenter, frames: int = 6, shift: int = 1) -> dict:
    scene = simulate_cells(shape=PLANE_SHAPE, seed=300)
    movie = np.stack([np.roll(scene.image, t * shift, axis=1) for t in range(frames)])
    gt = np.stack([np.roll(scene.labels, t * shift, axis=1) for t in range(frames)])
    t0 = time.perf_counter()
    res = seg.segment(movie, axes="TYX", link_frames=True)
    seconds = time.perf_counter() - t0
    unlinked = seg.segment(movie, axes="TYX", link_frames=False, diameter=res.diameter)
    # predicted id of each ground-truth cell in each frame (IoU > 0.5), -1 if unmatched
    ids = np.full((frames, int(scene.labels.max()) + 1), -1)
    for t in range(frames):
        m = match_instances(gt[t], res.labels[t])
        ids[t, m.matched_true] = m.matched_pred
    cells = np.arange(1, ids.shape[1])
    everywhere = cells[(ids[:, cells] >= 0).all(axis=0)]
    kept = everywhere[(ids[:, everywhere] == ids[0, everywhere]).all(axis=0)]
    out = {
        "frames": frames,
        "shift_px_per_frame": shift,
        "true_cells": int(scene.labels.max()),
        "counts": res.counts,
        "ids_linked": int(res.labels.max()),
        "ids_unlinked": int(unlinked.labels.max()),
        "matched_in_every_frame": int(everywhere.size),
        "kept_their_id": int(kept.size),
        "fraction_kept": float(kept.size / max(1, everywhere.size)),
        "seconds_per_movie": seconds,
    }
    print(
        f"movie: {out['kept_their_id']}/{out['matched_in_every_frame']} cells keep their id; "
        f"{out['ids_linked']} ids linked vs {out['ids_unlinked']} unlinked",
        flush=True,
    )
    return out


def _mean(rows: list[dict], key: str, field: str) -> float:
    return float(np.mean([r[key][field] if key else r[field] for r in rows]))


def summarise(vol: dict, two: dict) -> dict:
    rows = vol["per_volume"]
    s = {
        "pq_2d": float(np.mean([r["pq"] for r in two["per_image"]])),
        "f1_2d": float(np.mean([r["f1"] for r in two["per_image"]])),
        "seconds_per_volume": _mean(rows, "", "seconds_per_volume"),
        "seconds_per_volume_ortho": _mean(rows, "", "seconds_per_volume_ortho"),
        "seconds_stitching_only": _mean(rows, "", "seconds_stitching_only"),
        "slice_pq_2d": _mean(rows, "", "slice_pq_2d"),
    }
    keys = ("stitch", "planes", "ortho", *ORTHO_VARIANTS, *(f"stitch_{t}" for t in THRESHOLDS))
    for key in (*keys, *(f"trim_{f}" for f in Z_TRIMS)):
        s[key] = {
            "pq": _mean(rows, key, "pq"),
            "f1": _mean(rows, key, "f1"),
            "abs_count_error": float(np.mean([abs(r[key]["count_error"]) for r in rows])),
            "n_true": int(sum(r[key]["n_true"] for r in rows)),
            "n_pred": int(sum(r[key]["n_pred"] for r in rows)),
        }
    s["default_z_mode"] = DEFAULT_Z_MODE
    best = s[DEFAULT_Z_MODE]
    s["pq_gap"] = s["pq_2d"] - best["pq"]
    s["meets_pq"] = bool(s["pq_gap"] <= 0.1)
    s["meets_count"] = bool(best["abs_count_error"] <= 0.10)
    s["pq_gap_stitch"] = s["pq_2d"] - s["stitch"]["pq"]
    s["pq_gap_ortho"] = s["pq_2d"] - s["ortho"]["pq"]
    return s


def doc_section(data: dict) -> str:
    s, mv = data["summary"], data["movie"]
    rows = data["volumes"]["per_volume"]
    env = data["environment"]
    lines = [
        START,
        "## Volumes and movies with the 2D model (orthogonal views, z stitching, frame linking)",
        "",
        f"{env['date']}, `python benchmarks/bench_volumes.py` on {env['device']}; "
        f"{data['n_volumes']} simulated volumes of {' x '.join(map(str, VOLUME_SHAPE))} "
        "(Z, Y, X; the simulator's defaults: touching nuclei in clumps, radius 6-12 px, "
        "z step 2 px) against their 3D ground truth; the built-in 2D model, diameter "
        "estimated; 2D reference: "
        f"{len(data['two_d']['per_image'])} 2D images of "
        f"{' x '.join(map(str, PLANE_SHAPE))} simulated with the same settings.",
        "",
        "| z handling | 3D PQ | 3D F1 | cells found / true | mean abs. count error |",
        "|---|---|---|---|---|",
    ]
    g = ORTHO_POST_PARAMS
    th = f"TH ({g['gamma1']:g} / {g['gamma2']:g})"
    names = {
        "ortho": f"orthogonal views (`ortho`), averaged, 3D {th}, z cut at 0.6",
        "ortho_max": f"orthogonal views, boundary classes by maximum, 3D {th}, z cut 0.6",
        "ortho_no_cut": f"orthogonal views, averaged, 3D {th}, no z cut",
        "ortho_th_0.5": "orthogonal views, averaged, 3D TH (0.5 / 0.3), z cut 0.6",
        "ortho_map": "orthogonal views, averaged, 3D MAP, z cut 0.6",
        "ortho_max_map": "orthogonal views, boundary classes by maximum, 3D MAP, z cut 0.6",
        "ortho_yx_only": f"YX view alone, 3D {th}, z cut 0.6 (no side views)",
        "stitch": "stitched (`stitch`), IoU >= 0.25, split at waists (0.85), z cut at 0.6",
        "trim_0.5": "stitched, IoU >= 0.25, no split, z cut at 0.5",
        "trim_0.6": "stitched, IoU >= 0.25, no split, z cut at 0.6",
        "trim_0.7": "stitched, IoU >= 0.25, no split, z cut at 0.7",
        "stitch_0.25": "stitched, IoU >= 0.25, no z cut",
        "stitch_0.1": "stitched, IoU >= 0.1, no z cut",
        "stitch_0.5": "stitched, IoU >= 0.5, no z cut",
        "stitch_0.7": "stitched, IoU >= 0.7, no z cut",
        "planes": "plane by plane (no stitching)",
    }
    for key, name in names.items():
        r = s[key]
        lines.append(
            f"| {name} | {r['pq']:.3f} | {r['f1']:.3f} | {r['n_pred']} / {r['n_true']} | "
            f"{100 * r['abs_count_error']:.0f} % |"
        )
    lines += [
        f"| 2D reference (2D PQ / F1) | {s['pq_2d']:.3f} | {s['f1_2d']:.3f} | | |",
        "",
        f"Diagnosis: the planes of the volumes segmented one by one score a 2D PQ of "
        f"{s['slice_pq_2d']:.3f} against the ground truth's cut through each plane (the "
        "2D images: "
        f"{s['pq_2d']:.3f}). Part of it is the z blur: the 2D model also finds each "
        "nucleus in the out-of-focus planes above and below it, so without a cut the "
        "stitched cells run on in z (10 planes for 7 on a test volume) and their 3D IoU "
        "falls under 0.5; the z cut (`core.stitch.trim_z`: a cell keeps the planes where "
        "its mean intensity is at least 0.6 of its brightest plane's) removes most of "
        "that. Nuclei stacked in z whose cross-sections overlap were stitched into one "
        "object (11 merges among 54 objects on one volume): `core.stitch.split_z` cuts an "
        "object at a plane whose area is under 0.85 of the largest areas on both sides. "
        "The cut fraction and the split ratio were chosen on two other simulated volumes "
        "(seeds 1 and 2), not on these. What remains: nuclei merged within planes by the "
        "blur, and small cuts through the top and bottom of nuclei.",
        "",
        'Orthogonal views (`z_mode="ortho"`, `--z-mode ortho --z-scale 2`): the 2D model '
        "also predicts the ZX and ZY slices of the volume resampled along z by the z scale "
        "(2, the simulator's `z_anisotropy`, so nuclei are round in the side views; each "
        "view at the model's scale, as the YX planes), the three class-probability volumes "
        "are averaged on the volume's grid and post-processed in 3D (size filter: 0.4 of "
        "a ball of the diameter, in voxels), then cut in z as stitched cells are. "
        "Averaging softens the cell class at the boundaries, so the model's 2D choice "
        "(MAP) merges touching nuclei in 3D; TH with a low touching threshold keeps them "
        "apart. The TH thresholds and the boundary combination were chosen on the two "
        "simulated volumes of seeds 1 and 2 (not these), the other rows are shown for "
        "comparison. Seen alone in 3D, the YX view gives fewer, merged cells "
        f"({s['ortho_yx_only']['n_pred']} for {s['ortho_yx_only']['n_true']}): the side "
        "views separate nuclei stacked or touching in z, which plane-wise views cannot. "
        f"The cells are found almost one for one (F1 {s['ortho']['f1']:.3f}); what keeps "
        "the 3D PQ under the 2D one is their shape (PQ = F1 x the mean IoU of the matched "
        "cells), mostly along z: the z blur (3x the lateral) makes nuclei look longer "
        "along z in the side views too (9.1 planes for 6.7 on a selection volume before "
        f"the cut; PQ without the cut {s['ortho_no_cut']['pq']:.3f}).",
        "",
        f"Issue 13's criterion, for the default z mode (`{s['default_z_mode']}`): 3D PQ "
        f"within 0.1 of the 2D PQ: gap {s['pq_gap']:.3f} "
        f"({'met' if s['meets_pq'] else 'not met'}); count within 10 %: "
        f"{100 * s[s['default_z_mode']]['abs_count_error']:.0f} % "
        f"({'met' if s['meets_count'] else 'not met'}). PQ gap of `stitch` "
        f"{s['pq_gap_stitch']:.3f}, of `ortho` {s['pq_gap_ortho']:.3f}. Time per volume "
        f"(size estimate on 3 planes, prediction, post-processing): stitching "
        f"{s['seconds_per_volume']:.1f} s (24 YX planes; the stitching alone "
        f"{s['seconds_stitching_only']:.3f} s), orthogonal views "
        f"{s['seconds_per_volume_ortho']:.1f} s (24 YX planes, 128 ZX and 128 ZY slices "
        "of 48 x 128 px, each at the model's scale); per volume "
        f"{min(r['seconds_per_volume'] for r in rows):.0f}-"
        f"{max(r['seconds_per_volume'] for r in rows):.0f} s and "
        f"{min(r['seconds_per_volume_ortho'] for r in rows):.0f}-"
        f"{max(r['seconds_per_volume_ortho'] for r in rows):.0f} s, on 2 cores shared "
        "with other jobs.",
        "",
        f"Movie: {mv['frames']} frames of a 2D scene shifted by {mv['shift_px_per_frame']} px "
        f"per frame, linked (IoU >= 0.25): {mv['kept_their_id']} of the "
        f"{mv['matched_in_every_frame']} cells found in every frame keep one id through all "
        f"frames ({100 * mv['fraction_kept']:.0f} %); {mv['ids_linked']} ids in the movie "
        f"linked against {mv['ids_unlinked']} unlinked ({mv['true_cells']} true cells); "
        f"{mv['seconds_per_movie']:.1f} s per movie.",
        "",
        "No 3D model is trained yet: these figures are the 2D model's.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--images-2d", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument(
        "--doc-only", action="store_true", help="rewrite the docs section from the JSON"
    )
    args = ap.parse_args()
    if args.doc_only:  # the summary again (e.g. for a changed default z mode), then the doc
        data = json.loads(RESULTS.read_text())
        data["summary"] = summarise(data["volumes"], data["two_d"])
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
        write_doc(doc_section(data))
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seg = Segmenter("default", device=args.device)
    t0 = time.perf_counter()
    vol = run_volumes(seg, args.volumes)
    two = run_2d(seg, args.images_2d)
    movie = run_movie(seg)
    data = {
        "environment": {
            "date": _dt.date.today().isoformat(),
            "device": seg.device_name,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "n_volumes": args.volumes,
        "volume_shape": VOLUME_SHAPE,
        "volumes": vol,
        "two_d": two,
        "movie": movie,
        "summary": summarise(vol, two),
        "total_seconds": time.perf_counter() - t0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data["summary"], indent=1))
    if not args.no_doc:
        write_doc(doc_section(data))
    print(f"wrote {RESULTS}" + ("" if args.no_doc else f" and {DOC}"))


if __name__ == "__main__":
    main()
