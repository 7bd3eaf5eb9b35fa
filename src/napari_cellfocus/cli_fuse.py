"""``cellfocus fuse``: multi-focus fusion of a focus stack from the command line.

    cellfocus fuse STACK.tif --out FUSED.tif [--depth DEPTH.tif]
        [--method hf-seg|hf-reg|max-focus|pyramid|gff|wavelet] [--axis 0]

The fused image has the stack's XY shape and dtype (8/16-bit stays 8/16-bit); the
depth map is a float32 TIFF of slice indices along ``--axis``. Registered by
``napari_cellfocus.cli`` through :func:`add_fuse_parser`; errors in the user's input
raise ``ValueError`` / ``FileNotFoundError`` with a message naming the file, which
the caller prints as one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_fuse_parser", "run_fuse"]

_METHODS = ("hf-seg", "hf-reg", "max-focus", "pyramid", "gff", "wavelet")


def run_fuse(args: argparse.Namespace) -> int:
    """Body of ``cellfocus fuse`` (``args`` as parsed by the ``fuse`` sub-parser)."""
    from napari_cellfocus.core.io import read_image, write_image

    stack_path = Path(args.stack)
    stack = read_image(stack_path)
    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out {out}: expected a .tif/.tiff file name.")
    if args.depth is not None and Path(args.depth).suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--depth {args.depth}: expected a .tif/.tiff file name.")
    kwargs: dict = {"axis": args.axis, "name": str(stack_path)}
    if args.rgb:
        kwargs["rgb"] = True
    if args.method in ("hf-seg", "hf-reg"):
        kwargs.update(model=args.model, device=args.device or "auto", tile_size=args.tile_size)
        if args.method == "hf-seg":
            kwargs["mode"] = args.mode
        if args.method == "hf-reg":
            kwargs["near_post"] = args.near
    from napari_cellfocus.cli_common import ProgressBar

    bar = ProgressBar(1, f"fuse {stack_path.name}")

    def progress(update) -> None:
        bar.total = max(1, update.total)
        bar.update(update.done)

    start = time.perf_counter()
    try:
        if args.method in ("hf-seg", "hf-reg") or args.device is not None:
            from napari_cellfocus.engine.fusion import fuse_stack

            if args.method not in ("hf-seg", "hf-reg"):  # classical, a device was named
                kwargs["device"] = args.device
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
    write_image(out, result.fused)
    if args.depth is not None:
        write_image(args.depth, result.depth)
    seconds = time.perf_counter() - start
    axis = kwargs["axis"]
    n = stack.shape[axis] if -stack.ndim <= axis < stack.ndim else "?"
    where = result.info.get("device")
    print(
        f"{stack_path}: {n} slices fused with {args.method} in {seconds:.1f} s"
        + (f" on {where}" if where else "")
        + f" -> {out}"
        + (f" (depth map {args.depth})" if args.depth is not None else "")
    )
    return 0


def add_fuse_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``fuse`` sub-command on ``subparsers``; returns its parser.

    Sets ``func=run_fuse`` so ``args.func(args)`` runs it.
    """
    p = subparsers.add_parser(
        "fuse",
        help="fuse a focus stack into one all-in-focus image (and a depth map)",
        description="Multi-focus fusion of a focus stack TIFF (Z, Y, X) or colour stack "
        "(Z, Y, X, C): writes the all-in-focus image with the stack's XY shape and dtype, "
        "and optionally the depth map (slice index of every pixel, float32). The default "
        "method is the best learned one (hf-seg with a direct whole-stack focus map, built-in "
        "model trained on simulated data only).",
    )
    p.add_argument("stack", type=Path, help="focus stack TIFF")
    p.add_argument("--out", required=True, type=Path, help="fused image TIFF to write")
    p.add_argument("--depth", type=Path, default=None, help="also write the depth map TIFF")
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
    p.add_argument("--tile-size", type=int, default=512, help="learned methods: tile side (512)")
    p.add_argument(
        "--device",
        default=None,
        help="auto, cpu, cuda, cuda:N or mps (default: auto for hf-seg / hf-reg; the "
        "classical methods run in numpy unless a device is given, then in torch on it, "
        "'auto' meaning a CUDA GPU if there is one, else numpy; 'numpy' forces numpy)",
    )
    p.set_defaults(func=run_fuse)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m napari_cellfocus.cli_fuse STACK ...``)."""
    parser = argparse.ArgumentParser(prog="cellfocus")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_fuse_parser(sub)
    args = parser.parse_args(["fuse", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, MemoryError) as err:
        print(f"cellfocus: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
