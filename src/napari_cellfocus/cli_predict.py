"""``cellfocus predict``: segment images or folders, with counts, per-cell tables and overlays.

    cellfocus predict IMAGES... --out OUT [--include GLOB] [--exclude GLOB]
        [--method map|th|wt|...] [--param NAME=VALUE ...] [--table] [--overlay]
        [--counts CSV]

``--method`` (also spelled ``--post``) offers the post-processing methods of the registry
(``core.methods.POST_METHODS``) and ``--param`` their parameters, checked against it.

Outputs, for ``--out`` a folder (or a ``.tif`` file when one image is given):

* ``NAME_labels.tif``: the instance labels (int32) of ``NAME.tif``;
* ``counts.csv`` (``LABELS_counts.csv`` next to a single ``--out LABELS.tif``; ``--counts``
  chooses): columns ``file, plane, count, diameter_px`` (``file, frame, plane, ...`` when
  an image of the run is a movie), one row per image, per frame of a movie (``frame`` =
  its index) and per plane of a volume segmented with ``--z-mode planes`` (``plane`` = its
  index); ``plane`` is empty for a 2D image or a volume segmented into 3D instances;
* with ``--table``, ``NAME_cells.csv``: one row per cell (label, area, centroid, mean
  intensity) from :func:`napari_cellfocus.core.measure.cell_table`;
* with ``--overlay``, ``NAME_overlay.png``: the image with the cell outlines (one PNG per
  plane, ``NAME_overlay_003.png``, for a stack);
* with ``--probs FOLDER``, ``NAME_probs.tif``: the class probabilities.

Axes (``--axes``, else the TIFF's or OME-Zarr store's metadata, else YX / ZYX; see
``core.axes``) are found for every image before any is segmented, so an ambiguous shape
fails at once. A volume is segmented into 3D instances from the 2D model's YX, ZX and ZY
views (``--z-mode ortho``, the default, with ``--z-scale``), by stitching planes
(``stitch``) or plane by plane (``planes``).

Memory (:func:`choose_mode`): from each image's header, before its pixels are read, the
memory it needs is estimated (``core.memory``); a 2D image over 36 megapixels or one that
would not fit whole is segmented block by block (``engine.blocks``, ``--blocks``), an
OME-Zarr store (``NAME.ome.zarr``) always, read lazily; labels then stream to a tiled
TIFF or an OME-Zarr label image (``--out NAME.ome.zarr``). What fits in neither way is
refused with a message naming the file.

Every output is checked before any image is read (``core.outputs``): one that is an
input, or another output of the run, is refused; an existing file only with
``--overwrite``. Over several images a bad file is reported, skipped, and named in the
summary line; the exit status is then 1 (2: refused before any work).

One image's work is :func:`predict_image`, run by the serial loop or, with ``--workers N``
(a local dask cluster) or ``--dask ADDRESS`` (an existing one), on dask workers
(``cli_dask``); the counts CSV and the summary are written here either way.

Registered by ``napari_cellfocus.cli`` through :func:`add_predict_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_cellfocus.cli_common import (
    FILE_ERRORS,
    BatchReport,
    CliError,
    ProgressBar,
    add_name_filters,
    add_overwrite_flag,
    check_output_paths,
    error_line,
    filter_names,
)
from napari_cellfocus.cli_dask import add_cluster_args, worker_segmenter
from napari_cellfocus.core.io import stem_of

__all__ = ["add_predict_parser", "post_params_from_args", "predict_image", "run_predict"]


def param_help() -> dict[str, str]:
    """``{method: "its, parameters"}`` of the post-processing methods the CLI offers (the
    registry, ``core.methods``, which imports nothing heavy: the parser is built from it)."""
    from napari_cellfocus.core.methods import app_methods

    return {m.key: ", ".join(m.names) for m in app_methods()}


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
    """Parameters of post-processing ``method`` (its registry entry, ``core.methods``) and
    their defaults, in signature order."""
    from napari_cellfocus.core.methods import get_post_method

    return get_post_method(method).defaults()


def _convert(name: str, text: str, kind: str) -> Any:
    """``text`` as a parameter of ``kind`` (the registry's "bool", "int" or "float")."""
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise CliError(f"--param {name}={text}: expected true or false.")
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--param {name}={text}: expected a number.") from None
    if kind == "int":
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
    from napari_cellfocus.core.methods import app_methods, get_post_method
    from napari_cellfocus.core.postprocess import postprocess

    try:
        spec = get_post_method(method)
    except ValueError as err:
        raise CliError(f"--method: {err}") from None
    method = spec.key
    allowed = spec.names
    params: dict[str, Any] = {}
    for name, text in pairs:
        if name not in allowed:
            others = [m.key for m in app_methods() if m.key != method and name in m.names]
            hint = f" (a parameter of --post {' / '.join(others)})" if others else ""
            raise CliError(
                f"--param {name}: not a parameter of the {method!r} post-processing{hint}; "
                f"{method!r} takes {', '.join(allowed)}."
            )
        params[name] = _convert(name, text, spec.param(name).kind)
    if params:
        dummy = np.full((n_classes, 8, 8), 1.0 / n_classes, np.float32)
        try:
            postprocess(dummy, method=method, **params)
        except ValueError as err:
            raise CliError(f"--param: {err}") from err
    return params


# --------------------------------------------------------------------------- outputs
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
            write_overlay_png(
                path.with_name(f"{stem_of(path)}_{tag}.png"), image[idx], labels[idx]
            )
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
    single = len(images) == 1 and Path(args.out).suffix.lower() in (*TIFF_SUFFIXES, ".zarr")
    folder = outs[0].parent if single else Path(args.out)
    stem = stem_of(outs[0]) if single else ""
    counts = args.counts or (folder / (f"{stem}_counts.csv" if single else "counts.csv"))
    probs = output_paths(images, args.probs, "_probs") if args.probs else [None] * len(images)
    return {"labels": outs, "probs": probs, "folder": folder, "counts": Path(counts)}


def planned_outputs(
    images: Sequence[Path], places: dict[str, Any], args: argparse.Namespace
) -> list[tuple[str, Path]]:
    """Every file the run will write, as ``(what, path)`` for
    :func:`core.outputs.check_outputs`: labels, probabilities, the counts CSV and, when
    asked, the per-cell tables and overlay PNGs (with the per-plane PNGs already there)."""
    import glob

    planned: list[tuple[str, Path]] = [("--out", p) for p in places["labels"]]
    planned += [("--probs", p) for p in places["probs"] if p is not None]
    planned.append(("--counts" if args.counts else "counts CSV", places["counts"]))
    folder = places["folder"]
    for path in images:
        if args.table:
            planned.append(("--table", folder / f"{stem_of(path)}_cells.csv"))
        if args.overlay:
            planned.append(("--overlay", folder / f"{stem_of(path)}_overlay.png"))
            pattern = f"{glob.escape(stem_of(path))}_overlay_*.png"
            planned += [("--overlay", p) for p in sorted(folder.glob(pattern))]
    return planned


def check_pixels(path: Path, image: np.ndarray) -> None:
    """Refuse pixel types that are no intensities (bool masks, complex numbers), naming
    the file; ``ValueError``."""
    if image.dtype == bool:
        raise ValueError(
            f"{path}: a boolean (true/false) image, a mask rather than a fluorescence image; "
            "segment the intensity image (8/16-bit or float)."
        )
    if np.iscomplexobj(image) or image.dtype.kind not in "uif":
        raise ValueError(
            f"{path}: pixel type {image.dtype} is not an intensity; save the image as "
            "8/16-bit integers or floats."
        )


# --------------------------------------------------------------------------- axes
def image_axes(path: Path, args: argparse.Namespace) -> str:
    """Axes of image ``path`` for this run, without reading its pixels: ``--axes`` when
    given, else the file's ImageJ / OME (or RGB) metadata, else the default rule of
    :func:`core.axes.default_axes`; with ``--channel`` and no C named anywhere, the
    first axis (the last with ``--channel-last``) is the channel. Raises
    :class:`CliError` naming the file, its shape and what to pass."""
    from napari_cellfocus.core.axes import default_axes, resolve_axes
    from napari_cellfocus.core.io import image_header

    header = image_header(path)
    if header is None:
        return ""  # unreadable: read_image names the file and the problem
    shape = header[0]
    if not 2 <= len(shape) <= 5:
        return ""  # no image at all: refused (and skipped in a batch) when it is read
    try:
        meta = None if args.axes else header[2]
        if args.axes is None and args.channel is not None and not (meta and "C" in meta):
            if len(shape) < 3:
                raise ValueError(
                    f"--channel given but the image has no channel axis (shape {shape})."
                )
            rest = shape[:-1] if args.channel_last else shape[1:]
            rest_axes = default_axes(rest, what="the image without its channel axis")
            return rest_axes + "C" if args.channel_last else "C" + rest_axes
        axes, _ = resolve_axes(shape, args.axes, meta)
    except ValueError as err:
        raise CliError(f"{path}: {err}") from None
    if "C" in axes and args.channel is not None:
        n = shape[axes.index("C")]
        if not 0 <= args.channel < n:
            raise CliError(
                f"{path}: --channel {args.channel} is out of range: shape {shape} with axes "
                f"{axes} has {n} channel(s), 0..{n - 1}."
            )
    if "C" in axes and args.channel is None and shape[axes.index("C")] > 1:
        n = shape[axes.index("C")]
        rgb = " (an RGB colour image?)" if axes.endswith("C") and n in (3, 4) else ""
        raise CliError(
            f"{path}: shape {shape} with axes {axes} has {n} channels{rgb}; the model takes "
            f"one grey channel: choose the nuclear channel with --channel 0..{n - 1}."
        )
    return axes


def count_rows(labels: np.ndarray, axes: str, z_mode: str | None) -> list[tuple[str, str, int]]:
    """``(frame, plane, count)`` rows of ``labels`` (axes in T, Z, Y, X order): one per
    frame of a movie (``frame`` = its index), one per plane when z was segmented plane by
    plane (``plane`` = its index), else one row; ``count``: the distinct labels in it."""

    def n(a: np.ndarray) -> int:
        return int(np.count_nonzero(np.unique(a)))

    per_plane = "Z" in axes and z_mode == "planes"
    rows = []
    frames = range(labels.shape[0]) if "T" in axes else [None]
    for t in frames:
        block = labels if t is None else labels[t]
        frame = "" if t is None else str(t)
        if per_plane:
            rows.extend((frame, str(z), n(block[z])) for z in range(block.shape[0]))
        else:
            rows.append((frame, "", n(block)))
    return rows


#: ``--z-mode`` choices and default, as ``engine.segment.Z_MODES`` / ``DEFAULT_Z_MODE``
#: (kept in step by a test; the parser must not import torch).
Z_MODE_CHOICES = ("ortho", "stitch", "planes")
CLI_DEFAULT_Z_MODE = "ortho"


def z_scale_arg(text: str) -> float:
    """``--z-scale``: a number > 0 (z step / pixel size)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or not 0.05 <= value <= 50.0:
        raise argparse.ArgumentTypeError(
            f"expected the z step / pixel size, a number in [0.05, 50], got {text!r}"
        )
    return value


def check_z_args(args: argparse.Namespace) -> None:
    """``--z-trim`` in [0, 1], ``--z-split`` in [0, 1): CliError otherwise."""
    if not 0.0 <= args.z_trim <= 1.0:
        raise CliError(f"--z-trim {args.z_trim}: expected a share in [0, 1] (0: no cut).")
    if not 0.0 <= args.z_split < 1.0:
        raise CliError(f"--z-split {args.z_split}: expected a ratio in [0, 1) (0: no split).")


def describe_z(result: Any, z_source: str = "") -> str:
    """', 3D instances (z stitched, IoU >= 0.25)' etc. for the per-image line;
    ``z_source`` says where the z scale came from (e.g. " from the file's metadata")."""
    parts = []
    if result.z_mode == "stitch":
        parts.append(
            f"3D instances (planes stitched across z, IoU >= {result.stitch_threshold:g})"
        )
    elif result.z_mode == "ortho":
        post = ", ".join(
            f"{k} {v:g}" for k, v in (result.post_params or {}).items() if k != "min_size"
        )
        parts.append(
            f"3D instances (YX, ZX and ZY views averaged, z scale {result.z_scale:g}"
            f"{z_source}, "
            f"3D {result.method.upper()}{f' {post}' if post else ''})"
        )
    elif result.z_mode == "planes":
        parts.append("z plane by plane (no stitching)")
    elif result.z_mode == "3d":
        parts.append("3D model")
    if result.counts is not None:
        link = (
            f"linked across frames, IoU >= {result.stitch_threshold:g}"
            if result.linked
            else "not linked"
        )
        parts.append(f"{len(result.counts)} frames ({link})")
    return f", {', '.join(parts)}" if parts else ""


# --------------------------------------------------------------------------- memory
#: Above this many pixels a 2D image is segmented in blocks even when it would fit whole
#: (6000 x 6000): the whole-image path needs ~28 bytes a pixel, 1 GiB here.
BLOCKS_ABOVE_PIXELS = 36_000_000


def plane_axes(shape: Sequence[int], axes: str) -> str:
    """``axes`` without the channel axis and without axes of length 1 (an OME-Zarr image
    is often stored as TCZYX with one time point and one plane)."""
    return "".join(
        a for n, a in zip(shape, axes, strict=True) if a in "YX" or (a != "C" and n > 1)
    )


def lazy_plane(image: Any, axes: str, channel: int | None, path: Path) -> Any:
    """The (Y, X) plane of a lazy image (dask) with axes ``axes``: ``channel`` taken out
    of C, length-1 axes dropped, nothing read. ``CliError`` when it needs a channel."""
    index = []
    for n, a in zip(image.shape, axes, strict=True):
        if a == "C" and n > 1:
            if channel is None:
                raise CliError(
                    f"{path}: shape {tuple(image.shape)} with axes {axes} has {n} channels; "
                    f"choose the nuclear channel with --channel 0..{n - 1}."
                )
            index.append(int(channel))
        elif a in "YX":
            index.append(slice(None))
        else:
            index.append(0)
    return image[tuple(index)]


def choose_mode(path: Path, axes: str, args: argparse.Namespace, seg: Any) -> str:
    """``"whole"`` or ``"blocks"`` for image ``path`` (axes as found), from its header
    alone: ``--blocks on/off``, else blocks for a 2D image over
    :data:`BLOCKS_ABOVE_PIXELS` or one that would not fit whole. Raises
    :class:`CliError` naming the file, the memory needed and the memory available when
    the chosen way does not fit either (before any pixel is read)."""
    from napari_cellfocus.core.io import image_header
    from napari_cellfocus.core.memory import (
        available_bytes,
        block_bytes,
        fits,
        gib,
        ortho_bytes,
        whole_image_bytes,
    )
    from napari_cellfocus.core.omezarr import is_zarr
    from napari_cellfocus.engine.blocks import block_margin

    header = image_header(path)
    if header is None or not axes:
        return "whole"  # unreadable or no image: read_image says what is wrong
    shape, dtype = header[:2]
    itemsize = np.dtype(dtype).itemsize
    n_channels = shape[axes.index("C")] if "C" in axes and len(axes) == len(shape) else 1
    total = int(np.prod(shape))
    pixels = total // max(1, n_channels)
    diameter = None if args.diameter == "auto" else float(args.diameter)
    zoom = seg.zoom_for(diameter) if diameter else 1.0
    whole = whole_image_bytes(pixels, itemsize, seg.n_classes, zoom, raw_bytes=total * itemsize)
    z_mode = args.z_mode or CLI_DEFAULT_Z_MODE
    if "Z" in axes and z_mode == "ortho" and seg.spatial_dims == 2:
        from napari_cellfocus.core.voxel_size import z_scale_from_metadata

        z_scale = args.z_scale or z_scale_from_metadata(path) or 1.0
        whole = ortho_bytes(
            pixels, itemsize, seg.n_classes, zoom, z_scale, raw_bytes=total * itemsize
        )
    plane = plane_axes(shape, axes) == "YX"
    available = available_bytes()
    if args.blocks == "on" and not plane:
        raise CliError(
            f"{path}: --blocks on segments 2D images (Y, X); this one has shape {shape}, "
            f"axes {axes}."
        )
    mode, need = "whole", whole
    lazy = is_zarr(path) and plane  # read block by block, never whole
    if plane and (args.blocks != "off" or lazy):
        big = pixels > BLOCKS_ABOVE_PIXELS or not fits(whole, available)
        if args.blocks == "on" or lazy or big:
            yx = tuple(n for n, a in zip(shape, axes, strict=True) if a in "YX")
            margin = block_margin(diameter or seg.model_diameter, zoom)
            raw_extra = 0 if lazy else (total - pixels) * itemsize
            need = raw_extra + block_bytes(
                yx, itemsize, args.block_size, margin, seg.n_classes, zoom
            )
            if lazy:  # the image stays on disk, read block by block
                need -= pixels * itemsize
            mode = "blocks"
    if not fits(need, available):
        if mode == "blocks":
            hint = "use a smaller --block-size, or free memory"
        elif plane:
            hint = "use --blocks on (labels computed block by block), or free memory"
        else:
            hint = "split the stack or movie into smaller files, or free memory"
        raise CliError(
            f"{path}: segmenting this {' x '.join(map(str, shape))} {np.dtype(dtype)} image "
            f"{'in blocks ' if mode == 'blocks' else 'whole '}needs about {gib(need)} of "
            f"memory, {gib(available)} is available: {hint}."
        )
    return mode


def segment_in_blocks(
    path: Path,
    image: np.ndarray,
    out: Path,
    seg: Any,
    method: str,
    params: dict[str, Any],
    args: argparse.Namespace,
) -> Any:
    """Segment a 2D image block by block straight into ``out``
    (:func:`engine.blocks.segment_to_tiff`), with a progress bar; returns the job."""
    from napari_cellfocus.engine.blocks import segment_to_file

    bar = ProgressBar(1, f"predict {path.name} in blocks")
    return segment_to_file(
        seg,
        image,
        out,
        method=method,
        post_params=params or None,
        diameter=args.diameter,
        block=args.block_size,
        tile_size=args.tile_size,
        with_table=args.table,
        on_block=lambda u: (setattr(bar, "total", u.total), bar.update(u.done)),
        name=str(path),
    )


# --------------------------------------------------------------------------- command
def predict_image(
    path: Path,
    axes: str,
    out: Path,
    pout: Path | None,
    *,
    seg: Any,
    method: str,
    params: dict[str, Any],
    args: argparse.Namespace,
    movies: bool,
    folder: Path,
) -> tuple[list[list[Any]], str]:
    """Segment one image of a ``predict`` run and write its outputs (labels, and with the
    options its probabilities, table and overlay); returns its rows of the counts CSV and
    its one-line report. The one implementation of the serial loop and of the dask
    workers (``cli_dask``): everything it takes pickles but ``seg``, which a worker loads
    itself. Raises one of ``FILE_ERRORS`` for a bad file."""
    from napari_cellfocus.core.io import image_header, read_input, write_image
    from napari_cellfocus.core.measure import cell_table, frame_table, write_csv
    from napari_cellfocus.core.omezarr import is_zarr, write_labels_rows

    rows: list[list[Any]] = []
    mode = choose_mode(path, axes, args, seg)  # before the pixels are read
    if mode == "blocks" and (pout is not None or args.overlay):
        raise CliError(
            f"{path}: is segmented in blocks (a large 2D image), where --probs and "
            "--overlay are not written (a full-size map would not fit): run without "
            "them, or with --blocks off if it fits whole."
        )
    header = image_header(path)
    if is_zarr(out) and header and axes and plane_axes(header[0], axes) != "YX":
        raise CliError(
            f"--out {out}: OME-Zarr output holds 2D labels; {path} has axes {axes}: "
            "write its labels as TIFF (--out NAME.tif)."
        )
    raw, lazy = read_input(path)
    check_pixels(path, raw)
    if lazy and mode == "blocks":
        image = lazy_plane(raw, axes or "YX", args.channel, path)
    else:
        try:
            image, work_axes = seg.prepare(np.asarray(raw), axes or None, args.channel)
        except (ValueError, IndexError) as err:
            raise CliError(f"{path}: {err}") from None
    del raw
    if mode == "blocks":
        job = segment_in_blocks(path, image, out, seg, method, params, args)
        diameter = "" if job.diameter is None else f"{job.diameter:.2f}"
        rows.append([str(path), *([""] if movies else []), "", job.count, diameter])
        extra = ""
        if args.table:
            table = folder / f"{stem_of(path)}_cells.csv"
            write_csv(table, job.table)
            extra = f" (table {table})"
        size = describe_diameter(job.diameter, args.diameter)
        return rows, (
            f"{path}: {job.count} cells{size}; axes YX, in {job.n_blocks} blocks of "
            f"{job.block} px (+{job.margin} px margin) -> {out}{extra}"
        )
    bar = ProgressBar(1, f"predict {path.name}")
    # ortho volumes post-process in 3D with their own defaults unless --post / --param
    own = args.post is None and not params and "Z" in work_axes
    z_scale, z_source = args.z_scale, ""
    if z_scale is None and "Z" in work_axes:
        from napari_cellfocus.core.voxel_size import z_scale_from_metadata

        z_scale = z_scale_from_metadata(path)
        z_source = " from the file's metadata" if z_scale is not None else ""
    result = seg.segment(
        image,
        method=None if own else method,
        post_params=params or None,
        diameter=args.diameter,
        axes=work_axes,
        z_mode=args.z_mode,
        stitch_threshold=args.stitch_threshold,
        link_frames=args.link,
        z_scale=z_scale,
        z_trim=args.z_trim or None,
        z_split=args.z_split or None,
        tile_size=args.tile_size,
        on_tile=lambda u, bar=bar: (setattr(bar, "total", u.total), bar.update(u.done)),
    )
    if is_zarr(out):
        write_labels_rows(out, result.labels.shape, [(0, result.labels)])
    else:
        write_image(out, result.labels)
    if pout is not None:
        write_image(pout, result.probs)
    diameter = "" if result.diameter is None else f"{result.diameter:.2f}"
    for frame, plane, count in count_rows(result.labels, result.axes, result.z_mode):
        rows.append([str(path), *([frame] if movies else []), plane, count, diameter])
    extra = []
    if args.table:
        table = folder / f"{stem_of(path)}_cells.csv"
        if "T" in result.axes:
            write_csv(table, frame_table(result.labels, image))
        else:
            write_csv(table, cell_table(result.labels, image))
        extra.append(f"table {table}")
    if args.overlay:
        pngs = write_overlays(folder / f"{stem_of(path)}_overlay.png", image, result.labels)
        extra.append(f"overlay {pngs[0]}" + (f" (+{len(pngs) - 1})" if len(pngs) > 1 else ""))
    size = describe_diameter(result.diameter, args.diameter)
    also = f" ({', '.join(extra)})" if extra else ""
    what = f"axes {result.axes}{describe_z(result, z_source)}"
    return rows, f"{path}: {result.count} cells{size}; {what} -> {out}{also}"


def run_predict(args: argparse.Namespace) -> int:
    """Body of ``cellfocus predict`` (``args`` as parsed by the ``predict`` sub-parser);
    with ``--workers N`` / ``--dask ADDRESS`` the images are segmented on dask workers
    (``cli_dask``), the counts and the summary written here as in the serial loop."""
    from napari_cellfocus.core.io import expand_paths

    images = filter_names(expand_paths(args.images, role="images"), args.include, args.exclude)
    places = _output_places(images, args)
    check_output_paths(images, planned_outputs(images, places, args), args.overwrite)
    if not 0.0 < args.stitch_threshold <= 1.0:
        raise CliError(f"--stitch-threshold {args.stitch_threshold}: expected an IoU in (0, 1].")
    check_z_args(args)
    cluster = getattr(args, "workers", None) is not None or getattr(args, "dask", None)
    if cluster:
        from napari_cellfocus.cli_dask import check_cluster_args

        check_cluster_args(args)  # the extra installed, --workers >= 1
    all_axes = [image_axes(path, args) for path in images]  # before any image is segmented
    from napari_cellfocus.core.memory import available_bytes

    try:
        available_bytes()  # a malformed CELLFOCUS_MEMORY_LIMIT fails here, once
    except ValueError as err:
        raise CliError(str(err)) from None
    movies = any("T" in a for a in all_axes)
    from napari_cellfocus.engine.segment import Segmenter  # torch: after the cheap checks

    # with a cluster, the model is loaded here only to check it and --param (on the CPU:
    # the workers load their own, on their device)
    seg = Segmenter(args.model, device="cpu" if cluster else args.device)
    method = (args.post or seg.default_method).lower()
    params = post_params_from_args(args.param, method, seg.n_classes)
    where = f"on {seg.device_name}"
    if cluster:
        from napari_cellfocus.cli_dask import describe_cluster

        where = describe_cluster(args)
    print(
        f"model {seg.source} {where}; post-processing {method}"
        + "".join(f" {k}={v}" for k, v in params.items()),
        file=sys.stderr,
    )
    report = BatchReport(len(images), "images", "segmented")
    rows: list[list[Any]] = []
    jobs = list(zip(images, all_axes, places["labels"], places["probs"], strict=True))

    def serial() -> Iterator[tuple[list[list[Any]], str] | BaseException]:
        for job in jobs:
            try:
                yield predict_image(
                    *job,
                    seg=seg,
                    method=method,
                    params=params,
                    args=args,
                    movies=movies,
                    folder=places["folder"],
                )
            except FILE_ERRORS as err:
                yield err

    if cluster:
        from napari_cellfocus.cli_dask import predict_on_cluster

        del seg
        outcomes = predict_on_cluster(jobs, args, movies, places["folder"], predict_task)
    else:
        outcomes = serial()
    with contextlib.closing(outcomes):  # a cluster is shut down, also on an error
        for (path, *_), outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if len(images) == 1:
                    message = error_line(outcome)
                    message = message if str(path) in message else f"{path}: {message}"
                    raise CliError(message) from None
                report.failed(path, outcome)
            else:
                rows.extend(outcome[0])
                print(outcome[1], flush=True)
                report.ok()
            try:  # after each image: a kill keeps the counts so far
                _write_counts(places["counts"], rows, movies)
            except OSError as err:
                raise CliError(
                    f"{places['counts']}: cannot write the counts ({error_line(err)})."
                ) from None
    print(f"counts of {report.done} image(s) written to {places['counts']}")
    if len(images) > 1 or report.failures:
        print(report.summary(), file=sys.stderr if report.failures else sys.stdout)
    return report.exit_code


def _write_counts(path: Path, rows: Sequence[Sequence[Any]], movies: bool) -> None:
    """The counts CSV (header and ``rows``), written atomically."""
    import io

    from napari_cellfocus.core.io import atomic_write

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", *(["frame"] if movies else []), "plane", "count", "diameter_px"])
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(text.getvalue().encode()))


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


def block_size_arg(text: str) -> int:
    """``--block-size``: a whole number of pixels >= 256."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 256:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 256, got {text!r}")
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
    helps = param_help()
    p.add_argument(
        "--method",
        "--post",
        dest="post",
        choices=tuple(helps),
        default=None,
        help="post-processing method (default: the model's own, with its stored "
        "thresholds); --post is the older name",
    )
    p.add_argument(
        "--param",
        action="append",
        type=param_arg,
        default=[],
        metavar="NAME=VALUE",
        help="post-processing parameter, over the model's stored ones (repeatable): "
        + "; ".join(f"{m}: {names}" for m, names in helps.items())
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
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="largest tile side in pixels (default: 1024 on the CPU, 512 on a GPU; each "
        "axis is split into the fewest equal tiles of at most that side)",
    )
    p.add_argument(
        "--blocks",
        choices=("auto", "on", "off"),
        default="auto",
        help="segment a 2D image block by block, labels streamed to the file, memory "
        "bounded by the block (no --probs/--overlay then); auto (default): for images "
        "over 36 megapixels or that would not fit in memory whole",
    )
    p.add_argument(
        "--block-size",
        type=block_size_arg,
        default=2048,
        help="block side in pixels with --blocks (2048)",
    )
    p.add_argument(
        "--axes",
        default=None,
        type=str.upper,
        help="axes of the images, letters T (time), C (channel), Z (plane), Y, X: YX, ZYX, "
        "TYX, CYX, YXC, TZYX, ... (default: from the TIFF's ImageJ/OME metadata, else YX "
        "for 2D and ZYX for 3D; a 3D shape whose first axis is <= 4 or last is 3/4 is "
        "refused as ambiguous)",
    )
    p.add_argument(
        "--z-mode",
        choices=Z_MODE_CHOICES,
        default=None,
        help="volumes (Z) with a 2D model: 'ortho' predicts the YX planes and the ZX and "
        "ZY slices (z resampled by --z-scale), averages the three and makes 3D instances "
        "from that; 'stitch' joins the objects of successive planes into 3D instances by "
        f"overlap; 'planes' keeps each plane's own (default: {CLI_DEFAULT_Z_MODE})",
    )
    p.add_argument(
        "--z-scale",
        type=z_scale_arg,
        default=None,
        help="z step / pixel size of the volumes (e.g. 2 for 0.5 um pixels and 1 um "
        "planes), used by --z-mode ortho to make nuclei round in the side views "
        "(default: from the file's ImageJ / OME metadata, else 1)",
    )
    p.add_argument(
        "--z-trim",
        type=float,
        default=0.6,
        help="stitch and ortho: cut each 3D cell to the planes where it is at least this "
        "share as bright as in its brightest plane (out-of-focus planes); 0: no cut (0.6)",
    )
    p.add_argument(
        "--z-split",
        type=float,
        default=0.85,
        help="stitch: split a stitched cell at a plane whose area is under this share of "
        "its largest areas on both sides (nuclei stacked in z); 0: no split (0.85)",
    )
    p.add_argument(
        "--stitch-threshold",
        type=float,
        default=0.25,
        help="IoU an object needs with its partner in the previous plane (or frame, with "
        "--link) to be joined to it (default 0.25)",
    )
    p.add_argument(
        "--link",
        action="store_true",
        help="movies (T): link cells across frames by overlap so a cell keeps its id",
    )
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        help="channel to segment, required when the axes hold C with several channels "
        "(without --axes: the first axis, or the last with --channel-last)",
    )
    p.add_argument(
        "--channel-last", action="store_true", help="the channel axis is the last one (Y,X,C)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_cluster_args(p)  # --workers N / --dask ADDRESS (cli_dask; distributed imported on use)
    add_overwrite_flag(p)
    p.set_defaults(func=run_predict)
    return p


def predict_task(
    job: tuple[Path, str, Path, Path | None],
    args: argparse.Namespace,
    movies: bool,
    folder: Path,
    torch_threads: int | None,
) -> tuple[list[list[Any]], str] | CliError:
    """One image on a dask worker: :func:`predict_image` with the worker's model
    (:func:`cli_dask.worker_segmenter`);
    ``job`` is ``(image, axes, labels out, probs out or None)``. A bad file (one of
    ``FILE_ERRORS``) comes back as a :class:`CliError` with its one-line reason."""
    seg, lock = worker_segmenter(args.model, args.device, torch_threads)
    method = (args.post or seg.default_method).lower()
    params = post_params_from_args(args.param, method, seg.n_classes)
    try:
        with lock:
            return predict_image(
                *job, seg=seg, method=method, params=params, args=args, movies=movies,
                folder=folder,
            )  # fmt: skip
    except FILE_ERRORS as err:  # a bad file: a result (no worker log with a traceback)
        return CliError(error_line(err))
