"""Row bands of a 2D image that arrives piece by piece (labels computed block by block),
checked before a writer stores them (the tiled-TIFF writer in :mod:`.io`, the OME-Zarr
label writer in :mod:`.omezarr`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["checked_bands"]


def checked_bands(
    path: str | Path,
    shape: tuple[int, int],
    dtype: np.dtype | type,
    bands: Iterable[tuple[int, np.ndarray]],
) -> Iterator[tuple[int, np.ndarray]]:
    """The ``(first_row, rows)`` bands of a (Y, X) image of ``shape``, checked, ``rows``
    as ``dtype`` arrays of shape (n, X); stops after the band that reaches row Y - 1
    (later ones are never asked for).

    Raises ``ValueError`` naming ``path`` when a band does not follow the previous one,
    has the wrong width, runs past the image, or the bands stop before its last row.
    """
    height, width = (int(n) for n in shape)
    dtype = np.dtype(dtype)
    expected = 0
    for first, rows in bands:
        rows = np.asarray(rows, dtype)
        if first != expected or rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(
                f"{path}: row band at {first} of shape {rows.shape} does not follow row "
                f"{expected} of a {height} x {width} image."
            )
        expected += rows.shape[0]
        if expected > height:
            raise ValueError(f"{path}: more row bands than the image's {height} rows.")
        yield first, rows
        if expected == height:
            return
    raise ValueError(f"{path}: row bands stopped at row {expected} of {height}.")
