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
    "CliError",
    "ProgressBar",
    "add_name_filters",
    "filter_names",
    "format_seconds",
]


class CliError(Exception):
    """An error in the user's input, printed without a traceback."""


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
