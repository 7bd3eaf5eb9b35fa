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
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_cellfocus import __version__


class CliError(Exception):
    """An error in the user's input, printed without a traceback."""


# --------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_cellfocus.core.io import read_image
    from napari_cellfocus.core.metrics import evaluate

    gt = read_image(args.gt)
    pred = read_image(args.pred)
    result = evaluate(gt, pred, iou_threshold=args.iou)
    result = {k: (v.item() if hasattr(v, "item") else v) for k, v in result.items()}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare a predicted label image with ground truth",
        description="Instance-segmentation metrics (precision, recall, F1, PQ, SQ, RQ, ...) "
        "of a predicted label TIFF against a ground-truth label TIFF.",
    )
    p.add_argument("--gt", required=True, type=Path, help="ground-truth instance labels (TIFF)")
    p.add_argument("--pred", required=True, type=Path, help="predicted instance labels (TIFF)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold for a match (0.5)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)


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


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellfocus",
        description="Deep-learning segmentation and counting of cells, and multi-focus "
        "fusion, from the command line (the engine of the napari-cellfocus plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_simulate(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError) as err:
        print(f"cellfocus: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellfocus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
