"""Issue 15: the fusion trainer has the segmentation trainer's safety rules
(engine.training_guard): divergence stops the run with its own message and writes no model
of the diverged steps, checkpoints come at a time interval as well as every N steps, and a
cancel writes a checkpoint whose metadata say how far it got."""

from __future__ import annotations

import math

import pytest
import torch

from napari_cellfocus.core.fusion_data import FusionPairSampler
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.fusion import FusionTrainConfig, FusionTrainer
from napari_cellfocus.engine.train import TrainingDiverged

TINY = {"depth": 2, "width": 4}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(out=None, sampler=None, **settings) -> FusionTrainer:
    cfg = FusionTrainConfig(**{"batch_size": 1, "crop_size": 32, **settings})
    return FusionTrainer(
        cfg, sampler=sampler or FusionPairSampler((32, 32)), network=TINY, device="cpu", out=out
    )


@pytest.mark.parametrize("kind", ["hf-seg", "hf-reg"])
def test_a_huge_learning_rate_diverges_and_writes_no_model(tmp_path, kind):
    out = tmp_path / "m.pt"
    trainer = _trainer(out, kind=kind, steps=80, lr=1e3, checkpoint_every=0)
    with pytest.raises(TrainingDiverged, match=r"^fusion training diverged at step \d+") as err:
        trainer.run()
    assert "no model was written" in str(err.value) and "lower learning rate" in str(err.value)
    assert not out.exists() and trainer.diverged
    assert trainer.step < 80 and all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_diverged_run_replaces_its_own_checkpoints_by_the_last_good_model(tmp_path):
    """Checkpoints of healthy steps were written: the file ends up holding the model of
    the last healthy step, marked diverged (never one of the diverged steps)."""
    out = tmp_path / "m.pt"
    trainer = _trainer(out, steps=60, lr=1e-3, checkpoint_every=1)
    steps = trainer.steps()
    for progress in steps:
        if progress.step == 5:
            break
    trainer.config.lr = 1e3  # the run goes wrong from step 6 on
    with pytest.raises(TrainingDiverged, match="last good step"):
        for _ in steps:
            pass
    _, info = load_checkpoint(out, task="fusion")
    run = info.training["last_run"]
    assert run["diverged"] is True and run["diverged_at_step"] > 5
    assert 5 <= run["steps_done"] < run["diverged_at_step"]
    assert len(info.history) == run["steps_done"]
    assert all(math.isfinite(h["loss"]) and h["loss"] < 100 for h in info.history)


def test_a_nan_loss_stops_at_once_with_the_previous_weights(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path / "m.pt", steps=10, checkpoint_every=0)
    calls = []
    original = FusionTrainer.loss

    def loss(self, *batch):
        calls.append(1)
        value = original(self, *batch)
        return value * float("nan") if len(calls) == 4 else value

    monkeypatch.setattr(FusionTrainer, "loss", loss)
    with pytest.raises(TrainingDiverged, match="at step 4: the loss is nan"):
        trainer.run()
    assert trainer.step == 3
    # nothing was written during the run, so nothing is written now
    assert not (tmp_path / "m.pt").exists()


def test_checkpoints_at_a_time_interval(tmp_path, monkeypatch):
    """checkpoint_every=0 (no step rule) and a 10 s interval on a clock the test moves:
    a checkpoint when 10 s have passed, not before."""
    clock = [1000.0]
    monkeypatch.setattr("napari_cellfocus.engine.training_guard.time.monotonic", lambda: clock[0])
    out = tmp_path / "m.pt"
    trainer = _trainer(out, steps=20, checkpoint_every=0, checkpoint_every_s=10.0)
    steps = trainer.steps()
    next(steps)
    clock[0] += 9.0
    next(steps)
    assert not out.exists()  # 9 s: not yet
    clock[0] += 1.5
    next(steps)
    _, info = load_checkpoint(out, task="fusion")
    assert info.training["last_run"]["steps_done"] == 3
    assert info.training["last_run"]["cancelled"] is False
    next(steps)
    assert load_checkpoint(out)[1].training["last_run"]["steps_done"] == 3  # clock still
    steps.close()


def test_a_cancel_writes_honest_metadata(tmp_path):
    out = tmp_path / "m.pt"
    trainer = _trainer(out, steps=50, checkpoint_every=0, checkpoint_every_s=0)
    trainer.cancel_reason = "SIGTERM"  # as the CLI's signal handler sets it
    trainer.run(should_stop=lambda: trainer.step >= 7)
    _, info = load_checkpoint(out, task="fusion")
    run = info.training["last_run"]
    assert run["steps_done"] == 7 and len(info.history) == 7
    assert run["cancelled"] is True and run["cancel_reason"] == "SIGTERM"
    assert run["finished"] is False and run["diverged"] is False
    done = _trainer(tmp_path / "d.pt", steps=2)
    done.cancel_reason = "SIGTERM"  # not cancelled: no reason is recorded
    done.run()
    run = load_checkpoint(tmp_path / "d.pt")[1].training["last_run"]
    assert run["finished"] is True and run["cancelled"] is False and run["cancel_reason"] is None


def test_guard_settings_are_checked():
    with pytest.raises(ValueError, match="checkpoint_every"):
        FusionTrainConfig(checkpoint_every_s=-1)
    with pytest.raises(ValueError, match="divergence_factor"):
        FusionTrainConfig(divergence_factor=0.5)
