"""The ``cellfocus`` simulate / train / predict / demo commands, each run as a process."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cellfocus.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory):
    from cli_helpers import run_cli

    out = tmp_path_factory.mktemp("sim")
    res = run_cli("simulate", "--out", str(out), "-n", "2", "--size", "96", "--seed", "4")
    assert res.returncode == 0, res.stderr
    return out


def test_simulate_writes_pairs(sim_folder):
    images = sorted(p for p in sim_folder.glob("sim_*.tif") if "labels" not in p.name)
    labels = sorted(sim_folder.glob("sim_*_labels.tif"))
    assert len(images) == len(labels) == 2
    img, lab = tifffile.imread(images[0]), tifffile.imread(labels[0])
    assert img.shape == lab.shape == (96, 96)
    assert lab.max() > 0 and img[lab > 0].mean() > img[lab == 0].mean()


def test_simulate_focus_stack(tmp_path, cli):
    res = cli("simulate", "--out", str(tmp_path), "-n", "1", "--size", "64", "--stack", "4")
    assert res.returncode == 0, res.stderr
    stack = tifffile.imread(tmp_path / "sim_000_stack.tif")
    assert stack.shape == (4, 64, 64)
    assert tifffile.imread(tmp_path / "sim_000_all_in_focus.tif").shape == (64, 64)


def test_train_then_predict_then_evaluate(sim_folder, tmp_path, cli):
    image = sim_folder / "sim_000.tif"
    labels = sim_folder / "sim_000_labels.tif"
    model = tmp_path / "m.pt"
    res = cli(
        "train",
        str(image),
        "--labels",
        str(labels),
        "--out",
        str(model),
        "--steps",
        "3",
        "--batch-size",
        "1",
        "--crop-size",
        "64",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert "train [" in res.stderr and model.exists()
    _, info = load_checkpoint(model)
    assert len(info.history) == 3

    out = tmp_path / "pred"
    res = cli(
        "predict",
        str(sim_folder),
        "--out",
        str(out),
        "--model",
        str(model),
        "--post",
        "wt",
        "--probs",
        str(tmp_path / "probs"),
    )
    assert res.returncode == 0, res.stderr
    written = sorted(out.glob("*_labels.tif"))
    # the folder's label files are not taken as images
    assert sorted(p.name for p in written) == ["sim_000_labels.tif", "sim_001_labels.tif"]
    probs = tifffile.imread(next((tmp_path / "probs").glob("sim_000_probs.tif")))
    assert probs.shape == (3, 96, 96)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


def test_quick_finetune_from_default_runs(sim_folder, tmp_path, cli):
    """`--from default --weak` is the one-click preset; cut to 2 steps here for time."""
    model = tmp_path / "ft.pt"
    res = cli(
        "train",
        str(sim_folder / "sim_001.tif"),
        "--labels",
        str(sim_folder / "sim_001_labels.tif"),
        "--out",
        str(model),
        "--from",
        "default",
        "--weak",
        "--steps",
        "2",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert "weak labels (W3)" in res.stderr and "from default" in res.stderr
    _, info = load_checkpoint(model)
    assert (
        info.training["last_run"]["weak"] is True and info.training["last_run"]["steps_done"] == 2
    )
    assert len(info.history) > 2  # the default model's own history is kept


def test_predict_default_model_single_file(sim_folder, tmp_path, cli):
    out = tmp_path / "labels.tif"
    res = cli("predict", str(sim_folder / "sim_000.tif"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    labels = tifffile.imread(out)
    assert labels.shape == (96, 96) and labels.max() > 0
    assert f"{labels.max()} cells" in res.stdout


def test_demo_segments_the_sample(tmp_path, cli):
    res = cli("demo", "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "cells found:" in res.stdout and "F1" in res.stdout
    f1 = float(res.stdout.split("F1 ")[1].split()[0])
    assert f1 > 0.8  # the built-in model on its own sample
    for name in ("sample_labels.tif", "sample_probabilities.tif", "sample_overlay.png"):
        assert (tmp_path / "demo" / name).exists()


def test_cli_errors_are_one_line(tmp_path, cli):
    bad_model = tmp_path / "bad.pt"
    bad_model.write_text("not a model")
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.zeros((32, 32), np.uint8))
    res = cli("predict", str(img), "--out", str(tmp_path / "o.tif"), "--model", str(bad_model))
    assert res.returncode == 2
    assert "bad.pt: not a napari-cellfocus model" in res.stderr and "Traceback" not in res.stderr

    res = cli("train", str(img), "--labels", str(img), "--out", str(tmp_path / "m.pt"))
    assert res.returncode == 2 and "no cell is annotated" in res.stderr

    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8))
    res = cli("predict", str(rgb), "--out", str(tmp_path / "o2.tif"))
    assert res.returncode == 2 and "RGB" in res.stderr


def test_predict_folder_of_mixed_sizes_estimates_each_diameter(tmp_path, cli):
    """A folder of images of different sizes and nucleus sizes (about 10 and 26 px):
    `predict FOLDER` with the built-in model estimates each image's diameter (printed,
    within 20 % of the ground truth's median) and writes labels of each image's shape."""
    from napari_cellfocus.core.simulate import simulate_cells
    from napari_cellfocus.core.size import median_diameter

    folder = tmp_path / "mixed"
    folder.mkdir()
    truth = {}
    for name, shape, radius in (
        ("small", (160, 200), (4.5, 5.5)),
        ("large", (300, 260), (12, 14)),
    ):
        scene = simulate_cells(shape=shape, seed=11, radius=radius, density=0.25, photons=800)
        tifffile.imwrite(folder / f"{name}.tif", scene.image)
        truth[name] = (shape, median_diameter(scene.labels))
    out = tmp_path / "out"
    res = cli("predict", str(folder), "--out", str(out), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    for name, (shape, diameter) in truth.items():
        line = next(ln for ln in res.stdout.splitlines() if f"{name}.tif" in ln)
        estimate = float(line.split("nucleus diameter ")[1].split(" px")[0])
        assert "(estimated)" in line
        assert estimate == pytest.approx(diameter, rel=0.2), line
        assert tifffile.imread(out / f"{name}_labels.tif").shape == shape


def test_predict_uses_the_models_stored_defaults(tmp_path, cli):
    """A model file that stores WT thresholds, a size filter and a scale: `predict` with
    no --post and a given --diameter writes what Segmenter.segment gives in Python."""
    import torch

    from napari_cellfocus.core.simulate import simulate_cells
    from napari_cellfocus.engine.checkpoint import ModelInfo, save_checkpoint
    from napari_cellfocus.engine.networks import UNet
    from napari_cellfocus.engine.segment import Segmenter

    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=3, depth=2, width=8).eval()
    defaults = {
        "diameter": 20.0,
        "method": "wt",
        "post_params": {"tau0": 0.45, "tau1": 0.8},
        "min_size_fraction": 0.2,
    }
    path = save_checkpoint(
        tmp_path / "m.pt", net, ModelInfo(network=net.config, defaults=defaults)
    )
    scene = simulate_cells(shape=(96, 96), seed=2)
    tifffile.imwrite(tmp_path / "img.tif", scene.image)
    res = cli(
        "predict",
        str(tmp_path / "img.tif"),
        "--out",
        str(tmp_path / "lab.tif"),
        "--model",
        str(path),
        "--diameter",
        "12",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert "nucleus diameter 12.0 px (given)" in res.stdout
    api = Segmenter(path, device="cpu").segment(scene.image, diameter=12)
    assert api.method == "wt"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "lab.tif"), api.labels)
    res = cli(
        "predict", str(tmp_path / "img.tif"), "--out", str(tmp_path / "x.tif"), "--diameter", "-4"
    )
    assert res.returncode == 2 and "--diameter" in res.stderr


def test_train_on_a_folder_pairs_images_with_their_label_files(sim_folder, tmp_path, cli):
    """`train FOLDER --labels FOLDER` (the layout `simulate` writes) pairs sim_000.tif with
    sim_000_labels.tif, never a file with itself."""
    res = cli(
        "train",
        str(sim_folder),
        "--labels",
        str(sim_folder),
        "--out",
        str(tmp_path / "m.pt"),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--crop-size",
        "64",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    _, info = load_checkpoint(tmp_path / "m.pt")
    assert info.training["last_run"]["n_train_images"] == 2


def test_weak_auto_decides_from_the_labels(sim_folder, tmp_path, cli):
    """`--weak auto`: two drawn cells of a 96² image -> weak (W3); every cell -> dense; the
    line says why, as the fine-tune widget's auto mode does."""
    import tifffile

    full = tifffile.imread(sim_folder / "sim_001_labels.tif")
    ids = np.unique(full)[1:]
    few = np.where(np.isin(full, ids[:1]), full, 0)
    few_path = tmp_path / "few_labels.tif"
    tifffile.imwrite(few_path, few)
    image = str(sim_folder / "sim_001.tif")
    common = ("--from", "default", "--weak", "auto", "--steps", "1", "--device", "cpu")
    res = cli("train", image, "--labels", str(few_path), "--out", str(tmp_path / "a.pt"), *common)
    assert res.returncode == 0, res.stderr
    assert "--weak auto: weak: the annotations cover" in res.stdout
    assert "weak labels (W3)" in res.stderr
    labels = str(sim_folder / "sim_001_labels.tif")
    res = cli("train", image, "--labels", labels, "--out", str(tmp_path / "b.pt"), *common)
    assert res.returncode == 0, res.stderr
    assert "--weak auto: dense: the annotations cover" in res.stdout
    assert "weak labels (W3)" not in res.stderr
