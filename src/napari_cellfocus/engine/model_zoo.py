"""BioImage Model Zoo (bioimage.io) packages: export a segmentation model, read one back.

:func:`export_package` writes a model as a bioimage.io model package (a zip with a
``rdf.yaml`` of the current model spec, 0.5.x, built with ``bioimageio.spec``, never by
hand) holding:

* the weights twice: ``pytorch_state_dict`` (the package's own network class, the file
  ``engine/networks.py`` shipped inside the package as the architecture source, with the
  network's keyword arguments) and ``torchscript`` (a trace of the network body, converted
  from the state dict);
* the input ``raw`` (batch, channel, y, x; y and x any multiple of the network's pooling
  factor) and the output ``probabilities`` (batch, channel = the class names, y, x, same
  size as the input);
* the model's percentile normalisation as ``scale_range`` preprocessing (its ``low`` /
  ``high`` percentiles over each image), and ``softmax`` over the classes as
  postprocessing, so other tools get class probabilities;
* a test input (a simulated image) and the output this package computes for it, a cover
  image, documentation (``README.md``), citations of the papers the methods come from,
  the licence and a description of the training data;
* the checkpoint's own metadata (``cellfocus_model.json``: network, classes,
  normalisation, defaults, training, history, weights hash), so that
  :func:`read_package` gives back exactly the ``(state_dict, ModelInfo)`` of the ``.pt``
  file: ``load_checkpoint("M.zip")`` (hence ``Segmenter``, ``--model M.zip`` and the
  widgets' model files) predicts the same labels as the ``.pt`` model.

Exporting needs the optional ``bioimageio`` extra (``pip install
"napari-cellfocus[bioimageio]"``); reading a package this plugin wrote needs nothing
beyond the package's own dependencies. Packages from other tools are not read: they are
refused with a message naming the file and what does not fit.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from napari_cellfocus import __version__
from napari_cellfocus.engine.checkpoint import (
    CheckpointError,
    ModelInfo,
    content_hash,
    load_checkpoint,
    resolve_model_path,
)

#: The attachment that marks a package written by this plugin and holds its metadata.
INFO_FILE = "cellfocus_model.json"
WEIGHTS_FILE = "cellfocus_weights.pt"
TORCHSCRIPT_FILE = "cellfocus_torchscript.pt"
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
INFO_FORMAT = "napari-cellfocus-bioimageio"
INFO_FORMAT_VERSION = 1
#: Names a bioimage.io package's description may have inside its zip.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
EXTRA_HINT = 'pip install "napari-cellfocus[bioimageio]"'
TEST_SEED = 20261201
TEST_SHAPE = (256, 256)

#: The papers the methods come from (docs/methods.md keys T, D, C) and the real training
#: data of the built-in model. arXiv papers by their DataCite DOI (10.48550/arXiv.ID).
CITATIONS: tuple[dict[str, str], ...] = (
    {
        "text": "Guerrero-Peña F.A., Marrero Fernandez P.D., Ren T.I., Yui M., Rothenberg E., "
        "Cunha A. Multiclass weighted loss for instance segmentation of cluttered cells. "
        "ICIP 2018 (thesis T, chapter 4: the 3-class scheme and weight maps)",
        "doi": "10.48550/arXiv.1802.07465",
    },
    {
        "text": "Guerrero-Peña F.A., Marrero Fernandez P.D., Tarr P.T., Ren T.I., Meyerowitz "
        "E.M., Cunha A. J regularization improves imbalanced multiclass segmentation. 2019 "
        "(thesis T, chapter 5: the 4-class scheme, J regularisation, weak labels)",
        "doi": "10.48550/arXiv.1910.09783",
    },
    {
        "text": "Zamora-Cárdenas W., Mendez M., Calderon-Ramirez S., et al. Enforcing "
        "morphological information in fully convolutional networks to improve cell instance "
        "segmentation in fluorescence microscopy images. 2021 (D: deep distance transform)",
        "doi": "10.48550/arXiv.2106.05843",
    },
    {
        "text": "Morelli R., Clissa L., Amici R., et al. Automating cell counting in "
        "fluorescent microscopy through deep learning with c-ResUnet. Scientific Reports 11, "
        "22920 (2021) (C: residual U-Net, overcrowding weight maps)",
        "doi": "10.1038/s41598-021-01929-5",
    },
)
DSB_CITATION = {
    "text": "Caicedo J.C., Goodman A., Karhohs K.W., et al. Nucleus segmentation across "
    "imaging experiments: the 2018 Data Science Bowl. Nature Methods 16, 1247-1253 (2019) "
    "(BBBC038, the real training images of the built-in model)",
    "doi": "10.1038/s41592-019-0612-7",
}
LICENSE = "BSD-3-Clause"


class MissingExtraError(ImportError):
    """``bioimageio.spec`` / ``bioimageio.core`` are not installed."""


def _require_spec() -> None:
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(
            f"exporting to BioImage.IO needs the optional 'bioimageio' extra: {EXTRA_HINT}"
        ) from err


# --------------------------------------------------------------------------------- read
def is_package(path: str | Path) -> bool:
    """True if ``path`` is a zip holding a bioimage.io description (``rdf.yaml``).

    A torch ``.pt`` file is a zip too, but holds no ``rdf.yaml``."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name in names for name in RDF_NAMES)


def read_package(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """``(state_dict, ModelInfo)`` of a package written by :func:`export_package`.

    Raises :class:`CheckpointError` naming the file for a damaged package and for a
    package from another tool (which this plugin does not run)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if INFO_FILE not in names:
                raise CheckpointError(_foreign_message(path, zf, names))
            meta = json.loads(zf.read(INFO_FILE).decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != INFO_FORMAT:
                raise CheckpointError(
                    f"{path}: {INFO_FILE} is not a napari-cellfocus model description."
                )
            version = meta.get("format_version")
            if not isinstance(version, int) or version > INFO_FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: written by napari-cellfocus {meta.get('package_version', '?')} "
                    f"(package format {version!r}); this is {__version__}, which reads "
                    f"versions up to {INFO_FORMAT_VERSION}. Update napari-cellfocus."
                )
            weights = meta.get("weights", WEIGHTS_FILE)
            if weights not in names:
                raise CheckpointError(f"{path}: damaged package, {weights} is missing.")
            state = torch.load(io.BytesIO(zf.read(weights)), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: damaged BioImage.IO package ({err}).") from err
    info_dict = _from_json(meta.get("info", {}))
    if not isinstance(state, dict) or "network" not in info_dict:
        raise CheckpointError(f"{path}: damaged package, its weights or metadata are missing.")
    stored = meta.get("content_sha256")
    if stored is not None and content_hash({"state_dict": state}) != stored:
        raise CheckpointError(
            f"{path}: corrupt: the weights in {weights} do not match the hash written with "
            "them; use another copy or export again."
        )
    try:
        info = ModelInfo(**info_dict)
    except TypeError as err:
        raise CheckpointError(f"{path}: damaged package metadata ({err}).") from err
    return state, info


def _foreign_message(path: Path, zf: zipfile.ZipFile, names: set[str]) -> str:
    """What a package written by another tool offers, and why it cannot be used here."""
    rdf = next(n for n in RDF_NAMES if n in names)
    text = zf.read(rdf).decode("utf-8", errors="replace")
    found = _describe_rdf(text)
    return (
        f"{path}: a BioImage.IO package not written by napari-cellfocus ({found}). "
        "The plugin runs its own networks only: it needs one 2D input (batch, 1 channel, "
        "y, x) and class logits or probabilities (background, cell, touching[, gap]) of "
        "the same size, with napari-cellfocus metadata (cellfocus_model.json). Run this "
        "package in a tool that executes BioImage.IO models (bioimageio.core, "
        "deepImageJ, ilastik), or fine-tune the built-in model on its outputs."
    )


def _describe_rdf(text: str) -> str:
    """A short summary (name, inputs and outputs with their axes) of a package's rdf."""
    try:
        import yaml  # napari depends on PyYAML

        rdf = yaml.safe_load(text) or {}
    except Exception:
        return "its description cannot be read"
    if not isinstance(rdf, dict):
        return "its description cannot be read"

    def tensors(key: str) -> str:
        out = []
        for t in rdf.get(key) or []:
            if not isinstance(t, dict):
                continue
            axes = t.get("axes")
            if isinstance(axes, list):
                axes = ",".join(
                    str(a.get("id", a.get("type")) if isinstance(a, dict) else a) for a in axes
                )
            out.append(f"{t.get('id', t.get('name', '?'))}[{axes}]")
        return " ".join(out) or "none"

    weights = ", ".join(sorted(rdf.get("weights") or {})) or "none"
    return (
        f"{rdf.get('name', '?')!s}, format {rdf.get('format_version', '?')}; inputs "
        f"{tensors('inputs')}; outputs {tensors('outputs')}; weights {weights}"
    )


# ------------------------------------------------------------------------------- export
class _Core(torch.nn.Module):
    """The network body without its any-size padding (traced for TorchScript: inputs
    must then be multiples of the network's divisor, which the package declares)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._core(x)


def _check_exportable(path: Path, model: torch.nn.Module, info: ModelInfo) -> None:
    net = info.network
    if info.task != "segmentation":
        raise CheckpointError(f"{path}: a {info.task} model; only segmentation models export.")
    arch = net.get("architecture")
    if arch not in ("unet", "residual_unet"):
        raise CheckpointError(
            f"{path}: architecture {arch!r} does not export to BioImage.IO yet "
            "(unet and residual_unet do)."
        )
    if int(net.get("dims", 2)) != 2:
        raise CheckpointError(f"{path}: 3D models do not export to BioImage.IO yet.")
    if int(net.get("in_channels", 1)) != 1:
        raise CheckpointError(f"{path}: only single-channel models export to BioImage.IO.")


def _trace(model: torch.nn.Module, divisor: int) -> torch.jit.ScriptModule | None:
    """A TorchScript trace of ``model``'s body, or ``None`` when the trace does not give
    the eager network's output on other sizes than the one traced."""
    core = _Core(model).eval()
    size = 8 * divisor
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 calls jit deprecated; the zoo's torchscript format is still a trace
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(core, torch.rand(1, 1, size, size), check_trace=False)
        for shape in ((2, 1, size + divisor, size + 3 * divisor), (1, 1, size, 2 * size)):
            x = torch.rand(*shape)
            if not torch.allclose(traced(x), model(x), atol=1e-5, rtol=1e-4):
                return None
    return traced


def test_image(shape: Sequence[int] = TEST_SHAPE, seed: int = TEST_SEED) -> np.ndarray:
    """The package's test input: a simulated fluorescence image of nuclei (float32)."""
    from napari_cellfocus.core.simulate import simulate_cells

    return np.asarray(simulate_cells(shape=tuple(shape), seed=seed).image, dtype=np.float32)


def predict_probabilities(
    model: torch.nn.Module, info: ModelInfo, image: np.ndarray
) -> np.ndarray:
    """What the package computes for a 2D ``image``: the model's normalisation, the
    network and a softmax over the classes, (1, C, Y, X) float32."""
    x = info.normalizer()(image)[None, None]
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return torch.softmax(logits, dim=1).numpy().astype(np.float32)


def _cover(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """A 2:1 RGB cover: the test image (grey) beside its class probabilities (cell in
    green, touching / gap in magenta)."""
    lo, hi = np.percentile(image, [1, 99.8])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    left = np.repeat(grey[..., None], 3, axis=-1)
    right = np.zeros_like(left)
    right[..., 1] = probs[1]
    if probs.shape[0] > 2:
        border = probs[2:].sum(axis=0).clip(0, 1)
        right[..., 0] = border
        right[..., 2] = border
    return (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8)


def _documentation(info: ModelInfo, source: str, traced: bool) -> str:
    """The package's README.md."""
    defaults = info.defaults
    diameter = defaults.get("diameter")
    norm = info.normalization
    classes = ", ".join(info.classes)
    lines = [
        f"# {_model_name(info, source)}",
        "",
        "A fully convolutional network (U-Net family) that classifies every pixel of a "
        f"fluorescence image of nuclei as {classes}, exported by napari-cellfocus "
        f"{__version__} from `{source}`.",
        "",
        "## Inputs and outputs",
        "",
        f"- input `{INPUT_ID}`: one grey 2D image (batch, channel = 1, y, x), any intensity "
        "range; y and x must be multiples of the size step in `rdf.yaml` (pad otherwise).",
        f"- preprocessing: `scale_range` per image, the {norm.get('low')} and "
        f"{norm.get('high')} percentiles to 0 and 1, not clipped.",
        f"- output `{OUTPUT_ID}`: class probabilities (softmax over channel: {classes}), "
        "same y and x as the input.",
    ]
    if diameter:
        lines += [
            "",
            f"The network was trained at a nucleus diameter of **{float(diameter):g} px**. "
            "napari-cellfocus rescales each image to it before predicting (it measures the "
            "diameter first); in other tools, resample your image so that nuclei are about "
            f"{float(diameter):g} px across.",
        ]
    lines += [
        "",
        "## From probabilities to instances",
        "",
        "Instances are the connected components of the cell class after the touching "
        "(and gap) pixels are given to their neighbours; napari-cellfocus does this with "
        f"its post-processing `{defaults.get('method', 'map')}` "
        f"(parameters {defaults.get('post_params', {})}, size filter "
        f"{defaults.get('min_size_fraction', 'none')} of a typical nucleus area). Loading "
        "this package in napari-cellfocus (`cellfocus predict --model M.zip`, or the "
        "Segment widget's model file) applies all of it.",
        "",
        "## Weights",
        "",
        "- `pytorch_state_dict`: the class `"
        f"{'UNet' if info.network.get('architecture') == 'unet' else 'ResidualUNet'}` "
        "of `networks.py` (napari-cellfocus' own network file, needs only torch).",
    ]
    if traced:
        lines.append(
            "- `torchscript`: a trace of the same network body, converted from the state dict."
        )
    lines += [
        "",
        "## Training data",
        "",
        _training_text(info),
        "",
        "## Validation",
        "",
        _validation_text(info),
        "",
        "## Licence and citations",
        "",
        f"Weights and code under {LICENSE}. The methods come from the papers cited in "
        "`rdf.yaml` (3-/4-class targets and weight maps, J regularisation, the residual "
        "U-Net, the deep distance transform).",
        "",
    ]
    return "\n".join(lines)


_DSB_TEXT = (
    "2018 Data Science Bowl stage-1 training set (BBBC038, CC0 1.0), fluorescence images "
    "only (428 images, 11,781 annotated nuclei, community-corrected masks; 363 used for "
    "training, 65 held out for validation), mixed with 120 scenes of napari-cellfocus' "
    "nucleus simulator (0.75 real / 0.25 simulated crops)."
)


def _from_builtin(info: ModelInfo) -> bool:
    """The built-in model or one fine-tuned from it (its training record is kept)."""
    return "default_model" in info.training


def _is_default(info: ModelInfo) -> bool:
    """The built-in model itself: a fine-tune replaces ``training["last_run"]``."""
    if not _from_builtin(info):
        return False
    from napari_cellfocus.engine.checkpoint import default_model_path, read_checkpoint

    try:
        builtin = read_checkpoint(default_model_path())[1]
    except CheckpointError:
        return False
    return info.training.get("last_run") == builtin.training.get("last_run")


def _model_name(info: ModelInfo, source: str) -> str:
    if _is_default(info):
        return "napari-cellfocus nuclei U-Net"
    stem = "".join(c if c.isalnum() or c in "_- " else "-" for c in Path(source).stem)
    return f"napari-cellfocus model {stem}"[:64]


def _training_text(info: ModelInfo) -> str:
    if _is_default(info):
        return _DSB_TEXT
    run = info.training.get("last_run") or {}
    text = "Trained with napari-cellfocus"
    if _from_builtin(info):
        text = "Fine-tuned with napari-cellfocus from its built-in model (trained on the " + (
            _DSB_TEXT[0].lower() + _DSB_TEXT[1:-1] + ")"
        )
    data = info.training.get("data") or run.get("data")
    if data:
        text += f", on {data}"
    elif run.get("n_train_images"):
        text += f", on {run['n_train_images']} annotated image(s)"
    if run.get("steps_done"):
        text += f", {run['steps_done']} steps"
    return text + " (cellfocus_model.json, entry info.training, holds the full record)."


def _validation_text(info: ModelInfo) -> str:
    chosen = info.defaults.get("chosen_by")
    text = (
        "Validate on annotated images of your own: segment them with napari-cellfocus "
        "(`cellfocus predict`) and score against the annotations with `cellfocus evaluate` "
        "(F1 at IoU 0.5, PQ / SQ / RQ, AP, count error)."
    )
    if chosen:
        text += f" The stored post-processing defaults were chosen by {chosen}."
    if _is_default(info):
        text += (
            " The built-in model's scores on its validation split are in napari-cellfocus' "
            "docs/default_model.md."
        )
    return text


def _training_data(info: ModelInfo, doc: Path) -> Any:
    from bioimageio.spec.dataset.v0_3 import DatasetDescr
    from bioimageio.spec.generic.v0_3 import Author, CiteEntry, FileDescr

    if _from_builtin(info):
        builtin = _is_default(info)
        return DatasetDescr(
            name="DSB 2018 stage-1 fluorescence and simulated nuclei"
            + ("" if builtin else " plus user annotations"),
            description=_training_text(info),
            cite=[CiteEntry(**DSB_CITATION)],
            authors=[
                Author(name="Broad Bioimage Benchmark Collection (BBBC038)"),
                Author(name="napari-cellfocus developers (simulated images)"),
            ],
            documentation=FileDescr(source=doc),
            license="CC0-1.0" if builtin else None,  # the user's images: unknown
            tags=["fluorescence-light-microscopy", "nuclei", "2d", "simulated"],
        )
    return DatasetDescr(
        name="napari-cellfocus training images",
        description=_training_text(info),
        cite=[CiteEntry(**CITATIONS[0])],
        authors=[Author(name="napari-cellfocus user")],
        documentation=FileDescr(source=doc),
        license=None,  # the user's images: unknown
        tags=["fluorescence-light-microscopy", "nuclei", "2d"],
    )


def _to_json(value: Any) -> Any:
    """``value`` in JSON, exactly recoverable by :func:`_from_json`: tuples as
    ``{"__tuple__": [...]}``, non-finite floats as ``{"__float__": "nan"}`` (JSON holds
    neither), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def export_package(
    model: str | Path | tuple[torch.nn.Module, ModelInfo] | None,
    out: str | Path,
    *,
    weights: Sequence[str] = ("pytorch_state_dict", "torchscript"),
    overwrite: bool = False,
) -> Path:
    """Write the segmentation model ``model`` (``"default"``, ``None``, a ``.pt`` path, or
    a ``(torch model, ModelInfo)`` pair such as a model fine-tuned in the widget) as a
    BioImage.IO package ``out`` (``.zip``); returns its path.

    ``weights``: the formats to include (``pytorch_state_dict`` is always written; it
    is the parent of ``torchscript``). Raises :class:`MissingExtraError` without
    ``bioimageio.spec``, :class:`CheckpointError` for a model that does not export.
    """
    _require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.generic.v0_3 import CiteEntry
    from bioimageio.spec.model import v0_5

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise CheckpointError(f"{out}: a BioImage.IO package is a .zip file.")
    if out.is_dir():
        raise CheckpointError(f"{out}: is a folder, expected a .zip file to write.")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: exists; pass overwrite (--overwrite) to replace it.")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out}: its folder {out.parent} does not exist.")
    unknown = sorted(set(weights) - {"pytorch_state_dict", "torchscript"})
    if unknown:
        raise CheckpointError(f"unknown weight format(s) {unknown}.")
    if isinstance(model, tuple):
        net, info = copy.deepcopy(model[0]).to("cpu").eval(), model[1]
        path = Path("model-in-napari.pt")
        source = "a model trained in napari"
    else:
        path = resolve_model_path(model)
        net, info = load_checkpoint(path, device="cpu", task="segmentation")
        default = str(model or "default") == "default"
        source = "the built-in default model" if default else path.name
    _check_exportable(path, net, info)
    divisor = int(net.divisor)
    traced = _trace(net, divisor) if "torchscript" in weights else None

    image = test_image()
    probs = predict_probabilities(net, info, image)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch_version = v0_5.Version(torch.__version__.split("+")[0])

    with tempfile.TemporaryDirectory(prefix="cellfocus-bioimageio-") as tmp:
        tmp_dir = Path(tmp)
        np.save(tmp_dir / "test_input.npy", image[None, None])
        np.save(tmp_dir / "test_output.npy", probs)
        from skimage.io import imsave

        imsave(tmp_dir / "cover.png", _cover(image, probs[0]), check_contrast=False)
        tifffile.imwrite(tmp_dir / "sample_input.tif", image)
        tifffile.imwrite(tmp_dir / "sample_output.tif", probs[0], photometric="minisblack")
        (tmp_dir / "training_data.md").write_text(
            "# Training data\n\n" + _training_text(info) + "\n", encoding="utf-8"
        )
        (tmp_dir / "README.md").write_text(
            _documentation(info, source, traced is not None), encoding="utf-8"
        )
        torch.save(state, tmp_dir / WEIGHTS_FILE)
        meta = {
            "format": INFO_FORMAT,
            "format_version": INFO_FORMAT_VERSION,
            "package_version": __version__,
            "weights": WEIGHTS_FILE,
            "content_sha256": content_hash({"state_dict": state}),
            "info": _to_json(
                {
                    "network": info.network,
                    "task": info.task,
                    "classes": info.classes,
                    "normalization": info.normalization,
                    "history": info.history,
                    "training": info.training,
                    "package_version": info.package_version,
                    "defaults": info.defaults,
                }
            ),
        }
        (tmp_dir / INFO_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if traced is not None:
            traced.save(str(tmp_dir / TORCHSCRIPT_FILE))
        from napari_cellfocus.engine import networks

        arch_file = tmp_dir / "networks.py"
        arch_file.write_bytes(Path(networks.__file__).read_bytes())

        batch = v0_5.BatchAxis()
        spatial_in = [
            v0_5.SpaceInputAxis(
                id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=8 * divisor, step=divisor)
            )
            for a in ("y", "x")
        ]
        norm = info.normalization
        inp = v0_5.InputTensorDescr(
            id=v0_5.TensorId(INPUT_ID),
            description="a grey fluorescence image of nuclei, any intensity range",
            axes=[
                batch,
                v0_5.ChannelAxis(channel_names=[v0_5.Identifier("fluorescence")]),
                *spatial_in,
            ],
            test_tensor=v0_5.FileDescr(source=tmp_dir / "test_input.npy"),
            sample_tensor=v0_5.FileDescr(source=tmp_dir / "sample_input.tif"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                v0_5.ScaleRangeDescr(
                    kwargs=v0_5.ScaleRangeKwargs(
                        axes=[v0_5.AxisId("channel"), v0_5.AxisId("y"), v0_5.AxisId("x")],
                        min_percentile=float(norm.get("low", 1.0)),
                        max_percentile=float(norm.get("high", 99.8)),
                    )
                ),
            ],
        )
        outp = v0_5.OutputTensorDescr(
            id=v0_5.TensorId(OUTPUT_ID),
            description="class probabilities: " + ", ".join(info.classes),
            axes=[
                v0_5.BatchAxis(),
                v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in info.classes]),
                *(
                    v0_5.SpaceOutputAxis(
                        id=v0_5.AxisId(a),
                        size=v0_5.SizeReference(
                            tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(a)
                        ),
                    )
                    for a in ("y", "x")
                ),
            ],
            test_tensor=v0_5.FileDescr(source=tmp_dir / "test_output.npy"),
            sample_tensor=v0_5.FileDescr(source=tmp_dir / "sample_output.tif"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis="channel"))],
        )
        kwargs = {k: v for k, v in info.network.items() if k != "architecture"}
        cls_name = "UNet" if info.network["architecture"] == "unet" else "ResidualUNet"
        entries: dict[str, Any] = {
            "pytorch_state_dict": v0_5.PytorchStateDictWeightsDescr(
                source=tmp_dir / WEIGHTS_FILE,
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=arch_file, callable=v0_5.Identifier(cls_name), kwargs=kwargs
                ),
                pytorch_version=torch_version,
            )
        }
        if traced is not None:
            entries["torchscript"] = v0_5.TorchscriptWeightsDescr(
                source=tmp_dir / TORCHSCRIPT_FILE,
                pytorch_version=torch_version,
                parent="pytorch_state_dict",
                comment="torch.jit.trace of the network body (no any-size padding)",
            )
        descr = v0_5.ModelDescr(
            name=_model_name(info, source),
            description=(
                "Per-pixel classes (" + ", ".join(info.classes) + ") of nuclei in 2D "
                "fluorescence images, for instance segmentation and counting; exported by "
                "napari-cellfocus."
            ),
            authors=[v0_5.Author(name="napari-cellfocus developers")],
            cite=[CiteEntry(**c) for c in (*CITATIONS, DSB_CITATION)],
            license=v0_5.LicenseId(LICENSE),
            documentation=v0_5.FileDescr(source=tmp_dir / "README.md"),
            covers=[v0_5.FileDescr(source=tmp_dir / "cover.png")],
            attachments=[v0_5.FileDescr(source=tmp_dir / INFO_FILE)],
            tags=[
                "fluorescence-light-microscopy",
                "nuclei",
                "instance-segmentation",
                "semantic-segmentation",
                "2d",
                "unet",
                "pytorch",
                "napari",
            ],
            inputs=[inp],
            outputs=[outp],
            training_data=_training_data(info, tmp_dir / "training_data.md"),
            weights=v0_5.WeightsDescr(**entries),
            version="0.1.0",
            config=v0_5.Config(
                bioimageio=v0_5.BioimageioConfig(
                    architecture_type="U-Net",
                    modality="fluorescence microscopy",
                    target_structure=["nuclei"],
                    task="segmentation",
                    model_parameter_count=int(sum(p.numel() for p in net.parameters())),
                ),
                napari_cellfocus={"info": INFO_FILE, "package_version": __version__},
            ),
        )
        tmp_out = out.with_name(f".{out.name}.partial")
        try:
            save_bioimageio_package(descr, output_path=tmp_out)
            tmp_out.replace(out)
        except OSError as err:
            raise CheckpointError(
                f"{out}: cannot write the package ({err.strerror or type(err).__name__})."
            ) from err
        finally:
            tmp_out.unlink(missing_ok=True)
    return out


def check_package(path: str | Path, devices: Sequence[str] = ("cpu",)) -> Any:
    """Run the zoo's own test (``bioimageio.core.test_model``) on ``path``; returns its
    ValidationSummary (``.status`` is ``"passed"`` or ``"failed"``)."""
    try:
        from bioimageio.core import test_model
    except ImportError as err:
        raise MissingExtraError(f"checking a package needs bioimageio.core: {EXTRA_HINT}") from err
    return test_model(Path(path), devices=list(devices))
