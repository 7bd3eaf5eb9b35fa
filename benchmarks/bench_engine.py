"""Engine benchmarks: tiled prediction overhead, throughput, training speed, memory, one-click
fine-tune.

    python benchmarks/bench_engine.py [--quick] [--device cpu|cuda]

Each figure is measured side by side in one run and reported as a ratio where it has a
reference (the machines are shared and noisy). Results go to
``benchmarks/results/engine[_DEVICE].json`` and the table in ``docs/benchmarks.md``.

Measured:
1. tiled prediction of a 4096^2 image (512-px tiles, halo 32, blend 32) against the sum of
   bare forward passes over the same tiles: the cost of normalisation, blending and
   accumulation (goal <= 1.15x);
2. 512^2 images per second (whole pipeline: predict + TH post-processing);
3. training steps per second (batch 4, 256^2 crops, default network);
4. peak resident memory of predicting a 4096^2 image, in a fresh process, against the size of
   the image and of the probability maps;
5. the one-click fine-tune (``quick_finetune_config``) on a 512^2 simulated image from a domain
   the default model was not trained on (large, dim, elongated nuclei), with 10 annotated cells:
   wall time and PQ on the *unannotated* cells before and after.

``--speed`` (project issue 16; also part of a full run) measures, side by side:

6. the compute floor: a 2048^2 float32 matmul (GFLOP/s, best of 5) and the model's widest
   convolution; the model's FLOPs a pixel (``torch.utils.flop_counter``);
7. the bare forward at 512^2 and 1024^2, trained network (eager) vs its inference copy
   (``engine.inference``): seconds, GFLOP/s and forward / floor;
8. tiled prediction (the default tile plan) against one bare forward of the whole image, at
   1024^2 and 4096^2;
9. TH / WT / MAP post-processing of network probabilities at 1024^2 and 2048^2 (the same
   simulated scene, the 1024^2 image its top-left quarter): time ratio for 4x the pixels.

    python benchmarks/bench_engine.py --speed    # only 6-9 (~5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.postprocess import postprocess
from napari_cellfocus.core.simulate import SimulatedScene, simulate_cells
from napari_cellfocus.engine.device import autocast
from napari_cellfocus.engine.inference import inference_copy
from napari_cellfocus.engine.predict import model_logits
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.tiling import grid_tiles
from napari_cellfocus.engine.train import (
    DEFAULT_NETWORK,
    TrainConfig,
    Trainer,
    quick_finetune_config,
)

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_tiling_overhead(seg: Segmenter, side: int, tile: int = 512) -> dict:
    """Tiled prediction vs the sum of bare forward passes over the same tiles."""
    rng = np.random.default_rng(0)
    image = (
        simulate_cells(shape=(side, side), seed=1).image
        if side <= 2048
        else np.tile(
            simulate_cells(shape=(1024, 1024), seed=1).image, (side // 1024, side // 1024)
        )
    )
    image = image.astype(np.uint16) + rng.integers(0, 2, image.shape).astype(np.uint16)
    tiles = grid_tiles(image.shape, tile, 32, 32)
    model, device = seg.model, seg.device
    x = torch.rand(1, 1, tile, tile, device=device)
    # The same autocast as prediction (float16 on CUDA), so only the tiling machinery differs.
    with torch.inference_mode(), autocast(device, True):
        model_logits(model, x)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in tiles:
            p = torch.softmax(model_logits(model, x).float(), 1).cpu()
        _sync(device)
        bare = time.perf_counter() - t0
    del p
    t0 = time.perf_counter()
    seg.predict(image, tile_size=tile, batch_size=1)
    _sync(device)
    tiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in seg.iter_predict(image, tile_size=tile, batch_size=1, stream=True):
        pass
    _sync(device)
    streamed = time.perf_counter() - t0
    extra = {}
    if device.type != "cpu":
        # The previous design, normalising each tile on the host, side by side.
        t0 = time.perf_counter()
        seg.predict(image, tile_size=tile, batch_size=1, normalize_on_device=False)
        _sync(device)
        host = time.perf_counter() - t0
        extra = {"host_normalised_s": host, "host_normalised_ratio": host / bare}
    return {
        "image": f"{side}x{side}",
        "tiles": len(tiles),
        "bare_forward_s": bare,
        "tiled_prediction_s": tiled,
        "ratio": tiled / bare,
        "streamed_prediction_s": streamed,
        "streamed_ratio": streamed / bare,
        **extra,
    }


def bench_throughput(seg: Segmenter, n: int) -> dict:
    images = [simulate_cells(shape=(512, 512), seed=s).image for s in range(n)]
    seg.segment(images[0])  # warm-up
    t0 = time.perf_counter()
    for im in images:
        seg.segment(im, method="th")
    _sync(seg.device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


def bench_training(device: str, steps: int) -> dict:
    scene = simulate_cells(shape=(512, 512), seed=2)
    cfg = TrainConfig(steps=steps + 2, batch_size=4, crop_size=256, checkpoint_every=0)
    trainer = Trainer([scene.image], [scene.labels], cfg, network=DEFAULT_NETWORK, device=device)
    gen = trainer.steps()
    next(gen)
    next(gen)  # warm-up steps
    _sync(trainer.device)
    t0 = time.perf_counter()
    for _ in gen:
        pass
    _sync(trainer.device)
    dt = time.perf_counter() - t0
    return {"steps": steps, "batch": 4, "crop": 256, "seconds": dt, "steps_per_s": steps / dt}


def _rss_mib(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_memory_child(side: int, device: str) -> None:
    """Run in a fresh process: predict a side^2 image and print the resident memory added
    at the peak (MiB), after resetting the kernel's peak counter once everything is loaded."""
    seg = Segmenter("default", device=device)
    image = np.tile(simulate_cells(shape=(1024, 1024), seed=1).image, (side // 1024, side // 1024))
    for _ in seg.iter_predict(image[:512, :512], tile_size=512):  # warm-up allocations
        pass
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_mib("VmRSS")
    for _ in seg.iter_predict(image, tile_size=512):
        pass
    peak = _rss_mib("VmHWM")
    print(json.dumps({"before_mib": base, "peak_mib": peak}))


def bench_memory(side: int, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(side), "--device", device],
        capture_output=True,
        text=True,
        check=True,
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    probs_mib = 3 * side * side * 4 / 2**20
    image_mib = side * side * 4 / 2**20
    rec.update(
        {
            "image": f"{side}x{side}",
            "probabilities_mib": probs_mib,
            "float_image_mib": image_mib,
            "added_by_prediction_mib": rec["peak_mib"] - rec["before_mib"],
            "added_over_result_size": (rec["peak_mib"] - rec["before_mib"]) / probs_mib,
        }
    )
    return rec


def unfamiliar_scene() -> SimulatedScene:
    """The 512 x 512 fine-tune image of a domain the default model was not trained on:
    large, elongated, dim, clumped and touching nuclei (also used by bench_finetune.py)."""
    return simulate_cells(
        shape=(512, 512),
        seed=11,
        radius=(16, 24),
        elongation=0.6,
        density=0.45,
        cluster_fraction=0.9,
        touching=0.9,
        photons=30,
        texture=0.8,
    )


def bench_finetune(device: str, steps: int | None) -> dict:
    """One-click fine-tune on an unfamiliar domain; PQ on unannotated cells before/after."""
    scene = unfamiliar_scene()
    labels = scene.labels
    n = int(labels.max())
    annotated = np.random.default_rng(0).permutation(np.arange(1, n + 1))[:10]
    weak = np.where(np.isin(labels, annotated), labels, 0)
    rest = np.where(np.isin(labels, annotated), 0, labels)

    def pq_rest(seg: Segmenter) -> float:
        pred = seg.segment(scene.image, method="map").labels
        touched = np.unique(pred[weak > 0])
        pred = np.where(np.isin(pred, touched[touched > 0]), 0, pred)
        return float(evaluate(rest, pred)["pq"])

    before = pq_rest(Segmenter("default", device=device))
    config = quick_finetune_config(weak=True, **({"steps": steps} if steps else {}))
    t0 = time.perf_counter()
    trainer = Trainer([scene.image], [weak], config, init="default", device=device)
    model, info = trainer.run()
    dt = time.perf_counter() - t0
    after = pq_rest(Segmenter((model, info), device=device))
    return {
        "image": "512x512",
        "cells": n,
        "annotated_cells": 10,
        "steps": config.steps,
        "seconds": dt,
        "pq_unannotated_before": before,
        "pq_unannotated_after": after,
    }


def _best_time(fn, repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` calls of ``fn`` after one warm-up call (s)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def model_flops_per_pixel(model: torch.nn.Module, side: int = 512) -> float:
    """Floating-point operations of one forward pass, per input pixel."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, side, side))
    return counter.get_total_flops() / side**2


def bench_floor() -> dict:
    """The machine's float32 rate: 2048^2 matmul and the default U-Net's widest conv."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / _best_time(lambda: a @ b, 5) / 1e9
    # widest layer of the default U-Net: 72 -> 24 channels, 3x3, at 512^2 (decoder top)
    x = torch.randn(1, 72, 512, 512).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(72, 24, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        t = _best_time(lambda: conv(x), 3)
    return {
        "matmul_gflops": matmul,
        "widest_conv_gflops": 2 * 72 * 24 * 9 * 512**2 / t / 1e9,
        "threads": torch.get_num_threads(),
    }


def bench_forward(seg: Segmenter, floor_gflops: float, sides=(512, 1024)) -> dict:
    """Bare forward passes: the trained network vs its inference copy."""
    flops_px = model_flops_per_pixel(seg.model)
    eager, fast = seg.model.eval(), inference_copy(seg.model, seg.device)
    rows = []
    for side in sides:
        x = torch.rand(1, 1, side, side)
        with torch.inference_mode():
            t_eager = _best_time(lambda x=x: eager(x), 2 if side > 512 else 3)
            t_fast = _best_time(lambda x=x: fast(x), 2 if side > 512 else 3)
        gflop = flops_px * side**2 / 1e9
        floor = gflop / floor_gflops
        rows.append(
            {
                "side": side,
                "gflop": gflop,
                "eager_s": t_eager,
                "fast_s": t_fast,
                "speedup": t_eager / t_fast,
                "eager_gflops": gflop / t_eager,
                "fast_gflops": gflop / t_fast,
                "eager_over_floor": t_eager / floor,
                "fast_over_floor": t_fast / floor,
            }
        )
        print("forward", rows[-1], flush=True)
    return {"flops_per_pixel": flops_px, "rows": rows}


def _scene_image(side: int) -> np.ndarray:
    if side <= 2048:
        return simulate_cells(shape=(side, side), seed=1).image
    tile = simulate_cells(shape=(1024, 1024), seed=1).image
    return np.tile(tile, (side // 1024, side // 1024))


def bench_tiled_vs_bare(seg: Segmenter, sides=(1024, 4096)) -> list[dict]:
    """Tiled prediction (default tile plan) against one bare forward of the whole image
    (inference copy, softmax included): what tiling, halos and blending cost."""
    fast = inference_copy(seg.model, seg.device)
    norm = seg.info.normalizer()
    rows = []
    for side in sides:
        image = _scene_image(side)
        lo, hi = norm.limits(image)
        x = torch.from_numpy(((image.astype(np.float32) - lo) / (hi - lo))[None, None])
        repeats = 1 if side > 2048 else 2
        with torch.inference_mode():
            bare = _best_time(lambda x=x: torch.softmax(fast(x), 1), repeats)
        tiled = _best_time(lambda im=image: seg.predict(im), repeats)
        rows.append({"side": side, "bare_s": bare, "tiled_s": tiled, "ratio": tiled / bare})
        print("tiled vs bare", rows[-1], flush=True)
    return rows


def bench_post_scaling(seg: Segmenter) -> dict:
    """TH / WT / MAP at 1024^2 and 2048^2 (same scene): time ratio for 4x the pixels."""
    image = simulate_cells(shape=(2048, 2048), seed=1).image
    probs = {2048: seg.predict(image)}
    probs[1024] = np.ascontiguousarray(probs[2048][:, :1024, :1024])
    min_size = seg.post_settings("th", None, None, None)[1].get("min_size", 10)
    out = {}
    for method in ("th", "wt", "map"):
        t = {
            side: _best_time(lambda p=p, m=method: postprocess(p, method=m, min_size=min_size), 3)
            for side, p in probs.items()
        }
        out[method] = {"s_1024": t[1024], "s_2048": t[2048], "ratio": t[2048] / t[1024]}
        print("post", method, out[method], flush=True)
    return out


def bench_speed(seg: Segmenter, quick: bool = False) -> dict:
    """Issue 16's figures in one run (CPU)."""
    floor = bench_floor()
    print("floor", floor, flush=True)
    sides = (256, 512) if quick else (512, 1024)
    return {
        "floor": floor,
        "forward": bench_forward(seg, floor["matmul_gflops"], sides),
        "tiled_vs_bare": bench_tiled_vs_bare(seg, (512,) if quick else (1024, 4096)),
        "post": {} if quick else bench_post_scaling(seg),
    }


def write_speed_docs(results: dict, path: Path) -> None:
    """The speed table (``<!-- speed:DEVICE -->`` markers) in docs/benchmarks.md."""
    dev, sp = results["device"], results["speed"]
    fl, fw = sp["floor"], sp["forward"]
    lines = [
        f"<!-- speed:{dev}:start -->",
        f"### Speed against the compute floor on {results['device_name']} "
        f"({results['date']}, `python benchmarks/bench_engine.py --speed`)",
        "",
        f"Floor: 2048² float32 matmul **{fl['matmul_gflops']:.1f} GFLOP/s** "
        f"({fl['threads']} threads), the model's widest convolution (72 -> 24 channels, "
        f"3x3, 512², channels-last) {fl['widest_conv_gflops']:.1f} GFLOP/s. The default "
        f"U-Net costs {fw['flops_per_pixel'] / 1e3:.0f} kFLOP a pixel.",
        "",
        "| forward | trained network (eager) | inference copy | speed-up | copy / floor |",
        "|---|---|---|---|---|",
    ]
    for r in fw["rows"]:
        lines.append(
            f"| {r['side']}² ({r['gflop']:.1f} GFLOP) | {r['eager_s']:.2f} s, "
            f"{r['eager_gflops']:.0f} GFLOP/s ({r['eager_over_floor']:.2f}x floor) | "
            f"{r['fast_s']:.2f} s, {r['fast_gflops']:.0f} GFLOP/s | {r['speedup']:.2f}x | "
            f"**{r['fast_over_floor']:.2f}x** (goal <= 1.5x) |"
        )
    lines += ["", "| tiled prediction | bare forward, whole image | tiled | tiled / bare |"]
    lines.append("|---|---|---|---|")
    for r in sp["tiled_vs_bare"]:
        lines.append(
            f"| {r['side']}² | {r['bare_s']:.2f} s | {r['tiled_s']:.2f} s | "
            f"**{r['ratio']:.2f}x** (goal <= 1.05x) |"
        )
    if sp["post"]:
        lines += ["", "| post-processing | 1024² | 2048² | 2048² / 1024² (4x the pixels) |"]
        lines.append("|---|---|---|---|")
        for method, r in sp["post"].items():
            lines.append(
                f"| {method.upper()} | {r['s_1024'] * 1e3:.0f} ms | {r['s_2048'] * 1e3:.0f} ms "
                f"| **{r['ratio']:.2f}x** (goal <= 4.5x) |"
            )
    lines.append(f"<!-- speed:{dev}:end -->")
    _replace_section(path, f"speed:{dev}", "\n".join(lines))


def _replace_section(path: Path, marker: str, section: str) -> None:
    """Put ``section`` (which starts and ends with its ``<!-- MARKER:start/end -->``
    comments) in place of the old one in ``path``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def write_docs(results: dict, path: Path) -> None:
    dev = results["device"]
    t, th, tr, mem, ft = (
        results["tiling"],
        results["throughput"],
        results["training"],
        results["memory"],
        results["finetune"],
    )
    host_row = (
        f"| the same, normalising each tile on the host | "
        f"{t['host_normalised_s']:.2f} s | {t['host_normalised_ratio']:.2f}x |\n"
        if "host_normalised_s" in t
        else ""
    )
    median = (
        f", median of 3 runs {t['ratio_median']:.2f}x"
        if "ratio_median" in t and dev != "cpu"
        else ""
    )
    section = f"""<!-- engine:{dev}:start -->
### Engine on {results["device_name"]} ({results["date"]}, `{results["command"]}`)

| measure | value | reference / goal |
|---|---|---|
| tiled prediction {t["image"]} ({t["tiles"]} tiles of 512 px) | {t["tiled_prediction_s"]:.2f} s | bare forward passes {t["bare_forward_s"]:.2f} s: **{t["ratio"]:.2f}x**{median} (goal <= 1.15x) |
| the same, streaming every tile to the viewer | {t.get("streamed_prediction_s", float("nan")):.2f} s | **{t.get("streamed_ratio", float("nan")):.2f}x** |
{host_row}| 512x512 images per second (predict + TH) | {th["images_per_s"]:.2f} /s | {th["images"]} images |
| training steps per second (batch 4, 256 px crops) | {tr["steps_per_s"]:.2f} /s | {tr["steps"]} steps |
| peak memory added, predicting {mem["image"]} | {mem["added_by_prediction_mib"]:.0f} MiB | result (3 float32 maps) {mem["probabilities_mib"]:.0f} MiB: **{mem["added_over_result_size"]:.2f}x** |
| one-click fine-tune, 512x512, {ft["annotated_cells"]} cells annotated, {ft["steps"]} steps | {ft["seconds"]:.0f} s | goal <= 120 s on a 2-core CPU |
| PQ on the unannotated cells, before -> after fine-tune | {ft["pq_unannotated_before"]:.3f} -> {ft["pq_unannotated_after"]:.3f} | unfamiliar domain: large, elongated, dim nuclei |
<!-- engine:{dev}:end -->"""
    _replace_section(path, f"engine:{dev}", section)


def main() -> None:
    parser = argparse.ArgumentParser(description="engine benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--speed", action="store_true", help="only the speed figures (6-9)")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.memory_child:
        _peak_memory_child(args.memory_child, args.device)
        return
    seg = Segmenter("default", device=args.device)
    side = 1024 if args.quick else 4096
    results = {
        "device": seg.device.type,
        "device_name": seg.device_name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "command": "python benchmarks/bench_engine.py"
        + (" --quick" if args.quick else "")
        + ("" if args.device == "cpu" else f" --device {args.device}"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    if args.speed or seg.device.type == "cpu":
        results["speed"] = bench_speed(seg, args.quick)
        speed_file = args.out / f"speed_{seg.device.type}{suffix}.json"
        speed_file.write_text(json.dumps(results, indent=2))
        if not args.quick:
            write_speed_docs(results, args.docs)
        if args.speed:
            return
    repeats = 1 if args.quick or seg.device.type == "cpu" else 3
    ratios = [bench_tiling_overhead(seg, side) for _ in range(repeats)]
    best = min(ratios, key=lambda r: r["ratio"])
    best["ratio_median"] = statistics.median(r["ratio"] for r in ratios)
    results["tiling"] = best
    print("tiling", best, flush=True)
    results["throughput"] = bench_throughput(seg, 2 if args.quick else 8)
    print("throughput", results["throughput"], flush=True)
    results["training"] = bench_training(args.device, 3 if args.quick else 20)
    print("training", results["training"], flush=True)
    results["memory"] = bench_memory(side, args.device)
    print("memory", results["memory"], flush=True)
    results["finetune"] = bench_finetune(args.device, 3 if args.quick else None)
    print("finetune", results["finetune"], flush=True)
    (args.out / f"engine_{seg.device.type}{suffix}.json").write_text(json.dumps(results, indent=2))
    if not args.quick:
        write_docs(results, args.docs)


if __name__ == "__main__":
    main()
