"""One object to segment images with a model: load, predict (tiled), post-process.

>>> from napari_cellfocus.engine.segment import Segmenter
>>> seg = Segmenter("default")                  # the built-in model, CUDA if present
>>> result = seg.segment(image)                  # image: (Y, X) grey; the model's defaults
>>> result.labels, result.count, result.probs    # (Y, X) int32, int, (C, Y, X) float32
>>> result.diameter                              # nucleus diameter used (px, estimated)

Object size: a model that stores its training scale (``info.defaults["diameter"]``, px)
sees every image rescaled so its nuclei have that diameter: ``diameter="auto"`` (the
default) estimates the image's median nucleus diameter with the model itself
(:meth:`Segmenter.estimate_diameter`), a number gives it; the probabilities come back on
the image's own grid. The post-processing method, its thresholds and the size filter
relative to the diameter default to what the model stores (chosen on validation data).

Volumes, movies and channels (``axes=``, see :mod:`napari_cellfocus.core.axes`): with a
2D model a (Z, Y, X) volume is by default seen in three orthogonal views (its YX planes
and the ZX and ZY slices of the volume resampled along z by ``z_scale`` = z step / pixel
size), the three class-probability volumes averaged and post-processed in 3D
(``z_mode="ortho"``, :meth:`Segmenter.iter_predict_ortho`, as cellpose's ``do_3D``);
``z_mode="stitch"`` predicts and post-processes plane by plane and stitches the planes'
objects across z by overlap (:func:`napari_cellfocus.core.stitch.stitch_planes`);
``"planes"`` keeps one object per plane; a (T, Y, X) movie gives labels per frame and
``result.counts`` (one count per frame), with ``link_frames=True`` the same id for the
same cell from frame to frame; a channel axis needs ``channel=``.

>>> result = seg.segment(volume, axes="ZYX", z_scale=2.0)  # result.z_mode == "ortho"
>>> result = seg.segment(volume, axes="ZYX", z_mode="stitch")  # faster, planes stitched
>>> result = seg.segment(movie, axes="TYX", link_frames=True)
>>> result.counts                                # cells in each frame
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cellfocus.core.axes import canonical, resolve_axes, select_channel
from napari_cellfocus.core.measure import frame_counts
from napari_cellfocus.core.methods import get_post_method
from napari_cellfocus.core.normalize import FixedRange
from napari_cellfocus.core.size import (
    MAX_ZOOM,
    disc_area,
    resize_block,
    scaled_shape,
    typical_diameter,
    zoom_for,
)
from napari_cellfocus.core.size import resize as resize_array
from napari_cellfocus.core.stitch import (
    DEFAULT_STITCH_THRESHOLD,
    DEFAULT_Z_SPLIT,
    DEFAULT_Z_TRIM,
    check_z_scale,
    combine_views,
    link_frames,
    resize_axis,
    split_z,
    stitch_planes,
    trim_z,
)
from napari_cellfocus.engine.checkpoint import ModelInfo, load_checkpoint, resolve_model_path
from napari_cellfocus.engine.device import describe_device, select_device
from napari_cellfocus.engine.predict import (
    TileUpdate,
    default_tile_size,
    iter_predict,
    plane_windows,
    predict_probabilities,
)
from napari_cellfocus.engine.tiling import grid_tiles

#: Passes of the size estimate at most (the first at the image's own scale).
ESTIMATE_PASSES = 3
#: Side (px) of the central part of a plane the size estimate looks at, at most.
ESTIMATE_MAX_SIDE = 1024
#: Planes of a stack / movie the size estimate measures at most (median of them).
ESTIMATE_PLANES = 3
#: What ``z_mode`` may be for a 2D model on a volume.
Z_MODES = ("stitch", "ortho", "planes")
#: The z mode of a 2D model on a volume when none is given: the orthogonal views beat
#: stitching on simulated volumes (3D PQ, count; benchmarks/bench_volumes.py), at several
#: times the prediction time.
DEFAULT_Z_MODE = "ortho"
#: How the orthogonal views' boundary classes are combined (core.stitch.combine_views).
DEFAULT_ORTHO_BOUNDARY = "mean"
#: Post-processing of the combined 3D probabilities of ``z_mode="ortho"`` when none is
#: given: averaging three views softens the cell class at boundaries, so the model's own
#: 2D choice (MAP) merges touching nuclei there; thresholded maps with a low touching
#: threshold keep them apart (chosen on simulated volumes of seeds 1 and 2, not on the
#: benchmark's; benchmarks/bench_volumes.py).
ORTHO_METHOD = "th"
ORTHO_POST_PARAMS: dict[str, Any] = {"gamma1": 0.6, "gamma2": 0.3}


@dataclass
class SegmentationResult:
    """probs (C, *shape) float32; labels (*shape) int32 consecutive; count = labels.max().

    diameter : nucleus diameter (px of the image) the image was segmented at, ``None``
    when the model has no scale; zoom : the resampling factor the network saw; method and
    post_params : the post-processing that made ``labels``.

    axes : axes of ``labels`` (``"YX"``, ``"ZYX"``, ``"TYX"``, ``"TZYX"``; a channel axis
    is gone, the order is T, Z, Y, X); z_mode : how z was handled, ``"stitch"`` (2D
    planes stitched into 3D instances), ``"planes"`` (one object per plane), ``"3d"`` (a
    3D model), ``"ortho"`` (3D probabilities from the YX, ZX and ZY views of a 2D
    model, post-processed in 3D), ``None`` without z; counts : cells in each frame
    (distinct ids) of a movie, ``None`` without T; linked : whether ids were linked
    across frames; z_trim : the share of its brightest plane a stitched cell's planes had to reach
    (:func:`core.stitch.trim_z`), ``None`` when no cut was made; z_split : the waist
    ratio stitched cells were split at (:func:`core.stitch.split_z`), or ``None``;
    z_scale : the z step / pixel size the side views were resampled by (``"ortho"``).
    """

    probs: np.ndarray
    labels: np.ndarray
    count: int
    diameter: float | None = None
    zoom: float = 1.0
    method: str = "map"
    post_params: dict[str, Any] | None = None
    axes: str = "YX"
    z_mode: str | None = None
    counts: list[int] | None = None
    linked: bool = False
    stitch_threshold: float | None = None
    z_trim: float | None = None
    z_split: float | None = None
    z_scale: float | None = None


class Segmenter:
    """A loaded segmentation model on a device.

    Parameters
    ----------
    model : ``"default"`` / ``None`` (built-in model), a checkpoint path, or a
        ``(torch model, ModelInfo)`` pair (e.g. fresh from a Trainer).
    device : ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ...
    """

    def __init__(
        self,
        model: str | Path | tuple[torch.nn.Module, ModelInfo] | None = "default",
        device: str | torch.device | None = "auto",
    ) -> None:
        self.device = select_device(device)
        if isinstance(model, tuple):
            net, self.info = model
            self.model = net.to(self.device).eval()
            self.source = "in-memory model"
        else:
            path = resolve_model_path(model)
            self.model, self.info = load_checkpoint(path, device=self.device, task="segmentation")
            self.source = str(path)

    @property
    def device_name(self) -> str:
        """What the user should see as the device in use, e.g. ``CPU (2 threads)``."""
        return describe_device(self.device)

    @property
    def spatial_dims(self) -> int:
        return int(self.info.network.get("dims", 2))

    @property
    def n_classes(self) -> int:
        return self.info.n_classes

    @property
    def model_diameter(self) -> float | None:
        """Nucleus diameter (px) the model was trained at; ``None``: no rescaling."""
        value = self.info.defaults.get("diameter")
        return float(value) if value else None

    @property
    def default_method(self) -> str:
        """The model's own post-processing method ("map" when it stores none)."""
        return str(self.info.defaults.get("method", "map"))

    def default_post_params(self, method: str | None = None) -> dict[str, Any]:
        """The stored parameters of ``method`` (the model's default method when None);
        ``{}`` for another method than the stored one."""
        method = (method or self.default_method).lower()
        if method != self.default_method:
            return {}
        return dict(self.info.defaults.get("post_params", {}))

    def min_size_for(self, diameter: float | None, z_scale: float | None = None) -> int | None:
        """Smallest object kept (px) for nuclei of ``diameter`` px, from the model's
        ``min_size_fraction`` of a typical nucleus' area; ``None`` without either.

        With ``z_scale`` (z step / pixel size) the objects are 3D: the same share of a
        typical nucleus' *volume* in voxels, a ball of ``diameter`` px whose z extent
        covers ``diameter / z_scale`` planes."""
        fraction = self.info.defaults.get("min_size_fraction")
        if not fraction or not diameter:
            return None
        if z_scale is not None:
            ball = math.pi / 6.0 * float(diameter) ** 3 / check_z_scale(z_scale)
            return max(1, round(float(fraction) * ball))
        return max(1, round(float(fraction) * disc_area(diameter)))

    def zoom_for(self, diameter: float | None) -> float:
        """Resampling factor that brings nuclei of ``diameter`` px to the model's scale,
        limited to [1 / MAX_ZOOM, MAX_ZOOM]; 1 without a diameter or a model scale."""
        zoom = zoom_for(diameter, self.model_diameter)
        return float(min(MAX_ZOOM, max(1.0 / MAX_ZOOM, zoom)))

    def _kwargs(self, **overrides: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "normalizer": self.info.normalizer(),
            "spatial_dims": self.spatial_dims,
            "device": self.device,
        }
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return kw

    def resolve_diameter(
        self, image: np.ndarray, diameter: float | str | None = "auto", **kwargs: Any
    ) -> float | None:
        """The diameter (px) to segment ``image`` at: a number as given; ``"auto"`` /
        ``None``: estimated when the model has a scale, else ``None`` (no rescaling)."""
        if diameter is None or (isinstance(diameter, str) and diameter.lower() == "auto"):
            if self.model_diameter is None:
                return None
            return self.estimate_diameter(image, **kwargs)
        value = float(diameter)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"diameter must be 'auto' or a number of pixels > 0, got {diameter!r}."
            )
        return value

    def estimate_diameter(self, image: np.ndarray, **kwargs: Any) -> float | None:
        """Median nucleus diameter (px) in ``image``, measured with the model itself.

        The model segments (MAP) the central part of the image (of a stack or movie: up
        to ``ESTIMATE_PLANES`` planes, at 1/4, 1/2 and 3/4 of it, the median of their
        estimates) at the image's own scale; the median equivalent diameter of what it finds
        sets a zoom to the model's scale, and the measurement is repeated there (up to
        ``ESTIMATE_PASSES`` passes, until the zoom changes by less than 10 %), since the
        model is most accurate at its own scale. ``None`` when nothing is found or the model
        has no scale.
        """
        if self.model_diameter is None:
            return None
        arr = np.asarray(image)
        lead = arr.shape[: max(0, arr.ndim - self.spatial_dims)]
        if not lead:
            return self._estimate_plane(arr, **kwargs)
        flat = list(np.ndindex(*lead))
        n = len(flat)
        picks = sorted({n // 2, n // 4, (3 * n) // 4})[:ESTIMATE_PLANES]
        found = [self._estimate_plane(arr[flat[i]], **kwargs) for i in picks]
        found = [f for f in found if f is not None]
        return float(np.median(found)) if found else None

    def _estimate_plane(self, plane: np.ndarray, **kwargs: Any) -> float | None:
        """:meth:`estimate_diameter` of one plane (or volume, for a 3D model)."""
        from napari_cellfocus.core.postprocess import postprocess

        if self.spatial_dims == 2:
            crop = tuple(
                slice(
                    max(0, (n - ESTIMATE_MAX_SIDE) // 2),
                    max(0, (n - ESTIMATE_MAX_SIDE) // 2) + ESTIMATE_MAX_SIDE,
                )
                for n in plane.shape
            )
            plane = plane[crop]
        kwargs = {k: v for k, v in kwargs.items() if k not in ("stream", "on_tile")}
        zoom, estimate = 1.0, None
        for _ in range(ESTIMATE_PASSES):
            work = (
                plane
                if zoom == 1.0
                else resize_array(plane, scaled_shape(plane.shape, zoom), order=1)
            )
            probs = predict_probabilities(self.model, work, **self._kwargs(**kwargs))
            labels, _ = postprocess(probs, method="map")
            found = typical_diameter(labels)
            if found is None:
                break
            estimate = found / zoom
            new_zoom = self.zoom_for(estimate)
            if abs(new_zoom / zoom - 1.0) < 0.1:
                break
            zoom = new_zoom
        return estimate

    def iter_predict(
        self, image: np.ndarray, diameter: float | None = None, **kwargs: Any
    ) -> Iterator[TileUpdate]:
        """Tile-by-tile prediction generator (see :func:`engine.predict.iter_predict`).

        With a ``diameter`` (px) the network runs on the image rescaled to the model's
        scale; every update then carries the probabilities on the image's own grid,
        ``region`` being the part that changed there.
        """
        zoom = self.zoom_for(diameter)
        if zoom == 1.0:
            yield from iter_predict(self.model, image, **self._kwargs(**kwargs))
            return
        arr = np.asarray(image)
        sd = self.spatial_dims
        own = arr.shape[-sd:]
        work_shape = scaled_shape(own, zoom)
        work = resize_array(arr, work_shape, order=1)
        probs = None
        # every update's region is resampled as it comes, so it must hold its values then:
        # without streaming, a GPU fills a plane's result only after its last tile
        inner = self._kwargs(**{**kwargs, "stream": True})
        for update in iter_predict(self.model, work, **inner):
            if probs is None:
                probs = np.zeros((update.probs.shape[0], *arr.shape), np.float32)
            lead = update.region[1 : 1 + arr.ndim - sd]
            spatial = update.region[1 + arr.ndim - sd :]
            block = tuple(
                slice(
                    max(0, math.floor(sl.start * n / m) - 1),
                    min(n, math.ceil(sl.stop * n / m) + 1),
                )
                for sl, n, m in zip(spatial, own, work_shape, strict=True)
            )
            source = update.probs[(slice(None), *lead)]
            probs[(slice(None), *lead, *block)] = resize_block(source, own, block, order=1)
            region = (slice(None), *lead, *block)
            yield TileUpdate(update.done, update.total, region, probs, update.message)

    def predict(
        self,
        image: np.ndarray,
        on_tile: Callable[[TileUpdate], None] | None = None,
        diameter: float | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Class probabilities (C, *image.shape) float32; with ``diameter`` (px) the
        network sees the image at the model's scale (see :meth:`iter_predict`)."""
        if self.zoom_for(diameter) == 1.0:
            return predict_probabilities(
                self.model, image, on_tile=on_tile, **self._kwargs(**kwargs)
            )
        probs = None
        kwargs.setdefault("stream", on_tile is not None)
        for update in self.iter_predict(image, diameter=diameter, **kwargs):
            probs = update.probs
            if on_tile is not None:
                on_tile(update)
        assert probs is not None
        return probs

    def _expected_tiles(self, shape: tuple[int, ...], diameter: float | None, **kwargs) -> int:
        """Rough number of tiles :meth:`iter_predict` will run on a stack of ``shape``
        (for a progress bar that spans several stacks)."""
        zoom = self.zoom_for(diameter)
        tile = int(kwargs.get("tile_size") or default_tile_size(self.device))
        halo, blend = int(kwargs.get("halo", 32)), int(kwargs.get("blend", 32))
        divisor = int(getattr(self.model, "divisor", 1))
        tile = max(divisor, tile // divisor * divisor)
        sd = self.spatial_dims
        plane = tuple(max(1, round(n * zoom)) for n in shape[-sd:])
        window = plane_windows(plane, tile, halo, blend, divisor)
        per_plane = len(grid_tiles(plane, window, halo, blend, align=divisor))
        return per_plane * math.prod(shape[:-sd])

    def iter_predict_ortho(
        self,
        volume: np.ndarray,
        diameter: float | None = None,
        z_scale: float | None = 1.0,
        *,
        boundary: str = DEFAULT_ORTHO_BOUNDARY,
        views: list[np.ndarray] | None = None,
        **kwargs: Any,
    ) -> Iterator[TileUpdate]:
        """3D class probabilities of a (Z, Y, X) volume (or a (T, Z, Y, X) series, frame
        by frame) from a 2D model, from three orthogonal views, as cellpose's ``do_3D``
        does with its flows.

        The YX planes are predicted as they are; for the side views the volume is first
        resampled along z by ``z_scale`` (z step / pixel size, so nuclei are round in
        them, as the model was trained on), its ZX slices (one per y) and ZY slices (one
        per x) are predicted, and their probabilities are resampled back to the volume's
        planes. The three class-probability volumes are combined
        (:func:`core.stitch.combine_views`: averaged; ``boundary="max"``: the boundary
        classes take the views' maximum). The diameter rescaling applies to every view
        (the network sees nuclei of its own diameter in each). All views of a volume are
        normalised with the volume's percentiles (one range for the whole volume: a
        side slice through background only is not stretched up to look like nuclei).

        Yields :class:`TileUpdate` after each batch of tiles: while the YX planes are
        predicted their probabilities stream in (``probs`` of the volume's shape); during
        the side views the same array is carried for progress only; the last update
        (``done == total``) carries the combined (C, *volume.shape) result. ``views``: a
        list that receives the three views' probabilities (YX, ZX, ZY) of each volume.
        """
        arr = np.asarray(volume)
        if self.spatial_dims != 2:
            raise ValueError("orthogonal views are for 2D models; a 3D model sees the volume.")
        if arr.ndim == 4:
            yield from self._iter_ortho_frames(arr, diameter, z_scale, boundary, views, kwargs)
            return
        if arr.ndim != 3:
            raise ValueError(f"orthogonal views need a (Z, Y, X) volume, got shape {arr.shape}.")
        z_scale = check_z_scale(z_scale)
        if kwargs.get("normalizer") is None:
            kwargs["normalizer"] = FixedRange.of(arr, self.info.normalizer())
        nz = arr.shape[0]
        n_iso = max(1, round(nz * z_scale))
        iso = resize_axis(arr, n_iso, axis=0) if n_iso != nz else arr
        stacks = [
            (arr, None),
            (np.ascontiguousarray(iso.transpose(1, 0, 2)), (0, 2, 1, 3)),  # (Y, Z', X)
            (np.ascontiguousarray(iso.transpose(2, 0, 1)), (0, 2, 3, 1)),  # (X, Z', Y)
        ]
        expected = [self._expected_tiles(s.shape, diameter, **kwargs) for s, _ in stacks]
        done_before, shown, found = 0, None, []
        for k, (stack, order) in enumerate(stacks):
            last = None
            for update in self.iter_predict(stack, diameter=diameter, **kwargs):
                last = update
                total = done_before + update.total + sum(expected[k + 1 :]) + 1
                done = done_before + update.done
                if order is None:
                    shown = update.probs
                    yield TileUpdate(done, total, update.region, shown, update.message)
                else:
                    yield TileUpdate(done, total, (slice(0, 0),), shown, update.message)
            assert last is not None
            done_before += last.total
            if order is None:
                found.append(last.probs)
            else:  # back to (C, Z', Y, X), then to the volume's planes
                back = last.probs.transpose(order)
                found.append(resize_axis(back, nz, axis=1) if n_iso != nz else back.copy())
        if views is not None:
            views.extend(found)
        probs = combine_views(found, boundary)
        yield TileUpdate(done_before + 1, done_before + 1, (slice(None),), probs)

    def _iter_ortho_frames(
        self,
        arr: np.ndarray,
        diameter: float | None,
        z_scale: float | None,
        boundary: str,
        views: list[np.ndarray] | None,
        kwargs: dict[str, Any],
    ) -> Iterator[TileUpdate]:
        """:meth:`iter_predict_ortho` of each frame of a (T, Z, Y, X) series."""
        probs = None
        n = arr.shape[0]
        for t in range(n):
            for update in self.iter_predict_ortho(
                arr[t], diameter, z_scale, boundary=boundary, views=views, **kwargs
            ):
                if probs is None:
                    probs = np.zeros((update.probs.shape[0], *arr.shape), np.float32)
                done = t * update.total + update.done
                if update.done == update.total:
                    probs[:, t] = update.probs
                yield TileUpdate(done, n * update.total, (slice(None), t), probs, update.message)

    def predict_ortho(
        self,
        volume: np.ndarray,
        diameter: float | None = None,
        z_scale: float | None = 1.0,
        on_tile: Callable[[TileUpdate], None] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """The combined class probabilities (C, *volume.shape) of
        :meth:`iter_predict_ortho` (same keywords)."""
        kwargs.setdefault("stream", on_tile is not None)
        probs = None
        for update in self.iter_predict_ortho(volume, diameter, z_scale, **kwargs):
            probs = update.probs
            if on_tile is not None:
                on_tile(update)
        assert probs is not None
        return probs

    def post_settings(
        self,
        method: str | None = None,
        post_params: dict[str, Any] | None = None,
        diameter: float | None = None,
        z_scale: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Method and parameters to post-process with: the given ones over the model's
        defaults, plus the size filter relative to ``diameter`` unless ``min_size`` is given.

        With ``z_scale`` the probabilities are a 2D model's orthogonal views combined in
        3D (``z_mode="ortho"``): the size filter is a volume (voxels, see
        :meth:`min_size_for`) and ``method=None`` means :data:`ORTHO_METHOD` with
        :data:`ORTHO_POST_PARAMS` (under the given ``post_params``)."""
        if method is None and z_scale is not None and self.spatial_dims == 2:
            method = ORTHO_METHOD
            post_params = {**ORTHO_POST_PARAMS, **(post_params or {})}
        method = get_post_method(method or self.default_method).key
        params = self.default_post_params(method)
        params.update(post_params or {})
        if "min_size" not in params:
            min_size = self.min_size_for(diameter, z_scale)
            if min_size is not None:
                params["min_size"] = min_size
        return method, params

    def prepare(
        self, image: np.ndarray, axes: str | None = None, channel: int | None = None
    ) -> tuple[np.ndarray, str]:
        """``image`` without its channel axis and in T, Z, Y, X order, and its axes.

        ``axes`` : as :func:`core.axes.resolve_axes` (``None``: 2D -> YX, 3D -> ZYX, shapes
        that may be channels refused); ``channel`` : index taken out of a ``C`` axis
        (required when there is one with more than one channel). Raises ``ValueError``
        naming the shape and the axes.
        """
        arr = np.asarray(image)
        if axes is None and arr.ndim == 2:
            axes_s = "YX"
        else:
            axes_s, _ = resolve_axes(arr.shape, axes)
        arr, axes_s = select_channel(arr, axes_s, channel)
        arr, axes_s = canonical(arr, axes_s)
        if self.spatial_dims == 3 and "Z" not in axes_s and arr.ndim > 2:
            raise ValueError(
                f"a 3D model needs a Z axis; the image has shape {arr.shape}, axes {axes_s}."
            )
        return arr, axes_s

    def segment(
        self,
        image: np.ndarray,
        method: str | None = None,
        post_params: dict[str, Any] | None = None,
        diameter: float | str | None = "auto",
        *,
        axes: str | None = None,
        channel: int | None = None,
        z_mode: str | None = None,
        stitch_threshold: float = DEFAULT_STITCH_THRESHOLD,
        link_frames: bool = False,
        z_trim: float | None = DEFAULT_Z_TRIM,
        z_split: float | None = DEFAULT_Z_SPLIT,
        z_scale: float | None = None,
        ortho_boundary: str = DEFAULT_ORTHO_BOUNDARY,
        ortho_views: list[np.ndarray] | None = None,
        **predict_kwargs: Any,
    ) -> SegmentationResult:
        """Predict and post-process.

        method : a post-processing method of the registry (``core.methods.POST_METHODS``:
            "map", "th", "wt", ... see core.postprocess); ``None``: the model's default.
        post_params : that method's parameters, over the model's stored ones. A method or
            parameter the registry does not know fails (``ValueError``) before the model
            runs.
        diameter : nucleus diameter in px, or "auto" (estimated; see :meth:`estimate_diameter`).
        axes : e.g. "YX", "ZYX", "TYX", "CYX", "YXC", "TZYX" (see :meth:`prepare`);
            ``None``: 2D is YX, 3D is ZYX unless its shape could be channels (refused).
        channel : the channel to segment when ``axes`` has a C.
        z_mode : for a 2D model on a volume: ``"stitch"`` (objects of successive
            planes with IoU >= ``stitch_threshold`` become one 3D instance),
            ``"ortho"`` (3D probabilities averaged from the YX, ZX and ZY views, see
            :meth:`iter_predict_ortho`, post-processed in 3D) or ``"planes"`` (each
            plane on its own, labels unique across planes); ``None``:
            :data:`DEFAULT_Z_MODE`.
        z_scale : z step / pixel size of the volume (``None``: 1), for ``"ortho"``: the
            side views are resampled along z by it, and the size filter is a volume.
        ortho_boundary : how ``"ortho"`` combines the views' boundary classes
            (:func:`core.stitch.combine_views`); ``ortho_views``: a list that receives
            the three views' probabilities (for diagnosis).
            With ``"ortho"`` and ``method=None`` the 3D post-processing is
            :data:`ORTHO_METHOD` (see :meth:`post_settings`).
        link_frames : for a movie (T): give a cell the same id in successive frames
            (overlap IoU >= ``stitch_threshold``); otherwise ids are unique per frame.
        z_trim : with stitching or ``"ortho"``, cut each 3D cell to the planes where it
            is at least this share as bright as in its brightest plane (the out-of-focus
            planes above and below a nucleus, :func:`core.stitch.trim_z`); ``None`` or
            0: no cut.
        z_split : with stitching, split a 3D cell at a plane whose area is under this
            share of its largest areas on both sides (two nuclei stacked in z,
            :func:`core.stitch.split_z`); ``None`` or 0: no split.

        Labels come back on the prepared image's grid (channel gone, T, Z, Y, X order:
        ``result.axes``); a movie's ``result.counts`` holds the count of each frame.
        """
        check_post_settings(method, post_params)
        z_mode = DEFAULT_Z_MODE if z_mode is None else z_mode
        if z_mode not in Z_MODES:
            raise ValueError(f"z_mode: expected one of {', '.join(Z_MODES)}, got {z_mode!r}.")
        z_scale = check_z_scale(z_scale)
        work, work_axes = self.prepare(image, axes, channel)
        diam = self.resolve_diameter(work, diameter, **predict_kwargs)
        ortho = z_mode == "ortho" and "Z" in work_axes and self.spatial_dims == 2
        if ortho:
            probs = self.predict_ortho(
                work,
                diameter=diam,
                z_scale=z_scale,
                boundary=ortho_boundary,
                views=ortho_views,
                **predict_kwargs,
            )
        else:
            probs = self.predict(work, diameter=diam, **predict_kwargs)
        method, params = self.post_settings(method, post_params, diam, z_scale if ortho else None)
        labels, count = postprocess_planes(
            probs,
            self.spatial_dims,
            method,
            params,
            axes=work_axes,
            z_mode=z_mode,
            stitch_threshold=stitch_threshold,
            link=link_frames,
            image=work if z_trim and z_mode in ("stitch", "ortho") else None,
            z_trim=z_trim,
            z_split=z_split,
        )
        used_z = None
        if "Z" in work_axes:
            used_z = "3d" if self.spatial_dims == 3 else z_mode
        counts = None
        if "T" in work_axes:
            counts = frame_counts(labels)
        return SegmentationResult(
            probs,
            labels,
            count,
            diam,
            self.zoom_for(diam),
            method,
            params,
            axes=work_axes,
            z_mode=used_z,
            counts=counts,
            linked=bool(link_frames and "T" in work_axes),
            stitch_threshold=float(stitch_threshold) if used_z == "stitch" or counts else None,
            z_trim=float(z_trim) if used_z in ("stitch", "ortho") and z_trim else None,
            z_split=float(z_split) if used_z == "stitch" and z_split else None,
            z_scale=z_scale if used_z == "ortho" else None,
        )


def check_post_settings(method: str | None, post_params: dict[str, Any] | None) -> None:
    """``ValueError`` for a post-processing method the registry does not hold, or for
    parameters it does not declare (``None``: the model's own method, not checked)."""
    if method is None:
        return
    spec = get_post_method(method)
    unknown = sorted(set(post_params or {}) - set(spec.names))
    if unknown:
        raise ValueError(
            f"method {spec.key!r}: unknown parameter(s) {unknown}; expected some of "
            f"{list(spec.names)}."
        )


def postprocess_planes(
    probs: np.ndarray,
    spatial_dims: int,
    method: str,
    params: dict[str, Any],
    *,
    axes: str | None = None,
    z_mode: str = "planes",
    stitch_threshold: float = DEFAULT_STITCH_THRESHOLD,
    link: bool = False,
    image: np.ndarray | None = None,
    z_trim: float | None = None,
    z_split: float | None = None,
) -> tuple[np.ndarray, int]:
    """Post-process (C, *lead, *spatial) probabilities plane by plane; unique labels overall.

    With ``axes`` (of ``probs.shape[1:]``, in T, Z, Y, X order, no C) and a 2D model:
    ``z_mode="stitch"`` joins the planes of each volume (per frame) into 3D instances
    (:func:`core.stitch.stitch_planes`), ``link=True`` links a movie's frames
    (:func:`core.stitch.link_frames`), both at IoU ``>= stitch_threshold``. Without
    ``axes`` (or with ``z_mode="planes"`` and no linking) every plane keeps its own
    objects, as before. With ``image`` (the grey image, shape ``probs.shape[1:]``) and
    ``z_trim``, each stitched 3D object is cut to the planes where it is at least
    ``z_trim`` as bright as in its brightest one (:func:`core.stitch.trim_z`); with
    ``z_split``, stitched objects are first split where their area narrows between two
    maxima (two nuclei stacked in z, :func:`core.stitch.split_z`).
    ``z_mode="ortho"`` (3D probabilities of a 2D model's orthogonal views): each volume
    (each frame of a T, Z series) is post-processed in 3D as a whole, then cut in z by
    ``z_trim`` as stitched objects are; ``link`` then links the frames' 3D objects.
    Returns ``(labels int32, count = labels.max())``.
    """
    from napari_cellfocus.core.postprocess import postprocess

    lead = probs.shape[1 : probs.ndim - spatial_dims]
    if not lead:
        labels, count = postprocess(probs, method=method, **params)
        return labels.astype(np.int32), int(count)
    if z_mode == "ortho" and axes is not None and "Z" in axes[: len(lead)]:
        trim = z_trim if image is not None else None
        if trim and np.shape(image) != probs.shape[1:]:
            raise ValueError(f"image of shape {np.shape(image)} for labels {probs.shape[1:]}.")
        return _postprocess_volumes(
            probs, method, params, axes, link, stitch_threshold, image, trim
        )
    labels = np.zeros(probs.shape[1:], np.int32)
    total = 0
    for idx in np.ndindex(*lead):
        plane_labels, count = postprocess(probs[(slice(None), *idx)], method=method, **params)
        plane_labels = plane_labels.astype(np.int32)
        plane_labels[plane_labels > 0] += total
        labels[idx] = plane_labels
        total += int(count)
    if axes is None:
        return labels, total
    if len(axes) != labels.ndim or set(axes[: len(lead)]) - set("TZ"):
        raise ValueError(f"axes {axes!r} do not fit labels of shape {labels.shape}.")
    lead_axes = axes[: len(lead)]
    trim = bool(z_trim) and image is not None
    if trim and np.shape(image) != labels.shape:
        raise ValueError(f"image of shape {np.shape(image)} for labels {labels.shape}.")
    if z_mode == "stitch" and "Z" in lead_axes:
        if lead_axes == "Z":
            labels = stitch_planes(labels, stitch_threshold)
            if z_split:
                labels = split_z(labels, z_split)
            if trim:
                labels = trim_z(labels, image, z_trim)
        elif lead_axes == "TZ":
            offset = 0
            for t in range(labels.shape[0]):
                frame = stitch_planes(labels[t], stitch_threshold)
                if z_split:
                    frame = split_z(frame, z_split)
                if trim:
                    frame = trim_z(frame, image[t], z_trim)
                frame[frame > 0] += offset
                offset = max(offset, int(frame.max()))
                labels[t] = frame
        else:
            raise ValueError(f"axes {axes!r}: expected T before Z (T, Z, Y, X order).")
    if link and "T" in lead_axes:
        if lead_axes.index("T") != 0:
            raise ValueError(f"axes {axes!r}: expected T first (T, Z, Y, X order).")
        labels = link_frames(labels, stitch_threshold)
    return labels, int(labels.max())


def _postprocess_volumes(
    probs: np.ndarray,
    method: str,
    params: dict[str, Any],
    axes: str,
    link: bool,
    threshold: float,
    image: np.ndarray | None = None,
    z_trim: float | None = None,
) -> tuple[np.ndarray, int]:
    """(C, Z, Y, X) or (C, T, Z, Y, X) probabilities post-processed volume by volume in
    3D (core.postprocess works in any dimension), each volume's objects cut to their
    bright planes of ``image`` by ``z_trim`` (:func:`core.stitch.trim_z`); ids unique
    across frames unless ``link`` (frames linked by 3D overlap)."""
    from napari_cellfocus.core.postprocess import postprocess

    def volume(p: np.ndarray, grey: np.ndarray | None) -> np.ndarray:
        lab, _ = postprocess(p, method=method, **params)
        lab = lab.astype(np.int32)
        if z_trim and grey is not None:
            lab = trim_z(lab, grey, z_trim)
        return lab

    lead_axes = axes[: probs.ndim - 3]
    if lead_axes == "Z" and len(axes) == probs.ndim - 1:
        labels = volume(probs, image)
        return labels, int(labels.max())
    if lead_axes != "TZ" or len(axes) != probs.ndim - 1:
        raise ValueError(f"axes {axes!r} do not fit probabilities of shape {probs.shape}.")
    labels = np.zeros(probs.shape[1:], np.int32)
    offset = 0
    for t in range(labels.shape[0]):
        frame = volume(probs[:, t], None if image is None else image[t])
        frame[frame > 0] += offset
        offset = max(offset, int(frame.max()))
        labels[t] = frame
    if link:
        labels = link_frames(labels, threshold)
    return labels, int(labels.max())
