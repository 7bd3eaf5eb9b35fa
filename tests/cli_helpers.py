"""Running the ``cellfocus`` command line as a process in tests (``from cli_helpers import
run_cli``; ``conftest.py`` offers it as the ``cli`` fixture too)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

#: Environment of a CLI process on one CPU thread: the test machine has 2 cores shared
#: with other jobs, where torch's thread per core makes every step wait for the slowest.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_cli(
    *args: str, timeout: float = 600, one_thread: bool = False
) -> subprocess.CompletedProcess:
    """Run ``cellfocus ARGS`` as a separate process (as a user would), output captured;
    ``one_thread``: torch on one CPU thread (``ONE_THREAD``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(ONE_THREAD if one_thread else {}))
    return subprocess.run(
        [sys.executable, "-m", "napari_cellfocus.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dictionaries."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
