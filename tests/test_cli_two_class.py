"""``cellfocus train --classes 2`` (UNET2) and ``cellfocus predict`` with the 2-class model,
each run as a process on a tiny simulated image (a few training steps: the model is only
checked to load, predict two classes and post-process with each method)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cli_helpers import run_cli
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint

FAST = ["--batch-size", "1", "--crop-size", "48", "--device", "cpu"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair2")
    scene = simulate_cells(shape=(64, 64), seed=2, radius=(6, 8), density=0.3, photons=500)
    tifffile.imwrite(folder / "img.tif", scene.image)
    tifffile.imwrite(folder / "lab.tif", scene.labels)
    return folder / "img.tif", folder / "lab.tif"


def _train(pair, out, *extra):
    img, lab = pair
    args = ["train", str(img), "--labels", str(lab), "--out", str(out), *FAST, *extra]
    return run_cli(*args, timeout=300, one_thread=True)


def test_train_and_predict_with_two_classes(pair, tmp_path):
    model = tmp_path / "unet2.pt"
    res = _train(pair, model, "--classes", "2", "--weights", "unet", "--steps", "3")
    assert res.returncode == 0, res.stderr
    _, info = load_checkpoint(model)
    assert info.classes == ["background", "cell"]
    run = info.training["last_run"]
    assert info.network["out_channels"] == 2
    assert run["n_classes"] == 2 and run["weight_scheme"] == "unet"

    img = pair[0]
    # MAP is covered in engine/test_two_class_engine.py; one process per method here
    for post, params in (("th", ["--param", "gamma1=0.4"]), ("wt", ["--param", "tau0=0.6"])):
        out, probs = tmp_path / f"{post}.tif", tmp_path / f"{post}_probs.tif"
        res = run_cli(
            "predict", str(img), "--out", str(out), "--model", str(model), "--post", post,
            *params, "--probs", str(probs), "--device", "cpu",
            timeout=300, one_thread=True,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert tifffile.imread(out).shape == (64, 64)
        p = tifffile.imread(probs)
        assert p.shape == (2, 64, 64)
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-3)


def test_youden_losses_refuse_two_classes(pair, tmp_path, capsys):
    """In process (``cli.main``): the config is refused before any training."""
    from napari_cellfocus.cli import main

    img, lab = pair
    out = tmp_path / "m.pt"
    args = ["train", str(img), "--labels", str(lab), "--out", str(out), "--classes", "2"]
    assert main([*args, "--loss", "j4"]) != 0
    assert "'j4' needs n_classes=4" in capsys.readouterr().err
    assert main([*args, "--loss", "j3"]) != 0
    assert "'j3' needs n_classes=3" in capsys.readouterr().err
    assert not out.exists()
