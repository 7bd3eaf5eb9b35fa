"""Peak memory of ``cellfocus predict`` on huge 2D images: whole image vs block by block.

Run from the repository root (about 30 minutes on 2 CPU cores with the default sizes)::

    .venv/bin/python benchmarks/bench_memory.py [--sizes 4096 8192 20000] [--whole 4096 8192]

* **Images**: uint16 images of each size, mirror-tiled from one simulated 2048² scene
  (``core.simulate.simulate_cells``, nuclei radius 12-24 px, so the model rescales by
  ~0.6 to its 20 px diameter), written as uncompressed TIFF without ever holding more
  than a row of tiles.
* **Runs**: ``cellfocus predict IMAGE --out LABELS.tif --diameter 36 --blocks on|off`` as
  a child process, one per run; its peak resident memory comes from the kernel
  (``os.wait4`` rusage, ``ru_maxrss``), next to the up-front estimate of
  :mod:`napari_cellfocus.core.memory`, the wall time and the count.
* **Agreement**: where both ways ran, the block labels are matched to the whole-image
  labels (``core.metrics.evaluate``, IoU > 0.5 and > 0.9).

Writes ``benchmarks/results/memory.json`` and the section between the ``memory``
markers of ``docs/benchmarks.md`` (appended the first time).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "memory.json"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- memory:start -->", "<!-- memory:end -->"
SCENE = 2048
DIAMETER = 36.0


def make_image(path: Path, side: int, seed: int = 7) -> None:
    """A (side, side) uint16 TIFF mirror-tiled from one simulated SCENE² scene (every
    other tile mirrored, so no seams)."""
    from napari_cellfocus.core.io import write_image_rows
    from napari_cellfocus.core.simulate import simulate_cells

    scene = simulate_cells((SCENE, SCENE), radius=(12.0, 24.0), bit_depth=16, seed=seed).image
    scene = np.asarray(scene, np.uint16)

    def row(y: int) -> np.ndarray:
        k, r = divmod(y, SCENE)
        line = scene[r if k % 2 == 0 else SCENE - 1 - r]
        pair = np.concatenate([line, line[::-1]])
        return np.resize(pair, side)

    def bands():
        for y in range(0, side, 256):
            yield y, np.stack([row(i) for i in range(y, min(side, y + 256))])

    write_image_rows(path, (side, side), np.uint16, bands(), compress=False)


def make_store(tiff: Path, store: Path) -> None:
    """The uncompressed TIFF ``tiff`` as an OME-Zarr image store (1024² chunks, a pyramid),
    copied chunk by chunk (tifffile's zarr view of its tiles: never whole in memory)."""
    import dask.array as da
    import tifffile
    import zarr
    from ome_zarr.writer import write_image

    data = da.from_zarr(zarr.open_array(tifffile.imread(tiff, aszarr=True), mode="r"))
    data = data.rechunk((1024, 1024))
    root = zarr.open_group(str(store), mode="w")
    write_image(data, root, axes="yx", storage_options={"chunks": (1024, 1024)})


def run_predict(image: Path, out: Path, blocks: str) -> dict:
    """One ``cellfocus predict`` child: peak RSS (kernel), wall time, count, estimate."""
    cmd = [
        sys.executable,
        "-m",
        "napari_cellfocus.cli",
        "predict",
        str(image),
        "--out",
        str(out),
        "--diameter",
        str(DIAMETER),
        "--blocks",
        blocks,
        "--overwrite",
        "--device",
        "cpu",
    ]
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
        # wait4 gives this child's own rusage: its peak resident set, from the kernel
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    stdout = log.read_text()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{stdout[-2000:]}")
    line = [ln for ln in stdout.splitlines() if " cells" in ln][-1]
    count = int(line.split(": ", 1)[1].split(" cells")[0])
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "seconds": seconds, "count": count}


def estimates(side: int) -> dict:
    """Up-front estimates of both ways (core.memory), as the CLI makes them."""
    from napari_cellfocus.core.memory import block_bytes, whole_image_bytes
    from napari_cellfocus.engine.blocks import DEFAULT_BLOCK, block_margin

    zoom = 20.0 / DIAMETER  # the default model's diameter / the images'
    margin = block_margin(DIAMETER, zoom)
    blocks = block_bytes((side, side), 2, DEFAULT_BLOCK, margin, 3, zoom)
    return {
        "whole": whole_image_bytes(side * side, 2, 3, zoom),
        "blocks": blocks,
        "ome-zarr": blocks - side * side * 2,  # the image stays on disk
        "margin": margin,
    }


def agreement(whole: Path, blocks: Path) -> dict:
    from napari_cellfocus.core.io import read_image
    from napari_cellfocus.core.metrics import evaluate

    a, b = read_image(whole), read_image(blocks)
    return {
        "f1_iou50": float(evaluate(a, b, 0.5)["f1"]),
        "f1_iou90": float(evaluate(a, b, 0.9)["f1"]),
        "identical_pixels": float(np.mean((a > 0) == (b > 0))),
    }


def section(res: dict) -> str:
    gib = 1 << 30
    lines = [
        START,
        "## Memory on huge images (`benchmarks/bench_memory.py`)",
        "",
        f"Runs on {res['machine']} (date and commit per row): "
        "`cellfocus predict IMAGE --out LABELS.tif --diameter 36 --blocks on|off` (or "
        "`IMAGE.ome.zarr --out LABELS.ome.zarr`), one child "
        "process per run, peak resident memory from the kernel (`ru_maxrss`). uint16 images "
        "mirror-tiled from one simulated 2048² scene (nuclei ~36 px, rescaled by 0.56 to "
        "the model's 20 px). Blocks: 2048 px cores with a margin of "
        f"{res['margin']} px (the network's reach plus two nuclei).",
        "",
        "| image | way | peak RSS | bytes / pixel | estimate | time | cells | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(res["runs"], key=lambda r: (r["side"], r["way"])):
        px = r["side"] ** 2
        lines.append(
            f"| {r['side']}² | {r['way']} | {r['peak_rss_bytes'] / gib:.2f} GiB | "
            f"{r['peak_rss_bytes'] / px:.1f} | {r['estimate_bytes'] / gib:.2f} GiB | "
            f"{r['seconds'] / 60:.1f} min | {r['count']} | "
            f"{r.get('date', res['date'])[5:16]} `{r.get('commit', res['commit'])}` |"
        )
    whole_sides = {r["side"] for r in res["runs"] if r["way"] == "whole"}
    for side in sorted({r["side"] for r in res["runs"]} - whole_sides):
        lines.append(
            f"| {side}² | whole (not run) | | | {estimates(side)['whole'] / gib:.2f} GiB | | | |"
        )
    lines += [
        "",
        "Estimates are `core.memory`'s, made from the header before any pixel is read "
        "(meant to be a little high, never low); `whole (not run)`: what the whole-image "
        "way would need (the issue measured 10.9 GiB for a 20000² image whole, with an "
        "earlier version and image). Times are on a 2-core machine shared with other jobs.",
    ]
    if res["agreement"]:
        lines += ["", "Block labels against whole-image labels of the same image:", ""]
        lines += ["| image | F1 (IoU > 0.5) | F1 (IoU > 0.9) | same fg/bg pixels |"]
        lines += ["|---|---|---|---|"]
        for side, a in res["agreement"].items():
            lines.append(
                f"| {side}² | {a['f1_iou50']:.4f} | {a['f1_iou90']:.4f} | "
                f"{a['identical_pixels']:.5f} |"
            )
    lines += [
        "",
        "What stays resident with blocks: the image (2 bytes a pixel), one block's "
        "probabilities and post-processing temporaries, about two block rows of int32 labels "
        "and Python/torch/model (~0.6 GiB). The labels go to a tiled TIFF as their rows are "
        "final (`core.io.write_image_rows`); with an OME-Zarr store in and out (`ome-zarr` "
        "rows) the image is read block by block too and the labels go to a zarr array. `--blocks auto` (the default) takes this way for "
        "2D images over 36 megapixels or ones that would not fit whole; any run whose "
        "estimate exceeds 80 % of the available memory (cgroup limits included) stops "
        "before reading pixels with a message naming the file, the need and what is free.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_doc(text_section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + text_section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + text_section
    DOC.write_text(text)


def _ways(side: int, args: argparse.Namespace) -> list[str]:
    """The runs made of an image of ``side`` px: blocks, whole, ome-zarr."""
    ways = [] if args.no_blocks else ["blocks"]
    ways += ["whole"] if side in args.whole else []
    return ways + (["ome-zarr"] if side in args.zarr else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 20000])
    ap.add_argument(
        "--whole",
        type=int,
        nargs="*",
        default=[4096, 8192],
        help="sizes also run whole (--blocks off)",
    )
    ap.add_argument(
        "--zarr",
        type=int,
        nargs="*",
        default=[8192],
        help="sizes also run OME-Zarr in -> OME-Zarr out (blocks, the image read lazily)",
    )
    ap.add_argument("--no-blocks", action="store_true", help="skip the TIFF block runs")
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the saved runs and add these (same sizes: replaced)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where the images go (temp)")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument(
        "--render",
        action="store_true",
        help="only re-write the docs section from the saved results (estimates recomputed)",
    )
    args = ap.parse_args()
    if args.render:
        res = json.loads(RESULTS.read_text())
        for r in res["runs"]:
            r["estimate_bytes"] = estimates(r["side"])[r["way"]]
        write_doc(section(res))
        print(f"wrote {DOC}")
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cf-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    res = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commit": commit,
        "runs": [],
        "agreement": {},
    }
    if args.append and RESULTS.exists():
        saved = json.loads(RESULTS.read_text())
        rerun = {(side, way) for side in args.sizes for way in _ways(side, args)}
        res["runs"] = [r for r in saved["runs"] if (r["side"], r["way"]) not in rerun]
        res["agreement"] = {
            k: v
            for k, v in saved["agreement"].items()
            if not {(int(k), "blocks"), (int(k), "whole")} <= rerun
        }
        res["margin"] = saved.get("margin")
    for side in args.sizes:
        image = work / f"img_{side}.tif"
        if not image.exists():
            print(f"making {image}", flush=True)
            make_image(image, side)
        est = estimates(side)
        res["margin"] = est["margin"]
        ways = _ways(side, args)
        for way in ways:
            source, out = image, work / f"labels_{side}_{way}.tif"
            if way == "ome-zarr":
                source = work / f"img_{side}.ome.zarr"
                if not source.exists():
                    print(f"making {source}", flush=True)
                    make_store(image, source)
                out = work / f"labels_{side}.ome.zarr"
            print(f"{side}² {way} ...", flush=True)
            r = run_predict(source, out, "off" if way == "whole" else "on")
            r.update(side=side, way=way, estimate_bytes=est[way], date=res["date"])
            r["commit"] = commit
            res["runs"].append(r)
            print(json.dumps(r), flush=True)
        if {"blocks", "whole"} <= set(ways):
            res["agreement"][str(side)] = agreement(
                work / f"labels_{side}_whole.tif", work / f"labels_{side}_blocks.tif"
            )
            print(res["agreement"][str(side)], flush=True)
        RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_doc:
        write_doc(section(res))
    print(f"wrote {RESULTS}" + ("" if args.no_doc else f" and {DOC}"))


if __name__ == "__main__":
    main()
