"""Train fusion models on simulated data only (thesis T 6.2.1-6.2.3): the earlier recipe.

The shipped models now come from ``scripts/train_fusion_real.py`` (real-content stacks
mixed with the simulator's, a space-to-depth network; see docs/fusion.md). This script
is kept to reproduce the earlier simulated-only models; it writes into the package's
data folder, so run it with care.

    .venv/bin/python scripts/train_default_fusion_model.py [--minutes 7] [--steps 2000]

Writes ``src/napari_cellfocus/data/default_fusion_model.pt`` (HF-Seg, the default
method) and ``default_fusion_model_hfreg.pt`` (HF-Reg). The shipped models came from
``--minutes 7`` (HF-Seg: 738 steps in 421 s) and ``--minutes 7.5 --kinds hf-reg``
(251 steps in 450 s) on the shared 2-core CPU. Data: endless simulated pairs
(:class:`napari_cellfocus.core.fusion_data.FusionPairSampler`): half two-plane focus
stacks of the simulator with per-slice camera noise, half eq. 6.1 instance-blur pairs
of simulated scenes (sigma ~ U(1, 5)) with camera noise; both source orders in every
batch. Each model trains until ``--steps`` or ``--minutes`` (time guard), whichever
comes first, with a cosine learning-rate decay planned over the step count that the
first 20 steps' speed predicts for the time budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_cellfocus.engine.fusion import (
    DEFAULT_FUSION_NETWORK,
    FusionTrainConfig,
    FusionTrainer,
    default_fusion_model_path,
)

NETWORK = {**DEFAULT_FUSION_NETWORK, "width": 8}


def train_one(kind: str, minutes: float, max_steps: int, seed: int, crop: int, batch: int) -> dict:
    budget = minutes * 60.0
    probe = FusionTrainer(
        FusionTrainConfig(kind=kind, steps=20, batch_size=batch, crop_size=crop, seed=seed),
        network=NETWORK,
        device="cpu",
    )
    start = time.perf_counter()
    for _ in probe.steps():
        pass
    per_step = (time.perf_counter() - start) / 20
    steps = int(min(max_steps, max(20, (budget - (time.perf_counter() - start)) / per_step + 20)))
    config = FusionTrainConfig(
        kind=kind,
        steps=steps,
        batch_size=batch,
        crop_size=crop,
        lr=2e-3,
        seed=seed,
        checkpoint_every=0,
    )
    trainer = FusionTrainer(config, init=(probe.model, probe.current_info()), device="cpu")
    trainer.step = 20  # continue the probe's run (same schedule, same data stream)
    trainer.config.steps = steps
    last = time.perf_counter()
    for p in trainer.steps():
        if time.perf_counter() - start > budget:
            print(f"{kind}: time budget reached at step {p.step}", flush=True)
            break
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            print(f"{kind}: step {p.step}/{steps} loss {p.loss:.4f}", flush=True)
    seconds = time.perf_counter() - start
    info = trainer.current_info()
    info.training["summary"] = {
        "kind": kind,
        "steps": trainer.step,
        "seconds": round(seconds, 1),
        "seed": seed,
        "crop_size": crop,
        "batch_pairs": batch,
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "data": "simulated only: FusionPairSampler (focus-stack pairs + eq. 6.1 pairs, noise)",
    }
    path = default_fusion_model_path(kind)
    from napari_cellfocus.engine.checkpoint import save_checkpoint

    save_checkpoint(path, trainer.model, info)
    summary = {
        **info.training["summary"],
        "final_loss": trainer.history[-1]["loss"],
        "file": str(path),
        "bytes": path.stat().st_size,
    }
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=7.0, help="budget per model")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--kinds", nargs="+", default=["hf-seg", "hf-reg"])
    args = parser.parse_args()
    out = []
    for kind in args.kinds:
        out.append(train_one(kind, args.minutes, args.steps, args.seed, args.crop, args.batch))
    log = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fusion_training.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(log.read_text()) if log.exists() else []
    trained = {entry["kind"] for entry in out}
    merged = [e for e in kept if e.get("kind") not in trained] + out
    log.write_text(json.dumps(sorted(merged, key=lambda e: e["kind"]), indent=2))


if __name__ == "__main__":
    main()
