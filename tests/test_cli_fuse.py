"""``cellfocus fuse`` run as a separate process, as a user would."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_cellfocus.cli_fuse import add_fuse_parser
from napari_cellfocus.cli_fuse import main as cli_fuse_main
from napari_cellfocus.core.simulate import simulate_focus_stack


def _registered() -> bool:
    """Whether ``cellfocus fuse`` is registered in the main CLI yet."""
    from napari_cellfocus.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "fuse" in action.choices
    return False


def run_fuse(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``cellfocus fuse ARGS`` in a new process (the module's own entry point until the
    sub-command is registered in ``napari_cellfocus.cli``)."""
    module = ["napari_cellfocus.cli", "fuse"] if _registered() else ["napari_cellfocus.cli_fuse"]
    return subprocess.run(
        [sys.executable, "-m", *module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    scene = simulate_focus_stack((64, 80), n_slices=3, seed=4)
    path = tmp_path_factory.mktemp("fuse") / "stack.tif"
    tifffile.imwrite(path, scene.stack, photometric="minisblack")
    return path, scene


def test_default_method_writes_fused_and_depth(stack_file, tmp_path):
    """Default method (the learned HF-Seg): the fused TIFF has the stack's XY shape and
    dtype (8-bit), the depth TIFF is float32 slice indices within [0, 2]."""
    path, _ = stack_file
    out, depth = tmp_path / "fused.tif", tmp_path / "depth.tif"
    proc = run_fuse(str(path), "--out", str(out), "--depth", str(depth), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    fused = tifffile.imread(out)
    assert fused.shape == (64, 80) and fused.dtype == np.uint8
    d = tifffile.imread(depth)
    assert d.shape == (64, 80) and d.dtype == np.float32
    assert d.min() >= 0 and d.max() <= 2
    assert "3 slices fused with hf-seg" in proc.stdout


def test_classical_method_16_bit_on_another_axis(stack_file, tmp_path):
    """A 16-bit stack stored as (Y, X, Z) with --axis 2 and --method max-focus: a 16-bit
    (Y, X) image made of source pixels."""
    _, scene = stack_file
    s16 = np.moveaxis(scene.stack.astype(np.uint16) * 250, 0, 2)
    src = tmp_path / "yxz.tif"
    tifffile.imwrite(src, s16)
    out = tmp_path / "fused16.tif"
    proc = run_fuse(str(src), "--out", str(out), "--method", "max-focus", "--axis", "2")
    assert proc.returncode == 0, proc.stderr
    fused = tifffile.imread(out)
    assert fused.shape == (64, 80) and fused.dtype == np.uint16
    assert np.all((s16 == fused[..., None]).any(axis=2))


def test_classical_method_with_a_device_runs_torch(stack_file, tmp_path, capsys):
    """--method gff --device cpu runs the torch implementation (the summary names the
    CPU) and writes the same image as the default numpy run (in-process entry point)."""
    path, _ = stack_file
    out_torch, out_numpy = tmp_path / "t.tif", tmp_path / "n.tif"
    args = [str(path), "--method", "gff"]
    assert cli_fuse_main([*args, "--out", str(out_torch), "--device", "cpu"]) == 0
    assert "fused with gff" in (stdout := capsys.readouterr().out) and " on CPU" in stdout
    assert cli_fuse_main([*args, "--out", str(out_numpy)]) == 0
    np.testing.assert_array_equal(tifffile.imread(out_torch), tifffile.imread(out_numpy))


def test_errors_name_the_file(tmp_path, capsys):
    """A missing file fails with exit status 2 and a one-line message naming the file, no
    traceback (as a process); a 2D image (not a stack) likewise (in-process entry point)."""
    missing = tmp_path / "nope.tif"
    proc = run_fuse(str(missing), "--out", str(tmp_path / "o.tif"), "--method", "gff")
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((16, 16), np.uint8))
    assert cli_fuse_main([str(flat), "--out", str(tmp_path / "o.tif"), "--method", "gff"]) == 2
    err = capsys.readouterr().err
    assert str(flat) in err and "focus stack" in err and err.startswith("cellfocus: error:")
    assert not (tmp_path / "o.tif").exists()


def test_parser_registers_the_documented_arguments():
    """add_fuse_parser adds ``fuse STACK --out --depth --method --axis`` with the six methods
    and hf-seg (the best learned method) as the default."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_fuse_parser(sub)
    args = parser.parse_args(["fuse", "s.tif", "--out", "f.tif"])
    assert args.method == "hf-seg" and args.axis == 0 and args.depth is None
    args = parser.parse_args(
        [
            "fuse",
            "s.tif",
            "--out",
            "f.tif",
            "--depth",
            "d.tif",
            "--method",
            "wavelet",
            "--axis",
            "2",
        ]
    )
    assert (args.method, args.axis, str(args.depth)) == ("wavelet", 2, "d.tif")
    for method in ("hf-seg", "hf-reg", "max-focus", "pyramid", "gff", "wavelet"):
        parser.parse_args(["fuse", "s.tif", "--out", "f.tif", "--method", method])
    with pytest.raises(SystemExit):
        parser.parse_args(["fuse", "s.tif", "--out", "f.tif", "--method", "median"])


def test_fuse_a_folder_writes_one_output_per_stack(tmp_path):
    """A folder of two stacks, a depth map and a 2D picture: `fuse FOLDER --exclude` writes
    NAME_fused.tif / NAME_depth.tif per stack into the --out / --depth folders, each equal to
    fusing that stack alone; the depth map (a result file) is never taken as a stack."""
    folder = tmp_path / "stacks"
    folder.mkdir()
    for i in range(2):
        scene = simulate_focus_stack((48, 40), n_slices=3, seed=10 + i)
        tifffile.imwrite(folder / f"s{i}.tif", scene.stack, photometric="minisblack")
    tifffile.imwrite(folder / "s0_depth.tif", np.zeros((48, 40), np.float32))
    tifffile.imwrite(folder / "preview.tif", np.zeros((48, 40), np.uint8))
    out, depth = tmp_path / "fused", tmp_path / "depth"
    args = ["--method", "max-focus", "--exclude", "preview*"]
    proc = run_fuse(str(folder), "--out", str(out), "--depth", str(depth), *args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["s0_fused.tif", "s1_fused.tif"]
    assert sorted(p.name for p in depth.iterdir()) == ["s0_depth.tif", "s1_depth.tif"]
    assert "2 stacks fused" in proc.stdout
    for i in range(2):
        alone = tmp_path / f"alone{i}.tif"
        assert cli_fuse_main([str(folder / f"s{i}.tif"), "--out", str(alone), *args[:2]]) == 0
        fused = tifffile.imread(out / f"s{i}_fused.tif")
        assert fused.shape == (48, 40)
        np.testing.assert_array_equal(fused, tifffile.imread(alone))
        assert tifffile.imread(depth / f"s{i}_depth.tif").shape == (48, 40)


def test_fuse_several_stacks_need_folders(stack_file, tmp_path, capsys):
    """Two stacks and --out FILE.tif: exit 2, nothing written; a folder holding a 2D image
    names it and says how to leave it out."""
    path, _ = stack_file
    out = tmp_path / "f.tif"
    assert cli_fuse_main([str(path), str(path), "--out", str(out), "--method", "gff"]) == 2
    assert "need a folder" in capsys.readouterr().err and not out.exists()
    folder = tmp_path / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", tifffile.imread(path), photometric="minisblack")
    tifffile.imwrite(folder / "flat.tif", np.zeros((16, 16), np.uint8))
    assert cli_fuse_main([str(folder), "--out", str(tmp_path / "o"), "--method", "gff"]) == 1
    err = capsys.readouterr().err
    assert "flat.tif" in err and "--exclude" in err
