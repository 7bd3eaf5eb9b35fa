"""Labels of an image too large for its probability maps: overlapping blocks, assembled by rows.

A (Y, X) image is cut into a grid of *cores*, ``block`` px squares (the last row and
column smaller) that tile it without overlap. Each block is read with a ``margin`` of
context on every side (clipped at the image border), predicted and post-processed on its
own; of the objects found in it, a block keeps those whose centroid lies in its core. The
cores partition the image, so an object is kept by one block, and it is whole there when
it is smaller than the margin. Two neighbouring blocks see an object near their common
edge with the same context, so they segment it alike and exactly one of them keeps it;
should both keep it (centroids a pixel apart on either side of the edge), the second
copy finds most of its pixels taken and is dropped (:meth:`LabelRows.paste`).

Blocks are processed in raster order. Objects of block row ``r`` reach at most
``margin`` px above and below its cores, so once row ``r`` is done every image row above
``r``'s first core row minus the margin is final: :class:`LabelRows` holds only the rows
that can still change (about two block rows and two margins of the full width) and hands
out the final ones in order, for a writer that streams them to disk. Peak memory is thus
bounded by the block size and the image width, not by the image area.

numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Share of an object's pixels another object may already hold before the object is taken
#: for a second copy of that object (found by the neighbouring block too) and dropped.
DUPLICATE_SHARE = 0.5


@dataclass(frozen=True)
class Block:
    """One block: ``core`` (rows, cols slices of the image) and ``read`` = core + margin."""

    row: int
    col: int
    core: tuple[slice, slice]
    read: tuple[slice, slice]

    @property
    def core_in_read(self) -> tuple[slice, slice]:
        """The core as slices of the read window."""
        return tuple(
            slice(c.start - r.start, c.stop - r.start)
            for c, r in zip(self.core, self.read, strict=True)
        )

    @property
    def offset(self) -> tuple[int, int]:
        """Image coordinates (row, col) of the read window's first pixel."""
        return self.read[0].start, self.read[1].start


def block_grid(shape: tuple[int, int], block: int, margin: int) -> list[list[Block]]:
    """The blocks covering a (Y, X) ``shape``, as rows of blocks in raster order.

    ``block``: core side in px (> 0); ``margin``: context px on every side (>= 0).
    """
    if block <= 0 or margin < 0:
        raise ValueError(f"block must be > 0 and margin >= 0 px, got {block} and {margin}.")
    height, width = (int(n) for n in shape)
    rows = []
    for r, y0 in enumerate(range(0, height, block)):
        y1 = min(height, y0 + block)
        row = []
        for c, x0 in enumerate(range(0, width, block)):
            x1 = min(width, x0 + block)
            read = (
                slice(max(0, y0 - margin), min(height, y1 + margin)),
                slice(max(0, x0 - margin), min(width, x1 + margin)),
            )
            row.append(Block(r, c, (slice(y0, y1), slice(x0, x1)), read))
        rows.append(row)
    return rows


def owned_objects(labels: np.ndarray, block: Block) -> tuple[np.ndarray, int]:
    """The objects of a block's labels (the read window's shape) whose centroid (floored)
    lies in its core, renumbered 1..n (in order of their old ids); others set to 0.

    Returns ``(owned int32, n)``.
    """
    lab = np.asarray(labels)
    height, width = lab.shape
    flat = lab.ravel().astype(np.int64, copy=False)
    n_ids = int(flat.max(initial=0)) + 1
    area = np.bincount(flat, minlength=n_ids).astype(np.float64)
    rows = np.repeat(np.arange(height, dtype=np.float64), width)
    cols = np.tile(np.arange(width, dtype=np.float64), height)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.floor(np.bincount(flat, weights=rows, minlength=n_ids) / area)
        cx = np.floor(np.bincount(flat, weights=cols, minlength=n_ids) / area)
    core_y, core_x = block.core_in_read
    keep = (area > 0) & (cy >= core_y.start) & (cy < core_y.stop)
    keep &= (cx >= core_x.start) & (cx < core_x.stop)
    keep[0] = False
    new_ids = np.zeros(n_ids, np.int32)
    n = int(keep.sum())
    new_ids[keep] = np.arange(1, n + 1, dtype=np.int32)
    return new_ids[lab], n


class LabelRows:
    """The label rows of a (height, width) image that blocks may still write into.

    ``reach``: how far (px) above and below its cores a block row's objects may extend
    (the blocks' margin). Use :meth:`paste` for each block of a block row, then
    :meth:`finish_row` to get the rows that became final, as ``(first_row, rows)`` pairs
    in order, and :meth:`flush` after the last block row for the rest.
    """

    def __init__(self, shape: tuple[int, int], reach: int, dtype: type = np.int32) -> None:
        self.height, self.width = (int(n) for n in shape)
        self.reach = int(reach)
        self.dtype = dtype
        self.origin = 0  # image row of self.rows[0]
        self.rows = np.zeros((0, self.width), dtype)
        self.count = 0  # objects pasted so far: the next id is count + 1
        self.dropped = 0  # second copies dropped

    def _ensure(self, stop: int) -> None:
        """Grow the buffer so that it holds image rows up to ``stop`` (exclusive)."""
        have = self.origin + self.rows.shape[0]
        if stop > have:
            extra = np.zeros((stop - have, self.width), self.dtype)
            self.rows = np.concatenate([self.rows, extra]) if self.rows.size else extra

    def paste(self, owned: np.ndarray, block: Block) -> np.ndarray:
        """Write a block's owned objects (from :func:`owned_objects`) with new global ids
        on pixels no earlier object holds. An object that finds more than
        :data:`DUPLICATE_SHARE` of its pixels taken is a second copy and is dropped.

        Returns the global id of each owned object (index ``k - 1`` for object ``k``), 0
        for a dropped one.
        """
        y0, x0 = block.offset
        h, w = owned.shape
        if y0 < self.origin:
            raise ValueError(
                f"block at row {y0} reaches rows already handed out (up to {self.origin})."
            )
        self._ensure(y0 + h)
        target = self.rows[y0 - self.origin : y0 - self.origin + h, x0 : x0 + w]
        n = int(owned.max(initial=0))
        if n == 0:
            return np.zeros(0, np.int64)
        flat = owned.ravel()
        size = np.bincount(flat, minlength=n + 1)
        taken = np.bincount(flat, weights=target.ravel() > 0, minlength=n + 1)
        keep = (size > 0) & (taken <= DUPLICATE_SHARE * np.maximum(size, 1))
        keep[0] = False
        ids = np.zeros(n + 1, np.int64)
        kept = int(keep.sum())
        ids[keep] = np.arange(self.count + 1, self.count + kept + 1)
        self.dropped += int(((size > 0) & ~keep)[1:].sum())
        self.count += kept
        new = ids[owned].astype(self.dtype)
        free = (target == 0) & (new > 0)
        target[free] = new[free]
        return ids[1:]

    def finish_row(self, next_core_start: int) -> Iterator[tuple[int, np.ndarray]]:
        """Hand out the rows no later block can write: those above ``next_core_start``
        (the first core row of the next block row) minus the reach."""
        yield from self._release(max(self.origin, next_core_start - self.reach))

    def flush(self) -> Iterator[tuple[int, np.ndarray]]:
        """Hand out every remaining row (after the last block row)."""
        self._ensure(self.height)
        yield from self._release(self.height)

    def _release(self, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        n = stop - self.origin
        if n <= 0:
            return
        self._ensure(stop)
        done, self.rows = self.rows[:n], self.rows[n:].copy()
        first, self.origin = self.origin, stop
        yield first, done
