"""One job panel for the dock widgets: Run and Cancel, progress, ETA, status, and the job.

Every dock runs its long work the same way: check the form, start the job in a worker
(:func:`~napari_cellfocus.widgets._workers.start_job`, which also turns the expected
errors, :data:`~napari_cellfocus.widgets._workers.EXPECTED_ERRORS`, into
:class:`Failed`), show its progress, then handle what it returns. :class:`Job` holds
that lifecycle without widgets of its own (Tune's live relabel uses it); it treats
:class:`Cancelled` and :class:`Failed` the same in every dock (a notification and the
status line; the dock's ``stopped`` callback puts its layers back) and hands only a
real result to the dock. :class:`JobPanel` adds the Run / Cancel buttons, the progress
bar, an optional ETA line and the status line, so a dock builds its form and says what
to do with the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_cellfocus.widgets._progress import ProgressBar
from napari_cellfocus.widgets._workers import Cancelled, Failed, format_seconds, start_job

#: ``{}`` in a ``cancelled`` / ``failed`` text stands for the job's own message.
MESSAGE = "{}"


def _fill(template: str, message: str) -> str:
    return template.replace(MESSAGE, message, 1)


class Job:
    """One job at a time in a worker, and the same end for every dock.

    ``status``: the label that says what happened (``None``: notifications only).
    ``busy``: called with ``True`` when a job starts and ``False`` once it finished.
    """

    def __init__(
        self,
        status: QLabel | None = None,
        busy: Callable[[bool], None] | None = None,
    ) -> None:
        self.status = status
        #: The running worker (``None`` when idle, after the job's callbacks ran).
        self.worker: Any = None
        self._busy = busy
        self._cancel: Any = None
        self._detached = False
        self._done: Callable[[Any], None] | None = None
        self._stopped: Callable[[Cancelled | Failed], None] | None = None
        self._finished: Callable[[], None] | None = None
        self._texts = ("Cancelled {}.", MESSAGE)

    @property
    def running(self) -> bool:
        """Whether a job runs (its worker has not finished)."""
        return self.worker is not None

    def start(
        self,
        job: Callable[..., Any],
        *args: Any,
        yielded: Callable[[Any], None] | None = None,
        done: Callable[[Any], None] | None = None,
        stopped: Callable[[Cancelled | Failed], None] | None = None,
        finished: Callable[[], None] | None = None,
        cancelled: str = "Cancelled {}.",
        failed: str = MESSAGE,
        **kwargs: Any,
    ) -> bool:
        """Start ``job(*args, cancel=event, **kwargs)`` unless one runs (then ``False``).

        ``done(result)``: the job's result (never a Cancelled or a Failed). On
        :class:`Cancelled` / :class:`Failed`, ``stopped(outcome)`` runs first (put the
        layers back), then the ``cancelled`` / ``failed`` text (``{}``: the job's message)
        is shown as a notification and in the status line. ``finished()``: always, last.
        """
        if self.running:
            return False
        self._done, self._stopped, self._finished = done, stopped, finished
        self._texts = (cancelled, failed)
        self._detached = False
        if self._busy is not None:
            self._busy(True)
        self.worker, self._cancel = start_job(
            job,
            *args,
            yielded=yielded,
            returned=self._returned,
            finished=self._ended,
            **kwargs,
        )
        return True

    def cancel(self) -> bool:
        """Ask the running job to stop (it stops at its next check); ``False`` if idle."""
        if self._cancel is None:
            return False
        self._cancel.set()
        return True

    def detach(self) -> None:
        """The dock is going away (its viewer closes): stop the job and drop its result."""
        self._detached = True
        self.cancel()

    def report(self, message: str, error: bool = True) -> None:
        """Show ``message`` as a notification (an error, or information) and in the
        status line; for bad input too, before any job starts."""
        (show_error if error else show_info)(message)
        if self.status is not None:
            self.status.setText(message)

    def _returned(self, result: Any) -> None:
        if self._detached:
            return
        if isinstance(result, (Cancelled, Failed)):
            if self._stopped is not None:
                self._stopped(result)
            cancelled = isinstance(result, Cancelled)
            template = self._texts[0] if cancelled else self._texts[1]
            self.report(_fill(template, result.message), error=not cancelled)
        elif self._done is not None:
            self._done(result)

    def _ended(self) -> None:
        self.worker = None
        self._cancel = None
        if self._busy is not None:
            self._busy(False)
        if self._finished is not None:
            self._finished()


class WorkerOf:
    """A dock's read-only attribute: the worker of its :class:`Job` or :class:`JobPanel`
    attribute ``name``, ``None`` when idle (``worker = WorkerOf("panel")``; the tests
    wait for ``dock.worker is None``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, dock: Any, owner: type | None = None) -> Any:
        if dock is None:
            return self
        return getattr(dock, self.name).worker

    def __set__(self, dock: Any, value: Any) -> None:
        raise AttributeError(f"the worker is {self.name}'s: start or cancel the job there")


class JobPanel(QWidget):
    """Run and Cancel buttons, a progress bar, an ETA line and a status line, and the
    :class:`Job` they drive.

    ``buttons``: more buttons in the Run row (after Run); ``lock``: widgets disabled
    while a job runs, besides Run; ``cancellable`` / ``progress`` / ``eta``: whether the
    panel has a Cancel button, a progress bar, an ETA line; ``cancelling``: the status
    text once Cancel is pressed; ``device``: a :class:`~._device.DevicePicker` whose
    memory line follows the job. The dock's own result widgets go between the progress
    and the status line (:meth:`add_widget`).
    """

    def __init__(
        self,
        run_text: str = "Run",
        *,
        run_tip: str = "",
        buttons: Sequence[QPushButton] = (),
        lock: Sequence[QWidget] = (),
        cancellable: bool = True,
        progress: bool = True,
        eta: bool = False,
        cancelling: str = "",
        device: Any = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._lock = list(lock)
        self._device = device
        self._cancelling = cancelling
        self.run_button = QPushButton(run_text)
        if run_tip:
            self.run_button.setToolTip(run_tip)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = ProgressBar()
        self.progress.setMaximum(1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.eta = QLabel("")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.job = Job(self.status, busy=self._set_busy)

        row = QHBoxLayout()
        row.addWidget(self.run_button)
        for button in buttons:
            row.addWidget(button)
        if cancellable:
            row.addWidget(self.cancel_button)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.addLayout(row)
        if progress:
            self._layout.addWidget(self.progress)
        if eta:
            self._layout.addWidget(self.eta)
        self._layout.addWidget(self.status)
        for widget, shown in (
            (self.cancel_button, cancellable),
            (self.progress, progress),
            (self.eta, eta),
        ):
            if not shown:  # kept (a dock may read it), never shown
                widget.setParent(self)
                widget.hide()
        self.cancel_button.clicked.connect(self.cancel)

    # ------------------------------------------------------------------ layout
    def add_widget(self, widget: QWidget, stretch: int = 0) -> None:
        """Put a result widget of the dock above the status line."""
        self._layout.insertWidget(self._layout.indexOf(self.status), widget, stretch)

    # ------------------------------------------------------------------ job
    @property
    def worker(self) -> Any:
        """The running worker, ``None`` when idle."""
        return self.job.worker

    @property
    def running(self) -> bool:
        return self.job.running

    def start(
        self,
        job: Callable[..., Any],
        *args: Any,
        status: str = "",
        total: int = 1,
        progress_format: str = "",
        **kwargs: Any,
    ) -> bool:
        """Start ``job`` as :meth:`Job.start` does (the same callbacks and texts), with
        the progress bar at 0 of ``total`` shown as ``progress_format`` (``"%v / %m
        tiles"``) and ``status`` in the status line."""
        if self.running:
            return False
        self.progress.setMaximum(total)
        self.progress.setValue(0)
        self.progress.setFormat(progress_format)
        if status:
            self.status.setText(status)
        stopped = kwargs.pop("stopped", None)

        def reset(outcome: Cancelled | Failed) -> None:
            self.clear_progress()  # no stale "7 / 16 tiles" or ETA left behind
            if stopped is not None:
                stopped(outcome)

        return self.job.start(job, *args, stopped=reset, **kwargs)

    def cancel(self) -> None:
        """Ask the running job to stop (Cancel button)."""
        if self.job.cancel() and self._cancelling:
            self.status.setText(self._cancelling)

    def detach(self) -> None:
        """See :meth:`Job.detach`."""
        self.job.detach()

    def report(self, message: str, error: bool = True) -> None:
        """See :meth:`Job.report`."""
        self.job.report(message, error)

    # ------------------------------------------------------------------ progress
    def show_progress(
        self,
        done: int,
        total: int,
        text: str = "",
        elapsed_s: float | None = None,
        eta_s: float | None = None,
    ) -> None:
        """``done`` of ``total`` in the bar; in the ETA line ``text``, the time elapsed
        and the time left (``"loss 0.41 · 0:12 elapsed · ETA 0:30"``) when given."""
        self.progress.set_progress(done, total)
        parts = [text] if text else []
        if elapsed_s is not None:
            parts.append(f"{format_seconds(elapsed_s)} elapsed")
        if eta_s is not None:
            parts.append(f"ETA {format_seconds(eta_s)}")
        if parts:
            self.eta.setText(" · ".join(parts))

    def clear_progress(self) -> None:
        """An empty bar and ETA line."""
        self.progress.setFormat("")
        self.progress.set_progress(0, 1)
        self.eta.setText("")

    def _set_busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)
        for widget in self._lock:
            widget.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if self._device is not None:
            (self._device.job_started if busy else self._device.job_finished)()
