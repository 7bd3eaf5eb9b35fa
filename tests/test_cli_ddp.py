"""``cellfocus train --ddp --nproc 2`` and ``torchrun -m napari_cellfocus.train``, as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from napari_cellfocus.core.io import write_image
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.segment import Segmenter

TINY_RUN = ["--steps", "2", "--batch-size", "2", "--crop-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_cli")
    scene = simulate_cells(shape=(64, 64), seed=4, radius=(5, 8), density=0.3)
    return (
        write_image(folder / "img.tif", scene.image),
        write_image(folder / "img_labels.tif", scene.labels),
        scene,
    )


def test_train_ddp_two_processes_writes_a_loadable_model(cli, tiny_image, tmp_path):
    image, labels, scene = tiny_image
    out = tmp_path / "m.pt"
    res = cli(
        "train", str(image), "--labels", str(labels), "--out", str(out), "--ddp", "--nproc", "2",
        *TINY_RUN, one_thread=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "training on 2 processes (gloo), batch 1 per process, cpu" in res.stderr
    assert res.stdout.count("model written to") == 1  # rank 0 only
    assert res.stderr.count("train [") >= 1 and "Traceback" not in res.stderr
    model, info = load_checkpoint(out, device="cpu")
    last = info.training["last_run"]
    assert last["finished"] and last["steps_done"] == 2 and last["batch_size"] == 2
    assert last["distributed"]["world_size"] == 2
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    result = Segmenter((model, info), device="cpu").segment(scene.image)
    assert result.labels.shape == scene.image.shape


def test_train_ddp_refuses_a_batch_the_processes_cannot_share(cli, tiny_image, tmp_path):
    image, labels, _ = tiny_image
    out = tmp_path / "m.pt"
    res = cli(
        "train", str(image), "--labels", str(labels), "--out", str(out), "--ddp", "--nproc", "2",
        "--batch-size", "3", "--steps", "1", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "cellfocus: error: --batch-size 3 is the global batch, split over the 2 "
        "processes: it must be a multiple of --nproc."
    )
    assert not out.exists()


def test_torchrun_runs_the_train_module_as_ranks(tiny_image, tmp_path):
    """``torchrun --nproc-per-node 2 -m napari_cellfocus.train``: each process is a rank
    (the module adds --ddp itself under torchrun); rank 0 writes the model."""
    image, labels, _ = tiny_image
    out = tmp_path / "t.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    res = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "-m", "napari_cellfocus.train",
            str(image), "--labels", str(labels), "--out", str(out), *TINY_RUN,
        ],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "training on 2 processes (gloo)" in res.stderr
    _, info = load_checkpoint(out, device="cpu")
    assert info.training["last_run"]["distributed"]["world_size"] == 2
    assert info.training["last_run"]["steps_done"] == 2


def test_sigterm_to_the_launcher_stops_every_rank_and_rank_0_writes(tiny_image, tmp_path):
    """SIGTERM to ``cellfocus train --ddp`` (what ``timeout`` or Slurm send) is passed on
    to the ranks; they stop after the same step and rank 0 writes the checkpoint marked
    cancelled; the command exits 143, as one process does."""
    image, labels, _ = tiny_image
    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "napari_cellfocus.cli", "train", str(image), "--labels"]
    cmd += [str(labels), "--out", str(out), "--ddp", "--nproc", "2", "--checkpoint-every", "0"]
    cmd += ["--steps", "400", "--batch-size", "2", "--crop-size", "32", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:  # the first progress line comes after step 1
            lines.append(line)
            if line.startswith("train ["):
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stderr.read()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    assert rc == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    _, info = load_checkpoint(out, device="cpu")
    run = info.training["last_run"]
    assert run["cancelled"] and run["cancel_reason"] == "SIGTERM"
    assert 1 <= run["steps_done"] < 400 and len(info.history) == run["steps_done"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
