"""Block-by-block segmentation (engine/blocks.py) against the whole-image path, with the
built-in model, and the CLI's choice of the way (cli_predict.choose_mode)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import tifffile

from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.blocks import block_margin, plan_blocks, segment_to_tiff
from napari_cellfocus.engine.segment import Segmenter


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter("default", device="cpu")


@pytest.fixture(scope="module")
def scene():
    return simulate_cells((384, 384), seed=11)


def test_blocks_give_the_whole_image_result(tmp_path, segmenter, scene):
    whole = segmenter.segment(scene.image, diameter=20.0)
    job = segment_to_tiff(
        segmenter, scene.image, tmp_path / "labels.tif", diameter=20.0, block=128, with_table=True
    )
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == scene.image.shape and labels.dtype == np.int32
    assert job.n_blocks == 9 and job.margin == block_margin(20.0, 1.0) == 72
    # Nine blocks, cut through crowded nuclei, give the same objects as one piece.
    assert job.count == len(np.unique(labels)) - 1 == labels.max()
    assert abs(job.count - whole.count) <= 1
    assert evaluate(whole.labels, labels, 0.9)["f1"] >= 0.99
    # The table is the cell table of the written labels: ids, areas, image coordinates.
    table = job.table
    assert list(table["label"]) == list(range(1, job.count + 1))
    k = int(np.argmax(table["area"]))
    ys, xs = np.nonzero(labels == table["label"][k])
    assert table["area"][k] == ys.size
    assert table["centroid_y"][k] == pytest.approx(ys.mean())
    assert table["centroid_x"][k] == pytest.approx(xs.mean())


def test_blocks_normalise_with_the_whole_images_limits(tmp_path, segmenter, scene):
    """A block of background alone must not be stretched to its own percentiles (its
    noise would look like nuclei): every block sees the whole image's limits."""
    image = scene.image.astype(np.float32).copy()
    rng = np.random.default_rng(0)
    background = float(np.percentile(image, 5))
    image[:, 256:] = background + rng.normal(0, 1.0, (384, 128))  # right third: no nuclei
    job = segment_to_tiff(segmenter, image, tmp_path / "l.tif", diameter=20.0, block=128)
    labels = tifffile.imread(tmp_path / "l.tif")
    whole = segmenter.segment(image, diameter=20.0)
    right = labels[:, 270:]
    assert np.count_nonzero(right) == np.count_nonzero(whole.labels[:, 270:])
    assert job.count > 50


def test_plan_blocks_refuses_bad_input_by_name(segmenter):
    with pytest.raises(ValueError, match=r"big\.tif: expected a grey image with 2 dimensions"):
        plan_blocks(segmenter, np.zeros((3, 64, 64)), name="big.tif")
    nan = np.zeros((64, 64), np.float32)
    nan[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"big\.tif"):
        plan_blocks(segmenter, nan, name="big.tif", diameter=20.0)
    with pytest.raises(ValueError, match="block size 32 px is too small"):
        plan_blocks(segmenter, np.zeros((64, 64)), block=32, diameter=20.0)


def _args(**kw) -> argparse.Namespace:
    base = {
        "diameter": "auto",
        "blocks": "auto",
        "block_size": 2048,
        "z_mode": None,
        "z_scale": None,
    }
    return argparse.Namespace(**{**base, **kw})


def test_choose_mode_from_the_header_and_the_memory_left(tmp_path, monkeypatch, segmenter):
    from napari_cellfocus import cli_predict
    from napari_cellfocus.cli_common import CliError

    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.zeros((300, 200), np.uint16))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 300, 200), np.uint16))
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "64G")
    assert cli_predict.choose_mode(path, "YX", _args(), segmenter) == "whole"
    assert cli_predict.choose_mode(path, "YX", _args(blocks="on"), segmenter) == "blocks"
    with pytest.raises(CliError, match=r"stack.tif: --blocks on segments 2D images"):
        cli_predict.choose_mode(stack, "ZYX", _args(blocks="on"), segmenter)
    # Big: blocks above 36 megapixels even with room to spare (the header says 6001²).
    monkeypatch.setattr(
        "napari_cellfocus.core.io.image_header",
        lambda p: ((6001, 6001), np.dtype(np.uint16), None),
    )
    assert cli_predict.choose_mode(path, "YX", _args(), segmenter) == "blocks"
    assert cli_predict.choose_mode(path, "YX", _args(blocks="off"), segmenter) == "whole"
    # Too little memory for the whole image but enough for blocks: blocks; for neither:
    # a message naming the file, the need and what is available.
    monkeypatch.setattr(
        "napari_cellfocus.core.io.image_header",
        lambda p: ((5000, 5000), np.dtype(np.uint16), None),
    )
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "2.4G")
    assert cli_predict.choose_mode(path, "YX", _args(), segmenter) == "blocks"
    with pytest.raises(CliError, match=r"img.tif: .*5000 x 5000 uint16 image whole needs about"):
        cli_predict.choose_mode(path, "YX", _args(blocks="off"), segmenter)
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "500M")
    with pytest.raises(CliError, match=r"in blocks needs about .* 0.5 GiB is available"):
        cli_predict.choose_mode(path, "YX", _args(), segmenter)
    # A volume: the default orthogonal views need more than planes (three views kept)
    monkeypatch.setattr(
        "napari_cellfocus.core.io.image_header",
        lambda p: ((60, 1024, 1024), np.dtype(np.uint16), "ZYX"),
    )
    monkeypatch.setenv("CELLFOCUS_MEMORY_LIMIT", "6G")
    assert cli_predict.choose_mode(stack, "ZYX", _args(z_mode="planes"), segmenter) == "whole"
    with pytest.raises(CliError, match=r"stack.tif: .*60 x 1024 x 1024 uint16 image whole"):
        cli_predict.choose_mode(stack, "ZYX", _args(), segmenter)
