"""Train the fusion networks on real-content stacks mixed with the simulator's (issue 14).

    nice -n 19 .venv/bin/python scripts/train_fusion_real.py --kind hf-seg --minutes 60 \\
        [--data ../shared/data/dsb2018-train] [--out-dir /tmp/fusion_helper] [--threads 1]

Data: the training part of :func:`napari_cellfocus.core.fusion_data.real_image_split`
(seed 0, 20 % of the images held out for validation, by image), cropped at random,
made into focus stacks / pairs by ``core.fusion_data`` (depth per object, smooth
background depth, Gaussian / disc / mixed PSF, 8/16-bit, Poisson-Gaussian noise,
bleaching, lateral shifts), mixed with the simulator's.

* ``hf-seg``: :class:`napari_cellfocus.engine.fusion_stack.StackFusionTrainer` (the direct
  whole-stack mode end to end, plus eq. 6.3 pairs from
  :class:`~napari_cellfocus.core.fusion_data.RealStackPairSampler`).
* ``hf-reg``: :class:`napari_cellfocus.engine.fusion.FusionTrainer` (eq. 6.4) on
  :class:`~napari_cellfocus.core.fusion_data.RealStackPairSampler` pairs.

The network: a U-Net of depth 4, width 12, batch norm, behind a 2x space-to-depth
(``build_fusion_model(space_to_depth=2)``), about 4x cheaper per pixel than the earlier
full-resolution width-8 U-Net. Runs until ``--minutes`` (or ``--steps``); every
``--val-every`` steps the model is scored (SSIM of the fused image to the truth) on
``--val-stacks`` stacks built from held-out images that the benchmark does not use
(validation images 0-5; the benchmark takes its real-content stacks from the end of
the validation list), and the best one so far is kept as ``OUT_DIR/best_KIND.pt``; the
last state is ``OUT_DIR/last_KIND.pt`` (written every 2 minutes). Stop it any time
(SIGTERM / Ctrl-C): both files stay loadable. A JSON line per validation goes to
``OUT_DIR/KIND_val.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellfocus.core.fusion_data import (
    RealImagePool,
    RealStackPairSampler,
    load_real_image,
    real_focus_stack,
    real_image_split,
)
from napari_cellfocus.core.fusion_metrics import ssim
from napari_cellfocus.engine.fusion import (
    FusionModel,
    FusionTrainConfig,
    FusionTrainer,
    fuse_stack,
)
from napari_cellfocus.engine.fusion_stack import (
    StackFusionConfig,
    StackFusionTrainer,
    StackSampler,
)

ROOT = Path(__file__).resolve().parents[1]
NETWORK = {"depth": 4, "width": 12, "norm": "batch"}
SPACE_TO_DEPTH = 2
#: Model-selection stacks: (validation image index, stack parameters).
VAL_PARAMS = [
    {"n_slices": 7, "psf": "gaussian", "defocus_per_slice": 1.5, "bit_depth": 8, "photons": 200},
    {"n_slices": 5, "psf": "disc", "defocus_per_slice": 2.0, "bit_depth": 16, "photons": 500},
    {"n_slices": 7, "psf": "mixed", "defocus_per_slice": 1.0, "bit_depth": 8, "photons": 60},
    {
        "n_slices": 9,
        "psf": "gaussian",
        "defocus_per_slice": 2.5,
        "bit_depth": 16,
        "photons": 100,
        "bleach": 0.03,
        "shift_std": 0.3,
    },
]


def val_stacks(data: Path, n: int) -> list:
    _, val = real_image_split(data)
    out = []
    for i in range(n):
        image, labels = load_real_image(data, val[i])
        out.append(real_focus_stack(image, labels, 1000 + i, **VAL_PARAMS[i % len(VAL_PARAMS)]))
    return out


def score(model, info, kind: str, stacks: list) -> float:
    fm = FusionModel((model, info), kind=kind, device="cpu")
    vals = []
    for st in stacks:
        r = fuse_stack(st.stack, kind, model=fm)
        vals.append(ssim(st.truth, r.fused.astype(np.float32)))
    model.train()
    return float(np.mean(vals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["hf-seg", "hf-reg"], default="hf-seg")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/dsb2018-train")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/fusion_helper"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--val-stacks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train_files, _ = real_image_split(args.data)
    pool = RealImagePool(args.data, train_files)
    pairs = RealStackPairSampler(pool, (args.crop, args.crop))
    data = (
        f"real-content stacks / pairs from {len(train_files)} dsb2018-train images "
        "(core.fusion_data.real_image_split seed 0, 20 % held out) mixed with the simulator's"
    )
    best_path = args.out_dir / f"best_{args.kind}.pt"
    last_path = args.out_dir / f"last_{args.kind}.pt"
    log = args.out_dir / f"{args.kind}_val.jsonl"
    # planned steps from a rough speed guess, refined after the first 10 steps
    planned = args.steps
    if args.kind == "hf-seg":
        cfg = StackFusionConfig(steps=planned, seed=args.seed, checkpoint_every=0)
        trainer = StackFusionTrainer(
            cfg,
            StackSampler(pool, args.crop),
            pairs,
            network=NETWORK,
            space_to_depth=SPACE_TO_DEPTH,
            out=last_path,
            data=data,
        )
    else:
        cfg = FusionTrainConfig(
            kind="hf-reg", steps=planned, lr=2e-3, seed=args.seed, checkpoint_every=0
        )
        trainer = FusionTrainer(
            cfg,
            sampler=pairs,
            network=NETWORK,
            space_to_depth=SPACE_TO_DEPTH,
            device="cpu",
            out=last_path,
            workers=1,
        )
    cfg.checkpoint_every_s = 120.0
    stacks = val_stacks(args.data, args.val_stacks)
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    budget = args.minutes * 60.0
    start = time.perf_counter()
    best = -1.0
    gen = trainer.steps()
    try:
        for p in gen:
            if p.step == 10:
                per_step = (time.perf_counter() - start) / 10
                cfg.steps = int(min(args.steps, max(20, budget / per_step)))
                print(
                    f"{args.kind}: {per_step:.2f} s/step, planning {cfg.steps} steps", flush=True
                )
            if p.step % args.val_every == 0 or p.step == cfg.steps:
                s = score(trainer.model, trainer.current_info(), args.kind, stacks)
                entry = {
                    "step": p.step,
                    "loss": p.loss,
                    "val_ssim": s,
                    "minutes": (time.perf_counter() - start) / 60,
                }
                with log.open("a") as fh:
                    fh.write(json.dumps(entry) + "\n")
                print(json.dumps(entry), flush=True)
                if s > best:
                    best = s
                    trainer.save(best_path)
            if stop["flag"] or time.perf_counter() - start > budget + 300:
                print(f"{args.kind}: stopping at step {p.step}", flush=True)
                break
    finally:
        gen.close()
    if not best_path.exists():
        shutil.copy(last_path, best_path)
    summary = {
        "kind": args.kind,
        "steps": trainer.step,
        "seconds": round(time.perf_counter() - start, 1),
        "seed": args.seed,
        "crop_size": args.crop,
        "device": f"cpu ({torch.get_num_threads()} threads, nice 19, shared)",
        "network": {**NETWORK, "space_to_depth": SPACE_TO_DEPTH},
        "data": "real-content (dsb2018-train, 342 training images) + simulated",
        "final_loss": trainer.history[-1]["loss"],
        "best_val_ssim": round(best, 4),
        "file": str(best_path),
    }
    (args.out_dir / f"{args.kind}_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.kind}: done, best val SSIM {best:.4f} ({best_path})", flush=True)


if __name__ == "__main__":
    main()
