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

from napari_cellfocus.core.normalize import MAX_SAMPLES, FixedRange, PercentileNormalization
from napari_cellfocus.core.validation import check_image, non_finite_message
from napari_cellfocus.engine.device import autocast, is_out_of_memory, release_memory
from napari_cellfocus.engine.inference import inference_copy
from napari_cellfocus.engine.tiling import Tile, even_window, grid_tiles

#: Smallest tile the out-of-memory fallback goes down to.
MIN_TILE = 64

#: Largest tile side (px) by device type when none is given. On the CPU, measured on a
#: 2-core AMD EPYC with the inference copy (:mod:`.inference`): 0.35 MP/s at 256-512 px,
#: 0.46-0.51 MP/s at 768-1536 px, 0.35 MP/s at 2048 px (caches), so 1024; on a GPU 512-px
#: tiles in batches of 4 (the figures of docs/benchmarks.md).
DEFAULT_TILE = {"cpu": 1024}
FALLBACK_TILE = 512


def default_tile_size(device: torch.device | str) -> int:
    """Largest tile side (px) for ``device`` when the caller gives none."""
    return DEFAULT_TILE.get(torch.device(device).type, FALLBACK_TILE)


def plane_windows(
    plane_shape: tuple[int, ...], tile: int, halo: int, blend: int, divisor: int
) -> tuple[int, ...]:
    """The tile window of each axis of a plane: the fewest equal tiles of at most
    ``tile`` px (:func:`~.tiling.even_window`), aligned to the model's ``divisor``."""
    return tuple(even_window(n, tile, halo, blend, divisor) for n in plane_shape)


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
    normalizer: PercentileNormalization | FixedRange | None = None,
    spatial_dims: int = 2,
    tile_size: int | None = None,
    halo: int = 32,
    blend: int = 32,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    mixed_precision: bool = True,
    name: str = "image",
    stream: bool = True,
    normalize_on_device: bool | None = None,
) -> Iterator[TileUpdate]:
    """Predict class probabilities tile by tile, yielding after each batch of tiles.

    Parameters
    ----------
    model : network mapping (N, 1, *spatial) to logits (N, C, *spatial); eval mode is set.
    image : grey image; the last ``spatial_dims`` axes are spatial, leading axes
        (z for a 2D model, time, ...) are predicted plane by plane.
    normalizer : intensity normalisation (the model's own; percentiles 1-99.8 by default),
        computed per plane; a :class:`~napari_cellfocus.core.normalize.FixedRange` gives
        the limits (a part of a larger image, normalised as the whole).
    spatial_dims : 2 or 3, the model's convolution dimensionality.
    tile_size : largest tile side in pixels (rounded down to the model's ``divisor``;
        default :func:`default_tile_size`). Each axis is split into the fewest tiles of at
        most that side, all of the same size (:func:`~.tiling.even_window`), so the halos
        are the only pixels computed twice.
    halo : context pixels discarded at inner tile edges (see :mod:`.tiling`).
    blend : width of the cross-fade between tiles, in pixels.
    batch_size : tiles per forward pass (default: 4 on a GPU, 1 on the CPU).
    device : torch device; defaults to the model's.
    mixed_precision : float16 autocast on CUDA.
    stream : on a GPU the weighted tiles are summed in GPU memory (one plane at a time);
        with ``stream`` the changed region is copied into ``probs`` after every batch so
        a viewer can show it, without it only once per plane (and on CUDA the parts of
        ``probs`` whose plane is not finished are undefined until then). On the CPU results
        always go straight into ``probs``.
    normalize_on_device : upload each plane once and convert, check and normalise it on
        the device (default: on accelerators, not on the CPU, where tile-by-tile host
        normalisation avoids a full-size float copy).

    Yields
    ------
    TileUpdate
        After each batch; the last one has ``done == total`` and the complete result.
    """
    # The array keeps its dtype here: the CPU path converts one tile at a time, a GPU
    # uploads each plane once in its own dtype and converts, checks and normalises there.
    arr = check_image(image, name=name, ndim=range(spatial_dims, spatial_dims + 3), as_float=False)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    on_device = device.type != "cpu" if normalize_on_device is None else normalize_on_device
    if not on_device and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(non_finite_message(name))
    normalizer = normalizer or PercentileNormalization()
    divisor = int(getattr(model, "divisor", 1))
    plane_shape = arr.shape[-spatial_dims:]
    lead_shape = arr.shape[:-spatial_dims]
    planes = list(np.ndindex(*lead_shape)) if lead_shape else [()]

    model.eval()
    net = inference_copy(model, device)  # same logits, folded batch norm (+ NHWC on CPU)
    if batch_size is None:
        batch_size = 4 if device.type == "cuda" else 1
    probs: np.ndarray | None = None
    tile = _round_to(tile_size or default_tile_size(device), divisor)
    done_planes = 0
    while done_planes < len(planes):
        plane_index = planes[done_planes]
        window = plane_windows(plane_shape, tile, halo, blend, divisor)
        tiles = grid_tiles(plane_shape, window, halo, blend, align=divisor)
        total = len(tiles) * len(planes)
        acc: torch.Tensor | None = None  # per-plane sum on the GPU
        source: _PlaneSource | None = None
        try:
            source = _plane_source(arr[plane_index], normalizer, device, name, on_device)
            for first in range(0, len(tiles), batch_size):
                batch = tiles[first : first + batch_size]
                xt = source.batch(batch)
                with torch.inference_mode(), autocast(device, mixed_precision):
                    p = torch.softmax(model_logits(net, xt).float(), dim=1)
                    if probs is None:
                        probs = _result_array((p.shape[1], *arr.shape), device, stream)
                    if on_device or device.type != "cpu":  # sum on the device
                        if acc is None:
                            acc = torch.zeros((p.shape[1], *plane_shape), device=device)
                        for t, pt in zip(batch, p, strict=True):
                            acc[(slice(None), *t.slices)] += pt * source.weight(t)
                    else:
                        for t, pt in zip(batch, p.numpy(), strict=True):
                            probs[(slice(None), *plane_index, *t.slices)] += pt * t.weight
                    union = _union(b.slices for b in batch)
                    last = first + len(batch) == len(tiles)
                    if acc is not None and (stream or last):
                        part = union if stream and not last else tuple(slice(None) for _ in union)
                        # Straight from the device into the result, no intermediate copy.
                        torch.from_numpy(probs[(slice(None), *plane_index, *part)]).copy_(
                            acc[(slice(None), *part)]
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
            acc = source = None
            release_memory(device)
            tile = _round_to(tile // 2, divisor)
            message = f"out of GPU memory: retrying {name} with {tile}-pixel tiles"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if probs is not None:
                probs[(slice(None), *plane_index)] = 0
                yield TileUpdate(done_planes * len(tiles), total, (slice(None),), probs, message)
            continue
        done_planes += 1


#: Largest result (bytes) held in page-locked memory on CUDA.
MAX_PINNED_BYTES = 2 << 30


def _result_array(shape: tuple[int, ...], device: torch.device, zero: bool) -> np.ndarray:
    """The float32 result array. On CUDA it lives in page-locked (pinned) host memory when
    it is at most :data:`MAX_PINNED_BYTES`: copying a 4096² 3-class result there takes
    ~4 ms instead of ~70 ms into fresh pageable memory (H100). Pinned memory is not
    zeroed unless ``zero`` (needed when tiles are streamed into it for display)."""
    nbytes = 4 * int(np.prod(shape))
    if device.type == "cuda" and nbytes <= MAX_PINNED_BYTES:
        try:
            pinned = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        except RuntimeError:  # pinning refused (limits): fall back to pageable memory
            return np.zeros(shape, np.float32)
        if zero:
            pinned.zero_()
        return pinned.numpy()
    return np.zeros(shape, np.float32)


class _PlaneSource:
    """Normalised tiles of one plane, as (N, 1, *window) float32 tensors on the device."""

    def batch(self, tiles: list[Tile]) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, tile: Tile) -> torch.Tensor:
        raise NotImplementedError


class _HostPlane(_PlaneSource):
    """CPU-side normalisation tile by tile (the CPU path: no full-size float copy)."""

    def __init__(
        self, plane: np.ndarray, normalizer: PercentileNormalization, device: torch.device
    ) -> None:
        self.plane, self.device = plane, device
        lo, hi = normalizer.limits(plane)
        self.lo = np.float32(lo)
        self.scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)

    def batch(self, tiles: list[Tile]) -> torch.Tensor:
        # grid_tiles keeps every window the same size, so tiles stack into a batch.
        x = np.stack(
            [(self.plane[t.slices].astype(np.float32) - self.lo) * self.scale for t in tiles]
        )
        return torch.from_numpy(x[:, None]).to(self.device)

    def weight(self, tile: Tile) -> torch.Tensor:
        return torch.from_numpy(tile.weight).to(self.device)


class _DevicePlane(_PlaneSource):
    """The whole plane uploaded once, checked and normalised on the device.

    On a GPU this removes the per-tile host work (normalising, copying each tile from
    pageable memory, which also serialises the host with the GPU), the full-size float32
    copy on the host, and the host-side NaN scan; the percentiles are taken on the same
    strided subsample as :meth:`PercentileNormalization.limits`. Tile weights are rebuilt
    on the device from their per-axis factors, each factor uploaded once.
    """

    def __init__(
        self,
        plane: np.ndarray,
        normalizer: PercentileNormalization,
        device: torch.device,
        name: str,
    ) -> None:
        self.device = device
        x = _upload_as_float(plane, device)
        if plane.dtype.kind == "f" and not bool(torch.isfinite(x).all()):
            raise ValueError(non_finite_message(name))
        if isinstance(normalizer, FixedRange):
            lo, hi = normalizer.limits()
        else:
            flat = x.reshape(-1)
            if flat.numel() > MAX_SAMPLES:
                flat = flat[:: flat.numel() // MAX_SAMPLES + 1]
            q = torch.tensor([normalizer.low, normalizer.high], device=device) / 100.0
            lo, hi = torch.quantile(flat, q).tolist()
        scale = 1.0 / (hi - lo) if hi > lo else 0.0
        self.x = x.sub_(lo).mul_(scale)
        self._factors: dict[tuple[int, int], torch.Tensor] = {}

    def batch(self, tiles: list[Tile]) -> torch.Tensor:
        return torch.stack([self.x[t.slices] for t in tiles])[:, None]

    def weight(self, tile: Tile) -> torch.Tensor:
        weight = None
        for axis, (sl, factor) in enumerate(zip(tile.slices, tile.factors, strict=True)):
            key = (axis, sl.start)
            if key not in self._factors:
                self._factors[key] = torch.from_numpy(factor).to(self.device)
            f = self._factors[key]
            weight = f if weight is None else weight[..., None] * f
        return weight


def _upload_as_float(plane: np.ndarray, device: torch.device) -> torch.Tensor:
    """``plane`` as a float32 tensor on ``device``, converted there (uploads its own dtype)."""
    plane = np.ascontiguousarray(plane)
    if plane.dtype == np.uint16:  # torch's uint16 is barely supported: go through int16
        t = torch.from_numpy(plane.view(np.int16)).to(device)
        return t.to(torch.int32).bitwise_and_(0xFFFF).float()
    if plane.dtype == np.uint32:
        t = torch.from_numpy(plane.view(np.int32)).to(device)
        return t.to(torch.int64).bitwise_and_(0xFFFFFFFF).float()
    if plane.dtype == bool:
        plane = plane.view(np.uint8)
    if plane.dtype.kind not in "biuf" or plane.dtype in (np.uint64, np.float16):
        plane = plane.astype(np.float32)
    return torch.from_numpy(plane).to(device).float()


def _plane_source(
    plane: np.ndarray,
    normalizer: PercentileNormalization,
    device: torch.device,
    name: str,
    on_device: bool,
) -> _PlaneSource:
    """Device-side normalisation if ``on_device``, host-side otherwise or when the plane
    does not fit in device memory next to the model."""
    if not on_device:
        return _HostPlane(plane, normalizer, device)
    try:
        return _DevicePlane(plane, normalizer, device, name)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        release_memory(device)
        return _HostPlane(plane, normalizer, device)


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
