"""OME-Zarr images in, OME-Zarr labels out, never whole in memory.

Reading opens the full-resolution level of an OME-Zarr image lazily (a dask array over
its chunks, through ``ome_zarr``'s reader) with its axes; slicing it reads only the
chunks under the slice, so :mod:`napari_cellfocus.engine.blocks` segments an image far
larger than memory block by block.

Writing takes the label rows as blocks finish them (``(first_row, rows)`` bands, as
:func:`napari_cellfocus.core.io.write_image_rows`): they go into a chunked zarr array at
once; ``ome_zarr``'s writer then builds the label image (its ``image-label`` metadata
and a nearest-neighbour pyramid) from that array chunk by chunk; the label image is the
root of the store written.
The store is assembled in a temporary folder next to the target and renamed into place
at the end, so a failed or killed run leaves no half-written store under the name.

``zarr``, ``ome-zarr`` and ``dask`` are imported only when a store is read or written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_cellfocus.core.bands import checked_bands

#: Chunk side (px) of the label arrays written.
LABEL_CHUNK = 1024
#: Name of the label image inside the store's ``labels`` group.
LABELS_NAME = "cellfocus"


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` folder, or a folder holding zarr
    metadata) rather than a TIFF file or a folder of them."""
    p = Path(path)
    if p.name.lower().endswith(".zarr"):
        return True
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs"))


def open_image(path: str | Path) -> tuple[Any, str]:
    """The full-resolution image of the OME-Zarr store ``path`` (a lazy dask array) and
    its axes in upper case (``"YX"``, ``"CYX"``, ``"TCZYX"``...).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the store when it is missing or
    holds no OME-Zarr image.
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such OME-Zarr store.")
    try:
        location = parse_url(str(path), mode="r")
        nodes = list(Reader(location)()) if location is not None else []
    except Exception as err:  # zarr / ome_zarr raise many error types for broken stores
        raise ValueError(f"{path}: cannot be read as an OME-Zarr image ({err}).") from err
    for node in nodes:
        if node.load(Multiscales) is not None and node.data:
            axes = node.metadata.get("axes") or []
            names = "".join(
                (a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in axes
            )
            data = node.data[0]
            if len(names) != data.ndim:
                names = ""
            return data, names
    raise ValueError(f"{path}: holds no OME-Zarr image (no multiscales metadata).")


def write_labels_rows(
    path: str | Path,
    shape: tuple[int, int],
    bands: Iterable[tuple[int, np.ndarray]],
    name: str = LABELS_NAME,
    chunk: int = LABEL_CHUNK,
) -> Path:
    """Write (Y, X) int32 labels arriving as row bands to a new OME-Zarr store ``path``
    whose root is a label image (multiscale, nearest-neighbour levels, ``image-label``
    metadata; written by ``ome_zarr`` as ``labels/<name>`` and moved to the root) as napari
    and other OME-Zarr readers open it. An existing store at ``path``
    is replaced only once the new one is complete. Returns ``path``.

    ``bands``: ``(first_row, rows)`` pairs in order, covering rows 0..Y-1 (any heights);
    ``ValueError`` when they do not.
    """
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_labels

    path = Path(path)
    height, width = (int(n) for n in shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        level0 = zarr.create_array(
            store=str(work / "level0.zarr"),
            shape=(height, width),
            chunks=(min(chunk, height), min(chunk, width)),
            dtype=np.int32,
            fill_value=0,
        )
        for first, rows in checked_bands(path, (height, width), np.int32, bands):
            level0[first : first + rows.shape[0], :] = rows
        store = work / "out.zarr"
        root = zarr.open_group(str(store), mode="w")
        levels = max(0, min(4, int(np.log2(max(1, min(height, width) / 256)))))
        write_labels(
            da.from_zarr(level0),
            root,
            name=name,
            axes="yx",
            scale_factors=[2**k for k in range(1, levels + 1)],  # [] (not ()): one level
            scaler=None,
            storage_options={"chunks": (min(chunk, height), min(chunk, width))},
        )
        # The label image itself is the store's root: readers (ome_zarr, napari) find its
        # multiscales and image-label metadata there, with no image group above it.
        _replace_folder(store / "labels" / name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _replace_folder(new: Path, target: Path) -> None:
    """Move the finished store ``new`` to ``target``; an existing ``target`` is moved
    aside first and removed only after the rename."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_labels(path: str | Path, name: str = LABELS_NAME) -> np.ndarray:
    """The full-resolution labels of an OME-Zarr label image (a store written by
    :func:`write_labels_rows`, or ``labels/<name>`` of an image store), as numpy."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    if "labels" in group and name in group["labels"]:
        group = group["labels"][name]
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales") or [{}]
    first = (multiscales[0].get("datasets") or [{"path": "0"}])[0]["path"]
    return np.asarray(group[first])
