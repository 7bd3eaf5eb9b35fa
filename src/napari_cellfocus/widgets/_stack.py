"""The "Stack" row of Segment: what the planes of a 3D or 4D image are.

A 2D model sees one plane at a time; what the leading axes *are* decides how the
planes' objects become cells: a z-stack is seen by the model in three orthogonal views
(its YX planes and its ZX and ZY slices, z resampled by the layer's z scale), the three
probability volumes averaged and made into 3D cells (``engine.segment.Segmenter.
iter_predict_ortho``), or its planes' objects are joined into 3D cells by overlap
(:func:`napari_cellfocus.core.stitch.stitch_planes`), a time series keeps each frame on
its own (optionally with ids kept across frames, :func:`~napari_cellfocus.core.stitch.
link_frames`), and a channel axis must not be taken for planes at all. The choice is
never guessed silently: it is read from the layer's axis labels when they say
(``z``/``t``...), else the box shows a default for a long axis and, for a short first
axis (up to ``AMBIGUOUS_MAX`` entries, as channels often are), asks the user to choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox

from napari_cellfocus.widgets._inputs import layer_array

#: A first axis this short, with no axis label saying what it is, may hold channels.
AMBIGUOUS_MAX = 4
ASK = "ask"


@dataclass(frozen=True)
class StackMode:
    """How the leading axes are treated: ``axes`` of them (``"Z"``, ``"T"``, ``"TZ"``),
    ``z_mode`` (``"ortho"``, ``"stitch"`` or ``"planes"``) and ``link`` (ids across
    frames)."""

    axes: str
    z_mode: str
    link: bool
    text: str


ORTHO_TEXT = "3D cells (YX, ZX, ZY views averaged)"
STITCH_TEXT = "3D cells (planes joined by overlap)"
#: The modes offered, the first of each list the default (the default z mode of
#: ``engine.segment.DEFAULT_Z_MODE`` first).
MODES: dict[int, list[StackMode]] = {
    1: [
        StackMode("Z", "ortho", False, f"z-stack: {ORTHO_TEXT}"),
        StackMode("Z", "stitch", False, f"z-stack: {STITCH_TEXT}"),
        StackMode("Z", "planes", False, "z-stack: each plane on its own"),
        StackMode("T", "planes", True, "time series: each frame, ids kept across frames"),
        StackMode("T", "planes", False, "time series: each frame on its own"),
    ],
    2: [
        StackMode("TZ", "ortho", True, f"time series of z-stacks: {ORTHO_TEXT}, ids kept"),
        StackMode("TZ", "stitch", True, f"time series of z-stacks: {STITCH_TEXT}, ids kept"),
        StackMode("TZ", "ortho", False, f"time series of z-stacks: {ORTHO_TEXT} per frame"),
        StackMode("TZ", "stitch", False, f"time series of z-stacks: {STITCH_TEXT} per frame"),
        StackMode("TZ", "planes", False, "time series of z-stacks: each plane on its own"),
    ],
}


def z_scale_of(scale: tuple[float, ...] | None) -> float:
    """z step / pixel size from a layer's scale (its Z, Y, X the last three; the mean of
    Y and X); 1 when the layer has no z or its scale says nothing usable."""
    if scale is None or len(scale) < 3:
        return 1.0
    z, y, x = (abs(float(v)) for v in scale[-3:])
    pixel = 0.5 * (y + x)
    if not (np.isfinite(z) and np.isfinite(pixel)) or z <= 0 or pixel <= 0:
        return 1.0
    return float(min(50.0, max(0.05, z / pixel)))


def layer_z_scale(layer: Any, scale: tuple[float, ...] | None) -> tuple[float, str]:
    """The z scale of a volume layer and where it came from: its ``scale`` (Z, Y, X the
    last three) when that says anything, else, when the scale is napari's default (all 1:
    napari's TIFF reader does not read voxel sizes), the voxel size in the metadata of the
    file the layer was opened from (:func:`core.voxel_size.z_scale_from_metadata`), else 1.
    """
    if scale is not None and len(scale) >= 3 and any(float(v) != 1.0 for v in scale[-3:]):
        return z_scale_of(scale), "the layer's scale"
    path = getattr(getattr(layer, "source", None), "path", None)
    if path:
        from napari_cellfocus.core.voxel_size import z_scale_from_metadata

        found = z_scale_from_metadata(path)
        if found is not None:
            return found, "the file's metadata"
    return 1.0, "no voxel size known"


def stack_options(stack: StackMode | None, image: np.ndarray | None = None) -> dict[str, Any]:
    """Keyword arguments of ``engine.segment.postprocess_planes`` for a stack mode (a
    z-stack's stitched 3D cells are split at waists, ``core.stitch.split_z``; stitched
    and orthogonal-view cells are cut to their bright planes in ``image``,
    ``core.stitch.trim_z``); ``{}`` for ``None`` (2D)."""
    if stack is None:
        return {}
    from napari_cellfocus.core.stitch import DEFAULT_Z_SPLIT, DEFAULT_Z_TRIM

    stitch = stack.z_mode == "stitch"
    return {
        "axes": stack.axes + "YX",
        "z_mode": stack.z_mode,
        "link": stack.link,
        "z_trim": DEFAULT_Z_TRIM if stack.z_mode in ("stitch", "ortho") else None,
        "z_split": DEFAULT_Z_SPLIT if stitch else None,
        "image": image,
    }


def lead_axes_of(layer: Any, channel: tuple[int, int] | None) -> tuple[tuple[int, ...], list]:
    """Sizes and napari axis labels of the axes before Y, X once the channel is taken."""
    shape = list(np.shape(layer_array(layer)))
    labels = list(getattr(layer, "axis_labels", [""] * layer.ndim))
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    elif channel is not None:
        axis = channel[0]
        shape.pop(axis)
        if axis < len(labels):
            labels.pop(axis)
    lead = tuple(shape[:-2])
    return lead, [str(label).lower() for label in labels[: len(lead)]]


def axis_kind(label: str) -> str | None:
    """'Z' or 'T' when a napari axis label names the axis (z, depth, t, time, frame...)."""
    if label in ("z", "depth", "plane", "planes", "slice") or label.startswith("z"):
        return "Z"
    if label in ("t", "time", "frame", "frames") or label.startswith("time"):
        return "T"
    return None


class StackChoice(QComboBox):
    """Combo box of :data:`MODES` for the chosen image; disabled for a 2D image."""

    def __init__(self) -> None:
        super().__init__()
        self.setToolTip(
            "What the planes of a 3D image are: a z-stack (3D cells from the model's YX, "
            "ZX and ZY views averaged, with z resampled by the layer's z scale; or planes "
            "joined into 3D cells by overlap; or each plane alone) or a time series (each "
            "frame alone, optionally keeping each cell's id from frame to frame). A "
            "channel axis is chosen under Channel."
        )
        self._lead: tuple[int, ...] = ()
        self._layer_id: int | None = None

    def update_for(self, layer: Any, channel: tuple[int, int] | None) -> None:
        """Offer the modes for ``layer`` (with ``channel`` taken); keep the user's pick
        while the same layer keeps the same number of leading axes."""
        lead, labels = lead_axes_of(layer, channel) if layer is not None else ((), [])
        same = id(layer) == self._layer_id and len(lead) == len(self._lead)
        previous = self.currentData() if same else None
        self._lead, self._layer_id = lead, id(layer)
        self.blockSignals(True)
        self.clear()
        modes = MODES.get(len(lead), [])
        if not modes:
            self.addItem("— (2D image)" if not lead else "— (too many axes)", None)
        else:
            said = [axis_kind(label) for label in labels]
            ambiguous = len(lead) == 1 and said[0] is None and lead[0] <= AMBIGUOUS_MAX
            if ambiguous:
                self.addItem(
                    f"— choose: {lead[0]} planes: z, time, or channels (under Channel)?", ASK
                )
            for mode in modes:
                self.addItem(mode.text, mode)
            index = 0
            if previous is not None and self.findData(previous) >= 0:
                index = self.findData(previous)
            elif not ambiguous and len(lead) == 1 and said[0] == "T":
                index = self.findData(modes[[m.axes for m in modes].index("T")])
            self.setCurrentIndex(index)
        self.setEnabled(bool(modes))
        self.blockSignals(False)

    def mode(self, name: str) -> StackMode | None:
        """The chosen mode (``None`` for a 2D image); ValueError while the box asks."""
        data = self.currentData()
        if data == ASK:
            n = self._lead[0]
            raise ValueError(
                f"'{name}' has {n} planes before Y and X and its axis labels do not say "
                f"what they are: if they are channels, pick the nuclear channel under "
                f"'Channel'; if they are z-planes or time points, say so under 'Stack'."
            )
        return data
