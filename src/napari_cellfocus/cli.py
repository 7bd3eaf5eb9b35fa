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
from napari_cellfocus.cli_common import (
    CliError,
    ProgressBar,
    add_overwrite_flag,
    check_output_paths,
    check_train_output,
    run_training,
)

__all__ = ["CliError", "ProgressBar", "build_parser", "main"]


# --------------------------------------------------------------------------- simulate
def simulation_outputs(out: Path, n: int, stack: bool) -> list[tuple[str, Path]]:
    """The files ``cellfocus simulate`` writes into ``out``, as ``(what, path)`` pairs."""
    names = ("stack", "all_in_focus", "depth", "labels") if stack else ("", "labels")
    return [
        ("--out", out / f"sim_{i:03d}{'_' + name if name else ''}.tif")
        for i in range(n)
        for name in names
    ]


def _cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_cellfocus.core.io import write_image
    from napari_cellfocus.core.simulate import (
        random_scene_params,
        simulate_cells,
        simulate_focus_stack,
    )

    if args.n < 1 or args.stack < 0:
        raise CliError(f"-n must be >= 1 and --stack >= 0; got -n {args.n}, --stack {args.stack}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: is a file; simulate writes into a folder.")
    # before any work: every file of the run, existing ones only with --overwrite
    check_output_paths([], simulation_outputs(out, args.n, bool(args.stack)), args.overwrite)
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
    add_overwrite_flag(p)
    p.set_defaults(func=_cmd_simulate)


# --------------------------------------------------------------------------- train
def _train_config(args: argparse.Namespace):
    """The TrainConfig of ``cellfocus train ARGS``."""
    from napari_cellfocus.engine.train import TrainConfig, quick_finetune_config

    weak = args.weak == "on"  # "auto" is decided from the labels (see _train)
    base = quick_finetune_config(weak=weak) if args.init else TrainConfig(weak=weak)
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
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _train_inputs(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """The image and label files of ``cellfocus train``, checked with ``--out``."""
    from napari_cellfocus.core.io import expand_paths

    images = expand_paths(args.images, role="images")
    labels = expand_paths(args.labels, role="labels")
    if len(images) != len(labels):
        raise CliError(
            f"{len(images)} image file(s) but {len(labels)} label file(s): give one label "
            "image per image, in the same order."
        )
    # before any work: not an input, a folder, a non-model file, an unwritable place, or
    # an existing model without --overwrite
    check_train_output(args.out, [*images, *labels], args.overwrite)
    return images, labels


def _cmd_train(args: argparse.Namespace) -> int:
    from napari_cellfocus.engine.ddp import distributed_env

    if args.ddp and not distributed_env():
        # this process starts the ranks: check what can be checked once, here
        _train_inputs(args)
        config = _train_config(args)
        if args.nproc < 1:
            raise CliError(f"--nproc must be >= 1, got {args.nproc}.")
        if config.batch_size % args.nproc:
            raise CliError(
                f"--batch-size {config.batch_size} is the global batch, split over the "
                f"{args.nproc} processes: it must be a multiple of --nproc."
            )
        from napari_cellfocus.engine.ddp import ddp_device, launch

        ddp_device(args.device, args.nproc - 1, args.nproc)  # e.g. more ranks than GPUs
        return launch("napari_cellfocus.cli:_train_rank", args.nproc, args)
    return _train(args, distributed=args.ddp)


def _train_rank(args: argparse.Namespace) -> int:
    """One rank of ``cellfocus train --ddp`` started by :func:`engine.ddp.launch`: the
    command's own error handling, its exit status returned."""
    return _run_reporting_errors(lambda: _train(args, distributed=True))


def _train(args: argparse.Namespace, distributed: bool = False) -> int:
    from napari_cellfocus.core.io import read_image

    images, labels = _train_inputs(args)
    config = _train_config(args)
    out = Path(args.out)
    label_images = [read_image(p) for p in labels]
    reason = ""
    if args.weak == "auto":
        from napari_cellfocus.engine.finetune import choose_mode

        weak, reason = choose_mode(label_images)
        config = dataclasses.replace(config, weak=weak)
    inputs = ([read_image(p) for p in images], label_images, config)
    where = {"init": args.init, "out": args.out, "names": [str(p) for p in images]}
    if not distributed:
        from napari_cellfocus.engine.train import Trainer

        if reason:
            print(f"--weak auto: {reason}")
        trainer = Trainer(*inputs, device=args.device, **where)
        _say_training(trainer, config, args)
        return run_training(trainer, out, config.steps, "train")

    from napari_cellfocus.engine.ddp import DistributedTrainer
    from napari_cellfocus.engine.ddp import distributed as process_group

    with process_group(args.device) as ctx:
        trainer = DistributedTrainer(*inputs, device=ctx.device, **where)
        if ctx.is_writer and reason:
            print(f"--weak auto: {reason}")
        if ctx.is_writer:
            _say_training(
                trainer,
                config,
                args,
                f"{ctx.world_size} processes ({ctx.backend}), batch "
                f"{config.batch_size // ctx.world_size} per process, ",
            )
        return run_training(trainer, out, config.steps, "train", writer=ctx.is_writer)


def _say_training(trainer, config, args: argparse.Namespace, where: str = "") -> None:
    print(
        f"training on {where}{trainer.device} ({len(trainer.train_samples)} image(s), "
        f"{config.steps} steps, loss {config.loss}"
        f"{', weak labels (W3)' if config.weak else ''}"
        f"{', from ' + str(args.init) if args.init else ''})",
        file=sys.stderr,
    )


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
    p.add_argument(
        "--weak",
        nargs="?",
        const="on",
        default="off",
        choices=("on", "off", "auto"),
        help="labels are incomplete (only some cells drawn): W3 learns the drawn cells and "
        "their surroundings only; 'auto' decides from how much of the images the labels "
        "cover, as the fine-tune widget does (--weak alone: on)",
    )
    p.add_argument(
        "--classes",
        type=int,
        choices=(2, 3, 4),
        default=None,
        help="2 (background / cell: UNET2), 3 (adds touching) or 4 (adds gap) classes",
    )
    # choices and help from the registries (engine.loss_methods, core.weight_methods:
    # standard library only, so the parser loads neither torch nor scipy)
    from napari_cellfocus.core.weight_methods import cli_weight_methods
    from napari_cellfocus.engine.loss_methods import cli_loss_methods

    losses, weights = cli_loss_methods(), cli_weight_methods()
    p.add_argument(
        "--loss",
        choices=tuple(m.key for m in losses),
        default=None,
        help="training loss (default wce): " + "; ".join(f"{m.key}: {m.summary}" for m in losses),
    )
    p.add_argument(
        "--weights",
        choices=tuple(m.key for m in weights),
        default=None,
        help="weight map for the loss (ignored with --weak, which uses W3): "
        + "; ".join(f"{m.key}: {m.summary}" for m in weights),
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
    p.add_argument(
        "--ddp",
        action="store_true",
        help="train with torch DistributedDataParallel on --nproc local processes (one per "
        "GPU: cuda:0..N-1; gloo on the CPU); under torchrun each process is one rank. "
        "--batch-size is the global batch, split over the processes",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=2,
        metavar="N",
        help="processes started by --ddp (2); ignored under torchrun",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out model (it is kept as NAME.previous.pt first); "
        "without it an existing model is refused before training",
    )
    p.set_defaults(func=_cmd_train)


# --------------------------------------------------------------------------- demo
#: The files ``cellfocus demo`` writes into its ``--out`` folder.
DEMO_FILES = (
    "sample_image.tif",
    "sample_labels.tif",
    "sample_probabilities.tif",
    "sample_overlay.png",
)


def _write_png(path: Path, rgb) -> Path:
    """An RGB uint8 array as a PNG, written atomically (``core.io.atomic_write``)."""
    import imageio.v3 as iio

    from napari_cellfocus.core.io import atomic_write

    return atomic_write(path, lambda fh: fh.write(iio.imwrite("<bytes>", rgb, extension=".png")))


def _cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: is a file; demo writes its results into a folder.")
    # before the model runs: existing results only with --overwrite, writable folder
    check_output_paths([], [("--out", out / name) for name in DEMO_FILES], args.overwrite)

    from napari_cellfocus._sample_data import sample_cells
    from napari_cellfocus.cli_predict import describe_diameter
    from napari_cellfocus.core.io import write_image
    from napari_cellfocus.core.metrics import evaluate
    from napari_cellfocus.core.overlay import overlay_rgb
    from napari_cellfocus.engine.segment import Segmenter

    (image, _, _), (truth, _, _) = sample_cells()
    seg = Segmenter("default", device=args.device)
    print(f"built-in default model on {seg.device_name}", file=sys.stderr)
    result = seg.segment(image)  # the model's own defaults, diameter estimated
    image_file, labels_file, probs_file, overlay_file = (out / name for name in DEMO_FILES)
    write_image(image_file, image)
    write_image(labels_file, result.labels)
    write_image(probs_file, result.probs)
    _write_png(overlay_file, overlay_rgb(image, result.labels))
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
    add_overwrite_flag(p)
    p.set_defaults(func=_cmd_demo)


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from napari_cellfocus.cli_evaluate import add_evaluate_parser
    from napari_cellfocus.cli_export import add_export_parser
    from napari_cellfocus.cli_fuse import add_fuse_parser, add_train_fusion_parser
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
    add_train_fusion_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run_reporting_errors(lambda: args.func(args))


def _run_reporting_errors(func) -> int:
    """``func()``'s exit status; the user's errors as one ``cellfocus: error:`` line
    (status 2), Ctrl-C as status 130."""
    try:
        return int(func() or 0)
    except (CliError, ValueError, FileNotFoundError, MemoryError, FloatingPointError) as err:
        print(f"cellfocus: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellfocus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
