"""``cellfocus predict``: segment images or folders, with counts, per-cell tables and overlays.

    cellfocus predict IMAGES... --out OUT [--include GLOB] [--exclude GLOB]
        [--post map|th|wt] [--param NAME=VALUE ...] [--table] [--overlay] [--counts CSV]

Outputs, for ``--out`` a folder (or a ``.tif`` file when one image is given):

* ``NAME_labels.tif``: the instance labels (int32) of ``NAME.tif``;
* ``counts.csv`` (``LABELS_counts.csv`` next to a single ``--out LABELS.tif``; ``--counts``
  chooses): columns ``file, plane, count, diameter_px``, one row per image, or one row per
  plane (``plane`` = its index) for a stack the model segments plane by plane; ``plane`` is
  empty for a 2D image or a volume segmented as a whole;
* with ``--table``, ``NAME_cells.csv``: one row per cell (label, area, centroid, mean
  intensity) from :func:`napari_cellfocus.core.measure.cell_table`;
* with ``--overlay``, ``NAME_overlay.png``: the image with the cell outlines (one PNG per
  plane, ``NAME_overlay_003.png``, for a stack);
* with ``--probs FOLDER``, ``NAME_probs.tif``: the class probabilities.

Registered by ``napari_cellfocus.cli`` through :func:`add_predict_parser`.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_cellfocus.cli_common import CliError, ProgressBar, add_name_filters, filter_names

__all__ = ["add_predict_parser", "post_params_from_args", "run_predict"]

#: Post-processing methods the CLI offers and the parameters each takes (kept in step with
#: ``core.postprocess.METHODS`` by a test; only for the help text, which must not import it).
PARAM_HELP = {
    "map": "min_size, fill_holes",
    "th": "gamma1, gamma2, min_size, fill_holes",
    "wt": "tau0, tau1, min_size",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


# --------------------------------------------------------------------------- --param
def param_arg(text: str) -> tuple[str, str]:
    """``--param`` value: ``NAME=VALUE`` -> ``(NAME, VALUE)`` (checked against the method
    later, once the model and so its default method are known)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def method_parameters(method: str) -> dict[str, Any]:
    """Parameters of post-processing ``method`` (``core.postprocess.METHODS``) and their
    defaults, in signature order."""
    from napari_cellfocus.core.postprocess import METHODS

    func = METHODS[method]
    return {
        n: p.default
        for n, p in inspect.signature(func).parameters.items()
        if n not in ("probs", "foreground")
    }


def _convert(name: str, text: str, default: Any) -> Any:
    """``text`` as the type of the parameter's default (bool, int or float)."""
    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise CliError(f"--param {name}={text}: expected true or false.")
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--param {name}={text}: expected a number.") from None
    if isinstance(default, int):
        if not value.is_integer():
            raise CliError(f"--param {name}={text}: expected a whole number.")
        return int(value)
    return value


def post_params_from_args(
    pairs: Sequence[tuple[str, str]], method: str, n_classes: int = 3
) -> dict[str, Any]:
    """The ``--param NAME=VALUE`` pairs as post-processing parameters of ``method``.

    Names are checked against ``method``'s parameters, values converted to the type of the
    parameter's default and checked by running ``method`` once on a tiny uniform
    probability map (so a bad value fails before any image is segmented). A name given
    twice: the last value counts. Raises :class:`CliError` naming the bad name and the
    allowed ones.
    """
    from napari_cellfocus.core.postprocess import METHODS, postprocess

    method = method.lower()
    allowed = method_parameters(method)
    params: dict[str, Any] = {}
    for name, text in pairs:
        if name not in allowed:
            others = [m for m in METHODS if m != method and name in method_parameters(m)]
            hint = f" (a parameter of --post {' / '.join(others)})" if others else ""
            raise CliError(
                f"--param {name}: not a parameter of the {method!r} post-processing{hint}; "
                f"{method!r} takes {', '.join(allowed)}."
            )
        params[name] = _convert(name, text, allowed[name])
    if params:
        dummy = np.full((n_classes, 8, 8), 1.0 / n_classes, np.float32)
        try:
            postprocess(dummy, method=method, **params)
        except ValueError as err:
            raise CliError(f"--param: {err}") from err
    return params


# --------------------------------------------------------------------------- outputs
def plane_counts(labels: np.ndarray, spatial_dims: int) -> list[tuple[str, int]]:
    """``(plane, count)`` rows: one ``("", n)`` for an image segmented as a whole, else one
    per plane of the leading axes (``"3"``, or ``"1:3"`` for two leading axes), counting
    the distinct labels in it."""
    lead = labels.shape[: max(0, labels.ndim - spatial_dims)]
    if not lead:
        return [("", int(np.count_nonzero(np.unique(labels))))]
    return [
        (":".join(map(str, idx)), int(np.count_nonzero(np.unique(labels[idx]))))
        for idx in np.ndindex(*lead)
    ]


def write_overlays(path: Path, image: np.ndarray, labels: np.ndarray) -> list[Path]:
    """Overlay PNG(s) of ``image`` with ``labels``' outlines: ``path`` for a 2D image,
    ``<stem>_<plane>.png`` per plane (leading axes) otherwise."""
    from napari_cellfocus.core.overlay import write_overlay_png

    if image.ndim == 2:
        return [write_overlay_png(path, image, labels)]
    written = []
    for idx in np.ndindex(*image.shape[:-2]):
        tag = "_".join(f"{i:03d}" for i in idx)
        written.append(
            write_overlay_png(path.with_name(f"{path.stem}_{tag}.png"), image[idx], labels[idx])
        )
    return written


def _output_places(images: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Labels / probs paths per image, the folder for the other outputs and the counts CSV."""
    from napari_cellfocus.core.io import TIFF_SUFFIXES, output_paths

    outs = output_paths(images, args.out, "_labels")
    seen: dict[Path, Path] = {}
    for image, out in zip(images, outs, strict=True):
        if out in seen:
            raise CliError(
                f"{seen[out]} and {image} would both be written to {out}: give images with "
                "different names (or run them separately)."
            )
        seen[out] = image
    single = len(images) == 1 and Path(args.out).suffix.lower() in TIFF_SUFFIXES
    folder = outs[0].parent if single else Path(args.out)
    counts = args.counts or (folder / (f"{outs[0].stem}_counts.csv" if single else "counts.csv"))
    probs = output_paths(images, args.probs, "_probs") if args.probs else [None] * len(images)
    return {"labels": outs, "probs": probs, "folder": folder, "counts": Path(counts)}


# --------------------------------------------------------------------------- command
def run_predict(args: argparse.Namespace) -> int:
    """Body of ``cellfocus predict`` (``args`` as parsed by the ``predict`` sub-parser)."""
    from napari_cellfocus.core.io import expand_paths, read_image, write_image
    from napari_cellfocus.core.measure import cell_table, write_csv

    images = filter_names(expand_paths(args.images, role="images"), args.include, args.exclude)
    places = _output_places(images, args)
    from napari_cellfocus.engine.segment import Segmenter  # torch: after the cheap checks

    seg = Segmenter(args.model, device=args.device)
    method = (args.post or seg.default_method).lower()
    params = post_params_from_args(args.param, method, seg.n_classes)
    print(
        f"model {seg.source} on {seg.device_name}; post-processing {method}"
        + "".join(f" {k}={v}" for k, v in params.items()),
        file=sys.stderr,
    )
    places["counts"].parent.mkdir(parents=True, exist_ok=True)
    with places["counts"].open("w", newline="") as counts_file:
        counts = csv.writer(counts_file)
        counts.writerow(["file", "plane", "count", "diameter_px"])
        for path, out, pout in zip(images, places["labels"], places["probs"], strict=True):
            image = read_image(path)
            if args.channel is not None:
                if image.ndim < 3:
                    raise CliError(f"{path}: --channel given but the image has no channel axis.")
                image = image[..., args.channel] if args.channel_last else image[args.channel]
            bar = ProgressBar(1, f"predict {path.name}")
            result = seg.segment(
                image,
                method=method,
                post_params=params or None,
                diameter=args.diameter,
                tile_size=args.tile_size,
                on_tile=lambda u, bar=bar: (setattr(bar, "total", u.total), bar.update(u.done)),
            )
            write_image(out, result.labels)
            if pout is not None:
                write_image(pout, result.probs)
            diameter = "" if result.diameter is None else f"{result.diameter:.2f}"
            for plane, count in plane_counts(result.labels, seg.spatial_dims):
                counts.writerow([str(path), plane, count, diameter])
            counts_file.flush()
            extra = []
            if args.table:
                table = places["folder"] / f"{path.stem}_cells.csv"
                write_csv(table, cell_table(result.labels, image))
                extra.append(f"table {table}")
            if args.overlay:
                pngs = write_overlays(
                    places["folder"] / f"{path.stem}_overlay.png", image, result.labels
                )
                extra.append(
                    f"overlay {pngs[0]}" + (f" (+{len(pngs) - 1})" if len(pngs) > 1 else "")
                )
            size = describe_diameter(result.diameter, args.diameter)
            also = f" ({', '.join(extra)})" if extra else ""
            print(f"{path}: {result.count} cells{size} -> {out}{also}")
    print(f"counts of {len(images)} image(s) written to {places['counts']}")
    return 0


def diameter_arg(text: str) -> float | str:
    """``--diameter``: 'auto' or a number of pixels > 0."""
    if text.lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or pixels > 0, got {text!r}")
    return value


def describe_diameter(diameter: float | None, asked: float | str) -> str:
    """', nucleus diameter 23.1 px (estimated)' for the per-image line; '' without one."""
    if diameter is None:
        return ""
    how = "estimated" if asked == "auto" else "given"
    return f", nucleus diameter {diameter:.1f} px ({how})"


def add_predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``predict`` sub-command on ``sub``; returns its parser."""
    p = sub.add_parser(
        "predict",
        help="segment images with a model (the built-in default if none is given)",
        description="Segment images (TIFF files or folders; label and result files such as "
        "NAME_labels.tif are never taken as images from a folder): writes instance labels as "
        "TIFF, a counts CSV (file, plane, count, diameter_px) and, on request, a per-cell "
        "table and an overlay PNG per image, and prints the cell count of each image.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image TIFFs or folders of them")
    p.add_argument("--out", required=True, type=Path, help="labels TIFF (one image) or folder")
    add_name_filters(p)
    p.add_argument("--model", default="default", help="model file, or 'default' (built-in)")
    p.add_argument(
        "--post",
        choices=tuple(PARAM_HELP),
        default=None,
        help="post-processing (default: the model's own, with its stored thresholds)",
    )
    p.add_argument(
        "--param",
        action="append",
        type=param_arg,
        default=[],
        metavar="NAME=VALUE",
        help="post-processing parameter, over the model's stored ones (repeatable): "
        + "; ".join(f"{m}: {names}" for m, names in PARAM_HELP.items())
        + ". min_size (px) replaces the model's size filter relative to the diameter",
    )
    p.add_argument(
        "--diameter",
        type=diameter_arg,
        default="auto",
        help="typical nucleus diameter in pixels, or 'auto' to estimate it per image "
        "(default); images are rescaled to the model's scale and back",
    )
    p.add_argument(
        "--counts",
        type=Path,
        default=None,
        help="counts CSV to write (default: OUT/counts.csv, or LABELS_counts.csv next to a "
        "single --out LABELS.tif)",
    )
    p.add_argument("--table", action="store_true", help="also write NAME_cells.csv per image")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png per image")
    p.add_argument("--probs", type=Path, default=None, help="also write probabilities (C,Y,X)")
    p.add_argument("--tile-size", type=int, default=512, help="tile side in pixels (512)")
    p.add_argument("--channel", type=int, default=None, help="channel to segment")
    p.add_argument(
        "--channel-last", action="store_true", help="the channel axis is the last one (Y,X,C)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=run_predict)
    return p
