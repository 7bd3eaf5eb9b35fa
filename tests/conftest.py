"""Shared fixtures: small simulated scenes and a helper to run the CLI as a process."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli():
    """The ``run_cli`` helper (``cli_helpers``) as a fixture."""
    return run_cli
