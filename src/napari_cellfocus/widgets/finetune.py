"""Correct-and-fine-tune dock widget: train the model in use on painted labels.

The user corrects the plugin's labels layer with napari's own paint / erase / fill
tools, or draws a few cells on a fresh annotation layer ("New annotation layer"),
and presses "Fine-tune". The image and the labels are copied first (training uses
that snapshot, so editing layers meanwhile is harmless); a worker thread runs
:meth:`napari_cellfocus.engine.train.Trainer.steps`, yielding after every step for
the progress bar, the ETA and the loss curve, and every few steps a live preview of
the probabilities and labels with the current weights. At the end the new model
becomes the one Segment uses (and can be saved); GPU memory is given back. Cancel
keeps the previous model and puts the earlier layers back. Closing the viewer during a
fine-tune stops it, gives the memory back and touches no layer of the closing viewer.

Dense or weak training is chosen automatically: labels that come from a
segmentation, or that lie near every part of the image, are dense; a few drawn
cells are weak annotations (the rest of the image is unknown, thesis eq. 4.3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_cellfocus.engine.finetune import QUICK_STEPS, plan_finetune
from napari_cellfocus.engine.finetune import choose_mode as plan_choose_mode
from napari_cellfocus.widgets._device import DevicePicker
from napari_cellfocus.widgets._inputs import ImageSource, LayerCombo
from napari_cellfocus.widgets._job import Job, JobPanel, WorkerOf
from napari_cellfocus.widgets._layers import (
    FROM,
    FROM_IMAGE,
    LABELS_ROLE,
    LayerQueue,
    labels_name,
    put_labels,
    put_probabilities,
    restore_outputs,
    role_of,
    snapshot_outputs,
    source_of,
)
from napari_cellfocus.widgets._plots import PlotCanvas
from napari_cellfocus.widgets._stack import stack_options
from napari_cellfocus.widgets._state import Segmentation, get_state, unwrap
from napari_cellfocus.widgets._workers import Cancelled, Failed, format_seconds

if TYPE_CHECKING:
    import napari
    import torch

    from napari_cellfocus.engine.checkpoint import ModelInfo

#: Whole stacks up to this many pixels are previewed; larger ones only on annotated planes.
PREVIEW_ALL_PIXELS = 4_000_000
#: Seconds between updates of the (blitted) loss curve.
PLOT_EVERY_S = 0.5
MODES = (
    ("auto", "auto (from the annotations)"),
    ("dense", "dense: every cell is drawn"),
    ("weak", "weak: only some cells are drawn"),
)


def choose_mode(labels: np.ndarray, layer: Any) -> tuple[bool, str]:
    """``(weak, reason)`` for the "auto" mode; ``layer`` is the annotation layer (labels
    that a segmentation made are dense): :func:`engine.finetune.choose_mode`."""
    source = role_of(layer) or layer.metadata.get(FROM)
    return plan_choose_mode(labels, from_segmentation=source == LABELS_ROLE)


@dataclass
class Preview:
    """Probabilities and labels of the whole image with the weights of ``step``."""

    step: int
    probs: np.ndarray
    labels: np.ndarray
    count: int


@dataclass
class Started:
    """Yielded by :func:`finetune_job` once the model is loaded and training begins."""

    config: Any
    device_name: str
    before: dict | None  # scores of the starting model on the annotations (None: new network)
    #: The model's class names (its ModelInfo.classes): one probability layer each.
    classes: list[str] | None = None


@dataclass
class FinetuneDone:
    model: torch.nn.Module
    info: ModelInfo
    steps: int
    seconds: float
    preview: Preview | None
    before: dict | None = None
    after: dict | None = None


def _predict_planes(trainer: Any, job: dict[str, Any], planes: list) -> np.ndarray:
    """Probabilities of ``planes`` of the job's image with the trainer's current weights,
    at the training zoom; the other planes keep the job's template."""
    from napari_cellfocus.core.size import rescale, resize
    from napari_cellfocus.engine.predict import predict_probabilities

    model = trainer.model
    was_training = model.training
    image, probs = job["image"], job["template"].copy()
    zoom = float(job.get("zoom", 1.0))  # the training images' zoom to the model's scale
    try:
        for idx in planes:
            plane = image[idx]
            work = plane if zoom == 1.0 else rescale(plane, zoom, order=1)
            plane_probs = predict_probabilities(
                model, work, normalizer=trainer.normalizer, device=trainer.device
            )
            if zoom != 1.0:
                plane_probs = resize(plane_probs, plane.shape, order=1)
            probs[(slice(None), *idx)] = plane_probs
    finally:
        if was_training:
            trainer.train_mode()  # keeps batch-norm statistics frozen when configured
    return probs


def _preview(trainer: Any, job: dict[str, Any], step: int) -> Preview:
    """Predict the preview planes with the trainer's current weights; back to training mode."""
    from napari_cellfocus.engine.segment import postprocess_planes

    probs = _predict_planes(trainer, job, job["planes"])
    labels, count = postprocess_planes(probs, 2, job["method"], job["params"], **job["stack"])
    return Preview(step, probs, labels, count)


def format_scores(scores: dict) -> str:
    """``"PQ 0.812 · F1 0.900 (9 of 10 cells matched, 1 false)"`` for the status lines."""
    return (
        f"PQ {scores['pq']:.3f} · F1 {scores['f1']:.3f} ({scores['tp']} of "
        f"{scores['n_true']} cells matched, {scores['n_pred'] - scores['tp']} false)"
    )


def annotation_scores(job: dict[str, Any], labels: np.ndarray) -> dict:
    """Pooled scores of ``labels`` on the annotated planes of the job
    (:func:`napari_cellfocus.core.metrics.score_on_annotations`)."""
    from napari_cellfocus.core.metrics import pool_scores, score_on_annotations

    return pool_scores(
        [
            score_on_annotations(job["annotations"][idx], labels[idx], job["weak"])
            for idx in job["annotated"]
        ]
    )


def _starting_scores(trainer: Any, job: dict[str, Any]) -> dict:
    """Scores of the model before any step (the model in use) on the annotations."""
    from napari_cellfocus.engine.segment import postprocess_planes

    probs = _predict_planes(trainer, job, job["annotated"])
    labels, _ = postprocess_planes(probs, 2, job["method"], job["params"], **job["stack"])
    return annotation_scores(job, labels)


def finetune_job(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    plan: dict[str, Any],
    names: list[str],
    preview: dict[str, Any],
    preview_every: int,
    cancel: threading.Event,
) -> Iterator[Any]:
    """Worker generator: load the starting model, yield :class:`Started`, every
    TrainProgress and every Preview; return the model.

    ``plan``: ``load`` (a function giving the Segmenter of the starting model, or None
    for a new network), ``weak``, ``settings`` (TrainConfig overrides) and ``device``.
    Returns :class:`FinetuneDone` (with the scores on the annotations before and after),
    :class:`Cancelled` (the new weights are dropped) or :class:`Failed` (also for an
    expected error it raises, by ``start_job``). GPU memory is given back in every case.
    """
    from napari_cellfocus.engine.checkpoint import default_model_path
    from napari_cellfocus.engine.train import Trainer, quick_finetune_config

    start = time.perf_counter()
    trainer = None
    try:
        init: Any = None
        n_classes = 3
        if plan["load"] is not None:
            if plan.get("builtin") and not default_model_path().exists():
                return Failed(
                    "The built-in model is not installed: choose 'a new network' under "
                    "'Start from', or load a model file in Segment."
                )
            segmenter = plan["load"]()
            if segmenter.spatial_dims != 2:
                return Failed("Fine-tuning in the widget supports 2D models only.")
            init, n_classes = (segmenter.model, segmenter.info), segmenter.n_classes
        settings = {**plan["settings"], "n_classes": n_classes}
        if init is None:  # a new network: a frozen random encoder would learn nothing
            settings["train_layers"] = "all"
        config = quick_finetune_config(weak=plan["weak"], **settings)
        template = preview.get("template")
        shape = (n_classes, *preview["image"].shape)
        if template is None or template.shape != shape:
            template = np.zeros(shape, np.float32)
            template[0] = 1.0
        trainer = Trainer(images, labels, config, init=init, device=plan["device"], names=names)
        # previews see the image at the scale the model trains at (from the annotations)
        zoom = float(np.median([s.zoom for s in trainer.train_samples]))
        preview = {**preview, "zoom": zoom, "template": template}
        before = _starting_scores(trainer, preview) if init is not None else None
        from napari_cellfocus.engine.device import describe_device

        classes = list(trainer.info.classes)
        yield Started(config, describe_device(trainer.device), before, classes)
        if cancel.is_set():
            return Cancelled("before the first step")
        steps = trainer.steps()
        try:
            for progress in steps:
                yield progress
                if cancel.is_set():
                    return Cancelled(f"at step {progress.step} of {progress.total}")
                if preview_every and progress.step % preview_every == 0:
                    if progress.step < progress.total:
                        yield _preview(trainer, preview, progress.step)
                        if cancel.is_set():
                            return Cancelled(f"at step {progress.step} of {progress.total}")
        finally:
            steps.close()  # restores the last good weights
        final = _preview(trainer, preview, trainer.step)
        return FinetuneDone(
            trainer.model,
            trainer.current_info(),
            trainer.step,
            time.perf_counter() - start,
            final,
            before,
            annotation_scores(preview, final.labels),
        )
    finally:
        if trainer is not None:
            trainer.release()


def closable(job: Any) -> tuple[Any, Any]:
    """``(wrapped, close)``: ``wrapped`` runs the generator function ``job``; ``close()``
    closes the job's generator if it was left suspended (a worker that was quit stops
    between yields and never resumes it), so its ``finally`` clean-up runs; a no-op once
    the job has ended."""
    started: list[Any] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        gen = job(*args, **kwargs)
        started.append(gen)
        return (yield from gen)

    def close() -> None:
        for gen in started:
            if gen.gi_frame is not None and not gen.gi_running:
                gen.close()

    return wrapped, close


class FinetuneWidget(QWidget):
    """Dock widget "Correct and fine-tune"."""

    worker = WorkerOf("panel")  # the running fine-tune, None when idle
    export_worker = WorkerOf("export_job")  # the running export, None when idle

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)
        self._saved: dict = {}
        self._saved_count: int | None = None
        self._run: dict[str, Any] = {}
        self._losses: list[tuple[int, float]] = []
        self._last_plot = 0.0
        #: Extra TrainConfig settings (e.g. {"batch_size": 1} in tests).
        self.config_overrides: dict[str, Any] = {}
        self.last_progress: Any = None
        self.previews = 0
        #: Scores of the last fine-tune on its annotations: {"before": .., "after": ..}.
        self.last_scores: dict[str, Any] | None = None
        self._previous: dict[str, Any] | None = None
        self._queue = LayerQueue()
        #: The viewer's window is closing: the job is cancelled and no layer is touched.
        self.closing = False
        self._watched: QObject | None = None
        self._saved_result: Segmentation | None = None

        self.source = ImageSource(napari_viewer, prefer=self._prefer_image)
        self.annotations = LayerCombo(
            napari_viewer, Labels, none_text="— none —", prefer=self._prefer_annotations
        )
        self.annotations.setToolTip(
            "Labels to learn from: the plugin's labels after your corrections, "
            "or a layer where you drew a few cells."
        )
        self.new_button = QPushButton("New annotation layer")
        self.new_button.setToolTip(
            "Add an empty labels layer the size of the image, ready to paint a few cells "
            "(one label number per cell)."
        )
        self.mode_combo = QComboBox()
        for key, text in MODES:
            self.mode_combo.addItem(text, key)
        self.mode_combo.setToolTip(
            "dense: unpainted pixels are background. weak: unpainted pixels far from "
            "your cells are ignored. auto decides from the annotations."
        )
        self.start_combo = QComboBox()
        self.start_combo.setToolTip("Fine-tune the model in use, or train a new network.")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(QUICK_STEPS)
        self.steps_spin.setToolTip("Optimisation steps (4 crops each).")
        self.layers_combo = QComboBox()
        for text, key in (("decoder only (fast)", "decoder"), ("all layers", "all")):
            self.layers_combo.addItem(text, key)
        self.layers_combo.setToolTip(
            "decoder only: the model's encoder keeps what it learnt from many images and a "
            "step costs about a third less. all layers: for many annotated cells or a new "
            "kind of image. A new network always trains all layers."
        )
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 10_000)
        self.preview_spin.setValue(10)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setPrefix("every ")
        self.preview_spin.setSuffix(" steps")
        self.preview_spin.setToolTip(
            "Refresh the probability and label layers with the model being trained."
        )
        self.device_picker = DevicePicker(
            self.state.device, "Where the training runs: auto = CUDA GPU, then MPS, then CPU."
        )
        self.panel = JobPanel(
            "Fine-tune",
            eta=True,
            cancelling="Cancelling after the current step…",
            device=self.device_picker,
        )
        self.train_button = self.panel.run_button
        self.cancel_button = self.panel.cancel_button
        self.progress = self.panel.progress
        self.eta_label = self.panel.eta
        self.status = self.panel.status
        #: The BioImage.IO export (no buttons of its own).
        self.export_job = Job(self.status)
        self.plot = PlotCanvas("training loss", "step", "loss")
        self.keep_button = QPushButton("Keep previous model")
        self.keep_button.setEnabled(False)
        self.keep_button.setToolTip(
            "Go back to the model and the layers from before the last fine-tune (the "
            "fine-tuned model stays in Segment's list)."
        )
        self.scores_label = QLabel("")
        self.scores_label.setWordWrap(True)
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("Write the model in use to a .pt file.")
        self.export_button = QPushButton("Export to BioImage.IO…")
        self.export_button.setToolTip(
            "Write the model in use as a BioImage Model Zoo package (.zip) for "
            "deepImageJ, ilastik or bioimageio.core (needs napari-cellfocus[bioimageio])."
        )
        for widget in (
            self.plot,
            self.scores_label,
            self.keep_button,
            self.save_button,
            self.export_button,
        ):
            self.panel.add_widget(widget)

        form = QFormLayout()
        form.addRow(self.source)
        ann_row = QHBoxLayout()
        ann_row.addWidget(self.annotations, 1)
        form.addRow("Annotations", ann_row)
        form.addRow("", self.new_button)
        form.addRow("Mode", self.mode_combo)
        form.addRow("Start from", self.start_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Train", self.layers_combo)
        form.addRow("Live preview", self.preview_spin)
        form.addRow("Device", self.device_picker)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.panel)
        layout.addStretch(1)

        self._fill_start()
        self.new_button.clicked.connect(self.new_annotation_layer)
        self.train_button.clicked.connect(self.start)
        self.save_button.clicked.connect(self._save_clicked)
        self.export_button.clicked.connect(self._export_clicked)
        self.keep_button.clicked.connect(self.keep_previous)
        self.state.models_changed.connect(self._fill_start)
        self.state.result_changed.connect(self._follow_result)

    # ------------------------------------------------------------------ choices
    def _prefer_image(self, layers: list) -> Any:
        result = self.state.result
        if result is not None:
            for layer in layers:
                if layer.name == result.layer_name:
                    return layer
        return None

    def _prefer_annotations(self, layers: list) -> Any:
        """Drawn annotations first, then the plugin's labels (or an edited copy), those
        of the image segmented last before those of other images; topmost first."""
        result = self.state.result
        image = result.layer_name if result is not None else None

        def drawn(layer: Any) -> bool:
            return layer.metadata.get(FROM) == "annotations"

        def segmented(layer: Any) -> bool:
            return layer.metadata.get(FROM) == LABELS_ROLE or role_of(layer) == LABELS_ROLE

        def mine(layer: Any) -> bool:
            return source_of(layer) in (image, None)

        for wanted, only_mine in (
            (drawn, True),
            (segmented, True),
            (drawn, False),
            (segmented, False),
        ):
            for layer in reversed(layers):
                if wanted(layer) and (mine(layer) or not only_mine):
                    return layer
        return None

    def _follow_result(self) -> None:
        """A new segmentation: train on its image and on its labels (unless the chosen
        annotations are a user's layer that belongs to no other image)."""
        result = self.state.result
        if result is None or self.worker is not None:
            return
        if result.layer_name in self.viewer.layers:
            self.source.set_source(self.viewer.layers[result.layer_name], result.channel)
        current = self.annotations.layer()
        if current is None or source_of(current) not in (None, result.layer_name):
            labels = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
            self.annotations.set_layer(self._prefer_annotations(labels))

    @property
    def device(self) -> str:
        """The device the training runs on (the Device box)."""
        return self.device_picker.device

    def _fill_start(self) -> None:
        self.start_combo.blockSignals(True)
        index = max(self.start_combo.currentIndex(), 0)
        self.start_combo.clear()
        self.start_combo.addItem(f"model in use ({self.state.model.name})", "current")
        self.start_combo.addItem("a new network", "new")
        self.start_combo.setCurrentIndex(index)
        self.start_combo.blockSignals(False)
        self.save_button.setEnabled(self.state.model.kind == "session")
        self.export_button.setEnabled(
            self.state.model.kind == "session" and self.export_worker is None
        )

    def new_annotation_layer(self) -> Labels | None:
        """Add an empty labels layer shaped like the chosen image, in paint mode."""
        try:
            source = self.source.get()
        except ValueError as err:
            show_error(str(err))
            return None
        layer = self.viewer.add_labels(
            np.zeros(source.data.shape, np.int32),
            name="annotations",
            scale=source.scale,
            translate=source.translate,
            metadata={FROM: "annotations", FROM_IMAGE: source.layer.name},
        )
        self.annotations.set_layer(layer)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        layer.selected_label = 1
        layer.brush_size = 8
        self.status.setText(
            "Paint a few whole cells, one label number per cell (press M for a new number), "
            "then press Fine-tune."
        )
        return layer

    # ------------------------------------------------------------------ start
    def _prepare(self) -> dict[str, Any]:
        """Check the inputs and snapshot them; ValueError with a message for the user.

        Only numpy work happens here, on the Qt thread: the starting model is loaded,
        and the training configured, in the worker (:func:`finetune_job`)."""
        source = self.source.get()
        layer = self.annotations.layer()
        if layer is None:
            raise ValueError(
                f"No annotation layer: correct the '{labels_name(source.layer.name)}' layer "
                "with napari's paint tools, or press 'New annotation layer' and draw a few "
                "cells."
            )
        # snapshots: the user may go on painting while the model trains
        source_role = role_of(layer) or layer.metadata.get(FROM)
        fine = plan_finetune(
            np.array(source.data, dtype=np.float32, copy=True),
            np.array(layer.data, copy=True),
            image_name=source.layer.name,
            labels_name=layer.name,
            mode=self.mode_combo.currentData(),
            from_segmentation=source_role == LABELS_ROLE,
            steps=int(self.steps_spin.value()),
            overrides={"train_layers": self.layers_combo.currentData(), **self.config_overrides},
        )
        image, labels, weak, planes = fine.image, fine.annotations, fine.weak, fine.planes
        lead = image.shape[:-2]
        start = self.start_combo.currentData()
        entry, device = self.state.model, self.device
        load = None
        if start == "current":

            def load() -> Any:
                return self.state.segmenter(entry, device)

        settings = fine.settings
        # Preview: the whole image when small, else the annotated planes only.
        preview_planes = list(np.ndindex(*lead)) if lead else [()]
        if image.size > PREVIEW_ALL_PIXELS:
            preview_planes = planes
        result = self.state.result
        template = None
        if result is not None and result.probs.shape[1:] == image.shape:
            template = result.probs  # the worker checks the number of classes
        preview = {
            "image": image,
            "planes": preview_planes,
            "template": template,
            "method": self.state.post_method,
            "params": self.state.post_kwargs(),
            # a stack's planes become cells as in its segmentation (joined across z...)
            "stack": stack_options(result.stack, image) if template is not None else {},
            "annotations": labels,
            "annotated": planes,
            "weak": weak,
        }
        plan = {
            "load": load,
            "builtin": entry.kind == "builtin",
            "weak": weak,
            "settings": settings,
            "device": device,
        }
        return {
            "images": fine.images,
            "labels": fine.labels,
            "plan": plan,
            "names": fine.names,
            "preview": preview,
            "weak": weak,
            "reason": fine.reason,
            "source": source,
            "source_name": source.layer.name,
            "layer": layer,
            "start_model": entry,
            "steps": int(settings["steps"]),
            "stack_mode": result.stack if template is not None else None,
        }

    def start(self) -> None:
        """Start fine-tuning (shows a notification and changes nothing on bad input)."""
        if self.panel.running:
            return
        try:
            run = self._prepare()
        except ValueError as err:
            self.panel.report(str(err))
            return
        self._watch_window()
        self._run = run
        self._saved = snapshot_outputs(self.viewer, run["source_name"])
        self._saved_count = self.state.count
        self._saved_result = self.state.result
        self._losses = []
        self.previews = 0
        self.last_progress = None
        self.last_scores = None
        self.keep_button.setEnabled(False)
        self.plot.clear()
        self.eta_label.setText(f"loading '{run['start_model'].name}'…")
        kept = run["start_model"].name
        job, close_job = closable(finetune_job)
        self.panel.start(
            job,
            run["images"],
            run["labels"],
            run["plan"],
            run["names"],
            run["preview"],
            int(self.preview_spin.value()),
            status=f"Fine-tuning on {len(run['images'])} image(s), {run['reason']}.",
            total=run["steps"],
            progress_format="step %v / %m",
            yielded=self._on_yield,
            done=self._on_done,
            stopped=self._on_stopped,
            finished=self._on_finished,
            cancelled=f"Fine-tuning cancelled {{}}; still using {kept}.",
            failed=f"Fine-tuning stopped: {{}} Still using {kept}.",
        )
        # napari quits the workers of a closing window (its task list): the worker then
        # drops the job without closing it, so its clean-up (Trainer.release) would not
        # run. Not a widget method: the widget may be deleted by then.
        self.panel.worker.finished.connect(close_job)

    def cancel(self) -> None:
        """Stop after the current step; the previous model stays in use."""
        self.panel.cancel()

    # ------------------------------------------------------------------ viewer closing
    def _watch_window(self) -> None:
        """While a job runs, watch the viewer's window (the root of the widget's parents
        once docked, also when the dock floats) for its close, so a running fine-tune
        stops and its GPU memory is given back."""
        top: QWidget = self
        while top.parentWidget() is not None:
            top = top.parentWidget()
        if top is self or top is self._watched:
            return
        self._unwatch_window()
        top.installEventFilter(self)
        self._watched = top

    def _unwatch_window(self) -> None:
        if self._watched is not None:
            self._watched.removeEventFilter(self)
            self._watched = None

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self._watched and event.type() == QEvent.Type.Close:
            if event.spontaneous():  # the user's click: napari may still ask and keep it open
                QTimer.singleShot(0, self._close_if_hidden)
            else:  # viewer.close(): napari always closes
                self.viewer_closed()
        return False

    def _close_if_hidden(self) -> None:
        if self._watched is not None and not self._watched.isVisible():
            self.viewer_closed()

    def viewer_closed(self) -> None:
        """The viewer is closing: stop the fine-tune after the current step and leave the
        layers alone (a layer added to a closing viewer raises KeyError inside napari).
        The job then returns and releases the trainer in its worker thread, or, when
        napari quits the worker first, is closed when the worker finishes (``closable``)."""
        self.closing = True
        self._queue.clear()
        self._unwatch_window()
        self.panel.detach()  # its result, if it comes, touches no layer

    # ------------------------------------------------------------------ progress
    def _on_yield(self, item: Any) -> None:
        if self.closing:
            return
        if isinstance(item, Started):
            self._run["config"] = item.config
            self._run["classes"] = item.classes
            self.progress.setMaximum(item.config.steps)
            self.eta_label.setText(f"training on {item.device_name}…")
            if item.before is not None:
                self.scores_label.setText(
                    f"'{self._run['start_model'].name}' on your annotated cells: "
                    f"{format_scores(item.before)}"
                )
        elif isinstance(item, Preview):
            self._show_preview(item)
        else:
            self._on_step(item)

    def _on_step(self, progress: Any) -> None:
        self.last_progress = progress
        self._losses.append((progress.step, progress.loss))
        self.panel.show_progress(
            progress.step,
            progress.total,
            f"loss {progress.loss:.4f}",
            elapsed_s=progress.elapsed_s,
            eta_s=progress.eta_s,
        )
        now = time.perf_counter()
        if now - self._last_plot > PLOT_EVERY_S or progress.step == progress.total:
            steps, losses = zip(*self._losses, strict=True)
            self.plot.update_line(steps, losses, title="training loss", xmax=progress.total)
            self._last_plot = now

    def _show_preview(self, preview: Preview, queued: bool = True) -> None:
        """Show a preview in the image's output layers; ``queued``: new layers are added
        one per event-loop turn (the final result is shown at once)."""
        source = self._run["source"]
        classes = self._run_classes()
        name = self._run["source_name"]
        put_probabilities(
            self.viewer,
            preview.probs,
            classes,
            source.scale,
            source.translate,
            source=name,
            queue=self._queue if queued else None,
        )
        args = (self.viewer, preview.labels, source.scale, source.translate)
        if len(self._queue):  # new layers are being added one by one: the labels last
            self._queue.put(lambda: put_labels(*args, source=name))
        else:
            put_labels(*args, source=name)
        self.state.set_count(preview.count)
        self.previews += 1

    def _run_classes(self) -> list[str]:
        """Class names of the model being trained (2, 3 or 4: one probability layer each)."""
        if self._run.get("classes"):
            return list(self._run["classes"])
        from napari_cellfocus.engine.checkpoint import CLASS_NAMES

        return list(CLASS_NAMES[: self._run["config"].n_classes])

    # ------------------------------------------------------------------ end
    def _on_stopped(self, outcome: Cancelled | Failed) -> None:
        """Cancelled or failed: the layers and the count from before the fine-tune."""
        self._queue.clear()  # preview layers not added yet: not at all
        restore_outputs(self.viewer, self._saved)
        if self._saved_count is not None:
            self.state.set_count(self._saved_count)

    def _on_done(self, result: FinetuneDone) -> None:
        self._queue.clear()  # preview layers not added yet: the final ones come below
        if self.closing:
            return
        run = self._run
        mode = "weak" if run["weak"] else "dense"
        name = self.state.next_session_name(f"{mode}, {result.steps} steps")
        self._previous = {
            "model": run["start_model"],
            "saved": self._saved,
            "count": self._saved_count,
            "result": self._saved_result,
        }
        self.state.add_model(name, (result.model, result.info), "session", select=True)
        if result.preview is not None:
            self._show_preview(result.preview, queued=False)
            source = run["source"]
            self.state.set_count(result.preview.count)
            self.state.set_result(
                Segmentation(
                    probs=result.preview.probs,
                    image=run["preview"]["image"],
                    layer_name=run["source_name"],
                    channel=source.channel,
                    spatial_dims=2,
                    scale=source.scale,
                    translate=source.translate,
                    model_name=name,
                    generation=self.state.new_generation(),
                    stack=run["stack_mode"],
                )
            )
        self.last_scores = {"before": result.before, "after": result.after}
        text = (
            f"Done in {format_seconds(result.seconds)}: '{name}' is now the model in use "
            "(Segment uses it); save it with 'Save model…'."
        )
        self.keep_button.setEnabled(True)
        self.scores_label.setText(self._scores_text(result, name))
        if result.before is not None and result.after["pq"] < result.before["pq"]:
            warning = (
                f"'{name}' is worse than '{run['start_model'].name}' on your annotated cells "
                f"(PQ {result.before['pq']:.3f} -> {result.after['pq']:.3f}): press 'Keep "
                "previous model' to go back to it, or annotate more cells and fine-tune again."
            )
            self.status.setText(f"{text} {warning}")
            show_warning(warning)
            return
        self.status.setText(text)
        show_info(text)

    def _scores_text(self, result: FinetuneDone, name: str) -> str:
        after = f"'{name}': {format_scores(result.after)}"
        if result.before is None:
            return f"On your annotated cells, {after}."
        return (
            f"On your annotated cells, before '{self._run['start_model'].name}': "
            f"{format_scores(result.before)}; after {after}."
        )

    def keep_previous(self) -> None:
        """Back to the model in use, the output layers and the result from before the
        last fine-tune; the fine-tuned model stays in Segment's list."""
        previous = self._previous
        if previous is None or self.worker is not None:
            return
        entry = previous["model"]
        if entry in self.state.models:
            self.state.select_model(self.state.models.index(entry))
        restore_outputs(self.viewer, previous["saved"])
        if previous["count"] is not None:
            self.state.set_count(previous["count"])
        self.state.set_result(previous["result"])
        self._previous = None
        self.keep_button.setEnabled(False)
        text = f"Back to '{entry.name}' and the layers from before the fine-tune."
        self.status.setText(text)
        show_info(text)

    def _on_finished(self) -> None:
        self._unwatch_window()  # watched only while a job runs
        self._fill_start()

    # ------------------------------------------------------------------ save
    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the model", "cellfocus_model.pt", "Models (*.pt)"
        )
        if path:
            self.save_model(path)

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export to BioImage.IO", "cellfocus_model.zip", "BioImage.IO packages (*.zip)"
        )
        if path:
            self.export_bioimageio(path)

    def export_bioimageio(self, path: str | Path) -> None:
        """Write the model in use (one trained in this session) as a BioImage.IO package,
        in a worker (tracing and the test tensors take seconds); the status line says
        when it is written or why not."""
        from napari_cellfocus.engine import model_zoo

        entry = self.state.model
        if entry.kind != "session" or self.export_job.running:
            return
        path = Path(path)

        def job(cancel: threading.Event) -> Path | Failed:
            try:  # ValueError, OSError: start_job's expected errors
                return model_zoo.export_package(entry.spec, path, overwrite=True)
            except model_zoo.MissingExtraError as err:
                return Failed(str(err))

        def done(written: Path) -> None:
            self.status.setText(f"Model exported to {written} (BioImage.IO package).")

        self.export_button.setEnabled(False)
        self.status.setText(f"Exporting to {path}…")
        self.export_job.start(
            job, done=done, finished=self._fill_start, failed="Export failed: {}"
        )

    def save_model(self, path: str | Path) -> Path | None:
        """Write the model in use (one trained in this session) to ``path``."""
        from napari_cellfocus.engine.checkpoint import save_checkpoint

        entry = self.state.model
        if entry.kind != "session":
            show_info(f"'{entry.name}' is already a file; nothing to save.")
            return None
        model, info = entry.spec
        try:
            out = save_checkpoint(path, model, info)
        except OSError as err:
            show_error(f"Could not save the model to {path}: {err}")
            return None
        self.status.setText(f"Model saved to {out}.")
        return out
