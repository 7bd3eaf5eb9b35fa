"""Distributed training (engine.ddp): 2 CPU processes with gloo against one process.

One launch of 2 ranks (``engine.ddp.launch``, the launcher of ``cellfocus train --ddp``)
runs every distributed scenario in turn, and each rank writes what it saw to a file:

- the same run as one process: global batch 4 split 2 + 2, final weights and per-step
  losses compared with a one-process Trainer on the same seed and global batch;
- one checkpoint writer: rank 0 writes ``out``, rank 1 writes nothing;
- cancel: rank 0's ``should_stop`` stops both ranks at the same step;
- divergence: a NaN loss on rank 1 only stops both ranks at the same step, rank 0 keeps
  the last good model on disk, marked diverged;
- a global batch that does not split evenly is refused on every rank.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.ddp import launch
from napari_cellfocus.engine.train import TrainConfig, Trainer

#: A tiny network without batch norm: torch's SyncBatchNorm has no CPU implementation,
#: and per-rank batch statistics would differ from one process' (see engine.ddp).
TINY = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 3,
    "depth": 2,
    "width": 8,
    "norm": "group",
    "dims": 2,
}
CONFIG = {
    "steps": 4,
    "batch_size": 4,
    "crop_size": 32,
    "lr": 1e-3,
    "checkpoint_every": 2,
    "checkpoint_every_s": 0.0,
    "seed": 7,
}


def _data():
    scenes = [simulate_cells(shape=(64, 64), seed=s, radius=(5, 8), density=0.3) for s in (1, 2)]
    return [s.image for s in scenes], [s.labels for s in scenes]


def _rank_main(folder: str) -> int:
    """What each of the 2 ranks runs (in its own process, started by ``launch``)."""
    from napari_cellfocus.engine.ddp import DistributedTrainer, distributed
    from napari_cellfocus.engine.train import TrainingDiverged

    torch.set_num_threads(1)
    folder_path = Path(folder)
    images, labels = _data()
    report: dict = {}
    with distributed("cpu") as ctx:
        report["backend"] = ctx.backend
        # 1. the same run as one process, rank 0 writing the checkpoint
        trainer = DistributedTrainer(
            images, labels, TrainConfig(**CONFIG), network=TINY, out=folder_path / "ddp.pt"
        )
        t0 = time.perf_counter()
        model, info = trainer.run()
        report["seconds"] = time.perf_counter() - t0
        report["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        report["losses"] = [h["loss"] for h in info.history]
        report["wrote"] = trainer._wrote_out
        report["indices"] = list(trainer._batch_indices())

        # 2. cancel: only rank 0 is asked; rank 1 follows
        calls = []

        def stop() -> bool:
            calls.append(1)
            return len(calls) >= 2

        trainer = DistributedTrainer(
            images,
            labels,
            TrainConfig(**{**CONFIG, "steps": 10}),
            network=TINY,
            out=folder_path / "cancel.pt",
        )
        trainer.run(should_stop=stop)
        report["cancel"] = (trainer.step, trainer.cancelled, len(calls))

        # 3. a NaN loss on rank 1 only: both ranks stop at the same step
        class NanOnRank1(DistributedTrainer):
            def _batch_loss(self, *batch):
                loss = super()._batch_loss(*batch)
                return loss * math.nan if (self.rank == 1 and self.step == 2) else loss

        trainer = NanOnRank1(
            images,
            labels,
            TrainConfig(**{**CONFIG, "steps": 10}),
            network=TINY,
            out=folder_path / "diverged.pt",
        )
        try:
            trainer.run()
            report["diverged"] = None
        except TrainingDiverged as err:
            report["diverged"] = (trainer.step, trainer.diverged_at, str(err))

        # 4. a global batch that 2 ranks cannot share evenly
        try:
            DistributedTrainer(
                images, labels, TrainConfig(**{**CONFIG, "batch_size": 3}), network=TINY
            )
            report["odd_batch"] = None
        except ValueError as err:
            report["odd_batch"] = str(err)
    torch.save(report, folder_path / f"rank{ctx.rank}.pt")
    return 0


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the scenarios on 2 gloo ranks; returns the folder and both ranks' reports."""
    folder = tmp_path_factory.mktemp("ddp")
    t0 = time.perf_counter()
    code = launch(f"{__name__}:_rank_main", 2, str(folder))
    wall = time.perf_counter() - t0
    assert code == 0
    reports = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    print(f"\n2-rank launch: {wall:.1f} s", file=sys.stderr)
    return folder, reports


@pytest.fixture(scope="module")
def one_process():
    images, labels = _data()
    model, info = Trainer(images, labels, TrainConfig(**CONFIG), network=TINY, device="cpu").run()
    return model.state_dict(), [h["loss"] for h in info.history]


def test_two_gloo_ranks_train_the_same_model_as_one_process(ranks, one_process):
    """Global batch 4, 2 crops per rank, 4 Adam steps: the ranks end with the same weights
    (DDP keeps them in step) and those are the one-process weights to 1e-4 relative
    (measured: ~1e-7, float rounding of the gradient all-reduce); the per-step losses
    (the mean over the ranks) are the one-process losses."""
    _, (r0, r1) = ranks
    state, losses = one_process
    assert r0["backend"] == "gloo"
    assert r0["indices"] == [0, 2] and r1["indices"] == [1, 3]  # the global batch, split
    worst = 0.0
    for name, ref in state.items():
        if not ref.is_floating_point():
            continue
        assert torch.equal(r0["state"][name], r1["state"][name]), name
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((r0["state"][name] - ref).abs().max()) / scale)
    print(f"\nmax relative weight difference, 2 ranks vs 1 process: {worst:.2e}", file=sys.stderr)
    assert worst < 1e-4
    # training moved the weights far more than the tolerance
    moved = max(
        float((r0["state"][k] - v).abs().max())
        for k, v in Trainer(*_data(), TrainConfig(**CONFIG), network=TINY, device="cpu")
        .model.state_dict()
        .items()
        if v.is_floating_point()
    )
    assert moved > 1e-3
    np.testing.assert_allclose(r0["losses"], losses, rtol=1e-4)
    assert r0["losses"] == r1["losses"]


def test_only_rank_0_writes_the_checkpoint(ranks, one_process):
    folder, (r0, r1) = ranks
    assert r0["wrote"] and not r1["wrote"]
    model, info = load_checkpoint(folder / "ddp.pt", device="cpu")
    last = info.training["last_run"]
    assert last["finished"] and last["steps_done"] == 4
    assert last["distributed"]["world_size"] == 2
    assert last["distributed"]["batch_per_process"] == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, r0["state"][name]), name


def test_rank_0_cancel_stops_every_rank_at_the_same_step(ranks):
    folder, (r0, r1) = ranks
    assert r0["cancel"] == (2, True, 2)  # asked after steps 1 and 2
    assert r1["cancel"] == (2, True, 0)  # never asked: it follows rank 0
    _, info = load_checkpoint(folder / "cancel.pt", device="cpu")
    assert info.training["last_run"]["cancelled"]
    assert info.training["last_run"]["steps_done"] == 2


def test_a_nan_on_one_rank_stops_both_and_keeps_the_last_good_model(ranks):
    folder, (r0, r1) = ranks
    assert r0["diverged"] is not None and r1["diverged"] is not None
    assert r0["diverged"][:2] == r1["diverged"][:2] == (2, 3)  # step 3 diverged, 2 kept
    assert "the loss is nan" in r0["diverged"][2]
    _, info = load_checkpoint(folder / "diverged.pt", device="cpu")  # written at step 2
    assert info.training["last_run"]["diverged"]
    assert info.training["last_run"]["steps_done"] == 2


def test_a_batch_the_ranks_cannot_share_is_refused(ranks):
    _, (r0, r1) = ranks
    for report in (r0, r1):
        assert report["odd_batch"] and "multiple" in report["odd_batch"]
        assert "--batch-size 4" in report["odd_batch"]


def test_a_failing_rank_ends_the_launch_with_its_status():
    """Rank 1 fails at once while rank 0 would wait for a minute (as in a collective
    whose partner is gone): the launcher ends rank 0 after the grace time and returns
    rank 1's status, not the one of the rank it ended."""
    t0 = time.perf_counter()
    assert launch(f"{__name__}:_fail_on_rank_1", 2, grace_s=1.0) == 3
    assert time.perf_counter() - t0 < 50


def _fail_on_rank_1() -> int:
    import os

    if os.environ["RANK"] == "1":
        return 3
    time.sleep(60)
    return 0
