"""Issue 15: closing the viewer while a fine-tune runs gives the GPU memory back
(``Trainer.release`` runs) and raises nothing inside napari."""

from __future__ import annotations

import sys

import pytest
from widget_helpers import dock, errors_since, n_records

from napari_cellfocus.engine.train import Trainer
from napari_cellfocus.widgets.finetune import closable


@pytest.fixture
def releases(monkeypatch):
    """The step count at every Trainer.release()."""
    calls = []
    original = Trainer.release

    def spy(self):
        calls.append(self.step)
        return original(self)

    monkeypatch.setattr(Trainer, "release", spy)
    return calls


def test_closing_the_viewer_during_a_finetune_releases_the_trainer(
    make_napari_viewer, qtbot, scene, releases, monkeypatch
):
    """A long fine-tune (a new network, preview every 2 steps) is running when the viewer
    closes: napari quits the worker; the trainer is still released, no preview layer is
    added to the closed viewer, and no exception reaches napari (a KeyError in its layer
    controls before) or the excepthook."""
    uncaught = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: uncaught.append(exc))
    viewer = make_napari_viewer()
    viewer.add_image(scene.image, name="nuclei")
    annotations = viewer.add_labels(scene.labels, name="annotations")
    widget = dock(viewer, "Correct and fine-tune")
    widget.annotations.set_layer(annotations)
    widget.start_combo.setCurrentIndex(widget.start_combo.findData("new"))
    widget.steps_spin.setValue(100_000)
    widget.preview_spin.setValue(2)
    widget.config_overrides = {"batch_size": 1, "crop_size": 32}
    start = n_records()
    widget.start()
    qtbot.waitUntil(lambda: widget.previews >= 1, timeout=60_000)
    assert widget._watched is not None and widget._watched is widget.window()
    viewer.close()
    assert widget.closing and len(viewer.layers) == 0 and widget._watched is None
    qtbot.waitUntil(lambda: bool(releases), timeout=60_000)
    assert len(releases) == 1 and 0 < releases[0] < 100_000
    qtbot.wait(200)  # yields queued before the close reach the widget: they are dropped
    assert len(viewer.layers) == 0
    assert not uncaught and not errors_since(start)


def test_closable_closes_a_job_left_suspended():
    """What a quit worker leaves behind: a generator stopped at a yield. close() runs its
    clean-up; after a normal end it does nothing."""
    cleaned = []

    def job(n):
        try:
            yield from range(n)
        finally:
            cleaned.append(n)
        return "done"

    wrapped, close = closable(job)
    gen = wrapped(10)
    assert next(gen) == 0 and next(gen) == 1
    close()
    assert cleaned == [10]
    wrapped, close = closable(job)
    assert list(wrapped(2)) == [0, 1] and cleaned == [10, 2]
    close()
    assert cleaned == [10, 2]
