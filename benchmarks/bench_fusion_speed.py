"""Fusion speed on the CPU and a GPU side by side: every method, every implementation.

    python benchmarks/bench_fusion_speed.py            # 8 x 1024 x 1024 stack
    python benchmarks/bench_fusion_speed.py --quick    # 4 x 256 x 256 (smoke test)
        [--threads N] [--baseline hf-seg=OLD.pt]       # rows "hf-seg (baseline)"

One simulated 8-bit focus stack (the simulator's nuclei at different depths, per-slice
camera noise); each method is timed in every implementation this machine has: the classical
methods in numpy (the reference) and in torch on the CPU and on CUDA when present, the
learned ones (HF-Seg direct, HF-Reg) on the CPU and on CUDA. Each timing is the fastest of
a few runs after a warm-up on a small stack (CUDA kernels, cuDNN plans, model loading),
and covers the whole call: reading the stack, the device copies, fusion, the result back
in host memory as the stack's dtype. Quality is not measured here (``bench_fusion.py``
does that; the torch and numpy classical images agree to float32 rounding, see
``tests/engine/test_fusion_classical_torch.py``).

Writes ``benchmarks/results/fusion_speed_<cpu|cuda>.json`` and, without ``--quick``, the
section between the ``fusion-speed`` markers of ``docs/fusion.md`` (kept when
``bench_fusion.py`` rewrites the page).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellfocus.core.simulate import simulate_focus_stack
from napari_cellfocus.engine.fusion import fuse_stack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fusion import timed_fuse

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "fusion.md"
START, END = "<!-- fusion-speed:start -->", "<!-- fusion-speed:end -->"

CLASSICAL = ("max-focus", "pyramid", "gff", "wavelet")
LEARNED = {"hf-seg": {"mode": "direct"}, "hf-reg": {}}


def timed(stack: np.ndarray, method: str, repeats: int, **kwargs) -> float:
    """Fastest wall time of ``repeats`` full fusions (``bench_fusion.timed_fuse``) after one
    warm-up on a small crop. ``fuse_stack`` returns host arrays, so the time includes any
    GPU work."""
    fuse_stack(stack[:2, :96, :96], method, **kwargs)
    result, seconds = timed_fuse(stack, method, kwargs, repeats)
    assert result.fused.shape == stack.shape[1:] and result.fused.dtype == stack.dtype
    return seconds


def run(quick: bool, baselines: dict[str, Path] | None = None) -> dict:
    """Time every method; ``baselines`` (kind -> checkpoint) adds rows ``KIND (baseline)``
    with that model instead of the shipped one (e.g. the previously shipped model)."""
    n, side = (4, 256) if quick else (8, 1024)
    stack = simulate_focus_stack((side, side), n_slices=n, seed=7).stack
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    mp_slices = n * side * side / 1e6
    rows = []

    def add(method: str, implementation: str, device: str, seconds: float) -> None:
        rows.append(
            {
                "method": method,
                "implementation": implementation,
                "device": device,
                "seconds": seconds,
                "s_per_mp_per_slice": seconds / mp_slices,
            }
        )
        print(f"{method:10s} {implementation:6s} {device:5s} {seconds:8.3f} s", flush=True)

    for method in CLASSICAL:
        add(method, "numpy", "cpu", timed(stack, method, 3, device="numpy"))
        for dev in devices:
            add(method, "torch", dev, timed(stack, method, 3, device=dev))
    for method, kw in LEARNED.items():
        for dev in devices:
            repeats = 1 if dev == "cpu" and not quick else 2
            add(method, "torch", dev, timed(stack, method, repeats, device=dev, **kw))
            if method in (baselines or {}):
                from napari_cellfocus.engine.fusion import FusionModel

                fm = FusionModel(baselines[method], kind=method, device=dev)
                seconds = timed(stack, method, repeats, model=fm, **kw)
                add(f"{method} (baseline)", "torch", dev, seconds)
    return {
        "meta": {
            "command": "python benchmarks/bench_fusion_speed.py" + (" --quick" if quick else ""),
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "stack": [n, side, side],
            "dtype": str(stack.dtype),
        },
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """The docs section: one row per method, one column per implementation/device."""
    meta, rows = result["meta"], result["rows"]
    columns = sorted({(r["implementation"], r["device"]) for r in rows}, key=_column_order)
    n, side = meta["stack"][0], meta["stack"][1]
    where = f"{meta['cpu_threads']} CPU threads" + (f", {meta['gpu']}" if meta["gpu"] else "")
    lines = [
        START,
        "## Speed on the CPU and a GPU side by side",
        "",
        f"`{meta['command']}` ({meta['date']}, {where}; torch {meta['torch']}): one simulated "
        f"{n} x {side} x {side} 8-bit stack, seconds per megapixel per slice (fastest run, "
        "whole call including copies to and from the device). Speed-up: against numpy for "
        "the classical methods, against the CPU for the learned ones."
        + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        "| method | " + " | ".join(f"{impl} {dev}" for impl, dev in columns) + " | speed-up |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    table = {(r["method"], r["implementation"], r["device"]): r for r in rows}
    for method in dict.fromkeys(r["method"] for r in rows):
        found = [col for col in columns if (method, *col) in table]
        times = {col: table[(method, *col)]["seconds"] for col in found}
        cells = [
            f"{table[(method, *col)]['s_per_mp_per_slice']:.4f}" if col in times else ""
            for col in columns
        ]
        ref = times.get(("numpy", "cpu"), times.get(("torch", "cpu")))
        best = min(times, key=times.get)
        speedup = f"{ref / times[best]:.1f}x ({best[0]} {best[1]})" if ref else ""
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {speedup} |")
    slowest = {"seconds": float("inf")}
    faster = [
        m
        for m in CLASSICAL
        if table.get((m, "torch", "cpu"), slowest)["seconds"]
        < table.get((m, "numpy", "cpu"), slowest)["seconds"]
    ]
    lines += [
        "",
        f"With {meta['cpu_threads']} CPU threads torch beat numpy on the CPU for "
        f"{len(faster)} of {len(CLASSICAL)} classical methods"
        + (f" ({', '.join(faster)})" if faster else "")
        + '. `device="auto"` runs the classical methods in torch on a CUDA GPU and in numpy '
        "otherwise, because on the 2-core machines this project is built on numpy is the "
        'faster one; on a many-core workstation without a GPU, `device="cpu"` (torch) can '
        "be faster: compare with this table.",
        END,
    ]
    return "\n".join(lines)


def _column_order(column: tuple[str, str]) -> tuple[int, int]:
    return ({"numpy": 0, "torch": 1}[column[0]], {"cpu": 0, "cuda": 1}.get(column[1], 2))


def insert_section(doc: Path, section: str) -> None:
    """Replace (or append) the marked section of ``doc``."""
    text = doc.read_text() if doc.exists() else "# Multi-focus fusion\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small stack, docs untouched")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--baseline", action="append", default=[], metavar="KIND=PATH")
    parser.add_argument("--note", default="", help="a sentence for the docs (e.g. the load)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    baselines = {}
    for item in args.baseline:
        kind, _, path = item.partition("=")
        if kind not in LEARNED or not path:
            parser.error(f"expected hf-seg=PATH or hf-reg=PATH, got {item!r}")
        baselines[kind] = Path(path)
    result = run(args.quick, baselines)
    result["meta"]["command"] = "python benchmarks/bench_fusion_speed.py " + " ".join(sys.argv[1:])
    if args.note:
        result["meta"]["note"] = args.note
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fusion_speed_{kind}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    if not args.quick:
        insert_section(args.doc, markdown(result))
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
