"""Input checks shared by every core function.

Each check raises :class:`ValueError` whose message says what was expected
and what was given, naming the argument (or napari layer / file) through
``name`` so the message is useful in a widget notification or a CLI error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_labels(
    labels: np.ndarray,
    name: str = "labels",
    ndim: Sequence[int] = (2, 3),
) -> np.ndarray:
    """Return ``labels`` as an integer array after checking it is an instance image.

    Parameters
    ----------
    labels : array of shape (Y, X) or (Z, Y, X)
        Instance label image: 0 is background, every positive integer one object.
        Float arrays are accepted only when every value is a whole number.
    name : str
        What to call the array in error messages (a layer or file name).
    ndim : sequence of int
        Allowed numbers of dimensions.

    Returns
    -------
    np.ndarray
        The same values with an integer dtype (``int32`` or ``int64``).

    Raises
    ------
    ValueError
        Wrong number of dimensions, non-finite, fractional or negative values.
    """
    arr = np.asarray(labels)
    if arr.ndim not in tuple(ndim):
        raise ValueError(
            f"{name}: expected a label image with {' or '.join(map(str, ndim))} dimensions, "
            f"got shape {arr.shape} ({arr.ndim} dimensions)."
        )
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: labels contain NaN or infinite values.")
        if np.any(arr != np.round(arr)):
            raise ValueError(
                f"{name}: expected whole-number labels, got fractional values "
                f"(e.g. {arr[arr != np.round(arr)].flat[0]!r})."
            )
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background), got minimum {arr.min()}.")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8:
        arr = arr.astype(np.int64)
    return arr


def check_image(
    image: np.ndarray,
    name: str = "image",
    ndim: Sequence[int] = (2, 3),
    as_float: bool = True,
) -> np.ndarray:
    """Check a grey image of shape (Y, X) or (Z, Y, X) and return it as float32.

    Raises ``ValueError`` for wrong dimensions, RGB(A)-looking data where grey
    is needed, and NaN / infinite values. With ``as_float=False`` the array comes
    back in its own dtype and floating-point data is *not* scanned for NaN (for a
    caller that converts and checks it elsewhere, e.g. on a GPU); integer images
    never need the scan.
    """
    arr = np.asarray(image)
    if arr.ndim not in tuple(ndim):
        hint = ""
        if arr.ndim == max(ndim) + 1 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
            hint = " It looks like a colour (RGB) or multi-channel image: pick one channel."
        raise ValueError(
            f"{name}: expected a grey image with {' or '.join(map(str, ndim))} dimensions, "
            f"got shape {arr.shape}.{hint}"
        )
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4 and 2 in ndim:
        # (Y, X, 3|4) is far more often RGB(A) than a 3-slice stack of width 3.
        raise ValueError(
            f"{name}: got shape {arr.shape}, which looks like an RGB(A) image; "
            "a grey image (Y, X) or stack (Z, Y, X) is needed: pick one channel "
            "or convert to grey."
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name}: expected a numeric image, got dtype {arr.dtype}.")
    if not as_float:
        return arr
    floating = arr.dtype.kind == "f"  # integers convert to finite float32 values
    arr = arr.astype(np.float32, copy=False)
    if floating and not np.all(np.isfinite(arr)):
        raise ValueError(non_finite_message(name))
    return arr


def non_finite_message(name: str) -> str:
    """The error text for an image holding NaN or infinite values."""
    return f"{name}: image contains NaN or infinite values."


def check_probabilities(
    probs: np.ndarray,
    name: str = "probabilities",
    n_classes: int | Sequence[int] | None = None,
    atol: float = 1e-3,
    check_sum: bool = True,
) -> np.ndarray:
    """Check a class-probability map of shape (C, Y, X) or (C, Z, Y, X).

    Parameters
    ----------
    probs : array (C, Y, X) or (C, Z, Y, X), values in [0, 1]
        One map per class, classes first.
    n_classes : int or sequence of int, optional
        Allowed values of C.
    atol : float
        Tolerance on ``sum over C == 1`` and on the range [0, 1].
    check_sum : bool
        Whether the maps must sum to one at every pixel.

    Returns
    -------
    np.ndarray
        ``float32`` view or copy of the input.
    """
    arr = np.asarray(probs)
    if arr.ndim not in (3, 4):
        raise ValueError(
            f"{name}: expected class probabilities of shape (C, Y, X) or (C, Z, Y, X), "
            f"got shape {arr.shape}."
        )
    if n_classes is not None:
        allowed = (n_classes,) if isinstance(n_classes, int) else tuple(n_classes)
        if arr.shape[0] not in allowed:
            raise ValueError(
                f"{name}: expected {' or '.join(map(str, allowed))} classes on axis 0, "
                f"got {arr.shape[0]} (shape {arr.shape})."
            )
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: probabilities contain NaN or infinite values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -atol or hi > 1 + atol:
        raise ValueError(f"{name}: probabilities must lie in [0, 1], got range [{lo:g}, {hi:g}].")
    if check_sum:
        total = arr.sum(axis=0)
        worst = float(np.abs(total - 1).max()) if total.size else 0.0
        if worst > atol:
            raise ValueError(
                f"{name}: class probabilities must sum to 1 at every pixel "
                f"(softmax output); the largest deviation is {worst:g}."
            )
    return arr


def check_same_shape(
    a: np.ndarray, b: np.ndarray, name_a: str = "image", name_b: str = "labels"
) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if np.shape(a) != np.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {np.shape(a)} and {np.shape(b)}."
        )
