"""What the dock widgets of one viewer share: the model in use and the last segmentation.

Segment writes a :class:`Segmentation` (probabilities and the image they came from),
Tune re-labels it with new thresholds, Correct-and-fine-tune adds a new model and
selects it, Measure reads the labels. The output layers are per source image: the labels
of the last segmentation are those of the image ``result.layer_name``
(``widgets._layers.own_labels(viewer, result.layer_name)``). Each viewer has one
:class:`CellFocusState` (:func:`get_state`); it holds the viewer only through a weak
reference, so closing the viewer frees everything.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_cellfocus.core.methods import default_post_params, get_post_method

if TYPE_CHECKING:
    import napari

    from napari_cellfocus.engine.segment import Segmenter


def method_params(method: str) -> tuple[str, ...]:
    """Parameters of post-processing ``method`` as the widgets offer them (its registry
    entry's ``tune`` parameters, ``core.methods``)."""
    return tuple(p.name for p in get_post_method(method).tune_params())


@dataclass
class ModelEntry:
    """One model the user can pick in Segment.

    ``spec`` is what :class:`~napari_cellfocus.engine.segment.Segmenter` and
    :class:`~napari_cellfocus.engine.train.Trainer` accept: ``"default"``, a checkpoint
    path, or a ``(torch model, ModelInfo)`` pair (a model trained in this session).
    """

    name: str
    spec: Any
    kind: str = "builtin"  # "builtin" | "file" | "session"
    key: int = field(default_factory=itertools.count().__next__)


@dataclass
class Segmentation:
    """The last complete segmentation of this viewer.

    probs : float32 (C, *shape) class probabilities.
    image : the grey array that was segmented, shape ``shape`` (a channel already taken).
    layer_name : name of the napari image layer it came from (its output layers carry
        it as their source and are named after it).
    channel : ``None`` or ``(axis, index)`` picked in that layer.
    spatial_dims : 2 for a 2D model (leading axes are planes), 3 for a 3D model.
    scale, translate : of the output layers (the image layer's, channel axis dropped).
    generation : increases with every new probability map (stale results are dropped).
    stack : how the planes of a 2D model became cells (z-stack joined, frames linked).
    """

    probs: np.ndarray
    image: np.ndarray
    layer_name: str
    channel: tuple[int, int] | None
    spatial_dims: int
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    model_name: str = ""
    generation: int = 0
    #: How a 2D model's planes became cells (``widgets._stack.StackMode``), or None.
    stack: Any = None


class CellFocusState(QObject):
    """Shared, per-viewer state of the CellFocus widgets (lives on the Qt main thread).

    Signals
    -------
    models_changed : the list of models or the selected one changed.
    result_changed : a new :class:`Segmentation` is available (or it was cleared).
    post_changed : the post-processing method / parameters changed (Tune).
    count_changed(int) : the labels layer now holds this many cells.
    """

    models_changed = Signal()
    result_changed = Signal()
    post_changed = Signal()
    count_changed = Signal(int)

    def __init__(self, viewer: napari.Viewer | None = None) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer) if viewer is not None else (lambda: None)
        self.models: list[ModelEntry] = [ModelEntry("built-in default", "default", "builtin")]
        self.current: int = 0
        self.device: str = "auto"
        self.result: Segmentation | None = None
        self.post_method: str = "map"
        self.post_params: dict[str, float | int] = default_post_params()
        #: False until the user changes the post-processing in Tune: until then every
        #: segmentation uses the model's own defaults (method, thresholds, size filter).
        self.post_user_set: bool = False
        self.count: int | None = None
        self._generation = itertools.count(1)
        self._segmenter: Segmenter | None = None
        self._segmenter_key: tuple[int, str] | None = None
        self._segmenter_lock = threading.Lock()
        self._session_models = itertools.count(1)

    # ------------------------------------------------------------------ viewer
    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    # ------------------------------------------------------------------ models
    @property
    def model(self) -> ModelEntry:
        """The model in use."""
        return self.models[self.current]

    def add_model(self, name: str, spec: Any, kind: str, select: bool = True) -> ModelEntry:
        """Append a model to the choices (a file path once only) and optionally select it."""
        if kind == "file":
            for i, entry in enumerate(self.models):
                if entry.kind == "file" and Path(entry.spec) == Path(spec):
                    if select:
                        self.select_model(i)
                    return entry
        entry = ModelEntry(name, spec, kind)
        self.models.append(entry)
        if select:
            self.current = len(self.models) - 1
        self.models_changed.emit()
        return entry

    def next_session_name(self, detail: str = "") -> str:
        """``fine-tuned 1 (detail)``, ``fine-tuned 2``, ... for models trained here."""
        n = next(self._session_models)
        return f"fine-tuned {n}" + (f" ({detail})" if detail else "")

    def select_model(self, index: int) -> None:
        if not 0 <= index < len(self.models):
            raise IndexError(f"no model number {index}")
        if index != self.current:
            self.current = index
            self.models_changed.emit()

    def set_device(self, device: str) -> None:
        self.device = device

    def segmenter(self, entry: ModelEntry | None = None, device: str | None = None) -> Segmenter:
        """The :class:`Segmenter` of ``entry`` (default: the selected model) on ``device``
        (default: the selected one), cached for the last pair asked for.

        Loading a model file takes seconds: the widgets call this from their workers
        (it is thread-safe), passing the entry and device read on the Qt thread.
        Raises ``CheckpointError`` (a ``ValueError``) for a model file that cannot be
        used and ``ValueError`` for a device that does not exist.
        """
        from napari_cellfocus.engine.segment import Segmenter

        entry = self.model if entry is None else entry
        device = self.device if device is None else device
        key = (entry.key, device)
        with self._segmenter_lock:
            if self._segmenter is None or self._segmenter_key != key:
                self._segmenter = None  # free the previous model before loading
                self._segmenter = Segmenter(entry.spec, device=device)
                self._segmenter_key = key
            return self._segmenter

    # ------------------------------------------------------------------ results
    def new_generation(self) -> int:
        return next(self._generation)

    def set_result(self, result: Segmentation | None) -> None:
        self.result = result
        self.result_changed.emit()

    def set_post(self, method: str, params: dict[str, float | int], by_user: bool = True) -> None:
        """Set the post-processing; ``by_user=False`` for the model's defaults applied by a
        segmentation (they do not stop later runs from using the next model's defaults)."""
        changed = method != self.post_method or any(
            self.post_params.get(k) != v for k, v in params.items()
        )
        self.post_method = method
        self.post_params.update(params)
        self.post_user_set = self.post_user_set or (by_user and changed)
        if changed:
            self.post_changed.emit()

    def post_kwargs(self) -> dict[str, float | int]:
        """Keyword arguments of the selected method for ``core.postprocess.postprocess``."""
        spec = get_post_method(self.post_method)
        return {p.name: self.post_params.get(p.name, p.default) for p in spec.tune_params()}

    def set_count(self, count: int) -> None:
        self.count = int(count)
        self.count_changed.emit(int(count))


_STATES: dict[int, CellFocusState] = {}


def unwrap(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer itself when napari hands plugins a ``PublicOnlyProxy`` of it.

    The proxy wraps every layer anew on each access, which breaks identity checks
    (``layer is other``) and the per-viewer state; the widgets only touch the viewer
    from the Qt main thread and use public API, so they keep the real object.
    """
    return getattr(viewer, "__wrapped__", viewer)


def get_state(viewer: napari.Viewer) -> CellFocusState:
    """The state shared by the CellFocus widgets of ``viewer`` (created on first use)."""
    viewer = unwrap(viewer)
    key = id(viewer)
    state = _STATES.get(key)
    if state is None or state.viewer is not viewer:
        state = CellFocusState(viewer)
        _STATES[key] = state
        weakref.finalize(viewer, _STATES.pop, key, None)
    return state
