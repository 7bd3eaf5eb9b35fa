"""napari-cellfocus: segmentation, counting and multi-focus fusion of cells in napari.

The package is split in three layers (see ``docs/contributing.md``; the layering is
checked by ``tests/test_import_layers.py``):

``core``    numpy / scipy / scikit-image science: targets, weight maps,
            post-processing, metrics, the simulator and classical fusion.
``engine``  torch: networks, losses, training, tiled prediction, checkpoints.
``widgets`` napari dock widgets, thin wrappers around ``core`` and ``engine``.

The names most scripts need are importable from the package itself, e.g.::

    from napari_cellfocus import Segmenter, read_image, evaluate

    result = Segmenter("default").segment(read_image("nuclei.tif"))
    print(result.count, evaluate(truth, result.labels)["pq"])

They are loaded on first use (:pep:`562`), so ``import napari_cellfocus`` stays cheap
(napari imports the package to read its manifest; torch loads only with the engine).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS = {
    # segmentation and training (torch)
    "Segmenter": "napari_cellfocus.engine.segment",
    "SegmentationResult": "napari_cellfocus.engine.segment",
    "Trainer": "napari_cellfocus.engine.train",
    "TrainConfig": "napari_cellfocus.engine.train",
    "quick_finetune_config": "napari_cellfocus.engine.train",
    "load_checkpoint": "napari_cellfocus.engine.checkpoint",
    "save_checkpoint": "napari_cellfocus.engine.checkpoint",
    "ModelInfo": "napari_cellfocus.engine.checkpoint",
    "CheckpointError": "napari_cellfocus.engine.checkpoint",
    "segment_to_file": "napari_cellfocus.engine.blocks",
    "fuse_stack": "napari_cellfocus.engine.fusion",
    # numpy science
    "postprocess": "napari_cellfocus.core.postprocess",
    "search_thresholds": "napari_cellfocus.core.postprocess",
    "evaluate": "napari_cellfocus.core.metrics",
    "match_instances": "napari_cellfocus.core.metrics",
    "simulate_cells": "napari_cellfocus.core.simulate",
    "simulate_focus_stack": "napari_cellfocus.core.simulate",
    "read_image": "napari_cellfocus.core.io",
    "write_image": "napari_cellfocus.core.io",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_cellfocus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
