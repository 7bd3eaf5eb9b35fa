"""The job panel every dock runs its work through: Run / Cancel, progress, status, and the
same end for a result, a cancel and an expected error."""

from __future__ import annotations

import threading

import pytest
from widget_helpers import errors_since, n_records, wait_idle

from napari_cellfocus.widgets._job import Job, JobPanel, WorkerOf
from napari_cellfocus.widgets._workers import Cancelled, Failed


def steps(n: int, cancel: threading.Event, gate: threading.Event | None = None):
    """A job of ``n`` steps that waits at the first one for ``gate`` (if given)."""
    for i in range(n):
        yield (i + 1, n)
        if gate is not None:
            gate.wait(10)
        if cancel.is_set():
            return Cancelled(f"after {i + 1} of {n} steps")
    return n


def bad_input(cancel: threading.Event):
    raise ValueError("'image' is empty: nothing to do.")


class Dock:
    worker = WorkerOf("panel")

    def __init__(self, panel: JobPanel) -> None:
        self.panel = panel


@pytest.fixture
def panel(qtbot):
    widget = JobPanel("Go", cancelling="Cancelling after this step…", eta=True)
    qtbot.addWidget(widget)
    return widget


def test_result_progress_and_buttons(qtbot, panel):
    """While the job runs Run is off and Cancel on; progress and ETA follow the yields;
    only a real result reaches ``done``; ``worker`` is None once all callbacks ran."""
    got, ended = [], []
    gate = threading.Event()
    dock = Dock(panel)

    def step(progress):
        panel.show_progress(*progress, text="loss 0.5", elapsed_s=3, eta_s=75)

    assert panel.start(
        steps,
        3,
        gate=gate,
        total=3,
        progress_format="step %v / %m",
        status="Working…",
        yielded=step,
        done=got.append,
        finished=lambda: ended.append(dock.worker),
    )
    assert dock.worker is not None and panel.running
    assert not panel.run_button.isEnabled() and panel.cancel_button.isEnabled()
    assert panel.status.text() == "Working…" and panel.progress.format() == "step %v / %m"
    assert not panel.start(steps, 1)  # one job at a time
    gate.set()
    wait_idle(qtbot, dock)
    assert got == [3] and ended == [None]
    assert panel.progress.value() == 3 and panel.eta.text() == "loss 0.5 · 0:03 elapsed · ETA 1:15"
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    with pytest.raises(AttributeError):
        dock.worker = None


def test_cancel_and_an_expected_error_end_the_same_way(qtbot, panel):
    """Cancel: ``stopped`` runs, the bar and ETA are cleared, the cancelled text (with the
    job's message) is the status. A ValueError raised by the job: a Failed, shown as an
    error notification and in the status line; ``done`` never runs."""
    stopped, got = [], []
    gate = threading.Event()
    dock = Dock(panel)
    panel.start(
        steps,
        5,
        gate=gate,
        total=5,
        progress_format="%v / %m",
        yielded=lambda p: panel.show_progress(*p, text="busy"),
        done=got.append,
        stopped=stopped.append,
        cancelled="Stopped {}; nothing changed.",
    )
    panel.cancel()
    assert panel.status.text() == "Cancelling after this step…"
    gate.set()
    wait_idle(qtbot, dock)
    assert got == [] and [type(s) for s in stopped] == [Cancelled]
    assert panel.status.text() == "Stopped after 1 of 5 steps; nothing changed."
    assert panel.progress.value() == 0 and panel.progress.format() == "" and panel.eta.text() == ""

    start = n_records()
    panel.start(bad_input, done=got.append, stopped=stopped.append, failed="Could not: {}")
    wait_idle(qtbot, dock)
    assert got == [] and isinstance(stopped[-1], Failed)
    text = "Could not: 'image' is empty: nothing to do."
    assert panel.status.text() == text and errors_since(start) == [text]


def test_a_detached_job_touches_nothing(qtbot):
    """The dock's viewer closes: the job is asked to stop and its result is dropped."""
    got = []
    gate = threading.Event()
    job = Job()
    job.start(steps, 3, gate=gate, done=got.append, stopped=got.append)
    job.detach()
    gate.set()
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert got == []
