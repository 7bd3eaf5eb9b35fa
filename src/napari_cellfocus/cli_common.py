"""Pieces shared by the ``cellfocus`` sub-commands (no heavy imports).

``CliError`` lives here rather than in ``cli.py`` so that every sub-command module
raises the very class ``cli.main`` catches, also when ``cli.py`` runs as ``__main__``
(``python -m napari_cellfocus.cli``), where importing ``napari_cellfocus.cli`` again
would create a second, different class.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "FILE_ERRORS",
    "BatchReport",
    "CliError",
    "ProgressBar",
    "add_name_filters",
    "add_overwrite_flag",
    "check_output_paths",
    "check_train_output",
    "error_line",
    "filter_names",
    "format_seconds",
    "keep_previous_model",
    "previous_model_path",
    "run_training",
    "stop_on_signals",
]


class CliError(Exception):
    """An error in the user's input, printed without a traceback."""


#: What one bad file of a batch may raise (unreadable, wrong shape or type, a write that
#: fails, out of memory): reported and skipped, the other files go on.
FILE_ERRORS = (CliError, ValueError, OSError, IndexError, TypeError, MemoryError, RuntimeError)


class ProgressBar:
    """A one-line terminal progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str, width: int = 30) -> None:
        self.total, self.label, self.width = max(1, total), label, width
        self.tty = sys.stderr.isatty()
        self._last_pct = -1

    def update(self, done: int, extra: str = "") -> None:
        """Show ``done`` of ``total`` (in logs: every 10 % only)."""
        pct = int(100 * done / self.total)
        if not self.tty and pct // 10 == self._last_pct // 10 and done != self.total:
            return  # in logs, print every 10 % only
        self._last_pct = pct
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {extra}"
        if self.tty:
            print("\r" + line, end="" if done < self.total else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    """``m:ss`` for a number of seconds (negative counts as 0)."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def add_name_filters(parser: argparse.ArgumentParser, what: str = "images") -> None:
    """Add the repeatable ``--include GLOB`` / ``--exclude GLOB`` options to ``parser``."""
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help=f"only {what} whose file name matches GLOB (e.g. '*_dapi.tif'; "
        "repeatable: any one may match; case-insensitive)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help=f"leave out {what} whose file name matches GLOB (repeatable)",
    )


def filter_names(
    paths: Sequence[Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Path]:
    """Keep the paths whose file name matches one ``include`` pattern (all of them when
    none is given) and no ``exclude`` pattern; order kept.

    Patterns are shell globs (``*``, ``?``, ``[abc]``) matched against the file name only
    (not the folder), ignoring case. Raises :class:`CliError` when nothing is left.
    """
    inc = [p.lower() for p in include]
    exc = [p.lower() for p in exclude]
    kept = [
        p
        for p in paths
        if (not inc or any(fnmatch.fnmatchcase(p.name.lower(), g) for g in inc))
        and not any(fnmatch.fnmatchcase(p.name.lower(), g) for g in exc)
    ]
    if paths and not kept:
        given = [f"--include {g}" for g in include] + [f"--exclude {g}" for g in exclude]
        raise CliError(
            f"no file left of {len(paths)} after {' '.join(given)} "
            f"(first names: {', '.join(p.name for p in paths[:3])})."
        )
    return kept


# --------------------------------------------------------------------------- outputs
def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` (replace existing output files; never an input)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (an output that is one of the "
        "inputs, or another output of the run, is refused even then)",
    )


def check_output_paths(
    inputs: Sequence[Path], outputs: Sequence[tuple[str, Path]], overwrite: bool = False
) -> None:
    """:func:`core.outputs.check_outputs`, its refusal raised as :class:`CliError`."""
    from napari_cellfocus.core.outputs import OutputPathError, check_outputs

    try:
        check_outputs(inputs, outputs, overwrite=overwrite)
    except OutputPathError as err:
        raise CliError(str(err)) from None


def check_train_output(out: Path, inputs: Sequence[Path], overwrite: bool = False) -> None:
    """``train --out``, checked before training: not an input (an image or label file),
    not a folder, writable. An existing model file (``.pt`` / ``.pth``) is replaced only
    with ``overwrite`` (the command then keeps it as ``<name>.previous.pt``); any other
    existing file is refused even then, since a model would replace, say, a TIFF."""
    out = Path(out)
    is_model = out.suffix.lower() in (".pt", ".pth")
    try:
        check_output_paths(inputs, [("--out", out)], overwrite=True)
    except CliError as err:
        if out.exists() and not out.is_dir() and not is_model and "is the input" not in str(err):
            raise _not_a_model(out) from None
        raise
    if out.is_file() and not is_model:
        raise _not_a_model(out)
    if out.is_file() and not overwrite:
        raise CliError(
            f"--out {out}: the model file exists (pass --overwrite to replace it; the "
            f"previous model is then kept as {previous_model_path(out).name}), or choose "
            "another name."
        )


def _not_a_model(out: Path) -> CliError:
    return CliError(
        f"--out {out}: the file exists and is not a model file (.pt); a trained "
        "model is written to --out: choose a new .pt name."
    )


def previous_model_path(out: Path) -> Path:
    """Where ``train --overwrite`` keeps the model it replaces: ``<stem>.previous<suffix>``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.previous{out.suffix}")


def keep_previous_model(out: Path) -> Path | None:
    """Copy an existing ``out`` to ``<name>.previous<suffix>`` before training replaces
    it (atomically: a temporary copy renamed), and say so; returns the copy's path."""
    import os
    import shutil
    import tempfile

    if not out.is_file():
        return None
    backup = previous_model_path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{backup.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        shutil.copy2(out, tmp)
        os.replace(tmp, backup)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(
            f"--out {out}: cannot keep the existing model as {backup} "
            f"({err.strerror or type(err).__name__}); nothing was trained."
        ) from None
    print(f"cellfocus: {out} exists: the previous model is kept as {backup}", file=sys.stderr)
    return backup


def stop_on_signals(trainer, received: list[int]):
    """SIGTERM / SIGINT (what ``timeout``, Slurm and Ctrl-C send) stop training after the
    current step: the trainer writes a checkpoint marked cancelled, with the signal's name
    as ``cancel_reason``. A second signal stops at once. Only in the CLI (napari has its
    own cancel). Returns a function restoring the previous handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if received:  # a second signal: do not wait for the step
            raise KeyboardInterrupt
        received.append(signum)
        trainer.cancel_reason = signal.Signals(signum).name

    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in signums}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def run_training(trainer, out: Path, total: int, label: str = "train", writer: bool = True) -> int:
    """Drive ``trainer`` (a ``Trainer`` or ``FusionTrainer`` writing ``out``) with a
    progress bar, SIGTERM / SIGINT handled by :func:`stop_on_signals`, an existing
    ``out`` kept as ``NAME.previous.pt`` first (:func:`keep_previous_model`), and the
    trainer released at the end. Returns the exit status: 0, or 128 + the signal
    (143 for SIGTERM, 130 for SIGINT) after writing the checkpoint marked cancelled. A
    diverged run raises :class:`CliError` (its message says what was kept).

    ``writer=False``: a rank of a distributed run other than rank 0, which writes
    nothing: no copy of ``out``, no progress bar, no messages but errors; its exit
    status is the same as rank 0's (cancel and divergence are rank 0's decisions)."""
    from napari_cellfocus.engine.train import TrainingDiverged

    out = Path(out)
    backup = keep_previous_model(out) if writer else None
    bar = ProgressBar(total, label)
    received: list[int] = []
    restore = stop_on_signals(trainer, received)

    def show(p) -> None:
        bar.update(
            p.step,
            f"loss {p.loss:.4f} eta {format_seconds(p.eta_s)}"
            + "".join(f" {k} {v:.3f}" for k, v in p.metrics.items()),
        )

    try:
        trainer.run(on_step=show if writer else None, should_stop=lambda: bool(received))
    except TrainingDiverged as err:
        if not writer:  # rank 0 says what happened and what was kept
            return 2
        kept = f" The previous model is kept in {backup}." if backup is not None else ""
        raise CliError(f"{err}{kept}") from None
    finally:
        restore()
        trainer.release()
    if not writer:
        return 128 + received[0] if trainer.cancelled and received else 0
    if trainer.cancelled and received:
        print(
            f"cellfocus: stopped by {trainer.cancel_reason} at step {trainer.step} of "
            f"{total}; checkpoint written to {out} (steps_done {trainer.step}, cancelled)",
            file=sys.stderr,
        )
        return 128 + received[0]  # 143 for SIGTERM, 130 for SIGINT, as a shell reports
    print(f"model written to {out}")
    return 0


def error_line(err: BaseException) -> str:
    """One line for an error met while processing one file (no traceback)."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text


class BatchReport:
    """Which files of a batch worked and which failed (and why), for the summary line.

    ``failed(path, err)`` prints ``cellfocus: skipped PATH: REASON`` on stderr at once;
    :meth:`summary` gives ``"3 of 4 images segmented; failed: a.tif (reason)"``; the
    command exits 1 when anything failed (:attr:`exit_code`).
    """

    #: Failures named in the summary line (all of them were printed as they happened).
    SHOWN = 10

    def __init__(self, total: int, noun: str = "images", verb: str = "segmented") -> None:
        self.total, self.noun, self.verb = total, noun, verb
        self.done = 0
        self.failures: list[tuple[Path, str]] = []

    def ok(self) -> None:
        self.done += 1

    def failed(self, path: Path, err: BaseException) -> None:
        reason = error_line(err)
        prefix = f"{path}: "
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
        reason = reason.rstrip(".")
        self.failures.append((Path(path), reason))
        print(f"cellfocus: skipped {path}: {reason}", file=sys.stderr, flush=True)

    def summary(self) -> str:
        line = f"{self.done} of {self.total} {self.noun} {self.verb}"
        if self.failures:
            shown = self.failures[: self.SHOWN]
            line += "; failed: " + ", ".join(f"{p.name} ({why})" for p, why in shown)
            if len(self.failures) > len(shown):
                line += f" and {len(self.failures) - len(shown)} more (listed above)"
        return line

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0
