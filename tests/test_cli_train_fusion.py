"""``cellfocus train-fusion`` as a process (issue 15): SIGTERM / SIGINT after step 10 leave
a loadable checkpoint whose metadata say so (exit 143 / 130), a diverged run exits 2 with
its own message and writes no model (a previous one is kept), an existing model needs
``--overwrite``, all without a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from napari_cellfocus.engine.checkpoint import load_checkpoint

TINY = ["--batch-size", "1", "--crop-size", "32", "--depth", "2", "--width", "4"]
FAST = [*TINY, "--device", "cpu"]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _cmd(out, *extra):
    cli = [sys.executable, "-m", "napari_cellfocus.cli", "train-fusion"]
    return [*cli, "--out", str(out), *FAST, *extra]


def _run(out, *extra, timeout=300):
    return subprocess.run(
        _cmd(out, *extra), capture_output=True, text=True, timeout=timeout, env=_env()
    )


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_after_step_10_leaves_a_loadable_checkpoint(tmp_path, signum, status):
    out = tmp_path / "f.pt"
    cmd = _cmd(out, "--steps", "2000", "--checkpoint-every", "0", "--checkpoint-every-s", "0")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env())
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:  # in logs the bar prints a line every 10 %: 200 steps
            lines.append(line)
            done = re.search(r"train-fusion \[[#-]+\] (\d+)/2000", line)
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
    _, info = load_checkpoint(out, task="fusion")
    run = info.training["last_run"]
    assert run["cancelled"] is True and run["cancel_reason"] == signal.Signals(signum).name
    assert run["finished"] is False and run["diverged"] is False
    assert 10 <= run["steps_done"] < 2000 and len(info.history) == run["steps_done"]
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]  # no temporary left


def test_a_huge_learning_rate_exits_2_and_keeps_the_previous_model(tmp_path):
    out = tmp_path / "f.pt"
    res = _run(out, "--steps", "60", "--lr", "1e3")
    assert res.returncode == 2, res.stderr
    assert "cellfocus: error: fusion training diverged at step" in res.stderr
    assert "no model was written" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    assert _run(out, "--steps", "2").returncode == 0
    before = out.read_bytes()
    res = _run(out, "--steps", "60", "--lr", "1e3", "--overwrite")
    assert res.returncode == 2 and "fusion training diverged" in res.stderr, res.stderr
    assert "model written" not in res.stdout
    assert out.read_bytes() == before  # no model of the diverged run
    assert (tmp_path / "f.previous.pt").read_bytes() == before
    assert f"previous model is kept in {tmp_path / 'f.previous.pt'}" in res.stderr


def test_an_existing_model_needs_overwrite_and_bad_outputs_fail_first(tmp_path):
    out = tmp_path / "f.pt"
    out.write_bytes(b"my model")
    res = _run(out, "--steps", "500")
    assert res.returncode == 2 and "--overwrite" in res.stderr and str(out) in res.stderr
    assert "training hf-seg" not in res.stderr and out.read_bytes() == b"my model"
    stack = tmp_path / "stack.tif"
    stack.write_bytes(b"tiff")
    res = _run(stack, "--steps", "500", "--overwrite")
    assert res.returncode == 2 and "not a model file" in res.stderr
    assert stack.read_bytes() == b"tiff"
    res = _run(tmp_path, "--steps", "500")
    assert res.returncode == 2 and "is a folder" in res.stderr
    res = _run(tmp_path / "g.pt", "--from", str(tmp_path / "missing.pt"))
    assert res.returncode == 2 and "not with --from" in res.stderr  # --depth of FAST
    cli = [sys.executable, "-m", "napari_cellfocus.cli", "train-fusion", "--device", "cpu"]
    res = subprocess.run(
        [*cli, "--out", str(tmp_path / "g.pt"), "--from", str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert res.returncode == 2 and "missing.pt" in res.stderr and "Traceback" not in res.stderr
    res = _run(tmp_path / "g.pt", "--steps", "2", "--checkpoint-every-s", "-1")
    assert res.returncode == 2 and "checkpoint_every" in res.stderr


def test_a_short_run_writes_the_model_with_its_history(tmp_path):
    out = tmp_path / "f.pt"
    res = _run(out, "--steps", "3", "--kind", "hf-reg")
    assert res.returncode == 0, res.stderr
    assert f"model written to {out}" in res.stdout
    _, info = load_checkpoint(out, task="fusion")
    run = info.training["last_run"]
    assert info.training["kind"] == "hf-reg" and run["steps_done"] == 3
    assert run["finished"] is True and run["cancelled"] is False and len(info.history) == 3
