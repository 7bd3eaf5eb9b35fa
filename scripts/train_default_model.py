"""Train the built-in default segmentation model from the project's simulator alone.

    python scripts/train_default_model.py                       # CPU, documented settings
    python scripts/train_default_model.py --device cuda --steps 6000

Writes ``src/napari_cellfocus/data/default_model.pt`` (a few MB) and
``docs/default_model.json`` (settings, data, seed, time, validation scores on
held-out simulated scenes). No real image is used for training or tuning: real
images bundled in other packages are kept for independent evaluation.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from napari_cellfocus import __version__
from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.simulate import random_scene_params, simulate_cells
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.train import DEFAULT_NETWORK, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]


def make_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One simulated training scene with varied settings; side 256-512 px."""
    rng = np.random.default_rng(seed)
    side = int(rng.choice([256, 320, 384, 448, 512]))
    scene = simulate_cells(shape=(side, side), seed=seed, **random_scene_params(rng))
    return scene.image, scene.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--n-val", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=DEFAULT_NETWORK["width"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", default="wce")
    parser.add_argument("--weights", default="saw")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--max-minutes", type=float, default=0, help="stop training after this long (0: never)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "src" / "napari_cellfocus" / "data" / "default_model.pt"
    )
    parser.add_argument("--record", type=Path, default=REPO / "docs" / "default_model.json")
    args = parser.parse_args()

    t0 = time.time()
    seeds = np.random.default_rng(args.seed).integers(0, 2**31, args.n_images + args.n_val)
    with Pool(args.workers) as pool:
        scenes = pool.map(make_scene, [int(s) for s in seeds])
    train_scenes, val_scenes = scenes[: args.n_images], scenes[args.n_images :]
    t_data = time.time() - t0
    print(f"simulated {len(scenes)} scenes in {t_data:.0f} s", flush=True)

    config = TrainConfig(
        n_classes=3,
        loss=args.loss,
        weights=args.weights,
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        lr_schedule="cosine",
        checkpoint_every=500,
        seed=args.seed,
    )
    network = dict(DEFAULT_NETWORK, width=args.width)
    trainer = Trainer(
        [s[0] for s in train_scenes],
        [s[1] for s in train_scenes],
        config,
        network=network,
        device=args.device,
        out=args.out,
        workers=args.workers,
    )
    t_prep = time.time() - t0 - t_data
    print(f"prepared targets in {t_prep:.0f} s; training on {trainer.device}", flush=True)
    t1 = time.time()
    trainer.run(
        on_step=lambda p: (
            print(
                f"step {p.step}/{p.total} loss {p.loss:.4f} eta {p.eta_s / 60:.1f} min", flush=True
            )
            if p.step % 100 == 0
            else None
        ),
        should_stop=(lambda: time.time() - t1 > 60 * args.max_minutes)
        if args.max_minutes
        else None,
    )
    t_train = time.time() - t1

    seg = Segmenter((trainer.model, trainer.current_info()), device=trainer.device)
    scores = {m: [] for m in ("map", "th", "wt")}
    for image, labels in val_scenes:
        probs = seg.predict(image)
        from napari_cellfocus.core.postprocess import postprocess

        for method in scores:
            pred, _ = postprocess(probs, method=method)
            scores[method].append(evaluate(labels, pred))
    summary = {
        method: {
            k: float(np.mean([r[k] for r in results]))
            for k in ("f1", "pq", "sq", "precision", "recall")
        }
        for method, results in scores.items()
    }
    print(json.dumps(summary, indent=1))

    info = trainer.current_info()
    info.training["default_model"] = {
        "script": "scripts/train_default_model.py",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "data": f"{args.n_images} simulated scenes (random_scene_params), sides 256-512 px",
        "validation_simulated": summary,
    }
    trainer.model.to("cpu")
    from napari_cellfocus.engine.checkpoint import save_checkpoint

    save_checkpoint(args.out, trainer.model, info)
    record = {
        "package_version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": str(trainer.device),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "network": info.network,
        "n_parameters": int(sum(p.numel() for p in trainer.model.parameters())),
        "seconds": {"simulate": t_data, "targets": t_prep, "train": t_train},
        "final_loss": info.history[-1]["loss"] if info.history else None,
        "validation_on_simulated_scenes": summary,
        "file_size_bytes": args.out.stat().st_size,
    }
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out} ({record['file_size_bytes'] / 1e6:.1f} MB) and {args.record}")


if __name__ == "__main__":
    main()
