"""The ``cellfocus`` command line: the plugin's engine without napari.

Each sub-command is a thin wrapper around ``core`` / ``engine`` functions.
Heavy imports (torch, napari) happen inside the sub-command that needs them so
that ``cellfocus --help`` and ``cellfocus evaluate`` start quickly.

Errors in the user's input (missing files, wrong shapes, corrupt models) are
printed as one line ``cellfocus: error: ...`` with exit status 2, never as a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_cellfocus import __version__
from napari_cellfocus.cli_common import CliError, ProgressBar, format_seconds

__all__ = ["CliError", "ProgressBar", "build_parser", "main"]


# --------------------------------------------------------------------------- simulate
def _cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_cellfocus.core.io import write_image
    from napari_cellfocus.core.simulate import (
        random_scene_params,
        simulate_cells,
        simulate_focus_stack,
    )

    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size)
    for i in range(args.n):
        seed = int(rng.integers(2**31))
        if args.stack:
            scene = simulate_focus_stack(shape=shape, n_slices=args.stack, seed=seed)
            write_image(out / f"sim_{i:03d}_stack.tif", scene.stack)
            write_image(out / f"sim_{i:03d}_all_in_focus.tif", scene.all_in_focus)
            write_image(out / f"sim_{i:03d}_depth.tif", scene.depth)
        else:
            params = random_scene_params(np.random.default_rng(seed)) if args.vary else {}
            scene = simulate_cells(shape=shape, seed=seed, **params)
            write_image(out / f"sim_{i:03d}.tif", scene.image)
        write_image(out / f"sim_{i:03d}_labels.tif", scene.labels)
        print(f"{out / f'sim_{i:03d}'}: {int(scene.labels.max())} cells")
    return 0


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="write simulated fluorescence images with instance labels",
        description="Write simulated fluorescence nuclei images (sim_NNN.tif) and their "
        "instance labels (sim_NNN_labels.tif), or focus stacks with their all-in-focus "
        "ground truth, to a folder.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("-n", type=int, default=4, help="number of images (4)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--vary", action="store_true", help="draw varied scene settings per image")
    p.add_argument(
        "--stack", type=int, default=0, metavar="Z", help="write focus stacks of Z slices instead"
    )
    p.set_defaults(func=_cmd_simulate)


# --------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from napari_cellfocus.core.io import expand_paths, read_image
    from napari_cellfocus.engine.train import (
        TrainConfig,
        Trainer,
        TrainingDiverged,
        quick_finetune_config,
    )

    images = expand_paths(args.images, role="images")
    labels = expand_paths(args.labels, role="labels")
    if len(images) != len(labels):
        raise CliError(
            f"{len(images)} image file(s) but {len(labels)} label file(s): give one label "
            "image per image, in the same order."
        )
    from napari_cellfocus.cli_common import check_train_output

    # before any work: not an input, a folder, a non-model file or an unwritable place
    check_train_output(args.out, [*images, *labels])
    base = quick_finetune_config(weak=args.weak) if args.init else TrainConfig(weak=args.weak)
    overrides = {
        "n_classes": args.classes,
        "loss": args.loss,
        "weights": args.weights,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "lr": args.lr,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "val_every": args.val_every,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_every_s": args.checkpoint_every_s,
    }
    config = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(args.out)
    trainer = Trainer(
        [read_image(p) for p in images],
        [read_image(p) for p in labels],
        config,
        init=args.init,
        device=args.device,
        out=args.out,
        names=[str(p) for p in images],
    )
    print(
        f"training on {trainer.device} ({len(trainer.train_samples)} image(s), "
        f"{config.steps} steps, loss {config.loss}"
        f"{', weak labels (W3)' if config.weak else ''}"
        f"{', from ' + str(args.init) if args.init else ''})",
        file=sys.stderr,
    )
    backup = _keep_previous_model(out)
    bar = ProgressBar(config.steps, "train")
    received: list[int] = []
    restore = _stop_on_signals(trainer, received)
    try:
        trainer.run(
            on_step=lambda p: bar.update(
                p.step,
                f"loss {p.loss:.4f} eta {format_seconds(p.eta_s)}"
                + "".join(f" {k} {v:.3f}" for k, v in p.metrics.items()),
            ),
            should_stop=lambda: bool(received),
        )
    except TrainingDiverged as err:
        kept = f" The previous model is kept in {backup}." if backup is not None else ""
        raise CliError(f"{err}{kept}") from None
    finally:
        restore()
        trainer.release()
    if trainer.cancelled and received:
        print(
            f"cellfocus: stopped by {trainer.cancel_reason} at step {trainer.step} of "
            f"{config.steps}; checkpoint written to {out} (steps_done {trainer.step}, "
            "cancelled)",
            file=sys.stderr,
        )
        return 128 + received[0]  # 143 for SIGTERM, 130 for SIGINT, as a shell reports
    print(f"model written to {out}")
    return 0


def _keep_previous_model(out: Path) -> Path | None:
    """Copy an existing ``out`` to ``<name>.previous<suffix>`` before training replaces
    it (atomically: a temporary copy renamed), and say so; returns the copy's path."""
    import os
    import shutil
    import tempfile

    if not out.is_file():
        return None
    backup = out.with_name(f"{out.stem}.previous{out.suffix}")
    fd, tmp = tempfile.mkstemp(prefix=f".{backup.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        shutil.copy2(out, tmp)
        os.replace(tmp, backup)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(
            f"--out {out}: cannot keep the existing model as {backup} "
            f"({err.strerror or type(err).__name__}); nothing was trained."
        ) from None
    print(f"cellfocus: {out} exists: the previous model is kept as {backup}", file=sys.stderr)
    return backup


def _stop_on_signals(trainer, received: list[int]):
    """SIGTERM / SIGINT (what ``timeout``, Slurm and Ctrl-C send) stop training after the
    current step: the trainer writes a checkpoint marked cancelled, with the signal's name
    as ``cancel_reason``. A second signal stops at once. Only in the CLI (napari has its
    own cancel). Returns a function restoring the previous handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if received:  # a second signal: do not wait for the step
            raise KeyboardInterrupt
        received.append(signum)
        trainer.cancel_reason = signal.Signals(signum).name

    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in signums}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a segmentation model",
        description="Train a model on images and instance label images (TIFF files or folders). "
        "With --from default --weak and nothing else it runs the same quick fine-tune as the "
        "plugin's one-click button: only the annotated cells teach.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image TIFFs or folders of them")
    p.add_argument("--labels", nargs="+", required=True, type=Path, help="label TIFFs/folders")
    p.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument(
        "--from", dest="init", default=None, help="fine-tune from 'default' or a model file"
    )
    p.add_argument("--weak", action="store_true", help="labels are incomplete (only some cells)")
    p.add_argument("--classes", type=int, choices=(3, 4), default=None, help="3 or 4 classes")
    p.add_argument("--loss", choices=("wce", "j3", "j4", "jaccard"), default=None)
    p.add_argument(
        "--weights",
        choices=("saw", "dwm", "unet", "balance", "overcrowding", "none"),
        default=None,
        help="weight map for the loss (ignored with --weak, which uses W3)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--val-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="write the model to --out every N steps (50; 25 with --from)",
    )
    p.add_argument(
        "--checkpoint-every-s",
        type=float,
        default=None,
        metavar="S",
        help="and every S seconds (300); SIGTERM / Ctrl-C also write it, marked cancelled",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_train)


# --------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_cellfocus._sample_data import sample_cells
    from napari_cellfocus.cli_predict import describe_diameter
    from napari_cellfocus.core.io import write_image
    from napari_cellfocus.core.metrics import evaluate
    from napari_cellfocus.core.overlay import write_overlay_png
    from napari_cellfocus.engine.segment import Segmenter

    (image, _, _), (truth, _, _) = sample_cells()
    seg = Segmenter("default", device=args.device)
    print(f"built-in default model on {seg.device_name}", file=sys.stderr)
    result = seg.segment(image)  # the model's own defaults, diameter estimated
    out = Path(args.out)
    write_image(out / "sample_image.tif", image)
    write_image(out / "sample_labels.tif", result.labels)
    write_image(out / "sample_probabilities.tif", result.probs)
    write_overlay_png(out / "sample_overlay.png", image, result.labels)
    metrics = evaluate(truth, result.labels)
    print(
        f"cells found: {result.count} (ground truth: {metrics['n_true']})"
        f"{describe_diameter(result.diameter, 'auto')}"
    )
    print(
        f"F1 {metrics['f1']:.3f}  PQ {metrics['pq']:.3f}  precision {metrics['precision']:.3f}  "
        f"recall {metrics['recall']:.3f}"
    )
    print(f"results written to {out}/ (labels, probabilities, overlay PNG)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="segment the built-in sample with the built-in model and score it",
        description="Segment the plugin's sample image (simulated crowded nuclei) with the "
        "built-in default model, write the results and print the count and accuracy.",
    )
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (out/)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_demo)


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from napari_cellfocus.cli_evaluate import add_evaluate_parser
    from napari_cellfocus.cli_fuse import add_fuse_parser
    from napari_cellfocus.cli_predict import add_predict_parser

    parser = argparse.ArgumentParser(
        prog="cellfocus",
        description="Deep-learning segmentation and counting of cells, and multi-focus "
        "fusion, from the command line (the engine of the napari-cellfocus plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    add_predict_parser(sub)
    _add_train(sub)
    _add_simulate(sub)
    add_evaluate_parser(sub)
    add_fuse_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError, MemoryError, FloatingPointError) as err:
        print(f"cellfocus: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellfocus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
