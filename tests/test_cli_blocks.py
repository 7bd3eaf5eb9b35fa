"""``cellfocus predict --blocks``: a 2D image segmented block by block, as a process."""

from __future__ import annotations

import numpy as np
import tifffile

from cli_helpers import read_rows, run_cli
from napari_cellfocus.core.simulate import simulate_cells


def test_predict_in_blocks_writes_labels_counts_and_table(tmp_path):
    scene = simulate_cells((512, 512), seed=5)
    tifffile.imwrite(tmp_path / "img.tif", scene.image)
    out = tmp_path / "out"
    r = run_cli(
        "predict",
        str(tmp_path / "img.tif"),
        "--out",
        str(out),
        "--blocks",
        "on",
        "--block-size",
        "256",
        "--diameter",
        "20",
        "--table",
    )
    assert r.returncode == 0, r.stderr
    labels = tifffile.imread(out / "img_labels.tif")
    n = len(np.unique(labels)) - 1
    assert labels.shape == (512, 512) and labels.dtype == np.int32 and n > 50
    assert f"img.tif: {n} cells" in r.stdout and "in 4 blocks of 256 px" in r.stdout
    (row,) = read_rows(out / "counts.csv")
    assert int(row["count"]) == n and float(row["diameter_px"]) == 20.0
    cells = read_rows(out / "img_cells.csv")
    assert len(cells) == n
    assert sum(int(c["area"]) for c in cells) == np.count_nonzero(labels)


def test_predict_in_blocks_refuses_probs_and_too_little_memory(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((300, 300), np.uint16))
    image, out = str(tmp_path / "img.tif"), str(tmp_path / "l.tif")
    r = run_cli("predict", image, "--out", out, "--blocks", "on", "--probs", str(tmp_path / "p"))
    assert r.returncode == 2
    assert "img.tif: is segmented in blocks" in r.stderr and "--probs" in r.stderr
    assert "Traceback" not in r.stderr
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "100M")  # run_cli passes the environment on
    r = run_cli("predict", image, "--out", out)
    assert r.returncode == 2, r.stderr
    assert "img.tif: segmenting this 300 x 300 uint16 image in blocks needs about" in r.stderr
    assert "0.1 GiB is available" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "l.tif").exists()
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "lots")
    r = run_cli("predict", image, "--out", out)
    assert r.returncode == 2 and "CELLFOCUS_MEMORY_LIMIT: expected a size" in r.stderr
