"""``cellfocus predict --workers N`` / ``--dask ADDRESS``: the images of a batch on dask workers.

    cellfocus predict IMAGES... --out OUT --workers 4            # a local cluster, 4 processes
    cellfocus predict IMAGES... --out OUT --dask tcp://HOST:8786  # an existing cluster

Whole images are the unit of work: each task runs
:func:`napari_cellfocus.cli_predict.predict_image` (the serial loop's own code) on one image,
on a worker, which loads the model once per process (:func:`worker_segmenter`) and writes the
image's outputs (labels, probabilities, table, overlay) itself; the task returns the
image's rows of the counts CSV and its report line. The client
(:func:`predict_on_cluster`, called by ``run_predict`` after every check the serial path makes
before any work) takes the results in the order of the images and writes the counts CSV
and the summary as the serial loop does. The chunks of one large OME-Zarr store are not
spread over workers: such a store is one task, segmented block by block on its worker.

Paths are made absolute before they are sent (a worker of an existing cluster may run in
another folder, on another machine sharing the file system); rows and messages name the
images and outputs as they were given. ``--workers`` starts a ``LocalCluster`` of N worker
processes with one thread each and torch on one thread per worker; ``--dask`` leaves the
workers' threads as the cluster set them.

Needs the ``cluster`` extra (``dask.distributed``); without it the command stops with one
line naming the extra (:func:`check_cluster_args`).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_cellfocus.cli_common import FILE_ERRORS, CliError, error_line

__all__ = [
    "add_cluster_args",
    "check_cluster_args",
    "describe_cluster",
    "predict_on_cluster",
    "worker_segmenter",
]

MISSING_EXTRA = (
    "--workers and --dask need dask.distributed, the 'cluster' extra: "
    "pip install 'napari-cellfocus[cluster]'."
)

#: A worker process's models, by (model, device): loaded by the first task that needs
#: one, each with a lock so that a worker with several threads runs one image at a time
#: on it.
_SEGMENTERS: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_SEGMENTERS_LOCK = threading.Lock()


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """``--workers N`` and ``--dask ADDRESS`` (one or the other) on the predict parser."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="segment the images on a local dask cluster of N worker processes (one "
        "thread each); needs the 'cluster' extra",
    )
    group.add_argument(
        "--dask",
        default=None,
        metavar="SCHEDULER_ADDRESS",
        help="segment the images on the workers of an existing dask.distributed cluster "
        "(e.g. tcp://HOST:8786, or a scheduler file's address); needs the 'cluster' extra",
    )


def check_cluster_args(args: argparse.Namespace) -> None:
    """Before any work: ``--workers`` >= 1 and dask.distributed importable (else one
    line naming the ``cluster`` extra)."""
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers {args.workers}: expected a number of workers >= 1.")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise CliError(MISSING_EXTRA) from None


def describe_cluster(args: argparse.Namespace) -> str:
    """'on 2 local dask workers (device auto)' for the first line of the run."""
    if args.workers is not None:
        return f"on {args.workers} local dask worker(s) (device {args.device})"
    return f"on the dask cluster at {args.dask} (device {args.device})"


def worker_segmenter(model: str, device: str, torch_threads: int | None) -> tuple[Any, Any]:
    """The model of this worker process for ``(model, device)``, loaded on first use and
    kept, with its lock; ``torch_threads``: set torch's thread count when loading."""
    key = (model, device)
    with _SEGMENTERS_LOCK:
        if key not in _SEGMENTERS:
            if torch_threads:
                import torch

                torch.set_num_threads(torch_threads)
            from napari_cellfocus.engine.segment import Segmenter

            _SEGMENTERS[key] = (Segmenter(model, device=device), threading.Lock())
        return _SEGMENTERS[key]


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).absolute()


def _as_given(text: str, pairs: Sequence[tuple[Path | None, Path | None]]) -> str:
    """``text`` with the absolute paths sent to a worker back as the user gave them
    (``pairs`` of ``(given, sent)``, the more specific first)."""
    for given, sent in pairs:
        if given is not None and sent is not None and str(sent) != str(given):
            text = text.replace(str(sent), str(given))
    return text


def predict_on_cluster(
    jobs: Sequence[tuple[Path, str, Path, Path | None]],
    args: argparse.Namespace,
    movies: bool,
    folder: Path,
    task: Callable[..., Any],
) -> Iterator[tuple[list[list[Any]], str] | BaseException]:
    """Segment ``jobs`` on dask workers (``--workers`` or ``--dask``); yields, in the
    order of ``jobs``, each image's ``(rows, line)`` or the error that made it fail (one
    of ``FILE_ERRORS``, or a worker that died on it). Closing the iterator closes the
    client and a local cluster.

    ``task(job, args, movies, folder, torch_threads)`` segments one image on a worker
    (``cli_predict.predict_task``; passed in, so this module needs nothing of
    ``cli_predict``, which imports it)."""
    import logging

    from distributed import Client, LocalCluster
    from distributed.scheduler import KilledWorker

    sent = argparse.Namespace(**vars(args))
    model = Path(str(args.model))
    if model.exists():  # a file: the workers find it from any folder
        sent.model = str(model.absolute())
    sent.func = None  # what a worker needs is data, not the command
    cluster = None
    torch_threads = None
    try:
        if args.workers is not None:
            cluster = LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            torch_threads = 1
            client = Client(cluster)
        else:
            try:
                client = Client(args.dask, timeout="30s")
            except (OSError, TimeoutError, ValueError) as err:
                raise CliError(
                    f"--dask {args.dask}: cannot reach the scheduler ({error_line(err)})."
                ) from None
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        futures = [
            client.submit(
                task,
                (Path(p).absolute(), axes, Path(out).absolute(), _absolute(pout)),
                sent,
                movies,
                Path(folder).absolute(),
                torch_threads,
                key=f"cellfocus-predict-{i}-{Path(p).name}",
                pure=False,
            )
            for i, (p, axes, out, pout) in enumerate(jobs)
        ]
        for (path, _, out, pout), future in zip(jobs, futures, strict=True):
            given = Path(path)
            pairs = [(given, given.absolute()), (out, _absolute(out)), (pout, _absolute(pout))]
            pairs.append((folder, _absolute(folder)))  # tables, overlays
            try:
                outcome = future.result()
            except FILE_ERRORS as err:  # e.g. a model that does not load on a worker
                yield CliError(_as_given(error_line(err), pairs))
            except KilledWorker as err:
                yield RuntimeError(f"{given}: the dask worker segmenting it died ({err})")
            else:
                if isinstance(outcome, CliError):
                    yield CliError(_as_given(str(outcome), pairs))
                    continue
                rows, line = outcome
                for row in rows:
                    row[0] = str(given)
                yield rows, _as_given(line, pairs)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
