"""``cellfocus export``: a segmentation model as a BioImage.IO (bioimage.io) package.

The package (engine.model_zoo.export_package) runs in the zoo's tools (bioimageio.core,
deepImageJ, ilastik, ...) and loads back into napari-cellfocus (``--model M.zip``, the
widgets' model files). Exporting needs the optional extra ``bioimageio``; without it the
command prints one line naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cellfocus.cli_common import CliError


def _cmd_export(args: argparse.Namespace) -> int:
    from napari_cellfocus.engine import model_zoo

    weights = ["pytorch_state_dict"] + ([] if args.no_torchscript else ["torchscript"])
    try:
        out = model_zoo.export_package(
            args.model, args.out, weights=weights, overwrite=args.overwrite
        )
    except model_zoo.MissingExtraError as err:
        raise CliError(str(err)) from None
    print(f"wrote {out} (BioImage.IO model package, weights: {', '.join(weights)})")
    if args.check:
        try:
            summary = model_zoo.check_package(out)
        except model_zoo.MissingExtraError as err:
            raise CliError(str(err)) from None
        print(f"bioimageio test: {summary.status}")
        if summary.status != "passed":
            print(summary.format(), file=sys.stderr)
            return 1
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``export`` sub-command on ``sub``; returns its parser."""
    p = sub.add_parser(
        "export",
        help="write a segmentation model as a BioImage.IO model package (.zip)",
        description="Write a segmentation model as a BioImage Model Zoo package (model spec "
        "0.5): state-dict weights with the plugin's own network file and TorchScript "
        "weights, the model's percentile normalisation as preprocessing, softmax class "
        "probabilities as output, test tensors, cover, documentation, citations, licence "
        "and training-data description. Load it back with --model M.zip. Needs "
        'pip install "napari-cellfocus[bioimageio]".',
    )
    p.add_argument("--model", default="default", help="model file (.pt), or 'default'")
    p.add_argument("--out", required=True, type=Path, help="package to write (.zip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--no-torchscript", action="store_true", help="state-dict weights only (no TorchScript)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="then run the zoo's own test on it (bioimageio.core test_model)",
    )
    p.set_defaults(func=_cmd_export)
    return p
