"""Run every benchmark in one go; each writes its JSON to benchmarks/results/ and its
table to docs/.

    python benchmarks/run_all.py [--quick] [--device cpu|cuda]

``--quick`` runs small sizes only (a smoke test, as CI may do); figures in docs come from
full runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "bench_postprocess.py",
    "bench_engine.py",
    "bench_fusion.py",
    "bench_fusion_speed.py",
]
#: The benchmarks that take ``--device`` (the fusion ones time every device there is).
TAKES_DEVICE = {"bench_engine.py"}
#: Arguments that make each benchmark a quick smoke test (small sizes, nothing written to docs).
QUICK_ARGS = {
    "bench_postprocess.py": ["--sizes", "512", "--repeats", "2", "--no-write"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    failed = []
    for name in BENCHMARKS:
        script = HERE / name
        if not script.exists():
            print(f"-- {name}: not present, skipped")
            continue
        cmd = [sys.executable, str(script)]
        if args.quick:
            cmd += QUICK_ARGS.get(name, ["--quick"])
        if name in TAKES_DEVICE:
            cmd += ["--device", args.device]
        print("--", " ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
