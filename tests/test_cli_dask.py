"""``cellfocus predict --workers N``: the images of a batch on a dask LocalCluster give the
same labels (bitwise), tables and counts CSV as the serial loop, a bad file is skipped and
reported the same way; without dask.distributed the command stops with one line naming the
``cluster`` extra. Run as processes on 64-px simulated images (torch on one thread)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import ONE_THREAD, run_cli
from napari_cellfocus.core.simulate import simulate_cells

pytest.importorskip("distributed")

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """a.tif, b.tif, c.tif (simulated nuclei, 64 px) and bad.tif (not an image)."""
    root = tmp_path_factory.mktemp("images")
    for i, name in enumerate(NAMES):
        tifffile.imwrite(root / f"{name}.tif", simulate_cells(shape=(64, 64), seed=11 + i).image)
    (root / "bad.tif").write_text("not a TIFF")
    return root


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The same batch serially and on a LocalCluster of 2 workers, with --table."""
    done = {}
    for how, extra in (("serial", ()), ("dask", ("--workers", "2"))):
        out = tmp_path_factory.mktemp(how)
        res = run_cli(
            "predict", str(images), "--out", str(out), "--table", "--device", "cpu", *extra,
            one_thread=True, timeout=300,
        )  # fmt: skip
        done[how] = out, res
    return done


def test_both_runs_skip_the_bad_file_and_exit_1(runs, images):
    for how, (_, res) in runs.items():
        assert res.returncode == 1, (how, res.stderr)
        assert f"skipped {images / 'bad.tif'}" in res.stderr, (how, res.stderr)
        assert "3 of 4 images segmented" in res.stderr, (how, res.stderr)
        assert "Traceback" not in res.stderr, (how, res.stderr)
    assert "2 local dask worker(s)" in runs["dask"][1].stderr


def test_cluster_labels_are_the_serial_labels_bitwise(runs):
    (serial, _), (dask, _) = runs["serial"], runs["dask"]
    for name in NAMES:
        a = tifffile.imread(serial / f"{name}_labels.tif")
        b = tifffile.imread(dask / f"{name}_labels.tif")
        assert a.dtype == b.dtype and a.max() > 0
        np.testing.assert_array_equal(a, b)
        # the tables, written by the workers
        s, d = (f / f"{name}_cells.csv" for f in (serial, dask))
        assert s.read_text() == d.read_text()
    assert not (dask / "bad_labels.tif").exists()


def test_cluster_counts_csv_is_the_serial_one(runs):
    (serial, res_s), (dask, res_d) = runs["serial"], runs["dask"]
    text = (serial / "counts.csv").read_text()
    assert (dask / "counts.csv").read_text() == text
    assert len(text.splitlines()) == 1 + len(NAMES)  # header and one row per good image
    # the per-image lines, in the order of the images, as the serial run printed them
    lines = [ln for ln in res_s.stdout.splitlines() if " cells" in ln]
    assert len(lines) == len(NAMES)
    got = [ln for ln in res_d.stdout.splitlines() if " cells" in ln]
    assert got == [ln.replace(str(serial), str(dask)) for ln in lines]


def test_an_existing_cluster_by_its_address(runs, images, tmp_path):
    """``--dask ADDRESS``: a scheduler started elsewhere (here a LocalCluster of this test
    process, one worker), the same labels and counts as the serial run for one image."""
    import logging

    from distributed import LocalCluster

    serial, _ = runs["serial"]
    out = tmp_path / "a_labels.tif"
    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        res = run_cli(
            "predict", str(images / "a.tif"), "--out", str(out), "--device", "cpu",
            "--dask", cluster.scheduler_address, one_thread=True, timeout=300,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"dask cluster at {cluster.scheduler_address}" in res.stderr
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(serial / "a_labels.tif"))
    row = (tmp_path / "a_labels_counts.csv").read_text().splitlines()[1]
    assert row in (serial / "counts.csv").read_text().splitlines()


def _cli_without_distributed(*args: str) -> subprocess.CompletedProcess:
    """``cellfocus ARGS`` in a process where ``import distributed`` fails."""
    code = (
        "import sys; sys.modules['distributed'] = None; "
        "from napari_cellfocus.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **ONE_THREAD},
    )


@pytest.mark.parametrize("option", [("--workers", "2"), ("--dask", "tcp://127.0.0.1:8786")])
def test_missing_extra_is_one_line_naming_it(images, tmp_path, option):
    out = tmp_path / "out"
    res = _cli_without_distributed("predict", str(images / "a.tif"), "--out", str(out), *option)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "'cluster' extra" in lines[0] and "napari-cellfocus[cluster]" in lines[0]
    assert not out.exists()  # stopped before any work


def test_workers_must_be_positive(images, tmp_path):
    res = run_cli("predict", str(images / "a.tif"), "--out", str(tmp_path / "o"), "--workers", "0")
    assert res.returncode == 2
    assert "--workers 0" in res.stderr and "Traceback" not in res.stderr


def test_worker_loads_the_model_once():
    from napari_cellfocus.cli_dask import worker_segmenter

    first = worker_segmenter("default", "cpu", None)
    assert worker_segmenter("default", "cpu", None) is first
