"""Running long work off the Qt thread, with a cancel flag the work itself checks.

napari's ``GeneratorWorker.quit()`` stops a generator between yields but never closes
it, so clean-up code (closing a training loop, giving GPU memory back) would not run.
The widgets instead pass a :class:`threading.Event` to their job generator; the job
checks it after every yield and *returns* a :class:`Cancelled` after cleaning up.
Expected problems (bad input, a model that does not fit, out of memory, a diverged
training, a file that cannot be read or written: :data:`EXPECTED_ERRORS`) end the
job as :class:`Failed` with a one-line message, so the widget shows a clear
notification instead of a traceback: a job returns ``Failed`` itself, or raises one
of those errors and :func:`start_job` turns it into ``Failed``. The dock widgets run
their jobs through :class:`~napari_cellfocus.widgets._job.JobPanel`.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker

#: Nice value of the worker threads (and of the torch threads they start) on Linux.
WORKER_NICE = 10

#: Errors a job reports as a message, the same for every dock (CheckpointError is a
#: ValueError; OSError: a file that cannot be read or written, a missing optional
#: package is an ImportError the job words itself).
EXPECTED_ERRORS = (ValueError, MemoryError, FloatingPointError, InterruptedError, OSError)


@dataclass
class Cancelled:
    """The job stopped because the user pressed Cancel."""

    message: str = ""


@dataclass
class Failed:
    """The job stopped on an expected problem; ``message`` says what to do."""

    message: str


def lower_thread_priority(nice: int = WORKER_NICE) -> bool:
    """Give the calling thread a lower CPU priority than napari's Qt thread (Linux).

    On a machine with few cores the work (torch's threads, numpy) would otherwise take
    CPU time from the Qt thread, and every redraw would take two or three times longer
    while a job runs. Linux schedules threads one by one, and the threads torch's
    OpenMP pool starts from this thread inherit its priority, so the whole job runs
    at ``nice``: it still gets all the CPU the UI does not need. A thread's priority
    can only be lowered, never raised back, so this is for worker threads only.
    Elsewhere (macOS, Windows) nothing changes. Returns whether it was lowered.
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) >= nice:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        return False
    return True


def _in_worker(job: Callable[..., Any]) -> Callable[..., Any]:
    """``job`` run after :func:`lower_thread_priority`, an expected error it raises
    (:data:`EXPECTED_ERRORS`) returned as :class:`Failed` (a generator stays a
    generator)."""
    if inspect.isgeneratorfunction(job):

        def generator(*args: Any, **kwargs: Any) -> Any:
            lower_thread_priority()
            try:
                return (yield from job(*args, **kwargs))
            except EXPECTED_ERRORS as err:
                return Failed(str(err))

        return generator

    def function(*args: Any, **kwargs: Any) -> Any:
        lower_thread_priority()
        try:
            return job(*args, **kwargs)
        except EXPECTED_ERRORS as err:
            return Failed(str(err))

    return function


def start_job(
    job: Callable[..., Any],
    *args: Any,
    yielded: Callable[[Any], None] | None = None,
    returned: Callable[[Any], None] | None = None,
    finished: Callable[[], None] | None = None,
    **kwargs: Any,
) -> tuple[GeneratorWorker, threading.Event]:
    """Start ``job(*args, cancel=event, **kwargs)`` in a worker thread, at a lower
    CPU priority than the Qt thread (:func:`lower_thread_priority`).

    ``job`` is a generator function (its yields reach ``yielded``) or a plain function;
    what it returns reaches ``returned`` (an expected error it raises as :class:`Failed`).

    Returns the worker and the cancel event (``event.set()`` asks the job to stop).
    Callbacks run on the Qt main thread.
    """
    cancel = threading.Event()

    def guarded(callback: Callable) -> Callable:
        # The viewer (and with it the widget) may be closed while the job runs:
        # then stop the job instead of failing in every callback.
        def call(*values: Any) -> None:
            try:
                callback(*values)
            except RuntimeError as err:
                if "deleted" not in str(err):
                    raise
                cancel.set()

        return call

    connect: dict[str, Callable] = {"errored": lambda err: None}
    for name, callback in (("yielded", yielded), ("returned", returned), ("finished", finished)):
        if callback is not None:
            connect[name] = guarded(callback)
    worker = create_worker(
        _in_worker(job),
        *args,
        cancel=cancel,
        _connect=connect,
        _start_thread=False,
        **kwargs,
    )
    worker.start()
    return worker, cancel


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3700`` -> ``"1:01:40"``."""
    total = max(0, round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
