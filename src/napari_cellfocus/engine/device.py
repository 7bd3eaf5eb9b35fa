"""Choosing the torch device, describing it to the user, and giving memory back.

CUDA is used when present (with mixed precision), then Apple's MPS, then the CPU.
The user can override the choice with ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names that can be used on this machine, best first (always ends with "cpu")."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device to run on.

    Parameters
    ----------
    preference : str, torch.device or None
        ``"auto"`` / ``None``: CUDA if available, else MPS, else CPU.
        Otherwise a device string such as ``"cpu"``, ``"cuda"``, ``"cuda:0"``, ``"mps"``.

    Raises
    ------
    ValueError
        The requested device does not exist on this machine.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preference!r} requested, but no CUDA GPU is available here "
                f"(available: {', '.join(available_devices())})."
            )
        dev = torch.device(pref)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {preference!r} requested, but only {torch.cuda.device_count()} "
                "CUDA device(s) exist."
            )
        return dev
    if pref == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' requested, but Apple MPS is not available here.")
        return torch.device("mps")
    if pref == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {preference!r}: use one of auto, cpu, cuda, cuda:N, mps.")


def example_threads(device: torch.device, requested: int | None = None) -> int:
    """Threads that make augmented training examples.

    ``requested`` when given (at least 1). Otherwise one on the CPU, where the network's
    own threads sit idle while examples are made anyway, and ``min(8, CPU cores)`` on an
    accelerator, where example making bounds the step time (a batch of eight 256² crops
    takes ~0.1 s on one core).
    """
    if requested is not None:
        return max(1, int(requested))
    return 1 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def describe_device(device: torch.device) -> str:
    """Human-readable device name: ``"CUDA:0 NVIDIA H100 (80 GiB)"``, ``"CPU (2 threads)"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"CUDA:{index} {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (float16 autocast); a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a GPU out-of-memory error (CUDA or MPS)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_memory(device: torch.device | None = None) -> None:
    """Collect garbage and return cached GPU memory to the driver."""
    gc.collect()
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if (device is None or device.type == "mps") and _mps_available():
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


@contextlib.contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode without gradients, restoring its training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def memory_in_use(device: torch.device | str | None = None) -> str:
    """What memory this process holds, for the widgets' "Memory" line.

    ``"RAM 1.4 GiB of 24.0 GiB"`` (the process' resident memory, of the machine's),
    plus on a CUDA device ``" · GPU 0.8 GiB (1.0 GiB reserved) of 80.0 GiB"``
    (memory of live tensors, the cache torch keeps, the card's total).
    """
    import psutil

    rss, total_ram = psutil.Process().memory_info().rss, psutil.virtual_memory().total
    text = f"RAM {_gib(rss)} of {_gib(total_ram)}"
    if isinstance(device, str):
        try:
            device = select_device(device)
        except ValueError:
            device = None
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        text += (
            f" · GPU {_gib(torch.cuda.memory_allocated(index))} "
            f"({_gib(torch.cuda.memory_reserved(index))} reserved) of {_gib(total)}"
        )
    elif device is not None and device.type == "mps":
        with contextlib.suppress(Exception):
            text += f" · GPU {_gib(torch.mps.current_allocated_memory())}"
    return text
