"""Training faults: divergence (NaN and a runaway loss), time-interval checkpoints,
honest metadata of cancelled and diverged runs."""

from __future__ import annotations

import pytest
import torch

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.train import TrainConfig, Trainer, TrainingDiverged

TINY = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 3,
    "depth": 2,
    "width": 4,
    "norm": "batch",
    "dims": 2,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scene():
    return simulate_cells(shape=(64, 64), seed=3, radius=(6, 8), density=0.3, photons=500)


def _trainer(scene, out=None, **cfg):
    settings = {"steps": 40, "batch_size": 1, "crop_size": 32, "checkpoint_every": 0}
    config = TrainConfig(**{**settings, **cfg})
    return Trainer([scene.image], [scene.labels], config, network=TINY, device="cpu", out=out)


def _finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_huge_learning_rate_diverges_and_writes_no_model(tmp_path, scene):
    """lr 1e3 multiplies the loss by ~1e6 at once: the smoothed loss stays above 10x its
    best, training stops with its own message, nothing is written to ``out`` and the
    trainer holds the starting weights (the only ones whose loss was healthy)."""
    out = tmp_path / "m.pt"
    trainer = _trainer(scene, out, lr=1e3, divergence_window=5)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+.*no model was written"):
        trainer.run()
    assert trainer.diverged and not trainer.finished and not out.exists()
    assert trainer.step == 0 and trainer.history == [] and _finite(trainer.model)
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, start[k])
    assert trainer.current_info().training["last_run"]["diverged"] is True


def test_divergence_after_checkpoints_keeps_the_last_healthy_model_marked(tmp_path, scene):
    """After 12 good steps (checkpoints every 5) the loss runs away: ``out`` is rewritten
    with the model of the last step whose loss was healthy, marked diverged, with a
    history that ends there."""
    out = tmp_path / "m.pt"
    trainer = _trainer(scene, out, checkpoint_every=5, divergence_window=4)
    gen = trainer.steps()
    for _ in range(12):
        next(gen)
    trainer.loss_fn = lambda logits, y, weight=None: logits.sum() * 0 + 1e6
    expected = r"diverged at step 16.*holds the model of the last good step \(11\)"
    with pytest.raises(TrainingDiverged, match=expected):
        while True:
            next(gen)
    model, info = load_checkpoint(out)
    run = info.training["last_run"]
    assert run["diverged"] is True and run["diverged_at_step"] == 16
    assert run["steps_done"] == 11 and len(info.history) == 11 and run["finished"] is False
    assert trainer.step == 11 and _finite(model)
    for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_nan_loss_before_any_checkpoint_writes_nothing(tmp_path, scene):
    out = tmp_path / "m.pt"
    trainer = _trainer(scene, out)
    gen = trainer.steps()
    next(gen)
    trainer.loss_fn = lambda logits, y, weight=None: (logits * float("nan")).mean()
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        next(gen)
    assert not out.exists() and trainer.step == 1 and _finite(trainer.model)


def test_noisy_but_healthy_training_is_not_called_diverged(scene):
    """The default rule (10x the best smoothed loss for 20 steps) leaves a normal run alone."""
    trainer = _trainer(scene, steps=60, lr=1e-3)
    trainer.run()
    assert trainer.finished and not trainer.diverged


def test_time_interval_checkpoints(tmp_path, scene):
    """With checkpoint_every=0 (no step interval) a tiny checkpoint_every_s writes the
    model after each step; with both 0 it is written only at the end."""
    out = tmp_path / "m.pt"
    trainer = _trainer(scene, out, checkpoint_every_s=1e-6)
    gen = trainer.steps()
    next(gen)
    next(gen)
    _, info = load_checkpoint(out)  # written while training, before the end
    assert info.training["last_run"]["steps_done"] == 2
    assert info.training["last_run"]["finished"] is False
    gen.close()

    quiet = tmp_path / "q.pt"
    trainer = _trainer(scene, quiet, checkpoint_every_s=0)
    gen = trainer.steps()
    next(gen)
    next(gen)
    assert not quiet.exists()
    gen.close()
    assert load_checkpoint(quiet)[1].training["last_run"]["steps_done"] == 2


def test_cancel_reason_is_stored(tmp_path, scene):
    out = tmp_path / "m.pt"
    trainer = _trainer(scene, out)
    seen = []

    def stop():
        if len(seen) >= 3:
            trainer.cancel_reason = "SIGTERM"
        return trainer.cancel_reason is not None

    trainer.run(on_step=seen.append, should_stop=stop)
    run = load_checkpoint(out)[1].training["last_run"]
    assert run["cancelled"] is True and run["cancel_reason"] == "SIGTERM"
    assert run["steps_done"] == 3 and run["diverged"] is False


def test_bad_checkpoint_settings_are_refused():
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(checkpoint_every_s=-1)
    with pytest.raises(ValueError, match="divergence_factor"):
        TrainConfig(divergence_factor=0.5)
