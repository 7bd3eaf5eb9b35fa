"""Issue 15: ``cellfocus train``, ``simulate``, ``demo`` and ``evaluate --csv`` follow the
output policy of ``core.outputs``: an existing file is replaced only with ``--overwrite``,
an output that cannot be written is refused, all before any work, and files are written
atomically (no temporary file left behind).

Refusals are checked in-process (they come before torch is imported or a model runs),
and once as a process for the one-line message without a traceback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import run_cli
from napari_cellfocus.cli import DEMO_FILES, main, simulation_outputs
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(capsys, *argv: str) -> str:
    """``cellfocus ARGV`` in-process exits 2 with one error line (no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("cellfocus: error:")]
    assert len(errors) == 1, err
    return errors[0]


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    scene = simulate_cells(shape=(64, 64), seed=2)
    tifffile.imwrite(tmp_path / "img.tif", scene.image)
    tifffile.imwrite(tmp_path / "lab.tif", scene.labels)
    return tmp_path / "img.tif", tmp_path / "lab.tif"


# --------------------------------------------------------------------------- train
def test_train_refuses_an_existing_model_without_overwrite(pair, tmp_path, capsys):
    img, lab = pair
    model = tmp_path / "m.pt"
    model.write_bytes(b"my model")
    args = ["train", str(img), "--labels", str(lab), "--out", str(model), "--steps", "500"]
    err = refused(capsys, *args)
    assert str(model) in err and "--overwrite" in err and "m.previous.pt" in err
    assert model.read_bytes() == b"my model"
    assert not (tmp_path / "m.previous.pt").exists()
    # --overwrite replaces models only: a TIFF is still refused, and an input always
    note = tmp_path / "note.tif"
    note.write_bytes(b"x")
    err = refused(capsys, *args[:5], str(note), "--overwrite")
    assert "not a model file" in err and note.read_bytes() == b"x"
    err = refused(capsys, *args[:5], str(lab), "--overwrite")
    assert "is the input" in err and str(lab) in err


def test_train_overwrite_keeps_the_previous_model(pair, tmp_path):
    """As a process: the existing model is copied to NAME.previous.pt, then replaced."""
    img, lab = pair
    model = tmp_path / "m.pt"
    fast = ["--steps", "1", "--batch-size", "1", "--crop-size", "48", "--device", "cpu"]
    cmd = ["train", str(img), "--labels", str(lab), "--out", str(model), *fast]
    assert run_cli(*cmd, one_thread=True).returncode == 0
    first = digest(model)
    res = run_cli(*cmd, one_thread=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("cellfocus: error: --out")
    assert digest(model) == first
    res = run_cli(*cmd, "--steps", "2", "--overwrite", one_thread=True)
    assert res.returncode == 0, res.stderr
    assert digest(tmp_path / "m.previous.pt") == first and digest(model) != first
    assert load_checkpoint(model)[1].training["last_run"]["steps_done"] == 2
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- simulate
def test_simulation_outputs_names_every_file(tmp_path):
    assert [p.name for _, p in simulation_outputs(tmp_path, 2, False)] == [
        "sim_000.tif",
        "sim_000_labels.tif",
        "sim_001.tif",
        "sim_001_labels.tif",
    ]
    names = [p.name for _, p in simulation_outputs(tmp_path, 1, True)]
    assert names == [
        "sim_000_stack.tif",
        "sim_000_all_in_focus.tif",
        "sim_000_depth.tif",
        "sim_000_labels.tif",
    ]


def test_simulate_refuses_existing_files_before_writing_any(tmp_path, capsys):
    """The second image's labels exist (say, hand-corrected): nothing is written, not
    even the first image, and the message names that file."""
    out = tmp_path / "sim"
    out.mkdir()
    mine = out / "sim_001_labels.tif"
    tifffile.imwrite(mine, np.ones((8, 8), np.uint16))
    before = digest(mine)
    args = ["simulate", "--out", str(out), "-n", "2", "--size", "48"]
    err = refused(capsys, *args)
    assert str(mine) in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["sim_001_labels.tif"]
    assert digest(mine) == before
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "sim_000.tif",
        "sim_000_labels.tif",
        "sim_001.tif",
        "sim_001_labels.tif",
    ]
    assert tifffile.imread(mine).shape == (48, 48) and temporaries(out) == []


def test_simulate_refuses_a_file_as_folder_and_bad_counts(tmp_path, capsys):
    note = tmp_path / "note.txt"
    note.write_text("x")
    assert "is a file" in refused(capsys, "simulate", "--out", str(note), "-n", "1")
    err = refused(capsys, "simulate", "--out", str(note / "sub"), "-n", "1")
    assert "not a folder" in err and str(note) in err
    assert "-n must be >= 1" in refused(capsys, "simulate", "--out", str(tmp_path), "-n", "0")
    assert note.read_text() == "x"


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid"), reason="POSIX only")
def test_simulate_into_a_read_only_folder_is_refused_up_front(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = refused(capsys, "simulate", "--out", str(locked), "-n", "1", "--size", "32")
    finally:
        locked.chmod(0o700)
    assert "not writable" in err and str(locked) in err


# --------------------------------------------------------------------------- demo
def test_demo_refuses_existing_results_before_the_model_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    mine = out / "sample_overlay.png"
    mine.write_bytes(b"my picture")
    err = refused(capsys, "demo", "--out", str(out), "--device", "cpu")
    assert str(mine) in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["sample_overlay.png"]
    assert mine.read_bytes() == b"my picture"
    note = tmp_path / "note.txt"
    note.write_text("x")
    assert "is a file" in refused(capsys, "demo", "--out", str(note))
    assert note.read_text() == "x"


def test_demo_as_a_process_refuses_then_overwrites(tmp_path):
    """The refusal is one line without a traceback; with --overwrite the results are
    replaced (atomically: no temporary file left) and the PNG is a real PNG."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "sample_labels.tif").write_bytes(b"old")
    res = run_cli("demo", "--out", str(out), "--device", "cpu", one_thread=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "sample_labels.tif" in res.stderr and "built-in default model" not in res.stderr
    res = run_cli("demo", "--out", str(out), "--device", "cpu", "--overwrite", one_thread=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_FILES)
    assert tifffile.imread(out / "sample_labels.tif").max() > 0
    assert (out / "sample_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- evaluate
def test_evaluate_csv_needs_overwrite_and_is_written_atomically(pair, tmp_path, capsys):
    _, lab = pair
    table = tmp_path / "scores.csv"
    table.write_text("mine\n")
    err = refused(capsys, "evaluate", "--gt", str(lab), "--pred", str(lab), "--csv", str(table))
    assert str(table) in err and "--overwrite" in err and table.read_text() == "mine\n"
    args = ["evaluate", "--gt", str(lab), "--pred", str(lab), "--csv", str(table)]
    assert main([*args, "--overwrite"]) == 0
    rows = table.read_text().splitlines()
    assert rows[0].startswith("image,gt,pred") and rows[-1].startswith("pooled")
    assert temporaries(tmp_path) == []
