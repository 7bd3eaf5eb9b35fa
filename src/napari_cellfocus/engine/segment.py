"""One object to segment images with a model: load, predict (tiled), post-process.

>>> from napari_cellfocus.engine.segment import Segmenter
>>> seg = Segmenter("default")                  # the built-in model, CUDA if present
>>> result = seg.segment(image)                  # image: (Y, X) grey; MAP by default
>>> result.labels, result.count, result.probs    # (Y, X) int32, int, (C, Y, X) float32
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cellfocus.engine.checkpoint import ModelInfo, load_checkpoint, resolve_model_path
from napari_cellfocus.engine.device import describe_device, select_device
from napari_cellfocus.engine.predict import TileUpdate, iter_predict, predict_probabilities


@dataclass
class SegmentationResult:
    """probs (C, *shape) float32; labels (*shape) int32 consecutive; count = labels.max()."""

    probs: np.ndarray
    labels: np.ndarray
    count: int


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

    def _kwargs(self, **overrides: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "normalizer": self.info.normalizer(),
            "spatial_dims": self.spatial_dims,
            "device": self.device,
        }
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return kw

    def iter_predict(self, image: np.ndarray, **kwargs: Any) -> Iterator[TileUpdate]:
        """Tile-by-tile prediction generator (see :func:`engine.predict.iter_predict`)."""
        return iter_predict(self.model, image, **self._kwargs(**kwargs))

    def predict(
        self,
        image: np.ndarray,
        on_tile: Callable[[TileUpdate], None] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Class probabilities (C, *image.shape) float32."""
        return predict_probabilities(self.model, image, on_tile=on_tile, **self._kwargs(**kwargs))

    def segment(
        self,
        image: np.ndarray,
        method: str = "map",
        post_params: dict[str, Any] | None = None,
        **predict_kwargs: Any,
    ) -> SegmentationResult:
        """Predict and post-process: ``method`` is "map", "th" or "wt" (see core.postprocess).

        For stacks / time series with a 2D model, each plane is post-processed on its own
        and labels are made unique across planes.
        """

        probs = self.predict(image, **predict_kwargs)
        labels, count = postprocess_planes(probs, self.spatial_dims, method, post_params or {})
        return SegmentationResult(probs, labels, count)


def postprocess_planes(
    probs: np.ndarray, spatial_dims: int, method: str, params: dict[str, Any]
) -> tuple[np.ndarray, int]:
    """Post-process (C, *lead, *spatial) probabilities plane by plane; unique labels overall."""
    from napari_cellfocus.core.postprocess import postprocess

    lead = probs.shape[1 : probs.ndim - spatial_dims]
    if not lead:
        labels, count = postprocess(probs, method=method, **params)
        return labels.astype(np.int32), int(count)
    labels = np.zeros(probs.shape[1:], np.int32)
    total = 0
    for idx in np.ndindex(*lead):
        plane_labels, count = postprocess(probs[(slice(None), *idx)], method=method, **params)
        plane_labels = plane_labels.astype(np.int32)
        plane_labels[plane_labels > 0] += total
        labels[idx] = plane_labels
        total += int(count)
    return labels, total
