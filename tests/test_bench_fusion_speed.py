"""benchmarks/bench_fusion_speed.py: the docs table and its marked section (no timing run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "bench_fusion_speed", REPO / "benchmarks" / "bench_fusion_speed.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result():
    rows = []
    # 2 slices of 1000 x 1000 = 2 megapixel-slices: s/MP/slice is half the seconds.
    for method, impl, dev, sec in [
        ("gff", "numpy", "cpu", 4.0),
        ("gff", "torch", "cpu", 2.0),
        ("gff", "torch", "cuda", 0.1),
        ("wavelet", "numpy", "cpu", 0.2),
        ("wavelet", "torch", "cpu", 0.4),
        ("wavelet", "torch", "cuda", 0.05),
        ("hf-seg", "torch", "cpu", 3.0),
        ("hf-seg", "torch", "cuda", 0.5),
    ]:
        rows.append(
            {
                "method": method,
                "implementation": impl,
                "device": dev,
                "seconds": sec,
                "s_per_mp_per_slice": sec / 2,
            }
        )
    meta = {
        "command": "x",
        "date": "d",
        "cpu_threads": 4,
        "gpu": "G",
        "torch": "t",
        "stack": [2, 1000, 1000],
    }
    return {"meta": meta, "rows": rows}


def test_speed_table_columns_speedups_and_verdict():
    """gff: numpy 4 s, fastest CUDA 0.1 s -> 40x; wavelet 0.2 / 0.05 -> 4x; hf-seg has no
    numpy row, so CPU 3 s / CUDA 0.5 s -> 6x. Torch beats numpy on the CPU for gff only."""
    mod = _module()
    text = mod.markdown(_result())
    assert "| method | numpy cpu | torch cpu | torch cuda | speed-up |" in text
    assert "| gff | 2.0000 | 1.0000 | 0.0500 | 40.0x (torch cuda) |" in text
    assert "| wavelet | 0.1000 | 0.2000 | 0.0250 | 4.0x (torch cuda) |" in text
    assert "| hf-seg |  | 1.5000 | 0.2500 | 6.0x (torch cuda) |" in text
    assert "for 1 of 4 classical methods (gff)" in text


def test_section_is_replaced_not_duplicated(tmp_path):
    mod = _module()
    doc = tmp_path / "fusion.md"
    doc.write_text("# Fusion\n\nintro\n")
    mod.insert_section(doc, mod.markdown(_result()))
    mod.insert_section(doc, mod.markdown(_result()).replace("40.0x", "41.0x"))
    text = doc.read_text()
    assert text.startswith("# Fusion\n\nintro\n")
    assert text.count(mod.START) == 1 and "41.0x" in text and "40.0x" not in text
