"""benchmarks/bench_finetune.py: a 3-step smoke run and its table (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_finetune", REPO / "benchmarks" / "bench_finetune.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_gains_are_after_minus_before():
    bench = _bench()
    rows = [
        {
            "config": "a",
            "case": "x",
            "annotated_cells": 5,
            "pq_after": 0.7,
            "finetune_s": 10.0,
            "first_preview_s": 4.0,
        },
        {
            "config": "a",
            "case": "y",
            "annotated_cells": 5,
            "pq_after": 0.4,
            "finetune_s": 20.0,
            "first_preview_s": 6.0,
        },
    ]
    before = {"x": {"pq": 0.6}, "y": {"pq": 0.5}}
    lines = bench.summarise(rows, before)
    assert "| a | x | 5 | 0.600 | 0.700 | +0.100 | 10.0 | 4.0 |" in lines
    assert "| a | y | 5 | 0.500 | 0.400 | -0.100 | 20.0 | 6.0 |" in lines
    assert "| **a: mean** | | | | | **+0.000** | **15.0** | **5.0** |" in lines


def test_draws_annotate_other_cells_of_the_same_image(tmp_path):
    import numpy as np

    bench = _bench()
    labels = np.arange(1, 41).reshape(5, 8).repeat(4, 0).repeat(4, 1)
    case = {
        "name": "c",
        "image": labels.astype(np.float32),
        "labels": labels,
        "annotated": np.array([1, 2, 3]),
    }
    cases = bench.with_draws([case], 3)
    assert [c["name"] for c in cases] == ["c", "c#2", "c#3"]
    assert all(len(c["annotated"]) == 3 for c in cases)
    assert not np.array_equal(np.sort(cases[1]["annotated"]), np.sort(cases[2]["annotated"]))
    assert all(c["labels"] is labels for c in cases)
