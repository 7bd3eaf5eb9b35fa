"""Training on several processes (GPUs, or CPU processes) with torch's DistributedDataParallel.

Nothing here schedules work itself: torch's ``DistributedDataParallel`` (DDP) all-reduces
the gradients, ``torch.distributed`` (gloo on the CPU, nccl on CUDA) carries the few
other messages, and the processes are started by ``torchrun`` or by :func:`launch`
(``cellfocus train --ddp --nproc N``), which sets the same environment variables as
torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``).

How a :class:`DistributedTrainer` run relates to a one-process :class:`Trainer` run:

- ``TrainConfig.batch_size`` is the **global** batch: each of the N ranks makes
  ``batch_size / N`` of the step's crops (it must divide), rank r the batch elements
  r, r + N, r + 2N, ... (a strided split, like ``DistributedSampler``'s). Every crop is
  drawn from its own generator seeded by ``(seed, step, element)`` (``Trainer._example``),
  so the ranks see different crops, the union of the ranks' crops is exactly the batch
  one process would draw, and a run is reproducible whatever N is.
- DDP averages the ranks' gradients; with equal shares, the mean of the per-rank mean
  losses is the mean loss of the whole batch, so for losses that are pixel means ("wce",
  and the DDT MAE) the update is the one-process update up to float rounding: the same
  model to about 1e-5 relative after a few steps (``tests/engine/test_ddp.py`` measures
  it). "j3" / "j4" (a weighted mean and a Youden term over the batch) and "jaccard" (a
  ratio over the batch) are computed per rank and their gradients averaged, as any DDP
  run does: close to, not the same as, one process. Batch-norm statistics are per rank
  unless ``sync_batchnorm`` (the default on CUDA; torch's SyncBatchNorm has no CPU
  implementation), so a batch-norm network on the CPU differs slightly too.
- torch's own random numbers (none are used by the networks' training today) are
  seeded per rank after the model is built; the starting weights are the same on every
  rank (same seed, and DDP copies rank 0's at the start).
- One writer: only rank 0 has an ``out`` path, so only it writes checkpoints, through the
  Trainer's atomic checkpoint path, at the same moments as one process would.
- Decisions are rank 0's: the loss the divergence watch sees is the mean over the ranks;
  whether the run diverged, whether the weights are finite and whether to stop (a
  cancel: ``should_stop`` or a signal) are broadcast from rank 0 every step, and the
  other ranks follow, so no rank waits forever in a collective that another skipped.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from napari_cellfocus.engine.checkpoint import ModelInfo
from napari_cellfocus.engine.train import TrainConfig, Trainer, TrainProgress

__all__ = [
    "DistContext",
    "DistributedTrainer",
    "ddp_device",
    "distributed",
    "distributed_env",
    "launch",
]

#: The environment variables torchrun sets (and :func:`launch` sets the same way).
ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def distributed_env() -> bool:
    """True in a process started by torchrun or :func:`launch` (``RANK`` and
    ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the distributed run."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the checkpoints and talks to the user."""
        return self.rank == 0


def ddp_device(preference: str | None, local_rank: int, local_world_size: int) -> torch.device:
    """The device of local rank ``local_rank``: ``cuda:LOCAL_RANK`` for "auto" (when CUDA
    is there) and "cuda", else the CPU. An explicit "cuda:N" is only taken when this node
    runs one process; MPS has no DDP backend."""
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preference!r} requested, but no CUDA GPU is available here."
            )
        dev = torch.device(pref)
        if dev.index is not None:
            if local_world_size > 1:
                raise ValueError(
                    f"--device {preference}: with several processes per machine each one "
                    "uses cuda:LOCAL_RANK; give --device cuda (or auto)."
                )
            index = dev.index
        else:
            index = local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"process {local_rank} needs cuda:{index}, but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist: use at most that many "
                "processes per machine."
            )
        return torch.device("cuda", index)
    raise ValueError(
        f"device {preference!r} cannot train distributed: use auto, cpu or cuda "
        "(DDP runs on CUDA with nccl or on the CPU with gloo)."
    )


@contextlib.contextmanager
def distributed(
    device: str | None = "auto",
    backend: str | None = None,
    timeout_s: float = 1800.0,
) -> Iterator[DistContext]:
    """Join the process group described by torchrun's environment variables, for the
    duration of the ``with`` block (the group is destroyed at its end).

    ``backend``: ``None`` = nccl on CUDA, gloo on the CPU.
    """
    if not distributed_env():
        raise RuntimeError(
            "not started as one of several processes: RANK / WORLD_SIZE are not set "
            "(use torchrun or cellfocus train --ddp)."
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    dev = ddp_device(device, local_rank, local_world)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    try:
        yield DistContext(rank, local_rank, world, dev, backend)
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """A torch seed of its own for each rank, the same in every run with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


class DistributedTrainer(Trainer):
    """A :class:`~napari_cellfocus.engine.train.Trainer` that is one rank of a DDP run
    (call it inside :func:`distributed`, on every rank, with the same arguments).

    ``config.batch_size`` is the global batch (a multiple of the world size); ``out`` is
    only used by rank 0; ``device`` defaults to the process group's device (the
    :func:`distributed` context's ``device``). ``sync_batchnorm``: convert batch-norm
    layers to ``SyncBatchNorm`` (statistics over the global batch); ``None`` = on CUDA.
    Other parameters are the Trainer's. The trained model is ``trainer.model`` (the plain
    network, not the DDP wrapper) on every rank.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        config: TrainConfig | None = None,
        *,
        device: str | torch.device | None = None,
        out: Any = None,
        sync_batchnorm: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "DistributedTrainer needs a process group: use engine.ddp.distributed()."
            )
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        config = config or TrainConfig()
        if config.batch_size % self.world_size:
            fit = self.world_size * max(1, round(config.batch_size / self.world_size))
            raise ValueError(
                f"the batch size ({config.batch_size}) is the global batch of all "
                f"{self.world_size} processes and must be a multiple of their number; use "
                f"--batch-size {fit}."
            )
        if device is None:
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl"
                else "cpu"
            )
        super().__init__(
            images, labels, config, device=device, out=out if self.rank == 0 else None, **kwargs
        )
        torch.manual_seed(rank_seed(self.config.seed, self.rank))
        if sync_batchnorm is None:
            sync_batchnorm = self.device.type == "cuda"
        if sync_batchnorm and not self.config.freeze_norm:
            # the same Parameter and buffer objects: the optimiser and states still hold
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self._comm_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        ids = [self.device.index] if self.device.type == "cuda" else None
        # DDP copies rank 0's weights and buffers to the others here, and all-reduces
        # (averages) the gradients in backward
        self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    # the hooks of Trainer.steps
    def _batch_indices(self) -> Sequence[int]:
        return range(self.rank, self.config.batch_size, self.world_size)

    def _forward(self, x: torch.Tensor) -> Any:
        return self.ddp_model(x)

    def _loss_value(self, loss: torch.Tensor) -> float:
        value = loss.detach().to(self._comm_device, torch.float64).reshape(1).clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return float(value.item()) / self.world_size

    def _agreed(self, flag: bool) -> bool:
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def validate(self) -> dict[str, float]:
        """Validation runs on rank 0 only (it alone records and writes the history)."""
        return super().validate() if self.rank == 0 else {}

    def run(
        self,
        on_step: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[torch.nn.Module, ModelInfo]:
        """Trainer.run on every rank; after each step rank 0's ``should_stop()`` decides
        for all ranks (the others' is not asked)."""

        def stop_now() -> bool:
            mine = bool(should_stop()) if (should_stop is not None and self.rank == 0) else False
            return self._agreed(mine)

        return super().run(on_step=on_step, should_stop=stop_now)

    def current_info(self) -> ModelInfo:
        info = super().current_info()
        info.training["last_run"]["distributed"] = {
            "world_size": self.world_size,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "batch_per_process": self.config.batch_size // self.world_size,
            "sync_batchnorm": any(
                isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules()
            ),
        }
        return info

    def release(self) -> None:
        self.ddp_model = None  # type: ignore[assignment]
        super().release()


# --------------------------------------------------------------------------- launcher
def free_port() -> int:
    """A TCP port free on this machine now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child(target: str, rank: int, nproc: int, port: int, threads: int, args: tuple) -> None:
    """One process of :func:`launch`: torchrun's environment, then ``target(*args)``."""
    if hasattr(os, "setpgrp"):
        # a process group of its own: the terminal's Ctrl-C reaches the launcher only,
        # which passes it on once (a second one then stops at once, as in one process)
        os.setpgrp()
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    module, name = target.split(":")
    code = getattr(importlib.import_module(module), name)(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(int(code or 0))


def launch(target: str, nproc: int, *args: Any, grace_s: float = 10.0) -> int:
    """Run ``target`` (``"package.module:function"``) in ``nproc`` new local processes
    (torch.multiprocessing, spawn), each with torchrun's environment variables, as
    ``function(*args)``; returns the exit status of the run: that of the first rank that
    failed, else rank 0's.

    SIGTERM / SIGINT sent to this process are passed on to every rank (where the
    trainer stops after the step, rank 0 deciding). When a rank fails, the others get
    ``grace_s`` seconds to end by themselves, then SIGTERM, then SIGKILL, so a crashed
    rank never leaves the rest waiting in a collective. Threads per rank: the CPU count
    divided by ``nproc`` (``OMP_NUM_THREADS`` when set).
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}.")
    if "OMP_NUM_THREADS" in os.environ:
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(target, rank, nproc, port, threads, args))
        for rank in range(nproc)
    ]

    def forward(signum, frame):
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: no forwarding
            previous[signum] = signal.signal(signum, forward)
    try:
        for proc in procs:
            proc.start()
        failed_at: float | None = None
        first_failure: int | None = None  # exit status of the first rank that failed
        terminated = False
        while any(p.exitcode is None for p in procs):
            for proc in procs:
                proc.join(0.1)
            failures = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed_at is None and failures:
                failed_at, first_failure = time.monotonic(), failures[0]
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for proc in procs:
                    if proc.exitcode is None:
                        proc.kill() if terminated else proc.terminate()
                terminated = True
                failed_at = time.monotonic() - grace_s + 5.0  # SIGKILL 5 s after SIGTERM
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
                proc.join()
    codes = [p.exitcode or 0 for p in procs]
    code = first_failure or codes[0] or next((c for c in codes if c), 0)
    return 128 - code if code < 0 else code  # killed by signal S: 128 + S, as a shell says
