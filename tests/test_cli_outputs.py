"""Issue 15: no output of ``cellfocus predict / fuse / train`` ever replaces an input or
another output, existing files need ``--overwrite``, everything is checked before any work,
a bad file of a batch is skipped and reported, and no traceback reaches the user.

The refusals are checked in-process (they happen before torch is imported); the batch
and no-traceback cases run ``cellfocus`` as a process with the built-in model on 64-px
images."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cli_helpers import run_cli
from napari_cellfocus.cli import main
from napari_cellfocus.core.simulate import simulate_cells, simulate_focus_stack

run = functools.partial(run_cli, one_thread=True)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(capsys, *argv: str) -> str:
    """Run ``cellfocus ARGV`` in-process; it must exit 2 with one error line; returns it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("cellfocus: error:")]
    assert len(errors) == 1, err  # (before it at most progress lines)
    return errors[0]


@pytest.fixture
def scene_dir(tmp_path) -> Path:
    """s/sim_000.tif, s/sim_000_labels.tif (ground truth), s/sim_001.tif, ..."""
    folder = tmp_path / "s"
    folder.mkdir()
    for i, seed in enumerate((3, 5)):
        scene = simulate_cells(shape=(64, 64), seed=seed)
        tifffile.imwrite(folder / f"sim_{i:03d}.tif", scene.image)
        tifffile.imwrite(folder / f"sim_{i:03d}_labels.tif", scene.labels)
    return folder


@pytest.fixture
def stack_path(tmp_path) -> Path:
    scene = simulate_focus_stack((48, 40), n_slices=3, seed=4)
    path = tmp_path / "st.tif"
    tifffile.imwrite(path, scene.stack, photometric="minisblack")
    return path


# --------------------------------------------------------------------------- data loss
def test_predict_out_equal_to_input_is_refused(scene_dir, capsys):
    image = scene_dir / "sim_000.tif"
    before = digest(image)
    err = refused(capsys, "predict", str(image), "--out", str(image))
    assert str(image) in err and "is the input" in err
    # also spelled differently and through a symbolic link
    other = scene_dir / ".." / "s" / "sim_000.tif"
    assert "is the input" in refused(capsys, "predict", str(image), "--out", str(other))
    link = scene_dir.parent / "link.tif"
    link.symlink_to(image)
    assert "is the input" in refused(capsys, "predict", str(image), "--out", str(link))
    assert "is the input" in refused(capsys, "predict", str(link), "--out", str(image))
    assert digest(image) == before


def test_predict_probs_equal_to_input_or_to_out_is_refused(scene_dir, tmp_path, capsys):
    image = scene_dir / "sim_000.tif"
    before = digest(image)
    out = tmp_path / "o.tif"
    err = refused(capsys, "predict", str(image), "--out", str(out), "--probs", str(image))
    assert "--probs" in err and str(image) in err and "is the input" in err
    err = refused(capsys, "predict", str(image), "--out", str(out), "--probs", str(out))
    assert "same file" in err and str(out) in err
    assert digest(image) == before and not out.exists()


def test_predict_into_the_image_folder_keeps_the_ground_truth(scene_dir, capsys):
    truth = scene_dir / "sim_000_labels.tif"
    before = {p.name: digest(p) for p in scene_dir.iterdir()}
    err = refused(capsys, "predict", str(scene_dir), "--out", str(scene_dir))
    assert str(truth) in err and "--overwrite" in err
    assert {p.name: digest(p) for p in scene_dir.iterdir()} == before  # nothing written


def test_predict_two_images_of_one_name_are_refused(scene_dir, tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    tifffile.imwrite(a / "img.tif", tifffile.imread(scene_dir / "sim_000.tif"))
    tifffile.imwrite(b / "img.tif", tifffile.imread(scene_dir / "sim_001.tif"))
    out = tmp_path / "o"
    err = refused(capsys, "predict", str(a / "img.tif"), str(b / "img.tif"), "--out", str(out))
    assert str(a / "img.tif") in err and str(b / "img.tif") in err and "img_labels.tif" in err
    assert not out.exists()


def test_predict_counts_csv_may_not_be_an_output_or_exist(scene_dir, tmp_path, capsys):
    image = scene_dir / "sim_000.tif"
    out = tmp_path / "o.tif"
    err = refused(capsys, "predict", str(image), "--out", str(out), "--counts", str(out))
    assert "same file" in err
    counts = tmp_path / "c.csv"
    counts.write_text("mine\n")
    err = refused(capsys, "predict", str(image), "--out", str(out), "--counts", str(counts))
    assert str(counts) in err and "--overwrite" in err
    assert counts.read_text() == "mine\n"


def test_train_out_equal_to_a_label_file_is_refused(scene_dir, capsys):
    labels = scene_dir / "sim_000_labels.tif"
    before = digest(labels)
    err = refused(
        capsys,
        "train",
        str(scene_dir / "sim_000.tif"),
        "--labels",
        str(labels),
        "--out",
        str(labels),
        "--steps",
        "1",
    )
    assert str(labels) in err and "is the input" in err
    assert digest(labels) == before


def test_train_out_checked_before_training(scene_dir, tmp_path, capsys):
    """An existing folder, a path under a file, an existing non-model file: refused
    before any step."""
    args = ["train", str(scene_dir / "sim_000.tif"), "--labels"]
    args += [str(scene_dir / "sim_000_labels.tif"), "--steps", "1", "--out"]
    err = refused(capsys, *args, str(tmp_path))
    assert "is a folder" in err
    note = tmp_path / "note.txt"
    note.write_text("x")
    assert "is a file, not a folder" in refused(capsys, *args, str(note / "m.pt"))
    assert "not a model file" in refused(capsys, *args, str(note))
    assert note.read_text() == "x"


def test_fuse_out_or_depth_equal_to_the_stack_is_refused(stack_path, tmp_path, capsys):
    before = digest(stack_path)
    args = ["fuse", str(stack_path), "--method", "gff"]
    err = refused(capsys, *args, "--out", str(stack_path))
    assert str(stack_path) in err and "is the input" in err
    err = refused(capsys, *args, "--out", str(tmp_path / "f.tif"), "--depth", str(stack_path))
    assert "--depth" in err and str(stack_path) in err
    err = refused(
        capsys, *args, "--out", str(tmp_path / "f.tif"), "--depth", str(tmp_path / "f.tif")
    )
    assert "same file" in err
    assert digest(stack_path) == before and not (tmp_path / "f.tif").exists()


def test_fuse_existing_output_needs_overwrite(stack_path, tmp_path, capsys):
    out = tmp_path / "f.tif"
    args = ["fuse", str(stack_path), "--method", "max-focus", "--out", str(out)]
    assert main(args) == 0
    first = digest(out)
    capsys.readouterr()
    err = refused(capsys, *args)
    assert str(out) in err and "--overwrite" in err and digest(out) == first
    assert main([*args, "--overwrite"]) == 0


# --------------------------------------------------------------------------- writability
def test_outputs_that_cannot_be_written_are_refused_up_front(scene_dir, tmp_path, capsys):
    image = scene_dir / "sim_000.tif"
    note = tmp_path / "note.txt"
    note.write_text("x")
    err = refused(capsys, "predict", str(image), "--out", str(note / "o.tif"))
    assert str(note) in err and "not a folder" in err  # NotADirectoryError
    folder_tif = tmp_path / "dir.tif"
    folder_tif.mkdir()
    err = refused(
        capsys, "predict", str(image), "--out", str(tmp_path / "o.tif"), "--probs", str(folder_tif)
    )
    assert "is a folder" in err and str(folder_tif) in err  # IsADirectoryError
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            err = refused(capsys, "predict", str(image), "--out", str(ro / "o.tif"))
            assert "not writable" in err and str(ro) in err  # PermissionError
        finally:
            ro.chmod(0o700)


# --------------------------------------------------------------------------- batch / process
def test_predict_batch_skips_bad_files_and_says_so(scene_dir, tmp_path):
    """Two good images, one file that is no TIFF and one 1D array: the good ones are
    segmented, each bad one gets a line, the summary names both, exit status 1."""
    (scene_dir / "broken.tif").write_bytes(b"not a tiff at all" * 10)
    tifffile.imwrite(scene_dir / "line.tif", np.arange(64, dtype=np.uint16))
    out = tmp_path / "o"
    res = run("predict", str(scene_dir), "--out", str(out), "--diameter", "14")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "sim_000_labels.tif").exists() and (out / "sim_001_labels.tif").exists()
    assert not (out / "broken_labels.tif").exists()
    skipped = [line for line in res.stderr.splitlines() if line.startswith("cellfocus: skipped")]
    assert len(skipped) == 2 and any("broken.tif" in s for s in skipped)
    assert any("line.tif" in s for s in skipped)
    summary = [line for line in res.stderr.splitlines() if " of 4 images segmented" in line]
    assert summary and summary[0].startswith("2 of 4 images segmented; failed: ")
    assert "broken.tif (" in summary[0] and "line.tif (" in summary[0]
    counts = (out / "counts.csv").read_text().splitlines()
    assert len(counts) == 3  # header + the two good images
    # all good: exit 0, and a re-run into the same folder needs --overwrite
    (scene_dir / "broken.tif").unlink()
    (scene_dir / "line.tif").unlink()
    res = run("predict", str(scene_dir), "--out", str(out), "--diameter", "14")
    assert res.returncode == 2 and "--overwrite" in res.stderr
    res = run("predict", str(scene_dir), "--out", str(out), "--diameter", "14", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert "2 of 2 images segmented" in res.stdout


def test_fuse_batch_skips_bad_stacks(stack_path, tmp_path):
    folder = tmp_path / "stacks"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.tif").write_bytes(stack_path.read_bytes())
    (folder / "c.tif").write_bytes(b"garbage" * 20)
    out = tmp_path / "fused"
    res = run("fuse", str(folder), "--method", "max-focus", "--out", str(out))
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "a_fused.tif").exists() and (out / "b_fused.tif").exists()
    assert "2 of 3 stacks fused; failed: c.tif (" in res.stderr


def test_no_traceback_for_bool_complex_and_channel_out_of_range(tmp_path):
    image = simulate_cells(shape=(64, 64), seed=3).image
    tifffile.imwrite(tmp_path / "mask.tif", image > image.mean())
    tifffile.imwrite(tmp_path / "cplx.tif", image.astype(np.complex64))
    tifffile.imwrite(tmp_path / "two.tif", np.stack([image, image]), metadata={"axes": "CYX"})
    res = run("predict", str(tmp_path / "mask.tif"), "--out", str(tmp_path / "m.tif"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "mask.tif" in res.stderr and "boolean" in res.stderr
    res = run("predict", str(tmp_path / "cplx.tif"), "--out", str(tmp_path / "c.tif"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "cplx.tif" in res.stderr and "complex" in res.stderr
    for channel in ("5", "-1"):
        res = run(
            "predict", str(tmp_path / "two.tif"), "--out", str(tmp_path / "t.tif"),
            "--axes", "CYX", "--channel", channel,
        )  # fmt: skip
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "two.tif" in res.stderr and "out of range" in res.stderr
    assert not any((tmp_path / n).exists() for n in ("m.tif", "c.tif", "t.tif"))


def test_evaluate_csv_never_replaces_a_label_file(scene_dir, capsys):
    truth = scene_dir / "sim_000_labels.tif"
    before = digest(truth)
    err = refused(
        capsys, "evaluate", "--gt", str(truth), "--pred", str(truth), "--csv", str(truth)
    )
    assert "--csv" in err and str(truth) in err and "is the input" in err
    assert digest(truth) == before


def test_output_errors_in_a_process_are_one_line(stack_path, tmp_path):
    """NotADirectoryError / IsADirectoryError cases of fuse and predict, run as a process:
    exit 2, one line naming the path, nothing written."""
    note = tmp_path / "note.txt"
    note.write_text("x")
    res = run("fuse", str(stack_path), "--method", "gff", "--out", str(note / "f.tif"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert str(note) in res.stderr and "not a folder" in res.stderr
    folder_tif = tmp_path / "d.tif"
    folder_tif.mkdir()
    args = ["fuse", str(stack_path), "--method", "gff", "--out", str(tmp_path / "f.tif")]
    res = run(*args, "--depth", str(folder_tif))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert str(folder_tif) in res.stderr and "is a folder" in res.stderr
    assert not (tmp_path / "f.tif").exists() and note.read_text() == "x"


def test_write_failure_during_a_batch_names_the_file(stack_path, tmp_path, capsys, monkeypatch):
    """A write that fails after the checks (disk full, permissions changed): in a batch
    that stack is reported and skipped (exit 1); alone, one line naming it (exit 2)."""
    import napari_cellfocus.core.io as core_io

    real = core_io.write_image

    def failing(path, array, compress=True):
        if Path(path).name.startswith("a_"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, array, compress)

    monkeypatch.setattr(core_io, "write_image", failing)
    folder = tmp_path / "stacks"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.tif").write_bytes(stack_path.read_bytes())
    out = tmp_path / "fused"
    assert main(["fuse", str(folder), "--method", "max-focus", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "1 of 2 stacks fused; failed: a.tif (" in captured.err
    assert str(out / "a_fused.tif") in captured.err and "Permission denied" in captured.err
    assert (out / "b_fused.tif").exists()
    err = refused(
        capsys,
        "fuse",
        str(folder / "a.tif"),
        "--method",
        "max-focus",
        "--out",
        str(out / "a_one.tif"),
    )
    assert "Permission denied" in err and str(out / "a_one.tif") in err


def test_batch_report_summary(capsys):
    from napari_cellfocus.cli_common import BatchReport

    report = BatchReport(14)
    report.ok(), report.ok()
    for i in range(12):
        report.failed(Path(f"d/f{i}.tif"), ValueError(f"d/f{i}.tif: cannot be read."))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "cellfocus: skipped d/f0.tif: cannot be read"
    summary = report.summary()
    assert summary.startswith("2 of 14 images segmented; failed: f0.tif (cannot be read), ")
    assert (
        "f9.tif" in summary
        and "f10.tif" not in summary
        and summary.endswith("2 more (listed above)")
    )
    assert report.exit_code == 1 and BatchReport(1).exit_code == 0
