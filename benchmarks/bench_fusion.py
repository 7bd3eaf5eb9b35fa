"""Multi-focus fusion benchmark: every method of the package and external peers, one run.

    .venv/bin/python benchmarks/bench_fusion.py [--quick] [--real-data DIR]
        [--model KIND=PATH ...] [--baseline KIND=PATH ...]

Stacks (the same for every method):

* simulated focus stacks with ground truth (``core.simulate.simulate_focus_stack``): nuclei
  at random depths, fresh shot and read noise in every slice, 8- and 16-bit; seeds not
  used in training;
* real-content focus stacks with ground truth (``core.fusion_data.real_focus_stack``):
  held-out images of ``--real-data`` (default ``../shared/data/dsb2018-train`` next to the
  repository; the last images of the validation part of ``real_image_split``, seed 0,
  which training never saw and its model selection did not use), each nucleus at its own
  depth, a smooth background depth, Gaussian / disc / mixed defocus, 8/16-bit,
  Poisson-Gaussian noise, bleaching and lateral shifts; skipped with a note when the
  folder is absent;
* a real fluorescence z-stack without ground truth: ``stardist/data/images/img3d.tif``
  from the StarDist wheel on PyPI (fetched with ``pip download`` into a cache, used for
  evaluation only; skipped with a note when it cannot be fetched).

Methods: ours (HF-Reg, HF-Seg pairwise and direct, HF-Reg + Near, max focus, Laplacian
pyramid, GFF, wavelet) and the external peers, installed for the benchmark only, never
as project dependencies: OpenFocus (PyPI, into a throwaway ``--target`` folder, run as a
separate process) and enfuse (Debian package ``enfuse``). A peer that is missing is
reported as such.

Reported: SSIM and PSNR to the ground truth where it exists, the no-reference metrics
(Q_MI, Q_TE, Q_NCIE, Q_G, Q_P, Q_S, Q_CB, n-source forms), and the fusion time per
megapixel per slice on this machine's CPU and, when one is present, GPU (the classical
methods in numpy and in torch on every device, the networks on every device). Writes
``benchmarks/results/fusion.json``, ``docs/fusion.md`` and ``docs/images/fusion_*.png``.

``--model KIND=PATH`` runs the learned rows of ``KIND`` with that checkpoint instead of the
shipped one; ``--baseline KIND=PATH`` adds rows ``KIND (baseline)`` (e.g. the previously
shipped model) to compare old and new in one run. The page records the command, the
commit, the date and the SHA-256 of every model file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_cellfocus.core.fusion_data import load_real_image, real_focus_stack, real_image_split
from napari_cellfocus.core.fusion_metrics import NO_REFERENCE, fusion_metrics
from napari_cellfocus.core.simulate import simulate_focus_stack
from napari_cellfocus.engine.fusion import (
    DEFAULT_METHOD,
    FusionModel,
    default_fusion_model_path,
    fuse_stack,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fusion.json"
DOC = ROOT / "docs" / "fusion.md"
IMAGES = ROOT / "docs" / "images"
CACHE = Path(tempfile.gettempdir()) / "cellfocus_bench_cache"
OPENFOCUS_SITE = CACHE / "openfocus_site"

#: Simulated stacks: name -> simulate_focus_stack keyword arguments.
SIM_STACKS = {
    "sim-8bit-7z": {"n_slices": 7, "seed": 101},
    "sim-16bit-9z-crowded": {
        "n_slices": 9,
        "seed": 102,
        "bit_depth": 16,
        "density": 0.4,
        "photons": 150.0,
    },
    "sim-8bit-5z-lowsnr": {
        "n_slices": 5,
        "seed": 103,
        "photons": 40.0,
        "defocus_per_slice": 2.5,
        "density": 0.12,
    },
}
#: Real-content stacks: name -> (index from the END of the held-out validation list,
#: real_focus_stack keyword arguments, seed). Model selection during training used the
#: first validation images (scripts/train_fusion_real.py), these come from the other end.
REAL_STACKS = {
    "real-8bit-7z-gauss": (1, {"n_slices": 7, "psf": "gaussian", "defocus_per_slice": 1.5,
                               "bit_depth": 8, "photons": 150.0, "read_noise": 1.0}, 201),
    "real-16bit-9z-disc-bleach": (2, {"n_slices": 9, "psf": "disc", "defocus_per_slice": 2.0,
                                      "bit_depth": 16, "photons": 400.0, "read_noise": 2.0,
                                      "bleach": 0.02}, 202),
    "real-8bit-5z-lowsnr-shift": (3, {"n_slices": 5, "psf": "mixed", "defocus_per_slice": 2.5,
                                      "bit_depth": 8, "photons": 30.0, "read_noise": 2.0,
                                      "shift_std": 0.4}, 203),
    "real-16bit-7z-shift-bleach": (4, {"n_slices": 7, "psf": "gaussian",
                                       "defocus_per_slice": 1.0, "bit_depth": 16,
                                       "photons": 1000.0, "read_noise": 1.0, "bleach": 0.04,
                                       "shift_std": 0.5}, 204),
}  # fmt: skip
DEFAULT_REAL_DATA = ROOT.parent / "shared" / "data" / "dsb2018-train"
OURS = {
    "hf-reg": ("hf-reg", {}),
    "hf-reg+near": ("hf-reg", {"near_post": True}),
    "hf-seg": ("hf-seg", {"mode": "direct"}),
    "hf-seg pairwise": ("hf-seg", {"mode": "pairwise"}),
    "max-focus": ("max-focus", {}),
    "pyramid": ("pyramid", {}),
    "gff": ("gff", {}),
    "wavelet": ("wavelet", {}),
}
#: The Limits sentence on where the classical methods run (docs/fusion.md).
CLASSICAL_IMPLEMENTATIONS = (
    "Classical methods have two implementations that give the same images up to float32 "
    "rounding: numpy (the reference; rows named by the method alone) and torch on any "
    "device (`engine/fusion_classical.py`; rows `method (torch, device)` when timed, "
    "with the time only). "
    '`fuse_stack(..., device="auto")`, the widget and `cellfocus fuse --device auto` run '
    "them in torch on a CUDA GPU when there is one and in numpy otherwise (numpy is faster "
    "than torch on a 2-core CPU; see the speed table below); a device named explicitly (`cpu`, `cuda`) runs the torch code "
    "there, `numpy` (and `cellfocus fuse` without `--device`) the numpy code."
)
OPENFOCUS_METHODS = ("stackmffv3", "openfocus_b", "openfocus_c", "dtcwt", "guided_filter")
OPENFOCUS_PACKAGES = (
    "openfocus==1.72.0",
    "opencv-python-headless",
    "dtcwt",
    "six",
    "imageio",
    "pillow-heif",
    "rawpy",
)


# --------------------------------------------------------------------------- data
def simulated_stacks(size: int) -> dict[str, dict]:
    out = {}
    for name, kw in SIM_STACKS.items():
        scene = simulate_focus_stack((size, size), **kw)
        out[name] = {
            "stack": scene.stack,
            "truth": scene.all_in_focus,
            "depth": scene.depth,
            "params": {k: v for k, v in kw.items()},
            "family": "sim",
        }
    return out


def real_content_stacks(root: Path, quick: bool) -> tuple[dict[str, dict], str | None]:
    """The real-content family (see REAL_STACKS), or ({}, why not)."""
    if not (root / "index.json").exists():
        return {}, f"real-content stacks skipped: {root} not found"
    _, val = real_image_split(root)
    out = {}
    for name, (back, kw, seed) in REAL_STACKS.items():
        file = val[-back]
        image, labels = load_real_image(root, file)
        side = 128 if quick else 320
        image, labels = image[:side, :side], labels[:side, :side]
        st = real_focus_stack(image, labels, seed, **kw)
        out[name] = {
            "stack": st.stack,
            "truth": st.truth,
            "depth": st.depth,
            "params": {**kw, "seed": seed, "image": file},
            "family": "real",
        }
    return out, None


def _pip(*args: str) -> bool:
    cmd = [sys.executable, "-m", "pip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900).returncode == 0


def real_stack() -> tuple[np.ndarray | None, str]:
    """StarDist's real 3D nuclei test stack (evaluation only), or None and why not."""
    target = CACHE / "stardist_img3d.tif"
    if not target.exists():
        dl = CACHE / "dl"
        dl.mkdir(parents=True, exist_ok=True)
        if not _pip("download", "--no-deps", "stardist==0.9.2", "-d", str(dl)):
            return None, "StarDist wheel could not be downloaded (no network?)"
        import zipfile

        wheel = next(dl.glob("stardist-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read("stardist/data/images/img3d.tif"))
    return tifffile.imread(target), "stardist 0.9.2 wheel, stardist/data/images/img3d.tif"


# --------------------------------------------------------------------------- peers
def ensure_openfocus() -> str | None:
    """Install OpenFocus into a throwaway target folder; returns None or why not."""
    if (OPENFOCUS_SITE / "core" / "cli.py").exists():
        return None
    ok = _pip("install", "--no-deps", "--target", str(OPENFOCUS_SITE), *OPENFOCUS_PACKAGES)
    return None if ok else "pip install of OpenFocus (and its small dependencies) failed"


def run_openfocus(stack: np.ndarray, method: str, work: Path) -> tuple[np.ndarray, float]:
    """Fuse with OpenFocus's command line in its own process (its torch is ours)."""
    src = work / "slices"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for i, s in enumerate(stack):
        tifffile.imwrite(src / f"s{i:03d}.tif", s)
    out = work / f"of_{method}.tif"
    env = dict(
        os.environ,
        PYTHONPATH=str(OPENFOCUS_SITE),
        KMP_DUPLICATE_LIB_OK="TRUE",
        OMP_NUM_THREADS=str(torch.get_num_threads()),  # the threads our methods get
    )
    # OpenFocus's own CLI, with its fusion call run twice (the first warms up, as ours do)
    # and the second timed with perf_counter.
    driver = (
        "import sys, time\n"
        "import core.cli as cli\n"
        "import core.multi_focus_fusion as mff\n"
        "fuse = mff.MultiFocusFusion.fuse\n"
        "def timed(self, *a, **k):\n"
        "    fuse(self, *a, **k)\n"
        "    t = time.perf_counter()\n"
        "    r = fuse(self, *a, **k)\n"
        "    print(f'FUSE_SECONDS {time.perf_counter() - t:.6f}', flush=True)\n"
        "    return r\n"
        "mff.MultiFocusFusion.fuse = timed\n"
        "sys.exit(cli.main())\n"
    )
    cmd = [
        sys.executable,
        "-c",
        driver,
        "--input",
        str(src),
        "--output",
        str(out),
        "--method",
        method,
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=1800, cwd=str(OPENFOCUS_SITE)
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    found = re.search(r"FUSE_SECONDS ([0-9.]+)", proc.stdout + proc.stderr)
    fused = tifffile.imread(out)
    if fused.ndim == 3:  # OpenFocus writes RGB; our stacks are grey
        fused = fused[..., 0]
    return fused.astype(stack.dtype), float(found.group(1)) if found else wall


def run_enfuse(stack: np.ndarray, work: Path) -> tuple[np.ndarray, float]:
    """enfuse's focus-stacking recipe (contrast weight only, hard mask)."""
    src = work / "enfuse_in"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    files = []
    for i, s in enumerate(stack):
        files.append(str(src / f"s{i:03d}.tif"))
        tifffile.imwrite(files[-1], s)
    out = work / "enfuse.tif"
    cmd = [
        "enfuse",
        "--exposure-weight=0",
        "--saturation-weight=0",
        "--contrast-weight=1",
        "--hard-mask",
        "--contrast-window-size=5",
        "--gray-projector=l-star",
        "--compression=deflate",
        "-o",
        str(out),
        *files,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    fused = tifffile.imread(out)
    if fused.ndim == 3:  # grey + alpha
        fused = fused[..., 0]
    return fused.astype(stack.dtype), wall


# --------------------------------------------------------------------------- run
def timed_fuse(stack: np.ndarray, method: str, kwargs: dict, repeats: int = 3):
    """Fuse ``repeats`` times (fewer when one run takes over 5 s) and keep the fastest
    time: the machine is shared, and the minimum is the least disturbed run."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fuse_stack(stack, method, **kwargs)
        seconds = time.perf_counter() - start
        best = min(best, seconds)
        if seconds > 5.0:
            break
    return result, best


def timing(entry: dict, seconds: float) -> dict:
    n, ny, nx = entry["stack"].shape
    return {
        "seconds": round(seconds, 3),
        "s_per_mp_per_slice": round(seconds / (ny * nx / 1e6 * n), 4),
    }


def evaluate(entry: dict, fused: np.ndarray, seconds: float) -> dict:
    res = fusion_metrics(list(entry["stack"]), fused, reference=entry.get("truth"))
    res = {k: (round(float(v), 4) if np.isfinite(v) else None) for k, v in res.items()}
    return {**res, **timing(entry, seconds)}


def agreement(entry: dict, ref, result) -> dict:
    """How far a torch row's images are from the numpy reference's: largest |difference|
    as a fraction of the stack's range, and the fraction of equal depth-map pixels (its
    quality metrics would repeat the numpy row's)."""
    span = float(np.ptp(entry["stack"])) or 1.0
    diff = np.abs(result.fused.astype(np.float64) - ref.fused.astype(np.float64)).max()
    return {
        "max_abs_diff_vs_numpy": float(diff / span),
        "depth_agreement_vs_numpy": float(np.mean(result.depth == ref.depth)),
    }


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_all(
    quick: bool,
    real_root: Path = DEFAULT_REAL_DATA,
    model_paths: dict[str, Path] | None = None,
    baselines: dict[str, Path] | None = None,
    threads: int | None = None,
) -> dict:
    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))
    size = 160 if quick else 320
    stacks = simulated_stacks(size)
    notes: dict[str, str] = {}
    real_family, why = real_content_stacks(Path(real_root), quick)
    stacks.update(real_family)
    if why:
        notes["real-content"] = why
    real, real_source = real_stack()
    if real is not None:
        stacks["real-stardist-nuclei"] = {
            "stack": real,
            "truth": None,
            "depth": None,
            "params": {"source": real_source},
            "family": "noref",
        }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    model_paths = {
        k: Path((model_paths or {}).get(k, default_fusion_model_path(k)))
        for k in ("hf-seg", "hf-reg")
    }
    baselines = {k: Path(v) for k, v in (baselines or {}).items()}
    models = {
        (k, d, tag): FusionModel(path, kind=k, device=d)
        for tag, paths in (("", model_paths), (" (baseline)", baselines))
        for k, path in paths.items()
        for d in devices
    }
    rows = dict(OURS)
    for kind in baselines:
        for label, (method, kw) in OURS.items():
            if method == kind:
                rows[f"{label} (baseline)"] = (method, {**kw, "_tag": " (baseline)"})
    of_problem = ensure_openfocus()
    if of_problem:
        notes["openfocus"] = of_problem
    if shutil.which("enfuse") is None:
        notes["enfuse"] = "enfuse not found (apt-get install -y enfuse)"
    results: dict[str, dict] = {}
    fused_images: dict[str, dict[str, np.ndarray]] = {}
    depths: dict[str, dict[str, np.ndarray]] = {}
    work = Path(tempfile.mkdtemp(prefix="cellfocus_bench_"))
    for sname, entry in stacks.items():
        results[sname] = {}
        fused_images[sname] = {}
        depths[sname] = {}
        stack = entry["stack"]
        ref = None
        for label, (method, kw) in rows.items():
            kw = dict(kw)
            tag = kw.pop("_tag", "")
            learned = method in ("hf-seg", "hf-reg")
            # classical methods: the numpy reference ("numpy", row named by the method
            # alone), then the torch implementation on every device of the run
            for dev in devices if learned else ["numpy", *devices]:
                if learned:
                    extra = {"model": models[(method, dev, tag)], **kw}
                    key = label if dev == "cpu" else f"{label} ({dev})"
                else:
                    extra = {"device": dev, **kw}
                    key = label if dev == "numpy" else f"{label} (torch, {dev})"
                if dev != "numpy":
                    fuse_stack(stack[:2, :64, :64], method, **extra)  # warm-up
                r, seconds = timed_fuse(stack, method, extra)
                if learned or dev == "numpy":
                    results[sname][key] = evaluate(entry, r.fused, seconds)
                    ref = r
                else:  # same images as numpy: time and agreement only
                    results[sname][key] = {**agreement(entry, ref, r), **timing(entry, seconds)}
                if key == label:
                    fused_images[sname][label] = r.fused
                    depths[sname][label] = r.depth
                print(sname, key, results[sname][key], flush=True)
        if not of_problem:
            for m in OPENFOCUS_METHODS:
                key = f"OpenFocus {m}"
                try:
                    fused, seconds = run_openfocus(stack, m, work)
                except Exception as err:  # report the peer's failure, keep going
                    results[sname][key] = {"error": str(err)[:200]}
                    continue
                results[sname][key] = evaluate(entry, fused, seconds)
                fused_images[sname][key] = fused
                print(sname, key, results[sname][key], flush=True)
        if "enfuse" not in notes:
            try:
                fused, seconds = run_enfuse(stack, work)
                results[sname]["enfuse"] = evaluate(entry, fused, seconds)
                fused_images[sname]["enfuse"] = fused
            except Exception as err:
                results[sname]["enfuse"] = {"error": str(err)[:200]}
            print(sname, "enfuse", results[sname]["enfuse"], flush=True)
        # single slices as a floor (the "dummy" methods of T Fig. 47)
        if entry.get("truth") is not None:
            best = max(
                range(len(stack)),
                key=lambda k: fusion_metrics(
                    [stack[0], stack[-1]], stack[k], entry["truth"], which=[]
                )["SSIM"],
            )
            results[sname]["best single slice"] = evaluate(entry, stack[best], 0.0)
    shutil.rmtree(work, ignore_errors=True)
    meta = {
        "size": size,
        "stacks": {
            k: {
                "shape": list(v["stack"].shape),
                "dtype": str(v["stack"].dtype),
                "family": v["family"],
                **v["params"],
            }
            for k, v in stacks.items()
        },
        "models": {
            f"{k}{tag}": {"file": _rel(p), "sha256": _sha256(p)}
            for tag, paths in (("", model_paths), (" (baseline)", baselines))
            for k, p in paths.items()
        },
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "notes": notes,
        "default_method": DEFAULT_METHOD,
        "python": platform.python_version(),
    }
    return {
        "meta": meta,
        "results": results,
        "_fused": fused_images,
        "_depth": depths,
        "_stacks": stacks,
    }


# --------------------------------------------------------------------------- report
METRICS = ("SSIM", "PSNR", *NO_REFERENCE)


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def mean_table(results: dict, names: list[str]) -> dict[str, dict[str, float]]:
    methods: list[str] = []
    for n in names:
        for m in results[n]:
            if m not in methods:
                methods.append(m)
    table = {}
    for m in methods:
        row = {}
        for key in (*METRICS, "s_per_mp_per_slice"):
            vals = [results[n][m].get(key) for n in names if m in results[n]]
            vals = [v for v in vals if v is not None]
            if vals and all("error" not in results[n].get(m, {}) for n in names):
                row[key] = float(np.mean(vals))
        table[m] = row
    return table


def markdown_table(table: dict, keys: tuple[str, ...]) -> str:
    head = (
        "| method | "
        + " | ".join(k.replace("s_per_mp_per_slice", "s / MP / slice") for k in keys)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    best = {}
    for k in keys:
        vals = [(row[k], m) for m, row in table.items() if k in row and m != "best single slice"]
        if vals:
            best[k] = (min if k == "s_per_mp_per_slice" else max)(vals)[1]
    for m, row in table.items():
        cells = []
        for k in keys:
            text = _fmt(row.get(k))
            cells.append(f"**{text}**" if best.get(k) == m else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(run: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMAGES.mkdir(parents=True, exist_ok=True)
    out = {}
    sname = "sim-8bit-7z"
    entry = run["_stacks"][sname]
    fused = run["_fused"][sname]
    ny = entry["stack"].shape[1]
    c = min(ny, 160)
    y0 = x0 = (ny - c) // 2
    crop = (slice(y0, y0 + c), slice(x0, x0 + c))
    panels = [
        ("ground truth", entry["truth"]),
        ("middle slice", entry["stack"][len(entry["stack"]) // 2]),
    ]
    for m in (
        "hf-reg",
        "hf-seg",
        "gff",
        "pyramid",
        "enfuse",
        "OpenFocus stackmffv3",
        "OpenFocus openfocus_b",
        "max-focus",
    ):
        if m in fused:
            panels.append((m, fused[m]))
    cols = 5
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows))
    lo, hi = np.percentile(entry["truth"], [0.5, 99.8])
    for ax, (title, img) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(img[crop], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=10)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path = IMAGES / "fusion_crops.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    out["crops"] = path.name
    # depth maps
    dep = run["_depth"][sname]
    truth_depth = entry["depth"]
    n = len(entry["stack"]) - 1
    panels = [("true depth (nuclei)", np.where(truth_depth >= 0, truth_depth, np.nan))]
    for m in ("hf-seg", "hf-seg pairwise", "hf-reg", "max-focus", "gff"):
        if m in dep:
            panels.append((m, dep[m]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(img[crop], cmap="turbo", vmin=0, vmax=n, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    path = IMAGES / "fusion_depth.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    out["depth"] = path.name
    reals = [k for k, v in run["_stacks"].items() if v.get("family") == "real"]
    if reals:
        sname = reals[0]
        entry = run["_stacks"][sname]
        fused = run["_fused"][sname]
        ny, nx = entry["truth"].shape
        c = min(ny, nx, 160)
        crop = (slice((ny - c) // 2, (ny - c) // 2 + c), slice((nx - c) // 2, (nx - c) // 2 + c))
        panels = [
            ("ground truth", entry["truth"]),
            ("middle slice", entry["stack"][len(entry["stack"]) // 2]),
        ]
        for m in ("hf-seg", "hf-seg (baseline)", "hf-reg", "gff", "OpenFocus stackmffv3",
                  "OpenFocus guided_filter", "enfuse", "max-focus"):  # fmt: skip
            if m in fused:
                panels.append((m, fused[m]))
        cols = 5
        rows_n = int(np.ceil(len(panels) / cols))
        fig, axes = plt.subplots(rows_n, cols, figsize=(3 * cols, 3.2 * rows_n))
        lo, hi = np.percentile(entry["truth"], [0.5, 99.8])
        for ax, (title, img) in zip(axes.ravel(), panels, strict=False):
            ax.imshow(img[crop], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(title, fontsize=10)
        for ax in axes.ravel():
            ax.axis("off")
        fig.tight_layout()
        path = IMAGES / "fusion_realcontent_crops.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out["realcontent"] = path.name
    if "real-stardist-nuclei" in run["_fused"]:
        entry = run["_stacks"]["real-stardist-nuclei"]
        fused = run["_fused"]["real-stardist-nuclei"]
        panels = [("slice 10", entry["stack"][10]), ("slice 20", entry["stack"][20])]
        for m in ("hf-reg", "hf-seg", "gff", "enfuse", "OpenFocus stackmffv3"):
            if m in fused:
                panels.append((m, fused[m]))
        lo, hi = np.percentile(entry["stack"], [0.5, 99.8])
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
        for ax, (title, img) in zip(axes, panels, strict=True):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        path = IMAGES / "fusion_real.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out["real"] = path.name
    return out


def _family(run: dict, family: str) -> list[str]:
    return [k for k, v in run["meta"]["stacks"].items() if v.get("family") == family]


def _is_variant(method: str, default: str) -> bool:
    """Rows of the default method itself, not peers: its own row, its other mode
    (``hf-seg pairwise``), its runs on other devices and the previously shipped model of
    it (``… (baseline)``)."""
    return method.startswith(default)


def done_when(run: dict) -> list[str]:
    """The Done-when lines of issue 14, each with its figures and whether it holds.

    Peers: every method of the run that is not the default method (the classical ones,
    OpenFocus, enfuse, HF-Reg); the single best slice is a floor, not a method.
    Real-content: the default's mean SSIM above every peer's by >= 0.01 (and per stack,
    counted); simulated: the mean best or within 0.005 of the best peer.
    """
    res = run["results"]
    default = run["meta"]["default_method"]
    lines = []
    for family, rule in (("real", "above every peer by >= 0.01"), ("sim", "best or within 0.005")):
        names = _family(run, family)
        if not names:
            lines.append(f"- {family}: no stacks in this run.")
            continue
        table = mean_table(res, names)
        ours = table.get(default, {}).get("SSIM")
        peers = {
            m: row["SSIM"]
            for m, row in table.items()
            if "SSIM" in row and not _is_variant(m, default) and m != "best single slice"
        }
        top = max(peers, key=peers.get)
        margin = ours - peers[top]
        need = 0.01 if family == "real" else -0.005
        holds = margin >= need
        per, ok = [], 0
        for n in names:
            row = {m: r.get("SSIM") for m, r in res[n].items() if r.get("SSIM") is not None}
            p = {m: v for m, v in row.items() if not _is_variant(m, default)}
            p.pop("best single slice", None)
            t = max(p, key=p.get)
            d = row.get(default, float("nan")) - p[t]
            ok += d >= need
            per.append(f"{n}: {row.get(default, float('nan')):.3f} vs {t} {p[t]:.3f} ({d:+.3f})")
        label = "real-content" if family == "real" else "simulated"
        lines.append(
            f"- {label} stacks ({rule}): mean SSIM of `{default}` {ours:.3f}, best peer "
            f"{top} {peers[top]:.3f}, margin {margin:+.3f}: "
            f"**{'holds' if holds else 'does not hold'}** on the mean; per stack "
            f"{ok} of {len(names)} ({'; '.join(per)})."
        )
    return lines


def _per_stack_rows(run: dict, names: list[str], default: str) -> list[str]:
    res, meta = run["results"], run["meta"]
    out = []
    for s in names:
        ssims = {
            m: r.get("SSIM")
            for m, r in res[s].items()
            if r.get("SSIM") is not None and m != "best single slice"
        }
        top = max(ssims, key=ssims.get)
        shape = " x ".join(map(str, meta["stacks"][s]["shape"]))
        out.append(
            f"| {s} | {shape} {meta['stacks'][s]['dtype']} | {top} ({ssims[top]:.3f}) | "
            f"{ssims.get(default, float('nan')):.3f} |"
        )
    return out


def _losses(table: dict, default: str, keys: tuple[str, ...]) -> list[str]:
    out = []
    for k in keys:
        vals = [(row[k], m) for m, row in table.items() if k in row and m != "best single slice"]
        if not vals or k not in table.get(default, {}):
            continue
        win = (min if k == "s_per_mp_per_slice" else max)(vals)
        if win[1] != default:
            out.append(
                f"{k} (best: {win[1]}, {_fmt(win[0])}; {default}: {_fmt(table[default][k])})"
            )
    return out


def _training_table() -> list[str]:
    training = ROOT / "benchmarks" / "results" / "fusion_training.json"
    if not training.exists():
        return []
    lines = [
        "| model | steps | wall time on the CPU (s) | final loss | best validation SSIM | data |",
        "|---|---|---|---|---|---|",
    ]
    entries = json.loads(training.read_text())
    for e in entries:
        val = e.get("best_val_ssim")
        lines.append(
            f"| {e['kind']} | {e['steps']} | {e['seconds']} | {e['final_loss']:.3f} | "
            f"{'—' if val is None else f'{val:.3f}'} | {e.get('data', '')} |"
        )
    notes = [f"{e['kind']}: {e['selection']}" for e in entries if e.get("selection")]
    return [*lines, "", *([("Model selection. " + "; ".join(notes) + "."), ""] if notes else [])]


def _new_vs_baseline(run: dict) -> list[str]:
    """Mean SSIM and time of each learned row next to its ``(baseline)`` row, per family."""
    res = run["results"]
    fams = [(f, _family(run, f)) for f in ("sim", "real")]
    fams = [(f, n) for f, n in fams if n]
    tables = {f: mean_table(res, n) for f, n in fams}
    rows = []
    for label in OURS:
        base = f"{label} (baseline)"
        if not any(base in t for t in tables.values()):
            continue
        cells = []
        for f, _ in fams:
            t = tables[f]
            new, old = t.get(label, {}), t.get(base, {})
            cells += [
                f"{_fmt(new.get('SSIM'))} / {_fmt(old.get('SSIM'))}",
                f"{_fmt(new.get('s_per_mp_per_slice'))} / {_fmt(old.get('s_per_mp_per_slice'))}",
            ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = []
    for f, _ in fams:
        name = "simulated" if f == "sim" else "real-content"
        head += [f"{name} SSIM new / previous", f"{name} s/MP/slice new / previous"]
    return [
        "New models against the previously shipped ones (same run, mean over each family):",
        "",
        "| row | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
        *rows,
        "",
    ]


def _hf_reg_note(run: dict) -> str:
    """Where HF-Reg stands against the classical methods and the peers, per family."""
    parts = []
    for family in ("sim", "real"):
        names = _family(run, family)
        if not names:
            continue
        table = mean_table(run["results"], names)
        reg = table.get("hf-reg", {}).get("SSIM")
        others = {
            m: r["SSIM"]
            for m, r in table.items()
            if "SSIM" in r and not m.startswith(("hf-", "best single"))
        }
        if reg is None or not others:
            continue
        top = max(others, key=others.get)
        word = "above" if reg > others[top] else "below"
        parts.append(
            f"{'simulated' if family == 'sim' else 'real-content'} stacks: HF-Reg SSIM "
            f"{reg:.3f}, {word} the best classical / external method ({top}, {others[top]:.3f})"
        )
    return ("Mean SSIM on the " + "; ".join(parts) + ".") if parts else ""


def write_doc(run: dict, figs: dict[str, str]) -> None:
    res = run["results"]
    meta = run["meta"]
    keys = (*METRICS, "s_per_mp_per_slice")
    default = meta["default_method"]
    sims, reals, norefs = (_family(run, f) for f in ("sim", "real", "noref"))
    notes = meta["notes"]
    models = meta.get("models", {})
    lines = [
        "# Multi-focus fusion",
        "",
        "`cellfocus fuse STACK.tif --out FUSED.tif [--depth DEPTH.tif] "
        "[--method hf-seg|hf-reg|max-focus|pyramid|gff|wavelet] [--axis 0]` and the **Fuse** "
        "dock widget turn a focus stack into one all-in-focus image (same XY shape and dtype "
        "as the stack: 8/16-bit stay 8/16-bit) plus a depth map (slice index of every pixel, "
        'float32). "Fuse then segment" hands the fused layer to **Segment**.',
        "",
        "![The Fuse dock on the simulated focus stack](images/widget_fuse.png)",
        "",
        "*The Fuse dock on the simulated 7-slice focus stack (File > Open Sample > CellFocus), "
        "with the default method. Its Device row says where the method runs (a learned method "
        "on the device chosen; a classical one in numpy on the CPU, or in torch on a CUDA GPU "
        "when there is one) and the memory in use.*",
        "",
        "## Methods",
        "",
        "| method | what | source |",
        "|---|---|---|",
        "| `hf-seg` (default) | U-Net predicts the 2-class focus map z of a pair (2C input "
        "channels); fused z0·xA + z1·xB (eq. 6.2); BCE (eq. 6.3); for n slices by default a "
        "*direct* whole-stack focus map: each slice against the stack mean, softmax over "
        "slices of the log-odds that the slice is the sharper (our extension, trained end to "
        "end, see below), else `--mode pairwise` | T 6.2.2, eq. 6.2-6.3 |",
        "| `hf-reg` | U-Net regresses the all-in-focus image from the two sources "
        "(2C channels); NPS loss (α = 6) + per-channel min/max terms; trained with noisy "
        "sources, meant to denoise as it fuses (joint denoising; see the benchmark for how "
        "far ours gets) | thesis T 6.2.2, eq. 6.4-6.5, 6.3.8 |",
        "| `hf-reg` + Near | each pixel snapped to the nearest source value (eq. 6.6): source "
        "pixels only | T eq. 6.6 |",
        "| n slices | iterated pairwise fusion f(f(x0, x1), x2)… (HF-Reg always, HF-Seg with "
        "`--mode pairwise`, where each pair runs in both source orders and the focus maps are "
        "averaged, so f(a, b) = f(b, a)) | T 6.2, 6.2.3 |",
        "| `max-focus` | per-pixel maximum of the Laplacian energy, depth map median-filtered "
        "(5 px) before taking pixels | classic EDF |",
        "| `pyramid` | Laplacian pyramid, max local energy per level, coarsest level averaged "
        "| Burt & Adelson 1983, Burt & Kolczynski 1993 |",
        "| `gff` | guided-filter fusion, r1 = 45, ε1 = 0.3, r2 = 7, ε2 = 1e-6, 31×31 base, "
        "3×3 Laplacian + 11×11 Gaussian (σ 5) saliency | Li, Kang, Hu 2013 |",
        "| `wavelet` | Haar DWT, area-based max-abs selection, 3×3 majority consistency check "
        "| Li, Manjunath, Mitra 1995 |",
        "",
        "## Built-in models",
        "",
        "Both networks are U-Nets of depth 4, width 12 with batch norm behind a 2x "
        "space-to-depth step (`build_fusion_model(space_to_depth=2)`: the 2C-channel pair is "
        "rearranged losslessly into 8C channels at half resolution and the outputs are put "
        "back to full resolution with a pixel shuffle), so the U-Net runs on a quarter of "
        "the pixels; at inference every batch norm is folded into its convolution "
        "(`engine.fusion.fold_batchnorm`, same outputs to float tolerance). About 275 k "
        "parameters, 1.1 MB per file. Trained on the CPU of the shared 2-core machine by "
        "`scripts/train_fusion_real.py` on **real-content** focus stacks and pairs "
        "(`core.fusion_data`: crops of the training part of dsb2018-train, split by image "
        "with `real_image_split`, seed 0, 86 of 428 images held out; every nucleus at its "
        "own depth, a smooth background depth map, Gaussian / disc / mixed defocus of "
        "0.5-3 px per slice, 3-9 slices, 8/16-bit, Poisson-Gaussian noise of 15-2000 "
        "photons, bleaching, lateral shifts) mixed with the simulator's stacks and pairs. "
        "HF-Seg (`engine.fusion_stack.StackFusionTrainer`) is trained on its default direct "
        "whole-stack mode end to end: cross-entropy of the softmax over slices against the "
        "slices whose noiseless image is nearest the truth, plus the L1 error of the fused "
        "image, plus the eq. 6.3 BCE of pairs in both orders (T 6.2.3) so the pairwise mode "
        "keeps its meaning. HF-Reg (`FusionTrainer`, eq. 6.4) adds the source mean to the "
        "U-Net output (a global skip, its last convolution starting at zero). Model "
        "selection: the validation SSIM on four stacks of the first held-out images (the "
        "benchmark's real-content stacks come from the other end of the held-out list). "
        "Steps and times: `benchmarks/results/fusion_training.json`.",
        "",
        *_training_table(),
        "## Benchmark",
        "",
        f"Command: `{meta.get('command', 'python benchmarks/bench_fusion.py')}`; commit "
        f"{meta.get('commit', 'unknown')}; {meta.get('date', '')}. One run, the same stacks "
        f"for every method. CPU: {meta['cpu']} with {meta['cpu_threads']} torch threads (a "
        "shared 2-core machine, loaded by other jobs during the run, so times are noisy; "
        "compare them within the table); "
        + (
            f"GPU: {meta['gpu']}."
            if meta["gpu"]
            else "no GPU was available for this run, so no GPU timings are reported."
        )
        + " Time is the fusion alone (no file I/O) per megapixel per slice, the fastest of up to "
        "three runs for our methods; for OpenFocus the second of two calls of its fusion step "
        "inside its own CLI (timed with perf_counter), for enfuse the wall time of the "
        "process (including reading and writing TIFFs).",
        "",
    ]
    if models:
        shipped = {}
        for kind in ("hf-seg", "hf-reg"):
            path = default_fusion_model_path(kind)
            if path.exists():
                shipped[_sha256(path)] = _rel(path)

        def where(v: dict) -> str:
            now = shipped.get(v["sha256"])
            return f" = the shipped `{now}`" if now and now != v["file"] else ""

        lines += [
            "Models: "
            + "; ".join(
                f"`{k}` = `{v['file']}` (sha256 {v['sha256'][:12]}{where(v)})"
                for k, v in models.items()
            )
            + ". Rows `… (baseline)` are the previously shipped models (trained on simulated "
            "data only, full-resolution width-8 U-Nets; the package's files up to commit "
            "8c7627a), run in the same benchmark.",
            "",
        ]
    lines += ["### Done when (issue 14)", "", *done_when(run), ""]
    lines += _new_vs_baseline(run)
    for family, names, title, blurb in (
        ("sim", sims, "Simulated stacks", "ground truth known; the simulator's nuclei at "
         "random depths, fresh noise in every slice"),
        ("real", reals, "Real-content stacks", "held-out dsb2018-train images (never used "
         "in training or model selection) made into focus stacks by "
         "`core.fusion_data.real_focus_stack`; ground truth = the real image"),
    ):  # fmt: skip
        if not names:
            continue
        table = mean_table(res, names)
        lines += [
            f"### {title}",
            "",
            f"{blurb}:",
            "",
            "| stack | shape | best SSIM | default (" + default + ") SSIM |",
            "|---|---|---|---|",
            *_per_stack_rows(run, names, default),
            "",
        ]
        if family == "real":
            lines += [
                "| stack | image | PSF | defocus px/slice | photons | read e- | bleach | "
                "shift σ px |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for n in names:
                p = meta["stacks"][n]
                lines.append(
                    f"| {n} | {p['image']} | {p['psf']} | {p['defocus_per_slice']} | "
                    f"{p['photons']:g} | {p['read_noise']:g} | {p.get('bleach', 0):g} | "
                    f"{p.get('shift_std', 0):g} |"
                )
            lines.append("")
        lines += [
            f"Mean over the {title.lower()} (higher is better except time; bold = best, the "
            "single best slice excluded):",
            "",
            markdown_table(table, keys),
            "",
        ]
        losses = _losses(table, default, keys)
        if losses:
            lines += [f"Where `{default}` loses here: " + "; ".join(losses) + ".", ""]
    lines += [
        "Reading the no-reference metrics: they reward agreement with the *sources*, blurred "
        "and noisy parts included (T 6.3.2, Fig. 47): a method that denoises or averages "
        "slices moves away from every noisy slice and scores lower on Q_MI / Q_TE / Q_NCIE / "
        "Q_S although it is closer to the truth (SSIM, PSNR); the single best slice scores "
        "high on several of them. Our Q_TE normalisation differs from Liu 2012 and our Q_P "
        "is a simplified version (global correlations), see `core/fusion_metrics.py`; values "
        "are not comparable with the thesis tables.",
        "",
    ]
    if norefs:
        rn = norefs[0]
        lines += [
            "### Real fluorescence z-stack without ground truth",
            "",
            f"{meta['stacks'][rn]['source']}, "
            f"{' x '.join(map(str, meta['stacks'][rn]['shape']))} "
            f"{meta['stacks'][rn]['dtype']}; a small stack of nuclei, evaluation only:",
            "",
            markdown_table(mean_table(res, [rn]), (*NO_REFERENCE, "s_per_mp_per_slice")),
            "",
            "On this tiny stack the per-megapixel times of the networks are dominated by "
            "per-call overhead, and with 31 sources Q_NCIE is set by the correlations among "
            "the slices, so it does not separate the methods.",
            "",
        ]
    if notes:
        lines += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + ".", ""]
    errors = sorted(
        {f"{m}: {r['error']}" for s in res.values() for m, r in s.items() if "error" in r}
    )
    if errors:
        lines += ["Peer failures: " + "; ".join(errors) + ".", ""]
    lines += [
        "## Example crops",
        "",
        "Simulated stack:",
        "",
        f"![fused crops]({'images/' + figs['crops']})",
        "",
        "Depth maps (slice index, turbo colour map):",
        "",
        f"![depth maps]({'images/' + figs['depth']})",
        "",
    ]
    if "realcontent" in figs:
        lines += [
            "Real-content stack (held-out image):",
            "",
            f"![real-content crops]({'images/' + figs['realcontent']})",
            "",
        ]
    if "real" in figs:
        lines += ["Real z-stack:", "", f"![real stack]({'images/' + figs['real']})", ""]
    lines += [
        "## Limits",
        "",
        "- The models are trained on fluorescent nuclei (real dsb2018 images and the "
        "simulator); on other samples (cytoplasm, tissue, brightfield) the classical methods "
        "may do better: compare them in the widget.",
        "- The real-content stacks are real images with *simulated* defocus, noise, bleaching "
        "and shifts (the image itself is the truth); a real acquisition also has scattering, "
        "out-of-focus haze from above and below the field and a depth-dependent PSF.",
        "- The new HF-Seg is trained mostly for its default direct mode (the second input "
        "is always the stack mean); its pairwise mode scores below the previous model's "
        "pairwise mode (table above): use the direct mode.",
        "- HF-Reg changes intensities (it averages and smooths); use Near, HF-Seg or a "
        "classical method when every output pixel must be a measured value. " + _hf_reg_note(run),
        "- " + CLASSICAL_IMPLEMENTATIONS,
        "",
    ]
    # Keep the CPU/GPU speed section that bench_fusion_speed.py writes into this page.
    old = DOC.read_text() if DOC.exists() else ""
    start, end = "<!-- fusion-speed:start -->", "<!-- fusion-speed:end -->"
    if start in old and end in old:
        lines += [old[old.index(start) : old.index(end) + len(end)], ""]
    DOC.write_text("\n".join(lines))


def _commit() -> str:
    """The repository's HEAD commit (short), "+ local changes" when the tree differs."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "benchmarks/bench_fusion.py"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head} + local changes" if dirty else head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small stacks (smoke test)")
    parser.add_argument(
        "--real-data",
        type=Path,
        default=DEFAULT_REAL_DATA,
        help="dsb2018-train folder (images/, masks/, index.json) for the real-content stacks",
    )
    parser.add_argument("--model", action="append", default=[], metavar="KIND=PATH")
    parser.add_argument("--baseline", action="append", default=[], metavar="KIND=PATH")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: min(2, CPUs))"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-render docs/fusion.md from benchmarks/results/fusion.json (no fusion run)",
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(RESULTS.read_text())
        figs = {
            key: name
            for key, name in (
                ("crops", "fusion_crops.png"),
                ("depth", "fusion_depth.png"),
                ("realcontent", "fusion_realcontent_crops.png"),
                ("real", "fusion_real.png"),
            )
            if (IMAGES / name).exists()
        }
        write_doc(saved, figs)
        print(f"wrote {DOC} from {RESULTS}")
        return

    def pairs(items: list[str]) -> dict[str, Path]:
        out = {}
        for item in items:
            kind, _, path = item.partition("=")
            if kind not in ("hf-seg", "hf-reg") or not path:
                parser.error(f"expected hf-seg=PATH or hf-reg=PATH, got {item!r}")
            out[kind] = Path(path)
        return out

    run = run_all(
        args.quick, args.real_data, pairs(args.model), pairs(args.baseline), args.threads
    )
    run["meta"]["command"] = "python benchmarks/bench_fusion.py " + " ".join(sys.argv[1:])
    run["meta"]["date"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    run["meta"]["commit"] = _commit()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": run["meta"], "results": run["results"]}, indent=1))
    figs = figures(run)
    write_doc(run, figs)
    print(f"wrote {RESULTS}, {DOC}")


if __name__ == "__main__":
    main()
