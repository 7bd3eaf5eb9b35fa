"""Sample data for napari's File > Open Sample menu.

The simulated samples come from :mod:`napari_cellfocus.core.simulate` (fixed seeds,
so every user sees the same images); ``skimage.data.cell()`` is offered as a real
microscope image without labels. Functions return napari layer-data tuples
``(data, kwargs, layer_type)`` and import nothing from napari.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]

#: Seed of the crowded sample scene; the README's figures use it too.
SAMPLE_SEED = 2024


def sample_cells() -> list[LayerDataTuple]:
    """A 512 x 512 simulated fluorescence image of crowded nuclei and its ground truth."""
    from napari_cellfocus.core.simulate import simulate_cells

    scene = simulate_cells(shape=(512, 512), seed=SAMPLE_SEED)
    return [
        (scene.image, {"name": "cells (simulated)", "colormap": "gray"}, "image"),
        (scene.labels, {"name": "cells ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def sample_focus_stack() -> list[LayerDataTuple]:
    """A simulated 7-slice focus stack (Z, Y, X) with its all-in-focus ground truth."""
    from napari_cellfocus.core.simulate import simulate_focus_stack

    scene = simulate_focus_stack(shape=(384, 384), n_slices=7, seed=SAMPLE_SEED)
    return [
        (scene.stack, {"name": "focus stack (simulated)", "colormap": "gray"}, "image"),
        (
            scene.all_in_focus,
            {"name": "all-in-focus ground truth", "colormap": "gray", "visible": False},
            "image",
        ),
    ]


def sample_real_cell() -> list[LayerDataTuple]:
    """``skimage.data.cell()``: a real microscope image, without labels."""
    from skimage import data

    return [(data.cell(), {"name": "cell (skimage.data)", "colormap": "gray"}, "image")]
