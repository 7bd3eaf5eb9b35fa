"""Take the user guide's screenshots from a running napari (docs/images/widget_*.png).

Run it under a virtual display::

    xvfb-run -a .venv/bin/python scripts/make_screenshots.py

It does what a user does: opens the simulated sample (File > Open Sample > CellFocus),
docks each widget through the plugin manifest, segments with the built-in model,
tunes the thresholds (and optimises them against the ground truth), paints a
correction on the labels, fine-tunes a few steps with live preview, measures against
the ground truth, and triggers one bad-input message. Every picture is
``viewer.screenshot(canvas_only=False)``: the whole napari window.

If the built-in model file is missing, a small model is first trained on simulated
images (about a minute on a CPU) and loaded through Segment's model choice instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-cellfocus"


def wait(condition, timeout: float = 900.0) -> None:
    """Run the Qt event loop until ``condition()`` is true."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while not condition():
        QApplication.processEvents()
        time.sleep(0.01)
        if time.perf_counter() > end:
            raise TimeoutError("gave up waiting")


def settle(seconds: float = 0.5) -> None:
    """Let napari redraw."""
    wait_until = time.perf_counter() + seconds
    wait(lambda: time.perf_counter() > wait_until)


def quick_model(path: Path) -> Path:
    """Train a small model on simulated scenes when the built-in one is missing."""
    from napari_cellfocus.core.simulate import simulate_cells
    from napari_cellfocus.engine.train import TrainConfig, Trainer

    scenes = [simulate_cells(shape=(256, 256), seed=s) for s in range(4)]
    config = TrainConfig(steps=300, batch_size=4, crop_size=128, lr=2e-3)
    network = {
        "architecture": "unet",
        "in_channels": 1,
        "out_channels": 3,
        "depth": 3,
        "width": 16,
    }
    trainer = Trainer(
        [s.image for s in scenes], [s.labels for s in scenes], config, network=network, out=path
    )
    trainer.run()
    return path


def worst_cell(gt: np.ndarray, pred: np.ndarray) -> int:
    """A ground-truth cell away from the border that the prediction got least right."""
    from napari_cellfocus.core.metrics import match_instances

    m = match_instances(gt, pred, iou_threshold=0.0)
    iou = dict(zip(m.matched_true.tolist(), m.matched_iou.tolist(), strict=True))
    best, score = int(m.true_ids[0]), 2.0
    for cell in m.true_ids.tolist():
        ys, xs = np.nonzero(gt == cell)
        if ys.min() < 20 or xs.min() < 20 or ys.max() > gt.shape[0] - 20:
            continue
        if xs.max() > gt.shape[1] - 20:
            continue
        if iou.get(cell, 0.0) < score:
            best, score = cell, iou.get(cell, 0.0)
    return best


def shoot_real(viewer, folder: Path, out: Path) -> None:
    """Segment a 360 x 360 validation image of the built-in model (never trained on)."""
    import ast

    import tifffile

    from napari_cellfocus.engine.checkpoint import default_model_path, load_checkpoint

    _, info = load_checkpoint(default_model_path())
    names = ast.literal_eval(
        str(info.training.get("default_model", {}).get("validation_files", "[]"))
    )
    for name in names:
        path = folder / "images" / f"{name}.tif"
        if path.exists() and tifffile.imread(path).shape == (360, 360):
            break
    else:
        print(f"no 360 x 360 validation image in {folder}: widget_segment_real.png skipped")
        return
    viewer.add_image(tifffile.imread(path), name="dsb 360px", colormap="gray")
    _, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    seg.source.layers.set_layer(viewer.layers["dsb 360px"])
    seg.run()
    wait(lambda: seg.worker is None)
    viewer.reset_view()
    settle(0.6)
    target = out / "widget_segment_real.png"
    viewer.screenshot(str(target), canvas_only=False, flash=False)
    print("wrote", target, f"({path.name}: {seg.status.text()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps")
    parser.add_argument(
        "--real",
        type=Path,
        default=None,
        help="a folder of real images (images/NAME.tif, e.g. ../shared/data/dsb2018-train): "
        "also take widget_segment_real.png on a 360 x 360 image the built-in model did not "
        "train on",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # A throw-away settings file: the user's napari settings are neither read nor changed.
    # Only error notifications pop up (the docks show every other message themselves).
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")
    import napari
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"

    from napari_cellfocus.engine.checkpoint import default_model_path
    from napari_cellfocus.widgets._layers import labels_name, probability_name

    viewer = napari.Viewer(show=True, title="napari-cellfocus")
    viewer.window.resize(1500, 980)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    viewer.open_sample(PLUGIN, "cells")
    image_name, gt_name = "cells (simulated)", "cells ground truth"
    labels_out = labels_name(image_name)  # the output layers are named after the image
    background = probability_name(image_name, "background")
    docks = {}

    def show(name: str):
        """Dock ``name`` (through the manifest) and hide the other CellFocus docks."""
        if name not in docks:
            docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        for other, (dock, _) in docks.items():
            dock.setVisible(other == name)
        settle(0.3)
        return docks[name][1]

    def shot(name: str) -> None:
        settle(0.6)
        path = args.out / f"widget_{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        print("wrote", path.relative_to(REPO) if path.is_relative_to(REPO) else path)

    # 1. Segment -------------------------------------------------------------------
    seg = show("Segment")
    if not default_model_path().exists():
        print("built-in model missing: training a quick one", file=sys.stderr)
        seg.load_model_file(quick_model(REPO / "out" / "screenshot_model.pt"))
    model_used = seg.state.model.name
    seg.tile_spin.setValue(256)  # several tiles, so the progress bar means something
    seg.run()
    wait(lambda: seg.worker is None)
    viewer.layers[labels_out].opacity = 0.5
    shot("segment")

    # 2. Tune ----------------------------------------------------------------------
    tune = show("Tune")
    tune.optimise()
    wait(lambda: tune.search_worker is None)
    wait(lambda: tune.worker is None and not tune.timer.isActive())
    settle(0.5)
    shot("tune")

    # 3. Correct: repaint the worst cell with napari's brush --------------------------
    ft = show("Correct and fine-tune")
    labels_layer = viewer.layers[labels_out]
    gt = np.asarray(viewer.layers[gt_name].data)
    pred = np.asarray(labels_layer.data)
    target = worst_cell(gt, pred)
    ys, xs = np.nonzero(gt == target)
    cy, cx = float(ys.mean()), float(xs.mean())
    new_label = int(pred.max()) + 1
    for layer in viewer.layers:
        if layer.name.endswith("probability"):
            layer.visible = False
    viewer.layers.selection.active = labels_layer
    labels_layer.opacity = 0.6
    labels_layer.mode = "paint"
    labels_layer.selected_label = new_label
    labels_layer.brush_size = 3
    for y, x in zip(ys[::2], xs[::2], strict=True):  # brush dabs over the true cell
        labels_layer.paint((int(y), int(x)), new_label, refresh=False)
    labels_layer.refresh()
    camera.center = (0.0, cy, cx)
    camera.zoom = 6.0
    ft.annotations.set_layer(labels_layer)
    ft.steps_spin.setValue(args.steps)
    ft.preview_spin.setValue(5)
    shot("correct")

    # 4. Fine-tune (screenshot while it runs, and at the end) -------------------------
    labels_layer.mode = "pan_zoom"
    for layer in viewer.layers:
        if layer.name.endswith("probability") and layer.name != background:
            layer.visible = True
    viewer.reset_view()
    ft.start()
    wait(
        lambda: (
            ft.worker is None or (ft.last_progress and ft.last_progress.step >= args.steps // 2)
        )
    )
    shot("finetune_running")
    wait(lambda: ft.worker is None)
    labels_layer = viewer.layers[labels_out]
    labels_layer.opacity = 0.5
    viewer.layers[f"{labels_out} (edited)"].visible = False
    shot("finetune")

    # 5. Measure -------------------------------------------------------------------
    measure = show("Measure")
    measure.intensity.set_source(viewer.layers[image_name])
    measure.gt.set_layer(viewer.layers[gt_name])
    measure.boxes_check.setChecked(True)
    measure.measure()
    wait(lambda: measure.worker is None)
    for layer in viewer.layers:
        if layer.name.endswith("probability") or layer.name.endswith("(edited)"):
            layer.visible = False
    shot("measure")

    # 6. A bad input: an RGB image into the grey model -----------------------------
    rgb = np.zeros((*gt.shape, 3), np.uint8)
    rgb[..., 2] = viewer.layers[image_name].data
    for layer in viewer.layers:
        layer.visible = False
    viewer.add_image(rgb, name="colour image (RGB)")
    seg = show("Segment")
    seg.source.layers.set_layer(viewer.layers["colour image (RGB)"])
    seg.run()
    shot("error")

    # 7. Fuse: the simulated focus stack, fused with the default method ------------------
    for layer in list(viewer.layers):
        layer.visible = False
    viewer.open_sample(PLUGIN, "focus_stack")
    fuse = show("Fuse")
    fuse.run()
    wait(lambda: fuse.worker is None)
    viewer.reset_view()
    shot("fuse")

    print(f"model used: {model_used}; fine-tuned: {ft.state.model.name}")
    viewer.close()

    # 8. Segment on a real image (held out from the built-in model's training), in a
    # fresh viewer: the built-in model with its own defaults, as a new user has it ------
    if args.real is not None:
        viewer = napari.Viewer(show=True, title="napari-cellfocus")
        viewer.window.resize(1500, 980)
        shoot_real(viewer, args.real, args.out)
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
