"""napari reader and writer for OME-Zarr stores (npe2 contributions in napari.yaml).

The reader opens every image and label image of a store lazily (dask, all resolution
levels as one multiscale layer), so the Segment widget and the viewer see the store
without loading it; the writer saves a 2D Labels layer as an OME-Zarr label image
(:func:`napari_cellfocus.core.omezarr.write_labels_rows`), the format ``cellfocus
predict --out NAME.ome.zarr`` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_cellfocus.core.omezarr import is_zarr

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | Sequence[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for one OME-Zarr store, ``None`` for anything else (napari then asks
    other plugins)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not is_zarr(path) or not Path(path).is_dir():
        return None
    return read_ome_zarr


def read_ome_zarr(path: str | Sequence[str]) -> list[LayerData]:
    """Layers of an OME-Zarr store: its images (``channel_axis`` for a C axis) and label
    images, lazily, named after the store (and the label image)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    location = parse_url(str(path), mode="r")
    if location is None:
        raise ValueError(f"{path}: cannot be read as an OME-Zarr store.")
    layers: list[LayerData] = []
    for node in Reader(location)():
        if node.load(Multiscales) is None or not node.data:
            continue
        data = list(node.data)
        axes = [
            (a["name"] if isinstance(a, dict) else str(a)).upper()[:1]
            for a in node.metadata.get("axes") or []
        ]
        meta: dict[str, Any] = {"multiscale": len(data) > 1}
        data_arg = data if len(data) > 1 else data[0]
        stem = path.name.removesuffix(".zarr").removesuffix(".ome")
        if node.load(Label) is not None:
            meta["name"] = stem if node.zarr.path == location.path else f"{stem} labels"
            layers.append((data_arg, meta, "labels"))
            continue
        meta["name"] = stem
        if "C" in axes and data[0].shape[axes.index("C")] > 1:
            meta["channel_axis"] = axes.index("C")
        layers.append((data_arg, meta, "image"))
    if not layers:
        raise ValueError(f"{path}: holds no OME-Zarr image or label image.")
    return layers


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a 2D Labels layer as an OME-Zarr label image at ``path`` (``.zarr``)."""
    from napari_cellfocus.core.omezarr import write_labels_rows

    if isinstance(data, list):  # multiscale: the full resolution
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError(
            f"{meta.get('name', 'labels')}: OME-Zarr labels are written for 2D layers; this "
            f"one has shape {labels.shape} (save it as TIFF)."
        )
    if labels.dtype.kind not in "iub" or labels.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError(f"{meta.get('name', 'labels')}: labels must be integers.")
    write_labels_rows(path, labels.shape, [(0, labels.astype(np.int32))])
    return [path]
