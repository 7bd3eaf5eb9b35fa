"""Train the built-in default segmentation model on real annotated nuclei plus the simulator.

    python scripts/train_default_model.py --data ../shared/data/dsb2018-train
    python scripts/train_default_model.py --data DIR --device cuda --steps 6000 --from none

``--data`` is a folder of real annotated images (``images/NAME.tif`` + ``masks/NAME.tif``,
the layout of the 2018 Data Science Bowl set described in docs/default_model.md; it is not
part of the package). About 15 % of its images, stratified by image size, are held out for
validation *by image*; the rest are mixed in every batch with simulated scenes (crowded,
touching, 16-bit cases the real set lacks), in the share ``--real-share``.

Every image is rescaled so its median nucleus diameter is ``--diameter`` px, and each crop
gets an extra random zoom in ``--scale-range`` (plus the flips, elastic warps, gamma, gain,
noise and blur of core.augment), so the model needs the object size, not the image kind.

After training, the defaults users get (post-processing method and thresholds, the relative
size filter) are chosen on the validation split with the automatic diameter estimate
(engine.validation.choose_defaults) and stored in the checkpoint. Writes
``src/napari_cellfocus/data/default_model.pt`` and ``docs/default_model.json``.

Real images bundled in other packages (stardist's, scikit-image's, napari's) are never used.
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
from napari_cellfocus.core.augment import AugmentConfig
from napari_cellfocus.core.datasets import read_pairs, split_by_image
from napari_cellfocus.core.simulate import random_scene_params, simulate_cells
from napari_cellfocus.core.size import median_diameter
from napari_cellfocus.engine.train import DEFAULT_NETWORK, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]


def make_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One simulated training scene with varied settings; side 256-512 px."""
    rng = np.random.default_rng(seed)
    side = int(rng.choice([256, 320, 384, 448, 512]))
    scene = simulate_cells(shape=(side, side), seed=seed, **random_scene_params(rng))
    return scene.image, scene.labels


def group_weights(
    labels: list[np.ndarray], n_real: int, real_share: float, diameter: float
) -> list[float]:
    """Per-image draw weights such that the first ``n_real`` images (real) give
    ``real_share`` of the crops and the others (simulated) the rest. The Trainer draws an
    image in proportion to its area at the training scale times its weight, so each
    group's weights are divided by that group's total area at that scale."""
    areas = []
    for lab in labels:
        d = median_diameter(lab) or diameter
        areas.append(lab.size * (diameter / d) ** 2)
    real_area, sim_area = sum(areas[:n_real]), sum(areas[n_real:])
    return [real_share / real_area] * n_real + [(1 - real_share) / sim_area] * (
        len(labels) - n_real
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of real images/masks")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--n-sim", type=int, default=120, help="simulated training scenes")
    parser.add_argument("--real-share", type=float, default=0.75, help="real share of crops")
    parser.add_argument(
        "--from",
        dest="init",
        default="default",
        help="start from this model ('default': the built-in one; 'none': new)",
    )
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=160)
    parser.add_argument("--diameter", type=float, default=20.0, help="model scale (px)")
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0))
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--loss", default="wce")
    parser.add_argument("--weights", default="saw")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--max-minutes", type=float, default=0, help="stop training after this long (0: never)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "src" / "napari_cellfocus" / "data" / "default_model.pt"
    )
    parser.add_argument("--record", type=Path, default=REPO / "docs" / "default_model.json")
    parser.add_argument(
        "--finalize-only",
        action="store_true",
        help="skip training: choose and store the defaults of --out again",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    real = read_pairs(args.data)
    train_idx, val_idx = split_by_image(
        [r.image.shape for r in real], args.val_fraction, args.seed
    )
    print(
        f"{len(real)} real images: {len(train_idx)} train, {len(val_idx)} validation", flush=True
    )
    val = [real[i] for i in val_idx]
    record_path = args.record
    if args.finalize_only:
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        finalize(args, val, record)
        return

    seeds = np.random.default_rng(args.seed).integers(0, 2**31, args.n_sim)
    with Pool(2) as pool:
        scenes = pool.map(make_scene, [int(s) for s in seeds])
    t_data = time.time() - t0
    print(f"read real data and simulated {len(scenes)} scenes in {t_data:.0f} s", flush=True)

    images = [real[i].image for i in train_idx] + [s[0] for s in scenes]
    labels = [real[i].labels for i in train_idx] + [s[1] for s in scenes]
    n_real, n_sim = len(train_idx), len(scenes)
    weights = group_weights(labels, n_real, args.real_share, args.diameter)
    config = TrainConfig(
        n_classes=3,
        loss=args.loss,
        weights=args.weights,
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        lr_schedule="cosine",
        warmup_steps=args.warmup_steps,
        checkpoint_every=250,
        seed=args.seed,
        diameter=args.diameter,
        scale_range=tuple(args.scale_range),
        augment=AugmentConfig(blur_prob=0.3, background=0.2, noise_std=0.08),
    )
    init = None if args.init.lower() == "none" else args.init
    trainer = Trainer(
        images,
        labels,
        config,
        init=init,
        network=dict(DEFAULT_NETWORK),
        device=args.device,
        out=args.out.with_name(args.out.stem + ".training.pt"),
        workers=args.workers,
        image_weights=weights,
    )
    t_prep = time.time() - t0 - t_data
    print(f"prepared in {t_prep:.0f} s; training on {trainer.device}", flush=True)
    t1 = time.time()
    trainer.run(
        on_step=lambda p: (
            print(
                f"step {p.step}/{p.total} loss {p.loss:.4f} "
                f"({(time.time() - t1) / p.step:.2f} s/step) eta {p.eta_s / 60:.1f} min",
                flush=True,
            )
            if p.step % 25 == 0
            else None
        ),
        should_stop=(lambda: time.time() - t1 > 60 * args.max_minutes)
        if args.max_minutes
        else None,
    )
    t_train = time.time() - t1
    info = trainer.current_info()
    trainer.model.to("cpu")
    from napari_cellfocus.engine.checkpoint import save_checkpoint

    info.training["default_model"] = {
        "script": "scripts/train_default_model.py",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "data": f"{n_real} real images of {args.data.name} (validation: {len(val_idx)} "
        f"others, split by image and size) + {n_sim} simulated scenes; real share "
        f"{args.real_share:.2f} of crops",
        "validation_files": [r.name for r in val],
    }
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
        "n_train_real": n_real,
        "n_train_simulated": n_sim,
        "n_validation_real": len(val_idx),
        "validation_files": [r.name for r in val],
        "steps_done": trainer.step,
        "seconds": {"data": t_data, "prepare": t_prep, "train": t_train},
        "final_loss": info.history[-1]["loss"] if info.history else None,
    }
    finalize(args, val, record)


def finalize(args: argparse.Namespace, val: list, record: dict) -> None:
    """Choose the model's defaults on the validation split, store them, write the record."""
    # imported here so a long training run picks up the newest selection code
    from napari_cellfocus.engine.checkpoint import load_checkpoint, save_checkpoint
    from napari_cellfocus.engine.validation import choose_defaults

    model, info = load_checkpoint(args.out)
    t = time.time()
    defaults, table = choose_defaults(
        (model, info), [v.image for v in val], [v.labels for v in val], device=args.device
    )
    info.defaults.update(defaults)
    save_checkpoint(args.out, model, info)
    record.update(
        {
            "defaults": info.defaults,
            "selection_on_validation": table,
            "seconds_selection": time.time() - t,
            "file_size_bytes": args.out.stat().st_size,
        }
    )
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2))
    print(json.dumps(info.defaults, indent=1))
    print(f"wrote {args.out} ({record['file_size_bytes'] / 1e6:.1f} MB) and {args.record}")


if __name__ == "__main__":
    main()
