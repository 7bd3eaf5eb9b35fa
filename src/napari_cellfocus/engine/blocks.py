"""Segment a huge (Y, X) image block by block, with memory bounded by the block, not the image.

>>> from napari_cellfocus.engine.blocks import segment_to_tiff
>>> result = segment_to_tiff(Segmenter("default"), image, "labels.tif")  # 20000 x 20000
>>> result.count, result.diameter, result.n_blocks

The whole-image path (:meth:`Segmenter.segment`) holds the image, its float32
probability maps (C x 4 bytes a pixel), the labels and the post-processing temporaries at
once: ~28 bytes a pixel, 11 GiB for a 20000² uint16 image. Here each block of
``block`` px (plus a margin of context, see :mod:`napari_cellfocus.core.blocks`) is
predicted, post-processed and reduced to the objects it owns; finished label rows go
straight to a tiled TIFF (:func:`core.io.write_image_rows`). What stays is the image,
one block's probabilities and temporaries, and about two block rows of labels.

Every block is normalised with the whole image's percentiles
(:class:`core.normalize.FixedRange`) and segmented at one nucleus diameter (estimated
once, on the image's centre, as the whole-image path does), so the blocks agree with
each other and with the whole-image result; only objects larger than the margin (cut at
a block's edge) can differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_cellfocus.core.blocks import LabelRows, block_grid, owned_objects
from napari_cellfocus.core.normalize import FixedRange
from napari_cellfocus.core.validation import check_image, non_finite_message

#: Core side (px) of a block. 2048 keeps the margins' extra work to ~15 % and one
#: block's probabilities and post-processing temporaries to ~0.3 GiB.
DEFAULT_BLOCK = 2048
#: Smallest margin (px): the network's reach at its own scale plus room for a large nucleus.
MIN_MARGIN = 64
#: Network context (px at the model's scale) every block keeps around its objects.
NETWORK_REACH = 32


def block_margin(diameter: float | None, zoom: float) -> int:
    """Margin (px of the image) around each block: the network's reach
    (:data:`NETWORK_REACH` px at the model's scale, ``/ zoom`` on the image) plus two
    nucleus diameters, so nuclei up to twice the typical size are whole in the block that
    keeps them; at least :data:`MIN_MARGIN`."""
    size = 2.0 * float(diameter) if diameter else float(MIN_MARGIN)
    return int(max(MIN_MARGIN, math.ceil(NETWORK_REACH / max(zoom, 1e-6) + size)))


@dataclass
class BlockUpdate:
    """Progress: ``done`` of ``total`` blocks, ``count`` objects kept so far."""

    done: int
    total: int
    count: int


@dataclass
class BlockSegmentation:
    """A block-by-block segmentation of one (Y, X) image; iterate it for the label rows.

    Iterating yields ``(first_row, rows int32 (n, X))`` in order (for
    :func:`core.io.write_image_rows`); afterwards ``count`` holds the number of cells,
    ``dropped`` the second copies removed at block edges and, with ``with_table``,
    ``table`` the per-cell columns of :func:`core.measure.cell_table` (global ids and
    image coordinates).
    """

    segmenter: Any
    image: np.ndarray
    method: str
    post_params: dict[str, Any]
    diameter: float | None
    block: int
    margin: int
    tile_size: int | None = None
    with_table: bool = False
    on_block: Callable[[BlockUpdate], None] | None = None
    should_stop: Callable[[], bool] | None = None
    name: str = "image"
    count: int = 0
    dropped: int = 0
    table: dict[str, np.ndarray] | None = None
    _parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        return sum(len(row) for row in block_grid(self.image.shape, self.block, self.margin))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        from napari_cellfocus.core.postprocess import postprocess

        seg = self.segmenter
        grid = block_grid(self.image.shape, self.block, self.margin)
        total = sum(len(row) for row in grid)
        normalizer = whole_limits(self.image, seg.info.normalizer())
        rows = LabelRows(self.image.shape, reach=self.margin)
        done = 0
        for r, block_row in enumerate(grid):
            for blk in block_row:
                part = np.asarray(self.image[blk.read])
                if part.dtype.kind == "f" and not np.all(np.isfinite(part)):
                    raise ValueError(non_finite_message(self.name))
                probs = seg.predict(
                    part, diameter=self.diameter, normalizer=normalizer, tile_size=self.tile_size
                )
                labels, _ = postprocess(probs, method=self.method, **self.post_params)
                del probs
                owned, _ = owned_objects(labels, blk)
                del labels
                ids = rows.paste(owned, blk)
                if self.with_table:
                    self._parts.append(_block_table(owned, ids, part, blk.offset))
                done += 1
                if self.on_block is not None:
                    self.on_block(BlockUpdate(done, total, rows.count))
                if self.should_stop is not None and self.should_stop():
                    raise InterruptedError("segmentation cancelled")
            if r + 1 < len(grid):
                yield from rows.finish_row(grid[r + 1][0].core[0].start)
                continue
            # Bookkeeping before the last rows: a writer may stop at the last row it needs.
            self.count, self.dropped = rows.count, rows.dropped
            if self.with_table:
                self.table = _concat_tables(self._parts)
                self._parts = []
            yield from rows.flush()


def _block_table(
    owned: np.ndarray, ids: np.ndarray, part: np.ndarray, offset: tuple[int, int]
) -> dict[str, np.ndarray]:
    """:func:`core.measure.cell_table` of a block's kept objects with their global ids
    and image coordinates (dropped second copies left out)."""
    from napari_cellfocus.core.measure import cell_table

    table = cell_table(owned, part)
    local = table["label"]
    global_ids = ids[local - 1] if local.size else local
    keep = global_ids > 0
    out = {name: column[keep] for name, column in table.items()}
    out["label"] = global_ids[keep].astype(np.int64)
    out["centroid_y"] = out["centroid_y"] + offset[0]
    out["centroid_x"] = out["centroid_x"] + offset[1]
    return out


def _concat_tables(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One table from the blocks' tables, sorted by label."""
    if not parts:
        return {"label": np.zeros(0, np.int64)}
    table = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    order = np.argsort(table["label"], kind="stable")
    return {name: column[order] for name, column in table.items()}


def is_lazy(image: Any) -> bool:
    """Whether ``image`` is an array read on demand (dask, zarr, a memory map is not)."""
    return (
        not isinstance(image, np.ndarray) and hasattr(image, "shape") and hasattr(image, "dtype")
    )


def centre(image: Any) -> np.ndarray:
    """The central ``ESTIMATE_MAX_SIDE``² part of a (Y, X) image, read into memory."""
    from napari_cellfocus.engine.segment import ESTIMATE_MAX_SIDE

    crop = tuple(
        slice(
            max(0, (n - ESTIMATE_MAX_SIDE) // 2),
            max(0, (n - ESTIMATE_MAX_SIDE) // 2) + ESTIMATE_MAX_SIDE,
        )
        for n in image.shape
    )
    return np.asarray(image[crop])


def whole_limits(image: Any, normalization: Any) -> FixedRange:
    """The normalisation limits of the whole image: of the image itself in memory, of a
    strided subsample of about ``MAX_SAMPLES`` pixels of a lazy one (read chunk by chunk)."""
    from napari_cellfocus.core.normalize import MAX_SAMPLES

    if not is_lazy(image):
        return FixedRange.of(image, normalization)
    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / MAX_SAMPLES)))
    sample = np.asarray(image[::step, ::step])
    if sample.dtype.kind == "f" and not np.all(np.isfinite(sample)):
        sample = sample[np.isfinite(sample)]
    return FixedRange(*normalization.limits(sample))


def plan_blocks(
    segmenter: Any,
    image: np.ndarray,
    *,
    method: str | None = None,
    post_params: dict[str, Any] | None = None,
    diameter: float | str | None = "auto",
    block: int = DEFAULT_BLOCK,
    margin: int | None = None,
    tile_size: int | None = None,
    with_table: bool = False,
    on_block: Callable[[BlockUpdate], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    name: str = "image",
) -> BlockSegmentation:
    """Check ``image`` (Y, X), resolve the diameter (estimated on the image's centre for
    ``"auto"``) and the post-processing (the model's defaults under the given ones), and
    return the :class:`BlockSegmentation` to iterate."""
    if is_lazy(image):  # dask / zarr: checked block by block as they are read
        arr = image
        if arr.ndim != 2:
            raise ValueError(
                f"{name}: expected a grey image with 2 dimensions, got shape {arr.shape}."
            )
        if np.dtype(arr.dtype).kind not in "biuf":
            raise ValueError(f"{name}: pixel type {arr.dtype} is not an intensity.")
    else:
        arr = check_image(image, name=name, ndim=(2,), as_float=False)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError(non_finite_message(name))
    if int(block) < 64:
        raise ValueError(f"block size {block} px is too small: use 64 px or more.")
    # The estimate looks at the centre of the image only (ESTIMATE_MAX_SIDE px): read just that.
    diam = segmenter.resolve_diameter(centre(arr), diameter, tile_size=tile_size)
    method_, params = segmenter.post_settings(method, post_params, diam)
    if margin is None:
        margin = block_margin(diam, segmenter.zoom_for(diam))
    return BlockSegmentation(
        segmenter,
        arr,
        method_,
        params,
        diam,
        int(block),
        int(margin),
        tile_size=tile_size,
        with_table=with_table,
        on_block=on_block,
        should_stop=should_stop,
        name=name,
    )


def segment_to_file(
    segmenter: Any, image: Any, path: str | Path, **kwargs: Any
) -> BlockSegmentation:
    """:func:`segment_to_tiff`, or to an OME-Zarr store (the label image
    ``labels/cellfocus``, :func:`core.omezarr.write_labels_rows`) when ``path`` ends in
    ``.zarr``; ``image`` may be lazy (dask, zarr: read block by block)."""
    from napari_cellfocus.core.omezarr import is_zarr, write_labels_rows

    if not is_zarr(path):
        return segment_to_tiff(segmenter, image, path, **kwargs)
    job = plan_blocks(segmenter, image, **kwargs)
    write_labels_rows(path, job.image.shape, iter(job))
    return job


def segment_to_tiff(
    segmenter: Any, image: np.ndarray, path: str | Path, **kwargs: Any
) -> BlockSegmentation:
    """Segment ``image`` (Y, X) block by block into the int32 labels TIFF ``path``
    (tiled, written atomically); keyword arguments as :func:`plan_blocks`. Returns the
    finished :class:`BlockSegmentation` (``count``, ``diameter``, ``table``...)."""
    from napari_cellfocus.core.io import write_image_rows

    job = plan_blocks(segmenter, image, **kwargs)
    write_image_rows(path, job.image.shape, np.int32, iter(job))
    return job
