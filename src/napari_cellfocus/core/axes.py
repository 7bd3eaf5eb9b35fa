"""Axes strings: which axis of an image array is time, channel, z, y and x.

An axes string names every axis of an array with one letter out of ``T`` (time / frame),
``C`` (channel), ``Z`` (plane of a volume or focus stack), ``Y`` and ``X``: ``"YX"``,
``"ZYX"``, ``"TYX"``, ``"CYX"``, ``"YXC"``, ``"TZYX"``, ``"TCYX"``, ``"CZYX"``, ... Each
letter at most once, the string as long as the array has axes, ``Y`` and ``X`` always
present; ``C`` may come last (``YXC``), otherwise the string ends in ``YX``.

Where they come from (:func:`resolve_axes`): given by the user (``--axes``), else read
from the TIFF's ImageJ / OME metadata (:func:`axes_from_tiff`), else the default rule of
:func:`default_axes` (2D -> ``YX``, 3D -> ``ZYX``), which refuses shapes that could as well
be channels or RGB rather than guessing.

>>> validate_axes("zyx", 3)
'ZYX'
>>> image, axes = select_channel(np.zeros((2, 8, 9)), "CYX", 1)
>>> image.shape, axes
((8, 9), 'YX')
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "AXES_LETTERS",
    "CANONICAL_ORDER",
    "axes_from_tiff",
    "canonical",
    "default_axes",
    "iter_frames",
    "resolve_axes",
    "select_channel",
    "validate_axes",
]

#: Letters an axes string may hold.
AXES_LETTERS = "TCZYX"
#: Order the engine works in (a subset of it): time, channel, z, y, x.
CANONICAL_ORDER = "TCZYX"
#: Largest first axis of a 3D array without metadata that could be channels.
MAX_CHANNELS_GUESS = 4
#: tifffile's axis letters and what they mean here (None: unknown, e.g. 'Q', 'I').
_TIFFFILE_LETTERS = {
    "T": "T",
    "C": "C",
    "Z": "Z",
    "Y": "Y",
    "X": "X",
    "S": "C",  # samples (RGB or extra samples): channels, stored last
}


def validate_axes(axes: str, ndim: int | None = None) -> str:
    """``axes`` upper-cased, checked: letters from ``TCZYX``, each once, ending in ``YX``
    (or ``YXC``: channels last), as many letters as ``ndim`` when given.

    Raises ``ValueError`` saying what is wrong.
    """
    if not isinstance(axes, str) or not axes:
        raise ValueError(f"axes: expected a string such as 'ZYX', got {axes!r}.")
    text = axes.strip().upper()
    bad = sorted(set(text) - set(AXES_LETTERS))
    if bad:
        raise ValueError(
            f"axes {axes!r}: unknown letter(s) {', '.join(bad)}; use T (time), C (channel), "
            "Z (plane), Y and X."
        )
    twice = sorted({c for c in text if text.count(c) > 1})
    if twice:
        raise ValueError(f"axes {axes!r}: letter(s) {', '.join(twice)} given more than once.")
    if not (text.endswith("YX") or text.endswith("YXC")):
        raise ValueError(f"axes {axes!r}: must end in YX (or YXC for channels last).")
    if ndim is not None and len(text) != ndim:
        raise ValueError(
            f"axes {axes!r} name {len(text)} axes but the image has {ndim} "
            f"(shape with {ndim} sizes)."
        )
    return text


def axes_from_tiff(path: str | Path) -> str | None:
    """Axes of the first series of a TIFF as its ImageJ / OME metadata gives them, or
    ``None`` when the file has none that names every axis (plain TIFFs, tifffile's own
    shaped files, unknown letters such as ``Q`` or ``I``).

    tifffile's ``S`` (samples per pixel, e.g. RGB, stored last) counts as channels ``C``;
    of a plain TIFF only an RGB file's axes are known (``YXC``).
    Length-1 axes are kept (the array as read has them too).
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            raw = str(series.axes).upper()
            ndim = len(series.shape)
            if not (tif.is_imagej or tif.is_ome):
                # A plain TIFF names no axes; only a colour (RGB) photometric says
                # its samples axis is channels.
                if "S" not in raw or tif.pages[0].photometric != tifffile.PHOTOMETRIC.RGB:
                    return None
                raw = "".join(c if c in "SYX" else "?" for c in raw)
    except Exception:  # unreadable: read_image reports it with the file name
        return None
    letters = [_TIFFFILE_LETTERS.get(c) for c in raw]
    if None in letters or len(letters) != ndim:
        return None
    axes = "".join(letters)  # type: ignore[arg-type]
    try:
        return validate_axes(axes, ndim)
    except ValueError:
        return None


def default_axes(shape: tuple[int, ...], what: str = "the image") -> str:
    """Axes of an array of ``shape`` when neither the user nor the file says.

    2D -> ``YX``; 3D -> ``ZYX``, except when it may as well be channels: a first axis of
    at most 4 (``CYX``?) or a last axis of 3 or 4 (RGB ``YXC``?) raises ``ValueError``
    naming the shape and asking for ``--axes`` / ``axes=``. 4D and more always need axes.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[-1] in (3, 4):
            raise ValueError(
                f"{what} has shape {shape}: the last axis of {shape[-1]} may be RGB(A) "
                f"channels or {shape[-1]} columns; say which with --axes YXC (with "
                "--channel N) or --axes ZYX (axes='YXC' / 'ZYX' in Python)."
            )
        if shape[0] <= MAX_CHANNELS_GUESS:
            raise ValueError(
                f"{what} has shape {shape}: the first axis of {shape[0]} may be channels "
                "or planes; say which with --axes CYX (with --channel N) or --axes ZYX "
                "(or TYX for frames; axes='CYX' / 'ZYX' in Python)."
            )
        return "ZYX"
    raise ValueError(
        f"{what} has shape {shape}: {len(shape)} axes need their names, e.g. --axes TZYX, "
        "TCYX or CZYX (axes='TZYX' in Python)."
    )


def resolve_axes(
    shape: tuple[int, ...],
    axes: str | None = None,
    metadata: str | None = None,
    what: str = "the image",
) -> tuple[str, str]:
    """``(axes, source)`` for an array of ``shape``: ``axes`` when given (checked), else
    the file's ``metadata`` axes when they fit the shape, else :func:`default_axes`.

    ``source`` is ``"given"``, ``"metadata"`` or ``"default"``.
    """
    ndim = len(shape)
    if axes:
        try:
            return validate_axes(axes, ndim), "given"
        except ValueError as err:
            raise ValueError(f"{what} (shape {tuple(shape)}): {err}") from None
    if metadata:
        try:
            return validate_axes(metadata, ndim), "metadata"
        except ValueError:
            pass
    return default_axes(shape, what), "default"


def select_channel(
    image: np.ndarray, axes: str, channel: int | None, what: str = "the image"
) -> tuple[np.ndarray, str]:
    """The image without its channel axis: ``channel`` taken out of ``C``.

    No ``C`` in ``axes``: the image as is (``channel`` None or 0; another channel
    raises). ``C`` without ``channel`` raises ``ValueError`` naming the shape and the
    axes, unless ``C`` has length 1 (then dropped).
    """
    arr = np.asarray(image)
    axes = validate_axes(axes, arr.ndim)
    if "C" not in axes:
        if channel not in (None, 0):
            raise ValueError(
                f"{what} has shape {arr.shape} (axes {axes}): no channel axis, so "
                f"--channel {channel} cannot be taken; give --axes with a C."
            )
        return arr, axes
    ax = axes.index("C")
    n = arr.shape[ax]
    if channel is None:
        if n == 1:
            return np.take(arr, 0, axis=ax), axes.replace("C", "")
        raise ValueError(
            f"{what} has shape {arr.shape} with axes {axes}: {n} channels; choose the "
            f"nuclear channel with --channel 0..{n - 1} (channel= in Python)."
        )
    c = int(channel)
    if not -n <= c < n:
        raise ValueError(
            f"{what} has shape {arr.shape} with axes {axes}: channel {channel} is out of "
            f"range 0..{n - 1}."
        )
    return np.take(arr, c, axis=ax), axes.replace("C", "")


def canonical(image: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """The image with its axes in the order ``T C Z Y X`` (those it has), and that order.

    >>> canonical(np.zeros((5, 6, 2)), "YXC")[0].shape
    (2, 5, 6)
    """
    arr = np.asarray(image)
    axes = validate_axes(axes, arr.ndim)
    order = "".join(c for c in CANONICAL_ORDER if c in axes)
    if order == axes:
        return arr, axes
    return np.transpose(arr, [axes.index(c) for c in order]), order


def iter_frames(image: np.ndarray, axes: str) -> Iterator[tuple[int | None, np.ndarray, str]]:
    """``(t, frame, frame_axes)`` for each time frame (``T`` axis) of ``image``;
    one ``(None, image, axes)`` without a ``T`` axis."""
    arr = np.asarray(image)
    axes = validate_axes(axes, arr.ndim)
    if "T" not in axes:
        yield None, arr, axes
        return
    ax = axes.index("T")
    rest = axes.replace("T", "")
    for t in range(arr.shape[ax]):
        yield t, np.take(arr, t, axis=ax), rest
