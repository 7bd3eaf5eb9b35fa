"""Benchmark of the post-processing methods (TH, WT, MAP) against scipy.ndimage.label.

Run from the repository root::

    .venv/bin/python benchmarks/bench_postprocess.py [--sizes 2048 1024] [--repeats 7]

A realistic 3-class probability map is simulated (no external data): random
cells of radius 7-14 px at a density where many touch, semantic classes
background / cell / touching from the instances (touching = cell pixel next to
another cell), then each class indicator is smoothed, scaled, noised and passed
through a softmax, as a network's output would look.  Each method runs on the
same array; the median wall time of several repeats is reported in ms and as a
ratio to ``scipy.ndimage.label`` of the thresholded cell map (a floor: any
instance post-processing labels at least once).  Everything runs on one thread
(BLAS/OpenMP pools pinned to 1) so the numbers match the live-slider use case.

Writes ``benchmarks/results/postprocess.json`` and rewrites the results section of
``docs/benchmarks_postprocess.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import skimage  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_cellfocus.core.metrics import evaluate  # noqa: E402
from napari_cellfocus.core.postprocess import (  # noqa: E402
    DEFAULT_GAMMA1,
    DEFAULT_GAMMA2,
    DEFAULT_TAU0,
    DEFAULT_TAU1,
    binary_watershed_labels,
    map_labels,
    threshold_labels,
    watershed_labels,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "postprocess.json"
DOC = ROOT / "docs" / "benchmarks_postprocess.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def simulate_probabilities(
    size: int, seed: int = 0, density: float = 0.0012, sigma: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic (3, size, size) softmax map and its (size, size) instance ground truth."""
    rng = np.random.default_rng(seed)
    n = int(density * size * size)
    seeds = np.zeros((size, size), np.int32)
    pts = rng.integers(0, size, size=(n, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1, dtype=np.int32)
    dist, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[idx[0], idx[1]]
    radius = rng.uniform(7, 14, n + 1)
    labels[dist > radius[labels]] = 0
    high = ndimage.maximum_filter(labels, size=3)
    low = ndimage.minimum_filter(np.where(labels > 0, labels, np.iinfo(np.int32).max), size=3)
    touching = (labels > 0) & ((high != labels) | (low != labels))
    classes = np.where(labels > 0, 1, 0)
    classes[touching] = 2
    logits = np.stack(
        [ndimage.gaussian_filter((classes == c).astype(np.float32), sigma) for c in range(3)]
    )
    logits = 6.0 * logits + rng.normal(0.0, 0.3, logits.shape).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32), labels


def median_ms(func, repeats: int) -> tuple[float, object]:
    """Median wall time (ms) of ``func()`` over ``repeats`` runs, after one warm-up."""
    out = func()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3), out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(size: int, repeats: int, with_binary: bool) -> dict:
    probs, truth = simulate_probabilities(size)
    cell_mask = probs[1] >= DEFAULT_GAMMA1
    cases = [
        ("ndimage.label", lambda: ndimage.label(cell_mask)),
        ("TH", lambda: threshold_labels(probs)),
        ("WT", lambda: watershed_labels(probs)),
        ("MAP", lambda: map_labels(probs)),
    ]
    if with_binary:
        cases.append(("binary WT (C 4.3)", lambda: binary_watershed_labels(probs)))
    rows = {}
    for name, func in cases:
        ms, out = median_ms(func, repeats)
        row = {"ms": round(ms, 2)}
        if name != "ndimage.label":
            labels, count = out
            row["count"] = int(count)
            row["f1_vs_truth"] = round(evaluate(truth, labels)["f1"], 4)
        rows[name] = row
    base = rows["ndimage.label"]["ms"]
    for row in rows.values():
        row["ratio_to_label"] = round(row["ms"] / base, 2)
    return {"size": size, "n_true": int(len(np.unique(truth)) - 1), "methods": rows}


def write_doc(report: dict) -> None:
    lines = [
        START,
        f"Last run: {report['date']} on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores visible, timings on 1 thread).  ",
        f"Command: `{report['command']}`  ",
        f"Defaults: TH gamma1={DEFAULT_GAMMA1}, gamma2={DEFAULT_GAMMA2}; "
        f"WT tau0={DEFAULT_TAU0}, tau1={DEFAULT_TAU1}; median of {report['repeats']} runs.",
        "",
    ]
    for res in report["results"]:
        lines += [
            f"**{res['size']} x {res['size']}** ({res['n_true']} simulated cells)",
            "",
            "| method | ms | x ndimage.label | objects | F1 vs truth |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in res["methods"].items():
            lines.append(
                f"| {name} | {row['ms']:.1f} | {row['ratio_to_label']:.1f} | "
                f"{row.get('count', '')} | {row.get('f1_vs_truth', '')} |"
            )
        lines.append("")
    lines.append(END)
    block = "\n".join(lines)
    if DOC.exists():
        text = DOC.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            DOC.write_text(head + block + tail)
            return
        DOC.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(
        "# Post-processing speed\n\n"
        "How long it takes to turn a class-probability map into instances with the\n"
        "methods of `napari_cellfocus.core.postprocess` (these drive the live\n"
        "threshold sliders, goal: TH and WT on 1024 x 1024 under ~100 ms on one core),\n"
        "compared with `scipy.ndimage.label` of the thresholded cell map on the same\n"
        "array.  The probability map is simulated (see `benchmarks/bench_postprocess.py`);\n"
        "the F1 column (IoU > 0.5) only shows the outputs are sensible, it is not a\n"
        "model evaluation.  Absolute times depend on the machine and its load; the\n"
        "ratio to `ndimage.label` (run in the same process, right before) is the\n"
        "steadier number.\n\n" + block + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-binary", action="store_true", help="skip the C 4.3 method")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    report = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(
            [".venv/bin/python", "benchmarks/bench_postprocess.py", *sys.argv[1:]]
        ),
        "repeats": args.repeats,
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
        },
        "results": [],
    }
    for size in args.sizes:
        res = run(size, args.repeats, not args.no_binary)
        report["results"].append(res)
        for name, row in res["methods"].items():
            print(
                f"{size:5d}  {name:18s} {row['ms']:9.1f} ms  x{row['ratio_to_label']:6.1f}"
                f"  objects={row.get('count', '-')}  f1={row.get('f1_vs_truth', '-')}"
            )
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        write_doc(report)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
