"""Running long work off the Qt thread, with a cancel flag the work itself checks.

napari's ``GeneratorWorker.quit()`` stops a generator between yields but never closes
it, so clean-up code (closing a training loop, giving GPU memory back) would not run.
The widgets instead pass a :class:`threading.Event` to their job generator; the job
checks it after every yield and *returns* a :class:`Cancelled` after cleaning up.
Expected problems (bad input, a model that does not fit, out of memory, a diverged
training) are returned as :class:`Failed` with a one-line message, so the widget
shows a clear notification instead of a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker

#: Errors a job reports as a message (CheckpointError is a ValueError).
EXPECTED_ERRORS = (ValueError, MemoryError, FloatingPointError, InterruptedError)


@dataclass
class Cancelled:
    """The job stopped because the user pressed Cancel."""

    message: str = ""


@dataclass
class Failed:
    """The job stopped on an expected problem; ``message`` says what to do."""

    message: str


def start_job(
    job: Callable[..., Any],
    *args: Any,
    yielded: Callable[[Any], None] | None = None,
    returned: Callable[[Any], None] | None = None,
    finished: Callable[[], None] | None = None,
    **kwargs: Any,
) -> tuple[GeneratorWorker, threading.Event]:
    """Start ``job(*args, cancel=event, **kwargs)`` in a worker thread.

    ``job`` is a generator function (its yields reach ``yielded``) or a plain function.

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
        job, *args, cancel=cancel, _connect=connect, _start_thread=False, **kwargs
    )
    worker.start()
    return worker, cancel


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3700`` -> ``"1:01:40"``."""
    total = max(0, round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
