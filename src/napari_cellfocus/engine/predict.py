"""Tiled, streaming prediction of class-probability maps for images of any size.

:func:`iter_predict` is a generator: it yields a :class:`TileUpdate` after every
finished tile, so the napari widget can run it in a ``thread_worker`` and refresh
the probability layers as tiles arrive, and a consumer can cancel by simply
stopping the iteration. :func:`predict_probabilities` runs it to the end.

Memory: the only full-size array is the result, ``(C, *image_shape)`` float32.
Tiles are normalised and moved to the device one batch at a time and added into
the result with weights that are already normalised (see :mod:`.tiling`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from napari_cellfocus.core.normalize import PercentileNormalization
from napari_cellfocus.core.validation import check_image
from napari_cellfocus.engine.device import autocast, is_out_of_memory, release_memory
from napari_cellfocus.engine.tiling import grid_tiles

#: Smallest tile the out-of-memory fallback goes down to.
MIN_TILE = 64


@dataclass
class TileUpdate:
    """Progress of a prediction after one more tile (or batch of tiles) is done.

    ``probs`` is the result array being filled, shape (C, *image_shape) float32;
    ``region`` indexes the part of it that just changed (``probs[region]``).
    """

    done: int
    total: int
    region: tuple[slice, ...]
    probs: np.ndarray
    message: str = ""


def model_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class logits of ``model`` for input ``x``; handles models returning tuples/dicts."""
    out = model(x)
    if isinstance(out, dict):
        out = out["logits"]
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _round_to(n: int, multiple: int) -> int:
    return max(multiple, (int(n) // multiple) * multiple)


def iter_predict(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    normalizer: PercentileNormalization | None = None,
    spatial_dims: int = 2,
    tile_size: int = 512,
    halo: int = 32,
    blend: int = 32,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    mixed_precision: bool = True,
    name: str = "image",
) -> Iterator[TileUpdate]:
    """Predict class probabilities tile by tile, yielding after each batch of tiles.

    Parameters
    ----------
    model : network mapping (N, 1, *spatial) to logits (N, C, *spatial); eval mode is set.
    image : grey image; the last ``spatial_dims`` axes are spatial, leading axes
        (z for a 2D model, time, ...) are predicted plane by plane.
    normalizer : intensity normalisation (the model's own; percentiles 1-99.8 by default),
        computed per plane.
    spatial_dims : 2 or 3, the model's convolution dimensionality.
    tile_size : tile side in pixels (rounded down to the model's ``divisor``).
    halo : context pixels discarded at inner tile edges (see :mod:`.tiling`).
    blend : width of the cross-fade between tiles, in pixels.
    batch_size : tiles per forward pass.
    device : torch device; defaults to the model's.
    mixed_precision : float16 autocast on CUDA.

    Yields
    ------
    TileUpdate
        After each batch; the last one has ``done == total`` and the complete result.
    """
    arr = check_image(image, name=name, ndim=range(spatial_dims, spatial_dims + 3))
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    normalizer = normalizer or PercentileNormalization()
    divisor = int(getattr(model, "divisor", 1))
    plane_shape = arr.shape[-spatial_dims:]
    lead_shape = arr.shape[:-spatial_dims]
    planes = list(np.ndindex(*lead_shape)) if lead_shape else [()]

    model.eval()
    probs: np.ndarray | None = None
    tile = _round_to(tile_size, divisor)
    done_planes = 0
    while done_planes < len(planes):
        plane_index = planes[done_planes]
        plane = arr[plane_index]
        lo, hi = normalizer.limits(plane)
        scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
        window = tuple(min(tile, n) for n in plane_shape)
        tiles = grid_tiles(plane_shape, window, halo, blend, align=divisor)
        total = len(tiles) * len(planes)
        try:
            for first in range(0, len(tiles), batch_size):
                batch = tiles[first : first + batch_size]
                # Tiles clipped to a short axis may differ in shape only if the axis is
                # shorter than the tile; grid_tiles keeps every window the same size.
                x = np.stack([(plane[t.slices] - np.float32(lo)) * scale for t in batch])
                xt = torch.from_numpy(x[:, None]).to(device)
                with torch.inference_mode(), autocast(device, mixed_precision):
                    p = torch.softmax(model_logits(model, xt).float(), dim=1).cpu().numpy()
                if probs is None:
                    probs = np.zeros((p.shape[1], *arr.shape), np.float32)
                for t, pt in zip(batch, p, strict=True):
                    region = (slice(None), *plane_index, *t.slices)
                    probs[region] += pt * t.weight
                changed = (slice(None), *plane_index, *_union(b.slices for b in batch))
                yield TileUpdate(
                    done_planes * len(tiles) + first + len(batch), total, changed, probs
                )
        except Exception as err:
            if not (is_out_of_memory(err) and tile > MIN_TILE):
                if is_out_of_memory(err):
                    raise MemoryError(
                        f"{name}: out of GPU memory even with {tile}-pixel tiles; "
                        "use the CPU or close other GPU programs."
                    ) from err
                raise
            release_memory(device)
            tile = _round_to(tile // 2, divisor)
            message = f"out of GPU memory: retrying {name} with {tile}-pixel tiles"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if probs is not None:
                probs[(slice(None), *plane_index)] = 0
                yield TileUpdate(done_planes * len(tiles), total, (slice(None),), probs, message)
            continue
        done_planes += 1


def _union(slice_groups) -> tuple[slice, ...]:
    """Bounding slices of several equal-rank slice tuples."""
    groups = list(slice_groups)
    return tuple(
        slice(min(s[d].start for s in groups), max(s[d].stop for s in groups))
        for d in range(len(groups[0]))
    )


def predict_probabilities(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    on_tile: Callable[[TileUpdate], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs,
) -> np.ndarray:
    """Run :func:`iter_predict` to the end and return probabilities (C, *image.shape).

    ``on_tile`` is called with every :class:`TileUpdate`; ``should_stop`` is polled
    after each tile and, when it returns True, raises :class:`InterruptedError`.
    """
    probs = None
    for update in iter_predict(model, image, **kwargs):
        probs = update.probs
        if on_tile is not None:
            on_tile(update)
        if should_stop is not None and should_stop():
            raise InterruptedError("prediction cancelled")
    assert probs is not None
    return probs
