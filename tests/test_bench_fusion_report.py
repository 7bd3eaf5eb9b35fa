"""benchmarks/bench_fusion.py: the Done-when lines and the page it renders (no fusion run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_fusion", REPO / "benchmarks" / "bench_fusion.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(real_default: float, sim_default: float) -> dict:
    def row(ssim):
        return {"SSIM": ssim, "PSNR": 30.0, "s_per_mp_per_slice": 0.1}

    res = {
        "sim-a": {"hf-seg": row(sim_default), "gff": row(0.80), "enfuse": row(0.85)},
        "real-a": {"hf-seg": row(real_default), "gff": row(0.90), "hf-seg (baseline)": row(0.99)},
        "real-b": {"hf-seg": row(real_default), "gff": row(0.92), "hf-seg (baseline)": row(0.99)},
    }
    stacks = {
        "sim-a": {"family": "sim", "shape": [3, 8, 8], "dtype": "uint8"},
        "real-a": {"family": "real", "shape": [3, 8, 8], "dtype": "uint8"},
        "real-b": {"family": "real", "shape": [3, 8, 8], "dtype": "uint16"},
    }
    return {"results": res, "meta": {"default_method": "hf-seg", "stacks": stacks}}


def test_done_when_holds_with_the_margins(bench):
    lines = bench.done_when(_run(real_default=0.93, sim_default=0.846))
    real, sim = lines
    # real: best peer gff mean 0.91 (the baseline of the default method is not a peer)
    assert "best peer gff 0.910" in real and "margin +0.020" in real and "**holds**" in real
    # sim: enfuse 0.85, the default 0.846 is within 0.005
    assert "margin -0.004" in sim and "**holds**" in sim


def test_done_when_fails_below_the_margins(bench):
    real, sim = bench.done_when(_run(real_default=0.915, sim_default=0.84))
    assert "margin +0.005" in real and "does not hold" in real
    assert "margin -0.010" in sim and "does not hold" in sim


def test_doc_page_has_both_families(bench, tmp_path, monkeypatch):
    run = _run(0.93, 0.9)
    run["meta"].update(
        {"cpu": "x86_64", "cpu_threads": 2, "gpu": None, "notes": {}, "command": "cmd",
         "commit": "abc123", "date": "2026-12-02", "models": {}}
    )  # fmt: skip
    for p in run["meta"]["stacks"].values():
        if p["family"] == "real":
            p.update({"image": "x.tif", "psf": "disc", "defocus_per_slice": 2.0,
                      "photons": 100.0, "read_noise": 1.0})  # fmt: skip
    monkeypatch.setattr(bench, "DOC", tmp_path / "fusion.md")
    bench.write_doc(run, {"crops": "c.png", "depth": "d.png"})
    page = (tmp_path / "fusion.md").read_text()
    assert "### Simulated stacks" in page and "### Real-content stacks" in page
    assert "Command: `cmd`; commit abc123; 2026-12-02" in page
    assert "### Done when (issue 14)" in page
