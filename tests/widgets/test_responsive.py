"""What keeps the viewer responsive while the plugin works: low-priority workers,
multiscale views of large probability maps, layers added one per event-loop turn,
a blitted loss curve. (The gaps themselves are measured by
``benchmarks/bench_event_loop.py``, not here.)"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from widget_helpers import wait_idle

from napari_cellfocus.widgets._layers import (
    COARSEST_SIDE,
    MULTISCALE_ABOVE,
    LayerQueue,
    display_levels,
    probability_layers,
    probability_name,
    put_probabilities,
)
from napari_cellfocus.widgets._plots import PlotCanvas
from napari_cellfocus.widgets._workers import WORKER_NICE, start_job

CLASSES = ["background", "cell", "touching"]


def test_display_levels_are_strided_views_down_to_the_coarsest_side():
    """A 3000 x 2100 map: levels 3000, 1500, 750 (the next, 375, is under 512) that
    share memory with the map, so a tile written into it shows at every level."""
    small = np.zeros((MULTISCALE_ABOVE, 100), np.float32)
    assert display_levels(small) is small
    big = np.zeros((3000, 2100), np.float32)
    levels = display_levels(big)
    assert [lv.shape for lv in levels] == [(3000, 2100), (1500, 1050), (750, 525)]
    assert min(max(lv.shape) for lv in levels) >= COARSEST_SIDE
    assert all(np.shares_memory(lv, big) for lv in levels)
    big[8:12, 8:12] = 1.0
    assert levels[1][4:6, 4:6].min() == 1.0 and levels[2][2:3, 2:3].min() == 1.0
    stack = np.zeros((2, 2200, 2200), np.float32)  # planes of a stack: Y and X only
    assert [lv.shape for lv in display_levels(stack)] == [
        (2, 2200, 2200),
        (2, 1100, 1100),
        (2, 550, 550),
    ]


def test_large_probability_maps_become_multiscale_layers_of_views(make_napari_viewer):
    viewer = make_napari_viewer()
    probs = np.zeros((3, 2500, 2500), np.float32)
    layers = put_probabilities(viewer, probs, CLASSES, source="big")
    assert all(layer.multiscale for layer in layers)
    cell = viewer.layers[probability_name("big", "cell")]
    assert np.shares_memory(cell.data[0], probs[1]) and cell.data[0].shape == (2500, 2500)
    # a smaller map of the same image replaces them by plain layers
    small = np.zeros((3, 300, 300), np.float32)
    put_probabilities(viewer, small, CLASSES, source="big")
    cell = viewer.layers[probability_name("big", "cell")]
    assert not cell.multiscale and np.shares_memory(cell.data, small[1])
    assert len(probability_layers(viewer, "big")) == 3


def test_layer_queue_adds_one_new_layer_per_event_loop_turn(make_napari_viewer, qtbot):
    """With a queue, the visible 'cell' layer is added at once and the others on later
    turns of the event loop; existing layers are updated at once; clear() drops what
    has not run yet."""
    viewer = make_napari_viewer()
    queue = LayerQueue()
    probs = np.zeros((3, 64, 64), np.float32)
    now = put_probabilities(viewer, probs, CLASSES, source="a", queue=queue)
    assert [layer.name for layer in now] == [probability_name("a", "cell")]
    assert len(queue) == 2
    qtbot.waitUntil(lambda: len(probability_layers(viewer, "a")) == 3, timeout=5000)
    assert len(queue) == 0
    again = put_probabilities(viewer, probs * 0 + 0.5, CLASSES, source="a", queue=queue)
    assert len(again) == 3 and len(queue) == 0  # all exist: updated in place, nothing queued
    put_probabilities(viewer, probs, CLASSES, source="b", queue=queue)
    assert len(queue) == 2
    queue.clear()
    qtbot.wait(50)
    assert len(probability_layers(viewer, "b")) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux")
def test_jobs_run_at_lower_priority_than_the_qt_thread(qtbot):
    """A job (plain function or generator) runs at WORKER_NICE; the Qt thread keeps its
    own priority."""
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    got = {}

    def plain(cancel):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def generator(cancel):
        yield os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return "done"

    start_job(plain, returned=lambda v: got.__setitem__("plain", v))
    qtbot.waitUntil(lambda: "plain" in got, timeout=10_000)
    start_job(
        generator,
        yielded=lambda v: got.__setitem__("yielded", v),
        returned=lambda v: got.__setitem__("gen", v),
    )
    qtbot.waitUntil(lambda: "gen" in got, timeout=10_000)
    assert got["plain"] >= min(WORKER_NICE, 19) and got["yielded"] >= min(WORKER_NICE, 19)
    assert got["gen"] == "done"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice


def test_live_loss_curve_is_blitted_until_a_point_leaves_the_axes(qtbot):
    """Points inside the axes are blitted (no full redraw); a loss above the top of the
    y axis redraws the axes once with room above it."""
    canvas = PlotCanvas("training loss", "step", "loss")
    qtbot.addWidget(canvas)
    canvas.show()
    steps, losses = [], []
    for step in range(1, 41):
        steps.append(step)
        losses.append(1.0 / step)
        canvas.update_line(steps, losses, xmax=100)
        qtbot.wait(1)
    assert canvas.full_draws == 1
    assert canvas.axes.get_xlim() == (0.0, 100.0)
    assert canvas.line_data() == [(list(map(float, steps)), losses)]
    canvas.update_line([*steps, 41], [*losses, 5.0], xmax=100)
    assert canvas.full_draws == 2 and canvas.axes.get_ylim()[1] >= 5.0


def test_segment_loads_the_model_in_its_worker(viewer, qtbot, tiny_model, monkeypatch):
    """Run: the model is loaded by the worker thread, not by the Qt thread."""
    from widget_helpers import dock

    from napari_cellfocus.widgets import _state

    threads = []
    original = _state.CellFocusState.segmenter

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_state.CellFocusState, "segmenter", spy)
    widget = dock(viewer, "Segment")
    widget.use_model(tiny_model, "tiny")
    widget.run()
    wait_idle(qtbot, widget)
    assert threads == [False]
    assert "cells in 'nuclei'" in widget.status.text()
