"""Model checkpoints: one file holding the weights and everything needed to use them.

A checkpoint is a plain dictionary saved with :func:`torch.save` and loadable with
``torch.load(path, weights_only=True)`` (only tensors, numbers, strings, lists and
dicts inside)::

    {
      "format": "napari-cellfocus-model",
      "format_version": 1,
      "package_version": "0.1.0",
      "task": "segmentation" | "fusion",
      "network": {...},           # network config, see engine.networks.build_network
      "classes": ["background", "cell"(, "touching"(, "gap"))],  # 2, 3 or 4 classes
      "normalization": {...},     # see core.normalize
      "history": [{"step": .., "loss": .., ...}, ...],
      "training": {...},          # data, loss, seed, steps, device, time
      "defaults": {...},          # how to use it: diameter (px), post-processing, params
      "state_dict": {...},        # torch tensors
    }

Files are written atomically (a unique temporary file in the target folder, fsync,
rename: :func:`napari_cellfocus.core.io.atomic_write`), so a crash never leaves a
half-written model under the final name and two writers to one path never mix their
tensors. Each file stores ``content_sha256``, a hash of its weights
(:func:`content_hash`), and ``metadata_sha256``, a hash of every other entry
(:func:`metadata_hashes`), both checked at load: a flipped byte in the weights, or an
edited or damaged ``network`` / ``classes`` / ``training`` / ``defaults`` ... entry, is
refused with a message naming the file (and the entries that changed). Metadata are
changed by loading the model, changing its ``ModelInfo`` and saving it again
(:func:`save_checkpoint`), not by editing the file's dictionary. Files written before
a hash existed (no ``content_sha256`` / ``metadata_sha256`` entry) load without that
check. Every way of
failing to load (missing file, not a torch file, a torch file that is not ours, a newer
format, weights that do not fit the architecture) raises :class:`CheckpointError` with
one clear line.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_cellfocus import __version__
from napari_cellfocus.core.io import atomic_write
from napari_cellfocus.core.normalize import PercentileNormalization
from napari_cellfocus.core.outputs import check_writable

FORMAT = "napari-cellfocus-model"
FORMAT_VERSION = 1
HASH_KEY = "content_sha256"
#: ``{entry: sha256}`` of every entry besides the weights and the hashes.
METADATA_HASH_KEY = "metadata_sha256"
_NOT_METADATA = ("state_dict", HASH_KEY, METADATA_HASH_KEY)
CLASS_NAMES = ("background", "cell", "touching", "gap")


class CheckpointError(ValueError):
    """A model file that cannot be used, with a message naming the file."""


class CheckpointWriteError(CheckpointError, OSError):
    """A model file that cannot be written (a folder, under a file, read-only, disk full),
    with a message naming it; an ``OSError`` too, so callers catching write errors
    (the Save model button) keep working."""


@dataclass
class ModelInfo:
    """Everything a checkpoint stores besides the weights."""

    network: dict[str, Any]
    task: str = "segmentation"
    classes: list[str] = field(default_factory=lambda: list(CLASS_NAMES[:3]))
    normalization: dict[str, Any] = field(
        default_factory=lambda: PercentileNormalization().to_dict()
    )
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    #: How the model is meant to be used, chosen on validation data and applied by the
    #: widget, the CLI and the API alike: ``diameter`` (px, the nucleus size the model
    #: was trained at: images are rescaled to it), ``method`` ("map" / "th" / "wt"),
    #: ``post_params`` (that method's parameters) and ``min_size_fraction`` (objects
    #: smaller than this share of a typical nucleus' area are dropped). Missing keys
    #: mean: no rescaling, MAP, the method's own defaults, no relative size filter.
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def normalizer(self) -> PercentileNormalization:
        return PercentileNormalization.from_dict(self.normalization)


def save_checkpoint(path: str | Path, model: torch.nn.Module, info: ModelInfo) -> Path:
    """Write ``model``'s weights and ``info`` to ``path`` atomically; returns the path."""
    path = Path(path)
    try:
        check_writable(path, "model file")
    except ValueError as err:
        raise CheckpointWriteError(str(err)) from None
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": info.package_version,
        "task": info.task,
        "network": dict(info.network),
        "classes": list(info.classes),
        "normalization": dict(info.normalization),
        "history": list(info.history),
        "training": dict(info.training),
        "defaults": dict(info.defaults),
        "state_dict": state,
    }
    payload[HASH_KEY] = content_hash(payload)
    payload[METADATA_HASH_KEY] = metadata_hashes(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))
    except OSError as err:
        raise CheckpointWriteError(
            f"{path}: cannot write the model file ({err.strerror or type(err).__name__})."
        ) from err
    return path


def content_hash(payload: dict[str, Any]) -> str:
    """sha256 (hex) of a checkpoint's weights: every tensor of ``state_dict`` in sorted
    key order, as name, dtype, shape and raw bytes.

    The weights are what a damaged file silently spoils; the other entries have their
    own hashes (:func:`metadata_hashes`). The same weights give the same hash, whatever
    the file's zip layout.
    """
    digest = hashlib.sha256()
    state = payload.get("state_dict", {})
    for name in sorted(state):
        tensor = state[name]
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(tensor).encode())
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    """One spelling of a metadata value, the same after a ``torch.save`` / ``torch.load``
    round trip: dictionaries in sorted key order, tuples as lists, floats exactly."""
    if isinstance(value, dict):
        items = sorted((_canonical(k), _canonical(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"{type(value).__name__}:{value!r}"


def metadata_hashes(payload: dict[str, Any]) -> dict[str, str]:
    """sha256 (hex) of every entry of a checkpoint besides the weights (``state_dict``)
    and the hashes themselves: ``{"network": ..., "classes": ..., "training": ...}``,
    so a changed entry can be named."""
    return {
        key: hashlib.sha256(_canonical(value).encode()).hexdigest()
        for key, value in payload.items()
        if key not in _NOT_METADATA
    }


def _check_metadata(path: Path, payload: dict[str, Any]) -> None:
    """Refuse a file whose metadata entries do not match ``metadata_sha256``."""
    stored = payload.get(METADATA_HASH_KEY)
    if stored is None:  # files from before the metadata hash load unchecked
        return
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: corrupt: its metadata hash is damaged.")
    try:
        actual = metadata_hashes(payload)
    except Exception as err:
        raise CheckpointError(f"{path}: corrupt: cannot hash its metadata ({err}).") from err
    changed = sorted(k for k in set(stored) | set(actual) if stored.get(k) != actual.get(k))
    if changed:
        raise CheckpointError(
            f"{path}: corrupt or edited: its metadata ({', '.join(changed)}) no longer "
            "match the hash written with them; use another copy or train again (to change "
            "a model's settings, load it and save it again with save_checkpoint)."
        )


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """Read and check a checkpoint file without building the network.

    Returns ``(state_dict, info)``. Raises :class:`CheckpointError`. A BioImage.IO
    package written by ``cellfocus export`` (engine.model_zoo) is read the same way.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: model file not found.")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a model file (.pt).")
    from napari_cellfocus.engine import model_zoo

    if model_zoo.is_package(path):  # a BioImage.IO package (.zip with an rdf.yaml)
        return model_zoo.read_package(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a napari-cellfocus model (cannot be read by torch: {reason[:160]})."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a torch file, but not a napari-cellfocus model "
            "(no 'format: napari-cellfocus-model' entry)."
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: model format version {version!r} was written by napari-cellfocus "
            f"{payload.get('package_version', '?')}; this is {__version__}, which reads "
            f"versions up to {FORMAT_VERSION}. Update napari-cellfocus."
        )
    missing = [k for k in ("network", "state_dict", "classes") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: damaged model file, missing {', '.join(missing)}.")
    stored = payload.get(HASH_KEY)
    if stored is not None:  # files from before the hash load unchecked
        try:
            actual = content_hash(payload)
        except Exception as err:
            raise CheckpointError(f"{path}: corrupt: cannot hash its content ({err}).") from err
        if actual != stored:
            raise CheckpointError(
                f"{path}: corrupt: content hash mismatch (the file was damaged after it "
                "was written); use another copy or train again."
            )
    _check_metadata(path, payload)
    info = ModelInfo(
        network=payload["network"],
        task=payload.get("task", "segmentation"),
        classes=list(payload["classes"]),
        normalization=payload.get("normalization", PercentileNormalization().to_dict()),
        history=list(payload.get("history", [])),
        training=dict(payload.get("training", {})),
        package_version=payload.get("package_version", "?"),
        defaults=dict(payload.get("defaults", {})),
    )
    return payload["state_dict"], info


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", task: str | None = None
) -> tuple[torch.nn.Module, ModelInfo]:
    """Build the network stored in ``path``, load its weights, move it to ``device``.

    Parameters
    ----------
    path : path to a ``.pt`` file written by :func:`save_checkpoint`, or a BioImage.IO
        package (``.zip``) written by ``cellfocus export``.
    device : where to put the model.
    task : if given (``"segmentation"`` or ``"fusion"``), the checkpoint must be of that task.

    Returns
    -------
    (model in eval mode, ModelInfo)
    """
    from napari_cellfocus.engine.networks import build_network

    state, info = read_checkpoint(path)
    if task is not None and info.task != task:
        raise CheckpointError(
            f"{path}: this is a {info.task} model; a {task} model is needed here."
        )
    try:
        model = build_network(info.network)
    except Exception as err:
        raise CheckpointError(
            f"{path}: unknown or invalid network description {info.network!r} ({err})."
        ) from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: weights do not fit the stored architecture ({first[:160]})."
        ) from err
    model.to(device).eval()
    return model, info


def default_model_path() -> Path:
    """The built-in default segmentation model shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "data" / "default_model.pt"


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` or ``"default"`` -> the built-in model; anything else -> that path."""
    if model is None or str(model).lower() == "default":
        return default_model_path()
    return Path(model)
