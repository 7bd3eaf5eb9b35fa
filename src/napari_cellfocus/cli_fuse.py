"""``cellfocus fuse``: multi-focus fusion of focus stacks from the command line.

    cellfocus fuse STACK.tif --out FUSED.tif [--depth DEPTH.tif]
        [--method hf-seg|hf-reg|max-focus|pyramid|gff|wavelet] [--axis 0]
    cellfocus fuse STACKS/ [more.tif ...] --out FUSED/ [--depth DEPTHS/]
        [--include GLOB] [--exclude GLOB]

The fused image has the stack's XY shape and dtype (8/16-bit stays 8/16-bit); the
depth map is a float32 TIFF of slice indices along ``--axis``. Several stacks (files or
folders) write ``NAME_fused.tif`` / ``NAME_depth.tif`` per stack into the ``--out`` /
``--depth`` folders; from a folder, label and result files (``*_labels``, ``*_fused``,
``*_depth``, ...) are never taken as stacks. Registered by ``napari_cellfocus.cli``
through :func:`add_fuse_parser`. Outputs are checked before any work
(``core.outputs``): an output that is an input or another output is refused, an existing
file needs ``--overwrite``. Over several stacks a bad one is reported and skipped, a
summary line ends the run and the exit status is 1 when any failed; errors in the user's
input raise ``ValueError`` / ``FileNotFoundError`` (``CliError`` for name filters that
leave nothing) with a message naming the file, which the caller prints as one line.

    cellfocus train-fusion --out M.pt [--kind hf-seg|hf-reg] [--from M.pt|default]
        [--steps N] [--checkpoint-every N] [--checkpoint-every-s S] [--overwrite]

trains a fusion network on simulated pairs with the segmentation trainer's rules
(``cli_common.run_training``): ``--out`` checked before any step (an existing model only
with ``--overwrite``, kept as ``NAME.previous.pt``), checkpoints every N steps and S
seconds, SIGTERM / SIGINT write a checkpoint marked cancelled (exit 143 / 130), and a
diverged run exits 2 without writing a model of the diverged steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from napari_cellfocus.cli_common import (
    FILE_ERRORS,
    BatchReport,
    CliError,
    add_name_filters,
    add_overwrite_flag,
    check_output_paths,
    error_line,
)

__all__ = ["add_fuse_parser", "add_train_fusion_parser", "run_fuse", "run_train_fusion"]

_METHODS = ("hf-seg", "hf-reg", "max-focus", "pyramid", "gff", "wavelet")


def _output_files(stacks: list[Path], out: Path, flag: str, suffix: str) -> list[Path]:
    """One output TIFF per stack: ``out`` itself for one stack and a ``.tif`` name, else
    ``out/<stem><suffix>.tif``; ``ValueError`` for another file suffix or clashing names."""
    from napari_cellfocus.core.io import TIFF_SUFFIXES, output_paths

    if len(stacks) == 1 and out.suffix and out.suffix.lower() not in TIFF_SUFFIXES:
        if not out.is_dir():
            raise ValueError(f"{flag} {out}: expected a .tif/.tiff file name or a folder.")
    try:
        paths = output_paths(stacks, out, suffix)
    except ValueError as err:
        raise ValueError(str(err).replace("--out", flag, 1)) from err
    seen: dict[Path, Path] = {}
    for stack, path in zip(stacks, paths, strict=True):
        if path in seen:
            raise ValueError(f"{seen[path]} and {stack} would both be written to {path}.")
        seen[path] = stack
    return paths


def _fuse_one(stack_path: Path, args: argparse.Namespace, kwargs: dict) -> tuple:
    """Fuse one stack file: ``(result, n_slices, seconds)``; errors name the file."""
    from napari_cellfocus.cli_common import ProgressBar
    from napari_cellfocus.core.io import read_image

    stack = read_image(stack_path)
    kwargs = {**kwargs, "name": str(stack_path)}
    bar = ProgressBar(1, f"fuse {stack_path.name}")

    def progress(update) -> None:
        bar.total = max(1, update.total)
        bar.update(update.done)

    start = time.perf_counter()
    try:
        if args.method in ("hf-seg", "hf-reg") or args.device is not None:
            from napari_cellfocus.engine.fusion import fuse_stack

            result = fuse_stack(stack, args.method, on_progress=progress, **kwargs)
        else:  # classical methods without --device: numpy, no torch import, start faster
            from napari_cellfocus.core.fusion import fuse_classical

            result = fuse_classical(stack, args.method, **kwargs)
            bar.update(1)
    except ValueError as err:
        message = str(err)
        if str(stack_path) not in message:
            message = f"{stack_path}: {message}"
        raise ValueError(message) from err
    axis = kwargs["axis"]
    n = stack.shape[axis] if -stack.ndim <= axis < stack.ndim else "?"
    return result, n, time.perf_counter() - start


def run_fuse(args: argparse.Namespace) -> int:
    """Body of ``cellfocus fuse`` (``args`` as parsed by the ``fuse`` sub-parser).

    One stack file and ``--out FUSED.tif``: that file. Several files or folders (their
    TIFFs, less label and result files such as ``*_fused.tif`` / ``*_depth.tif``, then
    ``--include`` / ``--exclude``): ``--out`` (and ``--depth``) are folders receiving
    ``NAME_fused.tif`` (``NAME_depth.tif``) per stack. A learned model is loaded once.
    """
    from napari_cellfocus.cli_common import filter_names
    from napari_cellfocus.core.io import expand_paths, write_image

    stacks = filter_names(expand_paths(args.stacks, role="images"), args.include, args.exclude)
    outs = _output_files(stacks, Path(args.out), "--out", "_fused")
    depths = (
        _output_files(stacks, Path(args.depth), "--depth", "_depth")
        if args.depth is not None
        else [None] * len(stacks)
    )
    planned = [("--out", p) for p in outs] + [("--depth", p) for p in depths if p is not None]
    check_output_paths(stacks, planned, args.overwrite)  # before any model is loaded
    kwargs: dict = {"axis": args.axis}
    if args.rgb:
        kwargs["rgb"] = True
    if args.method in ("hf-seg", "hf-reg"):
        from napari_cellfocus.engine.fusion import FusionModel

        kwargs.update(tile_size=args.tile_size)
        kwargs["model"] = FusionModel(args.model, args.method, args.device or "auto")
        if args.method == "hf-seg":
            kwargs["mode"] = args.mode
        if args.method == "hf-reg":
            kwargs["near_post"] = args.near
    elif args.device is not None:  # classical in torch on the named device
        kwargs["device"] = args.device
    report = BatchReport(len(stacks), "stacks", "fused")
    for stack_path, out, depth in zip(stacks, outs, depths, strict=True):
        try:
            result, n, seconds = _fuse_one(stack_path, args, kwargs)
            write_image(out, result.fused)
            if depth is not None:
                write_image(depth, result.depth)
        except FILE_ERRORS as err:
            if len(stacks) == 1:
                if isinstance(err, ValueError | CliError):
                    raise
                raise CliError(f"{stack_path}: {error_line(err)}") from None
            report.failed(stack_path, err)
            continue
        report.ok()
        where = result.info.get("device")
        print(
            f"{stack_path}: {n} slices fused with {args.method} in {seconds:.1f} s"
            + (f" on {where}" if where else "")
            + f" -> {out}"
            + (f" (depth map {depth})" if depth is not None else ""),
            flush=True,
        )
    if len(stacks) > 1:
        if report.failures and any("focus stack" in why for _, why in report.failures):
            print(
                "cellfocus: --include / --exclude choose which files of a folder are fused.",
                file=sys.stderr,
            )
        print(f"{report.done} stacks fused into {args.out}")
        print(report.summary(), file=sys.stderr if report.failures else sys.stdout)
    return report.exit_code


def add_fuse_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``fuse`` sub-command on ``subparsers``; returns its parser.

    Sets ``func=run_fuse`` so ``args.func(args)`` runs it.
    """
    p = subparsers.add_parser(
        "fuse",
        help="fuse focus stacks into all-in-focus images (and depth maps)",
        description="Multi-focus fusion of focus stack TIFFs (Z, Y, X) or colour stacks "
        "(Z, Y, X, C), one file or folders of them: writes the all-in-focus image with the "
        "stack's XY shape and dtype, and optionally the depth map (slice index of every "
        "pixel, float32), per stack (NAME_fused.tif, NAME_depth.tif in folders). The default "
        "method is the best learned one (hf-seg with a direct whole-stack focus map, built-in "
        "model trained on simulated data only).",
    )
    p.add_argument(
        "stacks", nargs="+", type=Path, metavar="STACK", help="focus stack TIFFs or folders"
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="fused image TIFF (one stack) or folder (NAME_fused.tif per stack)",
    )
    p.add_argument(
        "--depth",
        type=Path,
        default=None,
        help="also write the depth map: TIFF (one stack) or folder (NAME_depth.tif)",
    )
    add_name_filters(p, "stacks")
    p.add_argument(
        "--method",
        choices=_METHODS,
        default="hf-seg",
        help="fusion method (default hf-seg: learned focus map, the best on the benchmark)",
    )
    p.add_argument("--axis", type=int, default=0, help="the stack (focus) axis (0)")
    p.add_argument(
        "--rgb", action="store_true", help="the last axis holds colour channels (Z, Y, X, C)"
    )
    p.add_argument(
        "--model", default="default", help="learned methods: model file, or 'default' (built-in)"
    )
    p.add_argument(
        "--mode",
        choices=("pairwise", "direct"),
        default="direct",
        help="hf-seg: a direct whole-stack focus map (default) or iterated pairwise fusion",
    )
    p.add_argument(
        "--near", action="store_true", help="hf-reg: 'Near' post-processing (source pixels only)"
    )
    p.add_argument("--tile-size", type=int, default=1024, help="learned methods: tile side (1024)")
    p.add_argument(
        "--device",
        default=None,
        help="auto, cpu, cuda, cuda:N or mps (default: auto for hf-seg / hf-reg; the "
        "classical methods run in numpy unless a device is given, then in torch on it, "
        "'auto' meaning a CUDA GPU if there is one, else numpy; 'numpy' forces numpy)",
    )
    add_overwrite_flag(p)
    p.set_defaults(func=run_fuse)
    return p


# --------------------------------------------------------------------------- train-fusion
def run_train_fusion(args: argparse.Namespace) -> int:
    """Body of ``cellfocus train-fusion`` (``args`` as parsed by its sub-parser)."""
    from napari_cellfocus.cli_common import check_train_output, run_training

    out = Path(args.out)
    check_train_output(out, [], args.overwrite)  # before torch is even imported
    from napari_cellfocus.engine.fusion import (
        FusionTrainConfig,
        FusionTrainer,
        default_fusion_model_path,
    )

    fields = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "lr": args.lr,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_every_s": args.checkpoint_every_s,
    }
    config = FusionTrainConfig(
        kind=args.kind, **{k: v for k, v in fields.items() if v is not None}
    )
    init = args.init
    if init is not None and str(init).lower() == "default":
        init = default_fusion_model_path(args.kind)
    network = {k: v for k, v in (("depth", args.depth), ("width", args.width)) if v is not None}
    if network and init is not None:
        raise CliError("--depth / --width describe a new network; not with --from.")
    trainer = FusionTrainer(
        config, init=init, network=network or None, device=args.device, out=out
    )
    print(
        f"training {config.kind} fusion on {trainer.device} ({config.steps} steps of "
        f"{config.batch_size} simulated pairs, {config.crop_size} px"
        f"{', from ' + str(init) if init is not None else ''})",
        file=sys.stderr,
    )
    return run_training(trainer, out, config.steps, "train-fusion")


def add_train_fusion_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``train-fusion`` sub-command on ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "train-fusion",
        help="train or fine-tune a learned fusion model (HF-Seg / HF-Reg) on simulated pairs",
        description="Train a multi-focus fusion network (HF-Seg focus map or HF-Reg "
        "regression) on endless simulated pairs, as the built-in models were. Checkpoints "
        "go to --out every N steps and S seconds; SIGTERM / Ctrl-C write one marked "
        "cancelled; a diverged run writes no model.",
    )
    p.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument("--kind", choices=("hf-seg", "hf-reg"), default="hf-seg")
    p.add_argument(
        "--from", dest="init", default=None, help="fine-tune from 'default' or a model file"
    )
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (500)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (4)")
    p.add_argument("--crop-size", type=int, default=None, help="side of the pairs (128)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-3)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--depth", type=int, default=None, help="new network: U-Net levels (4)")
    p.add_argument("--width", type=int, default=None, help="new network: first width (16)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="write the model to --out every N steps (100)",
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
        "--overwrite",
        action="store_true",
        help="replace an existing --out model (it is kept as NAME.previous.pt first)",
    )
    p.set_defaults(func=run_train_fusion)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m napari_cellfocus.cli_fuse STACK ...``)."""
    parser = argparse.ArgumentParser(prog="cellfocus")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_fuse_parser(sub)
    args = parser.parse_args(["fuse", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, OSError, MemoryError) as err:
        print(f"cellfocus: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
