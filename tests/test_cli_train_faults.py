"""``cellfocus train`` under faults, each run as a process: SIGTERM / SIGINT write a
checkpoint and exit 143 / 130, a diverged run exits non-zero without a model, an existing
model is replaced only with ``--overwrite`` (and kept as NAME.previous.pt), and bad
``--out`` places fail before training."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tifffile

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint

FAST = ["--batch-size", "1", "--crop-size", "48", "--device", "cpu"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    scene = simulate_cells(shape=(64, 64), seed=2, radius=(6, 8), density=0.3, photons=500)
    tifffile.imwrite(folder / "img.tif", scene.image)
    tifffile.imwrite(folder / "lab.tif", scene.labels)
    return folder / "img.tif", folder / "lab.tif"


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _train(pair, out, *extra, timeout=300):
    img, lab = pair
    cmd = [sys.executable, "-m", "napari_cellfocus.cli", "train", str(img), "--labels", str(lab)]
    return subprocess.run(
        [*cmd, "--out", str(out), *FAST, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_after_step_10_leaves_a_loadable_checkpoint(pair, tmp_path, signum, status):
    img, lab = pair
    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "napari_cellfocus.cli", "train", str(img), "--labels", str(lab)]
    cmd += ["--out", str(out), "--steps", "100", "--checkpoint-every", "0", *FAST]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env())
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:  # the progress bar prints a line every 10 % in logs
            lines.append(line)
            done = re.search(r"train \[[#-]+\] (\d+)/100", line)
            if done and int(done.group(1)) >= 10:
                proc.send_signal(signum)
                break
            assert time.monotonic() < deadline, "".join(lines)
        rest = proc.stderr.read()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    assert rc == status, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    _, info = load_checkpoint(out)
    run = info.training["last_run"]
    assert run["cancelled"] is True and run["cancel_reason"] == signal.Signals(signum).name
    assert 10 <= run["steps_done"] < 100 and len(info.history) == run["steps_done"]
    assert not any(p.name != "m.pt" for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_a_huge_learning_rate_exits_non_zero_and_keeps_the_previous_model(pair, tmp_path):
    out = tmp_path / "m.pt"
    assert _train(pair, out, "--steps", "2").returncode == 0
    before = out.read_bytes()
    res = _train(pair, out, "--steps", "60", "--lr", "1e3", "--overwrite")
    assert res.returncode == 2, res.stderr
    assert "diverged" in res.stderr and "Traceback" not in res.stderr
    assert "model written" not in res.stdout
    assert out.read_bytes() == before  # no model of the diverged run
    assert (tmp_path / "m.previous.pt").read_bytes() == before


def test_a_diverged_first_run_writes_no_model(pair, tmp_path):
    out = tmp_path / "m.pt"
    res = _train(pair, out, "--steps", "60", "--lr", "1e3")
    assert res.returncode == 2 and "diverged" in res.stderr, res.stderr
    assert "no model was written" in res.stderr and not out.exists()


def test_retraining_keeps_the_previous_model(pair, tmp_path):
    out = tmp_path / "m.pt"
    assert _train(pair, out, "--steps", "1").returncode == 0
    first = out.read_bytes()
    res = _train(pair, out, "--steps", "2")  # refused without --overwrite, before training
    assert res.returncode == 2 and "--overwrite" in res.stderr, res.stderr
    assert "training on" not in res.stderr and out.read_bytes() == first
    res = _train(pair, out, "--steps", "2", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert "previous model is kept as" in res.stderr
    assert (tmp_path / "m.previous.pt").read_bytes() == first
    assert load_checkpoint(out)[1].training["last_run"]["steps_done"] == 2


def test_out_that_is_a_folder_or_under_a_file_fails_before_training(pair, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    for out, says in [(tmp_path / "folder", "folder"), (tmp_path / "afile" / "m.pt", "afile")]:
        res = _train(pair, out, "--steps", "500")
        assert res.returncode == 2, res.stderr
        assert says in res.stderr and "Traceback" not in res.stderr
        assert "training on" not in res.stderr  # refused before any step
    assert (tmp_path / "afile").read_text() == "x"


def test_out_that_is_an_existing_non_model_file_is_refused(pair, tmp_path):
    labels = tmp_path / "labels.tif"
    labels.write_bytes(pair[1].read_bytes())
    res = _train(pair, labels, "--steps", "500")
    assert res.returncode == 2 and "training on" not in res.stderr, res.stderr
    assert labels.read_bytes() == pair[1].read_bytes()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_fails_before_training(pair, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = _train(pair, locked / "m.pt", "--steps", "500")
    finally:
        locked.chmod(0o700)
    assert res.returncode == 2 and "training on" not in res.stderr, res.stderr
    assert "locked" in res.stderr and "Traceback" not in res.stderr


def test_stale_temporaries_of_a_killed_run_do_not_block(pair, tmp_path):
    out = tmp_path / "m.pt"
    (tmp_path / "m.pt.part").write_bytes(b"half a model")
    (tmp_path / ".m.pt.x1y2z3.tmp").write_bytes(b"half a model")
    res = _train(pair, out, "--steps", "2")
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(out)[1].training["last_run"]["steps_done"] == 2
