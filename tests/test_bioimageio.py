"""BioImage.IO export and import (engine.model_zoo, cellfocus export, --model M.zip).

The default model is exported once (through the CLI) and shared by the tests: the zoo's
own validator (bioimageio.core's test_model, what ``bioimageio test M.zip`` runs) must pass
it offline, reading it back must give the .pt file's weights and metadata exactly, and it
must predict the same labels as the .pt model.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_cellfocus import cli
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine import model_zoo
from napari_cellfocus.engine.checkpoint import (
    CheckpointError,
    ModelInfo,
    default_model_path,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from napari_cellfocus.engine.networks import build_network
from napari_cellfocus.engine.segment import Segmenter

pytest.importorskip("bioimageio.core")


class _NoNetwork(Exception):
    pass


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise _NoNetwork(f"network access to {address!r} attempted")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The built-in model exported by ``cellfocus export`` (in-process)."""
    out = tmp_path_factory.mktemp("zoo") / "default.zip"
    assert cli.main(["export", "--model", "default", "--out", str(out)]) == 0
    return out


def test_package_contents(package):
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
    assert {
        "rdf.yaml",
        "README.md",
        "cover.png",
        "networks.py",
        "test_input.npy",
        "test_output.npy",
        model_zoo.WEIGHTS_FILE,
        model_zoo.TORCHSCRIPT_FILE,
        model_zoo.INFO_FILE,
    } <= names

    from bioimageio.spec import load_model_description

    descr = load_model_description(package, perform_io_checks=False)
    assert str(descr.format_version).startswith("0.5")
    assert descr.weights.pytorch_state_dict is not None
    assert descr.weights.pytorch_state_dict.architecture.callable == "UNet"
    assert descr.weights.torchscript is not None
    assert descr.weights.torchscript.parent == "pytorch_state_dict"
    (inp,) = descr.inputs
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "y", "x"]
    scale = [p for p in inp.preprocessing if p.id == "scale_range"]
    assert len(scale) == 1
    info = read_checkpoint(default_model_path())[1]
    assert scale[0].kwargs.min_percentile == info.normalization["low"]
    assert scale[0].kwargs.max_percentile == info.normalization["high"]
    (out,) = descr.outputs
    assert [str(c) for c in out.axes[1].channel_names] == info.classes
    assert out.postprocessing[0].id == "softmax"
    assert len(descr.cite) >= 5 and all(c.doi for c in descr.cite)
    assert str(descr.license) == "BSD-3-Clause"
    assert "Data Science Bowl" in descr.training_data.description
    assert descr.covers and descr.documentation is not None


def test_package_passes_the_zoo_test_offline(package, offline):
    summary = model_zoo.check_package(package)
    assert summary.status == "passed", summary.format()
    passed = {d.name for d in summary.details if d.status == "passed"}
    for fmt in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in passed


def test_round_trip_is_exact(package):
    state_pt, info_pt = read_checkpoint(default_model_path())
    state_zip, info_zip = read_checkpoint(package)
    assert info_zip == info_pt
    assert state_zip.keys() == state_pt.keys()
    assert all(torch.equal(state_zip[k], state_pt[k]) for k in state_pt)


def test_package_predicts_the_same_labels(package, tmp_path):
    image = simulate_cells(shape=(192, 224), seed=7).image
    from_pt = Segmenter("default", device="cpu").segment(image)
    from_zip = Segmenter(str(package), device="cpu").segment(image)
    assert from_pt.count > 5
    assert from_zip.count == from_pt.count
    np.testing.assert_array_equal(from_zip.labels, from_pt.labels)

    # the CLI takes it too: --model M.zip
    tifffile.imwrite(tmp_path / "img.tif", image)
    for name, model in (("pt", "default"), ("zip", str(package))):
        args = ["predict", str(tmp_path / "img.tif"), "--model", model]
        assert cli.main([*args, "--out", str(tmp_path / f"{name}.tif")]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "zip.tif"), tifffile.imread(tmp_path / "pt.tif")
    )


def _rewrite(src: Path, dst: Path, drop=(), replace=None) -> Path:
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in drop:
                continue
            data = replace.get(item.filename, zin.read(item.filename))
            zout.writestr(item, data)
    return dst


def test_foreign_package_is_refused_with_what_it_offers(package, tmp_path):
    foreign = _rewrite(package, tmp_path / "other.zip", drop={model_zoo.INFO_FILE})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(foreign)
    msg = str(err.value)
    assert str(foreign) in msg and "not written by napari-cellfocus" in msg
    assert "raw[batch,channel,y,x]" in msg and "probabilities[batch,channel,y,x]" in msg
    assert "\n" not in msg


def test_damaged_weights_are_refused(package, tmp_path):
    state, _ = read_checkpoint(package)
    first = next(iter(state))
    state[first] = state[first] + 1
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    bad = _rewrite(
        package, tmp_path / "bad.zip", replace={model_zoo.WEIGHTS_FILE: buffer.getvalue()}
    )
    with pytest.raises(CheckpointError, match="do not match the hash"):
        load_checkpoint(bad)


def test_export_of_own_model_state_dict_only(tmp_path):
    net = build_network({"architecture": "residual_unet", "width": 4, "depth": 3})
    info = ModelInfo(
        network=net.config,
        training={"data": "3 corrected images", "scale_range": (0.5, 2.0), "loss": float("nan")},
        defaults={"method": "th"},
    )
    pt = save_checkpoint(tmp_path / "mine.pt", net, info)
    out = tmp_path / "mine.zip"
    assert cli.main(["export", "--model", str(pt), "--out", str(out), "--no-torchscript"]) == 0
    state, back = read_checkpoint(out)
    ref_state, ref = read_checkpoint(pt)
    # tuples and NaN survive the JSON metadata
    assert back.training["scale_range"] == (0.5, 2.0)
    assert np.isnan(back.training["loss"])
    back.training["loss"] = ref.training["loss"] = 0.0
    assert dataclasses.asdict(back) == dataclasses.asdict(ref)
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)

    from bioimageio.spec import load_model_description

    descr = load_model_description(out, perform_io_checks=True)
    assert descr.weights.torchscript is None
    assert descr.weights.pytorch_state_dict.architecture.callable == "ResidualUNet"
    assert "3 corrected images" in descr.training_data.description


def test_export_refusals(tmp_path, capsys):
    existing = tmp_path / "x.zip"
    existing.write_bytes(b"keep")
    assert cli.main(["export", "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep"

    assert cli.main(["export", "--out", str(tmp_path / "m.pt")]) == 2
    assert ".zip" in capsys.readouterr().err

    fusion = default_model_path().with_name("default_fusion_model.pt")
    assert cli.main(["export", "--model", str(fusion), "--out", str(tmp_path / "f.zip")]) == 2
    err = capsys.readouterr().err
    assert "segmentation model is needed" in err and str(fusion) in err


def test_export_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import fails
    assert cli.main(["export", "--out", str(tmp_path / "m.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "napari-cellfocus[bioimageio]" in err
    assert not (tmp_path / "m.zip").exists()


def test_model_finetuned_from_builtin_is_described_as_such(tmp_path):
    net, info = load_checkpoint(default_model_path())
    info.training = {**info.training, "last_run": {"steps_done": 40, "n_train_images": 2}}
    pt = save_checkpoint(tmp_path / "tuned.pt", net, info)
    out = tmp_path / "tuned.zip"
    assert cli.main(["export", "--model", str(pt), "--out", str(out), "--no-torchscript"]) == 0

    from bioimageio.spec import load_model_description

    descr = load_model_description(out, perform_io_checks=False)
    text = descr.training_data.description
    assert text.startswith("Fine-tuned") and "2 annotated image(s), 40 steps" in text
    assert "Data Science Bowl" in text
    assert descr.training_data.license is None  # the user's images: licence unknown
    assert descr.name != "napari-cellfocus nuclei U-Net"
    assert read_checkpoint(out)[1] == info
