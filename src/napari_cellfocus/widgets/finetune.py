"""Correct-and-fine-tune dock widget: train the model in use on painted labels.

The user corrects the plugin's labels layer with napari's own paint / erase / fill
tools, or draws a few cells on a fresh annotation layer ("New annotation layer"),
and presses "Fine-tune". The image and the labels are copied first (training uses
that snapshot, so editing layers meanwhile is harmless); a worker thread runs
:meth:`napari_cellfocus.engine.train.Trainer.steps`, yielding after every step for
the progress bar, the ETA and the loss curve, and every few steps a live preview of
the probabilities and labels with the current weights. At the end the new model
becomes the one Segment uses (and can be saved); GPU memory is given back. Cancel
keeps the previous model and puts the earlier layers back.

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
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from scipy import ndimage

from napari_cellfocus.core.validation import check_labels
from napari_cellfocus.widgets._inputs import ImageSource, LayerCombo
from napari_cellfocus.widgets._layers import (
    FROM,
    FROM_IMAGE,
    LABELS_ROLE,
    labels_name,
    put_labels,
    put_probabilities,
    restore_outputs,
    role_of,
    snapshot_outputs,
    source_of,
)
from napari_cellfocus.widgets._plots import PlotCanvas
from napari_cellfocus.widgets._state import Segmentation, get_state, unwrap
from napari_cellfocus.widgets._workers import (
    EXPECTED_ERRORS,
    Cancelled,
    Failed,
    format_seconds,
    start_job,
)

if TYPE_CHECKING:
    import napari
    import torch

    from napari_cellfocus.engine.checkpoint import ModelInfo

#: Annotations are dense when this share of the image lies within ``NEAR_PX`` of them.
DENSE_COVERAGE = 0.9
#: "Near an annotation": the distance beyond which W3 stops trusting background (thesis beta).
NEAR_PX = 30
#: Crop side of the quick fine-tune (engine.train.quick_finetune_config).
MAX_CROP = 192
#: Whole stacks up to this many pixels are previewed; larger ones only on annotated planes.
PREVIEW_ALL_PIXELS = 4_000_000
#: Seconds between redraws of the loss curve (a redraw costs the UI thread ~50 ms).
PLOT_EVERY_S = 0.5
MODES = (
    ("auto", "auto (from the annotations)"),
    ("dense", "dense: every cell is drawn"),
    ("weak", "weak: only some cells are drawn"),
)


def annotation_coverage(labels: np.ndarray, near: float = NEAR_PX) -> float:
    """Share of pixels within ``near`` pixels of an annotated (label > 0) pixel.

    ``labels``: (Y, X) or a stack of planes (*lead, Y, X); distances are measured
    within each plane. 1.0 when every pixel is close to an annotation.
    """
    lab = np.asarray(labels)
    planes = lab.reshape(-1, *lab.shape[-2:])
    close = 0
    for plane in planes:
        if plane.any():
            close += int((ndimage.distance_transform_edt(plane == 0) <= near).sum())
    return close / lab.size if lab.size else 0.0


def choose_mode(labels: np.ndarray, layer: Any) -> tuple[bool, str]:
    """``(weak, reason)`` for the "auto" mode; ``layer`` is the annotation layer."""
    source = role_of(layer) or layer.metadata.get(FROM)
    if source == LABELS_ROLE:
        return False, "dense: the labels come from a segmentation (every cell is there)"
    coverage = annotation_coverage(labels)
    if coverage >= DENSE_COVERAGE:
        return False, f"dense: the annotations cover {100 * coverage:.0f}% of the image"
    return True, (
        f"weak: the annotations cover {100 * coverage:.0f}% of the image, so only the "
        "drawn cells and their surroundings teach"
    )


@dataclass
class Preview:
    """Probabilities and labels of the whole image with the weights of ``step``."""

    step: int
    probs: np.ndarray
    labels: np.ndarray
    count: int


@dataclass
class FinetuneDone:
    model: torch.nn.Module
    info: ModelInfo
    steps: int
    seconds: float
    preview: Preview | None


def _preview(trainer: Any, job: dict[str, Any], step: int) -> Preview:
    """Predict the preview planes with the trainer's current weights; back to training mode."""
    from napari_cellfocus.core.size import rescale, resize
    from napari_cellfocus.engine.predict import predict_probabilities
    from napari_cellfocus.engine.segment import postprocess_planes

    model = trainer.model
    was_training = model.training
    image, planes, probs = job["image"], job["planes"], job["template"].copy()
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
    labels, count = postprocess_planes(probs, 2, job["method"], job["params"])
    return Preview(step, probs, labels, count)


def finetune_job(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    config: Any,
    init: Any,
    device: str,
    names: list[str],
    preview: dict[str, Any],
    preview_every: int,
    cancel: threading.Event,
) -> Iterator[Any]:
    """Worker generator: yield every TrainProgress and every Preview; return the model.

    Returns :class:`FinetuneDone`, :class:`Cancelled` (the new weights are dropped) or
    :class:`Failed`. GPU memory is given back in every case.
    """
    from napari_cellfocus.engine.train import Trainer

    start = time.perf_counter()
    trainer = None
    try:
        trainer = Trainer(images, labels, config, init=init, device=device, names=names)
        # previews see the image at the scale the model trains at (from the annotations)
        preview = {**preview, "zoom": float(np.median([s.zoom for s in trainer.train_samples]))}
        yield f"training on {trainer.device}"
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
        )
    except EXPECTED_ERRORS as err:
        return Failed(str(err))
    finally:
        if trainer is not None:
            trainer.release()


class FinetuneWidget(QWidget):
    """Dock widget "Correct and fine-tune"."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)
        self.worker = None
        self._cancel: threading.Event | None = None
        self._saved: dict = {}
        self._saved_count: int | None = None
        self._run: dict[str, Any] = {}
        self._losses: list[tuple[int, float]] = []
        self._last_plot = 0.0
        #: Extra TrainConfig settings (e.g. {"batch_size": 1} in tests).
        self.config_overrides: dict[str, Any] = {}
        self.last_progress: Any = None
        self.previews = 0

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
        self.steps_spin.setValue(100)
        self.steps_spin.setToolTip("Optimisation steps (4 crops each).")
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 10_000)
        self.preview_spin.setValue(10)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setPrefix("every ")
        self.preview_spin.setSuffix(" steps")
        self.preview_spin.setToolTip(
            "Refresh the probability and label layers with the model being trained."
        )
        self.train_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximum(1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.eta_label = QLabel("")
        self.plot = PlotCanvas("training loss", "step", "loss")
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip("Write the model in use to a .pt file.")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow(self.source)
        ann_row = QHBoxLayout()
        ann_row.addWidget(self.annotations, 1)
        form.addRow("Annotations", ann_row)
        form.addRow("", self.new_button)
        form.addRow("Mode", self.mode_combo)
        form.addRow("Start from", self.start_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Live preview", self.preview_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta_label)
        layout.addWidget(self.plot)
        layout.addWidget(self.save_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._fill_start()
        self.new_button.clicked.connect(self.new_annotation_layer)
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._save_clicked)
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

    def _fill_start(self) -> None:
        self.start_combo.blockSignals(True)
        index = max(self.start_combo.currentIndex(), 0)
        self.start_combo.clear()
        self.start_combo.addItem(f"model in use ({self.state.model.name})", "current")
        self.start_combo.addItem("a new network", "new")
        self.start_combo.setCurrentIndex(index)
        self.start_combo.blockSignals(False)
        self.save_button.setEnabled(self.state.model.kind == "session")

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
        """Check the inputs and snapshot them; ValueError with a message for the user."""
        from napari_cellfocus.engine.checkpoint import default_model_path
        from napari_cellfocus.engine.train import quick_finetune_config

        source = self.source.get()
        layer = self.annotations.layer()
        if layer is None:
            raise ValueError(
                f"No annotation layer: correct the '{labels_name(source.layer.name)}' layer "
                "with napari's paint tools, or press 'New annotation layer' and draw a few "
                "cells."
            )
        labels = check_labels(
            np.array(layer.data, copy=True), name=f"'{layer.name}'", ndim=(2, 3, 4)
        )
        image = np.array(source.data, dtype=np.float32, copy=True)
        if labels.shape != image.shape:
            raise ValueError(
                f"Annotations '{layer.name}' have shape {labels.shape} but the image "
                f"'{source.layer.name}' has shape {image.shape}: they must match. Use labels "
                "drawn on this image ('New annotation layer' makes one of the right size)."
            )
        if min(image.shape[-2:]) < 16:
            raise ValueError(
                f"'{source.layer.name}' is {image.shape[-2:]} pixels: too small to train on "
                "(at least 16 x 16)."
            )
        lead = image.shape[:-2]
        annotated = [idx for idx in np.ndindex(*lead) if labels[idx].any()] if lead else []
        if not labels.any():
            raise ValueError(
                f"No cell is annotated in '{layer.name}': paint at least one cell "
                "(label > 0), then press Fine-tune."
            )
        start = self.start_combo.currentData()
        entry = self.state.model
        if start == "current":
            if entry.kind == "builtin" and not default_model_path().exists():
                raise ValueError(
                    "The built-in model is not installed: choose 'a new network' under "
                    "'Start from', or load a model file in Segment."
                )
            segmenter = self.state.segmenter()
            if segmenter.spatial_dims != 2:
                raise ValueError("Fine-tuning in the widget supports 2D models only.")
            init: Any = (segmenter.model, segmenter.info)
        else:
            init = None
        mode = self.mode_combo.currentData()
        if mode == "auto":
            drawn = np.stack([labels[i] for i in annotated]) if lead else labels
            weak, reason = choose_mode(drawn, layer)
        else:
            weak, reason = mode == "weak", f"{mode} (chosen)"
        planes = annotated if lead else [()]
        images = [image[i] for i in planes]
        targets = [labels[i] for i in planes]
        names = [f"{source.layer.name} {i}" if i else source.layer.name for i in planes]
        crop = max(16, min(MAX_CROP, *(min(im.shape) for im in images)))
        settings = {"steps": int(self.steps_spin.value()), "crop_size": crop}
        settings.update(self.config_overrides)
        config = quick_finetune_config(weak=weak, **settings)
        n_classes = self.state.segmenter().n_classes if init is not None else 3
        if config.n_classes != n_classes:
            config = quick_finetune_config(weak=weak, n_classes=n_classes, **settings)
        # Preview: the whole image when small, else the annotated planes only.
        preview_planes = list(np.ndindex(*lead)) if lead else [()]
        if image.size > PREVIEW_ALL_PIXELS:
            preview_planes = planes
        result = self.state.result
        if (
            result is not None
            and result.probs.shape[1:] == image.shape
            and (result.probs.shape[0] == config.n_classes)
        ):
            template = result.probs
        else:
            template = np.zeros((config.n_classes, *image.shape), np.float32)
            template[0] = 1.0
        preview = {
            "image": image,
            "planes": preview_planes,
            "template": template,
            "method": self.state.post_method,
            "params": self.state.post_kwargs(),
        }
        return {
            "images": images,
            "labels": targets,
            "config": config,
            "init": init,
            "names": names,
            "preview": preview,
            "weak": weak,
            "reason": reason,
            "source": source,
            "source_name": source.layer.name,
            "layer": layer,
            "start_model": entry,
        }

    def start(self) -> None:
        """Start fine-tuning (shows a notification and changes nothing on bad input)."""
        if self.worker is not None:
            return
        try:
            run = self._prepare()
        except ValueError as err:
            show_error(str(err))
            self.status.setText(str(err))
            return
        self._run = run
        self._saved = snapshot_outputs(self.viewer, run["source_name"])
        self._saved_count = self.state.count
        self._losses = []
        self.previews = 0
        self.last_progress = None
        self.plot.clear()
        config = run["config"]
        self.progress.setMaximum(config.steps)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.eta_label.setText("preparing the training data…")
        self.status.setText(f"Fine-tuning on {len(run['images'])} image(s), {run['reason']}.")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker, self._cancel = start_job(
            finetune_job,
            run["images"],
            run["labels"],
            config,
            run["init"],
            self.state.device,
            run["names"],
            run["preview"],
            int(self.preview_spin.value()),
            yielded=self._on_yield,
            returned=self._on_done,
            finished=self._on_finished,
        )

    def cancel(self) -> None:
        """Stop after the current step; the previous model stays in use."""
        if self._cancel is not None:
            self._cancel.set()
            self.status.setText("Cancelling after the current step…")

    # ------------------------------------------------------------------ progress
    def _on_yield(self, item: Any) -> None:
        if isinstance(item, str):
            self.eta_label.setText(item)
        elif isinstance(item, Preview):
            self._show_preview(item)
        else:
            self._on_step(item)

    def _on_step(self, progress: Any) -> None:
        self.last_progress = progress
        self._losses.append((progress.step, progress.loss))
        self.progress.setMaximum(progress.total)
        self.progress.setValue(progress.step)
        self.eta_label.setText(
            f"loss {progress.loss:.4f} · {format_seconds(progress.elapsed_s)} elapsed · "
            f"ETA {format_seconds(progress.eta_s)}"
        )
        now = time.perf_counter()
        if now - self._last_plot > PLOT_EVERY_S or progress.step == progress.total:
            steps, losses = zip(*self._losses, strict=True)
            self.plot.update_line(steps, losses, title="training loss")
            self._last_plot = now

    def _show_preview(self, preview: Preview) -> None:
        source = self._run["source"]
        classes = self._run_classes()
        name = self._run["source_name"]
        put_probabilities(
            self.viewer, preview.probs, classes, source.scale, source.translate, source=name
        )
        put_labels(self.viewer, preview.labels, source.scale, source.translate, source=name)
        self.state.set_count(preview.count)
        self.previews += 1

    def _run_classes(self) -> list[str]:
        from napari_cellfocus.engine.checkpoint import CLASS_NAMES

        return list(CLASS_NAMES[: self._run["config"].n_classes])

    # ------------------------------------------------------------------ end
    def _on_done(self, result: Any) -> None:
        if isinstance(result, (Cancelled, Failed)):
            restore_outputs(self.viewer, self._saved)
            if self._saved_count is not None:
                self.state.set_count(self._saved_count)
            kept = self._run["start_model"].name
            if isinstance(result, Cancelled):
                text = f"Fine-tuning cancelled {result.message}; still using {kept}."
                show_info(text)
            else:
                text = f"Fine-tuning stopped: {result.message} Still using {kept}."
                show_error(text)
            self.status.setText(text)
            return
        run = self._run
        mode = "weak" if run["weak"] else "dense"
        name = self.state.next_session_name(f"{mode}, {result.steps} steps")
        self.state.add_model(name, (result.model, result.info), "session", select=True)
        if result.preview is not None:
            self._show_preview(result.preview)
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
                )
            )
        text = (
            f"Done in {format_seconds(result.seconds)}: '{name}' is now the model in use "
            "(Segment uses it); save it with 'Save model…'."
        )
        self.status.setText(text)
        show_info(text)

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._fill_start()

    # ------------------------------------------------------------------ save
    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the model", "cellfocus_model.pt", "Models (*.pt)"
        )
        if path:
            self.save_model(path)

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
