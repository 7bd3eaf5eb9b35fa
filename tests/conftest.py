"""Shared fixtures: small simulated scenes and a helper to run the CLI as a process."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]

#: Test modules marked ``slow`` as a whole, besides every ``test_cli_*`` and
#: ``test_bench_*`` module (each runs processes, trains or runs a benchmark): the ones
#: whose tests took 20 s and more in CI's ``--durations`` report.
SLOW_MODULES = {
    "test_ddp.py",
    "test_train.py",
    "test_train_faults.py",
    "test_zoom_stream.py",
    "test_bioimageio.py",
    "test_fusion_train_faults.py",
}


def pytest_collection_modifyitems(config, items):
    """``pytest -m "not slow"``: the quick selection for a fast edit-test loop (CI runs
    everything)."""
    for item in items:
        name = item.path.name
        if name.startswith(("test_cli_", "test_bench_")) or name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def cli():
    """The ``run_cli`` helper (``cli_helpers``) as a fixture."""
    return run_cli
