"""Reading and writing TIFF images with messages that name the file.

Only ``tifffile`` and numpy are used. Folders are expanded to their ``.tif`` /
``.tiff`` files in sorted order so that images and label files pair up by name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import tifffile

from napari_cellfocus.core.bands import checked_bands

TIFF_SUFFIXES = (".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """Read one TIFF file into a numpy array (dtype and shape as stored).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file exists but is not a readable TIFF image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file.")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected a TIFF file.")
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises many error types for broken files
        raise ValueError(f"{path}: cannot be read as a TIFF image ({err}).") from err


def _default_mode() -> int:
    """Permissions a newly created file gets under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _default_mode()


#: A temporary file of :func:`atomic_write` (or a ``.part`` of older versions) this old
#: (seconds) is left over from a killed writer and removed by the next save to that path.
STALE_AFTER_S = 3600.0


def remove_stale_temporaries(path: str | Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files a killed writer left next to ``path`` (``.NAME.*.tmp``
    and the ``NAME.part`` of older versions) not touched for ``older_than_s`` seconds, so
    another writer's file in progress is never taken; returns the removed paths."""
    import glob
    import time

    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = glob.escape(path.name)
    removed = []
    now = time.time()
    for pattern in (f".{name}.*.tmp", f"{name}.part"):
        for stale in path.parent.glob(pattern):
            try:
                if now - stale.stat().st_mtime > older_than_s:
                    stale.unlink()
                    removed.append(stale)
            except OSError:
                pass
    return removed


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(file_object)`` so that ``path`` never holds a partial
    or mixed file; returns ``path``.

    The bytes go to a unique temporary file in ``path``'s folder (so two writers to one
    path never share it), are flushed and ``fsync``-ed, and the temporary file is renamed
    over ``path`` with :func:`os.replace` (atomic: a reader sees the old file or the new
    one). On any error the temporary file is removed and the error raised; temporaries
    left by a killed writer are removed once stale (:func:`remove_stale_temporaries`). The
    new file gets the permissions of the file it replaces, else the usual ones under the
    umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)  # reopened by name: some writers (tifffile) want a named file object
    tmp = Path(tmp_name)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            mode = path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE
            os.chmod(tmp, mode)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


def write_image(path: str | Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` as a TIFF file, creating parent folders; returns the path.

    The file is written atomically (:func:`atomic_write`: a unique temporary file in the
    same folder, fsync, rename), so an interrupted write never leaves a half-written file
    under ``path``. Arrays are stored as grey planes (``photometric="minisblack"``), so a
    (3, Y, X) stack reads back as such.
    """
    arr = np.asarray(array)
    # Never let tifffile guess RGB from a trailing or leading axis of 3: stacks and
    # (C, Y, X) probability maps are grey planes.
    return atomic_write(
        path,
        lambda fh: tifffile.imwrite(
            fh, arr, compression="zlib" if compress else None, photometric="minisblack"
        ),
    )


#: File-name endings of label and result images (``cellfocus simulate`` / ``predict``
#: write ``NAME_labels.tif``, ``NAME_probs.tif``): never taken as images from a folder.
LABEL_ENDINGS = ("_labels", "_label", "_masks", "_mask")
RESULT_ENDINGS = (*LABEL_ENDINGS, "_probs", "_probabilities", "_depth", "_fused")


def expand_paths(paths: Iterable[str | Path], role: str | None = None) -> list[Path]:
    """Expand folders into their TIFF files (sorted by name); keep files as given.

    ``role="images"``: from a folder, files whose name ends in a label or result ending
    (``_labels``, ``_masks``, ``_probs``, ... see ``RESULT_ENDINGS``) are left out, so
    ``predict FOLDER`` does not segment its own outputs. ``role="labels"``: from a folder,
    only the files with a label ending, or every file when none has one (a ``masks/``
    folder named like its images). Files named one by one are always kept.

    Raises ``FileNotFoundError`` for a path that does not exist and
    ``ValueError`` for a folder holding no TIFF file (of that role).
    """
    from napari_cellfocus.core.omezarr import is_zarr

    out: list[Path] = []
    for p in map(Path, paths):
        if is_zarr(p) and p.exists():  # a store is one image, not a folder of them
            out.append(p)
        elif p.is_dir():
            files = sorted(
                f
                for f in p.iterdir()
                if f.suffix.lower() in TIFF_SUFFIXES or (role == "images" and is_zarr(f))
            )
            if role == "images":
                files = [f for f in files if not f.stem.lower().endswith(RESULT_ENDINGS)]
            elif role == "labels":
                marked = [f for f in files if f.stem.lower().endswith(LABEL_ENDINGS)]
                files = marked or files
            if not files:
                what = "image " if role == "images" else ""
                raise ValueError(f"{p}: folder holds no {what}.tif/.tiff file.")
            out.extend(files)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder.")
    return out


def output_paths(inputs: Sequence[Path], out: str | Path, suffix: str = "_labels") -> list[Path]:
    """Where to write one result per input.

    With one input and ``out`` ending in ``.tif``/``.tiff`` (or ``.zarr``, a store),
    ``out`` is the result. Otherwise ``out`` is a folder and each result is named by
    :func:`result_name` in it.
    """
    out = Path(out)
    one_file = out.suffix.lower() in (*TIFF_SUFFIXES, ".zarr")
    if len(inputs) == 1 and one_file:
        return [out]
    if one_file:
        raise ValueError(
            f"--out {out}: {len(inputs)} inputs need a folder for their results, not one file."
        )
    return [out / result_name(p, suffix) for p in inputs]


def stem_of(path: str | Path) -> str:
    """A file's name without its extension: ``img`` for ``img.tif``, ``img.ome.zarr``,
    ``img.zarr`` (``Path.stem`` would keep ``.ome``)."""
    name = Path(path).name
    if name.lower().endswith(".zarr"):
        stem = name[: -len(".zarr")]
        return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem
    return Path(name).stem


def result_name(path: Path, suffix: str) -> str:
    """File name of the result of input ``path``: ``NAME<suffix>.tif`` for a TIFF,
    ``NAME<suffix>.ome.zarr`` for an OME-Zarr store ``NAME.ome.zarr`` / ``NAME.zarr``."""
    if path.name.lower().endswith(".zarr"):
        return f"{stem_of(path)}{suffix}.ome.zarr"
    return f"{path.stem}{suffix}.tif"


#: Tile side (px) of the TIFF files written row band by row band (:func:`write_image_rows`).
ROW_TILE = 256


def write_image_rows(
    path: str | Path,
    shape: tuple[int, int],
    dtype: np.dtype | type,
    bands: Iterable[tuple[int, np.ndarray]],
    compress: bool = True,
) -> Path:
    """Write a (Y, X) image that arrives as row bands, never holding it whole.

    ``bands`` yields ``(first_row, rows)`` pairs in order, ``rows`` of shape (n, X) and
    ``dtype``, covering rows 0..Y-1 once each (any band heights). The file is a tiled
    TIFF (:data:`ROW_TILE` px tiles, zlib), written atomically (:func:`atomic_write`), so
    a failure or a kill while the bands are computed leaves no partial file. Memory:
    one row of tiles plus one band. Raises ``ValueError`` when the bands do not cover
    the image in order.
    """
    height, width = (int(n) for n in shape)
    dtype = np.dtype(dtype)
    tile = ROW_TILE

    def split(strip: np.ndarray) -> Iterable[np.ndarray]:
        """The tiles of one ``tile``-row strip (zero-padded to full tiles)."""
        if strip.shape[0] < tile:
            strip = np.pad(strip, ((0, tile - strip.shape[0]), (0, 0)))
        for x in range(0, width, tile):
            part = strip[:, x : x + tile]
            if part.shape[1] < tile:
                part = np.pad(part, ((0, 0), (0, tile - part.shape[1])))
            yield np.ascontiguousarray(part)

    def tiles() -> Iterable[np.ndarray]:
        # tifffile closes this generator at its last tile, so nothing runs after it; the
        # bands' coverage is checked as they arrive (checked_bands). Bands are not
        # copied: strips are views, only the rows short of a strip at a band's end are
        # kept over.
        pending = np.zeros((0, width), dtype)
        for _, rows in checked_bands(path, shape, dtype, bands):
            y = 0
            if pending.shape[0]:
                y = min(rows.shape[0], tile - pending.shape[0])
                pending = np.concatenate([pending, rows[:y]])
                if pending.shape[0] == tile:
                    yield from split(pending)
                    pending = np.zeros((0, width), dtype)
            while y + tile <= rows.shape[0]:
                yield from split(rows[y : y + tile])
                y += tile
            if y < rows.shape[0]:
                pending = rows[y:].copy()
        if pending.shape[0]:
            yield from split(pending)

    def write(fh: IO[bytes]) -> None:
        tifffile.imwrite(
            fh,
            tiles(),
            shape=(height, width),
            dtype=dtype,
            tile=(tile, tile),
            compression="zlib" if compress else None,
            photometric="minisblack",
        )

    return atomic_write(path, write)


def tiff_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of a TIFF file's first image series, read from its header (no
    pixels); ``None`` when it cannot be read (:func:`read_image` then says why)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(int(n) for n in series.shape), np.dtype(series.dtype)
    except Exception:
        return None


def image_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, str | None] | None:
    """Shape, dtype and axes (``None`` when the file does not say) of a TIFF file or an
    OME-Zarr store, without reading pixels; ``None`` when unreadable."""
    from napari_cellfocus.core.omezarr import is_zarr, open_image

    if is_zarr(path):
        try:
            data, axes = open_image(path)
        except (OSError, ValueError):
            return None
        return tuple(int(n) for n in data.shape), np.dtype(data.dtype), axes or None
    header = tiff_header(path)
    if header is None:
        return None
    from napari_cellfocus.core.axes import axes_from_tiff

    return header[0], header[1], axes_from_tiff(path)


def read_input(path: str | Path) -> tuple[np.ndarray, bool]:
    """An image to segment and whether it is lazy: a TIFF read whole (:func:`read_image`),
    an OME-Zarr store's full-resolution level as a dask array read on demand."""
    from napari_cellfocus.core.omezarr import is_zarr, open_image

    if is_zarr(path):
        return open_image(path)[0], True
    return read_image(path), False
