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
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    mixed_precision: bool = True,
    name: str = "image",
    stream: bool = True,
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
    batch_size : tiles per forward pass (default: 4 on a GPU, 1 on the CPU).
    device : torch device; defaults to the model's.
    mixed_precision : float16 autocast on CUDA.
    stream : on a GPU the weighted tiles are summed in GPU memory (one plane at a time);
        with ``stream`` the changed region is copied into ``probs`` after every batch so
        a viewer can show it, without it only once per plane. On the CPU results always
        go straight into ``probs``.

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
    if batch_size is None:
        batch_size = 4 if device.type == "cuda" else 1
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
        acc: torch.Tensor | None = None  # per-plane sum on the GPU
        try:
            for first in range(0, len(tiles), batch_size):
                batch = tiles[first : first + batch_size]
                # grid_tiles keeps every window the same size, so tiles stack into a batch.
                x = np.stack([(plane[t.slices] - np.float32(lo)) * scale for t in batch])
                xt = torch.from_numpy(x[:, None]).to(device)
                with torch.inference_mode(), autocast(device, mixed_precision):
                    p = torch.softmax(model_logits(model, xt).float(), dim=1)
                    if probs is None:
                        probs = np.zeros((p.shape[1], *arr.shape), np.float32)
                    if device.type == "cuda":
                        if acc is None:
                            acc = torch.zeros((p.shape[1], *plane_shape), device=device)
                        for t, pt in zip(batch, p, strict=True):
                            weight = torch.from_numpy(t.weight).to(device, non_blocking=True)
                            acc[(slice(None), *t.slices)] += pt * weight
                    else:
                        for t, pt in zip(batch, p.numpy(), strict=True):
                            probs[(slice(None), *plane_index, *t.slices)] += pt * t.weight
                    union = _union(b.slices for b in batch)
                    last = first + len(batch) == len(tiles)
                    if acc is not None and (stream or last):
                        part = union if stream and not last else tuple(slice(None) for _ in union)
                        probs[(slice(None), *plane_index, *part)] = (
                            acc[(slice(None), *part)].cpu().numpy()
                        )
                changed = (slice(None), *plane_index, *union)
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
            acc = None
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
    kwargs.setdefault("stream", on_tile is not None)
    for update in iter_predict(model, image, **kwargs):
        probs = update.probs
        if on_tile is not None:
            on_tile(update)
        if should_stop is not None and should_stop():
            raise InterruptedError("prediction cancelled")
    assert probs is not None
    return probs
