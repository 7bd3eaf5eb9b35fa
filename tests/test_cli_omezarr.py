"""OME-Zarr in, OME-Zarr out: ``cellfocus predict`` on a store read block by block, as a
process, and the store reader/writer (core/omezarr.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr.writer import write_image

from cli_helpers import read_rows, run_cli
from napari_cellfocus.core import omezarr
from napari_cellfocus.core.io import expand_paths, output_paths
from napari_cellfocus.core.simulate import simulate_cells


def _store(path, image, axes="yx", chunks=(256, 256)):
    root = zarr.open_group(str(path), mode="w")
    write_image(image, root, axes=axes, storage_options={"chunks": chunks})
    return path


def test_open_image_is_lazy_with_axes(tmp_path):
    img = np.arange(700 * 530, dtype=np.uint16).reshape(700, 530)
    _store(tmp_path / "img.ome.zarr", img[None, None], axes="czyx", chunks=(1, 1, 256, 256))
    data, axes = omezarr.open_image(tmp_path / "img.ome.zarr")
    assert axes == "CZYX" and data.shape == (1, 1, 700, 530)
    assert not isinstance(data, np.ndarray)  # dask: nothing read yet
    np.testing.assert_array_equal(np.asarray(data[0, 0, 300:310, 500:530]), img[300:310, 500:530])
    with pytest.raises(FileNotFoundError, match=r"nope\.zarr: no such OME-Zarr store"):
        omezarr.open_image(tmp_path / "nope.zarr")
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(ValueError, match=r"plain\.zarr"):
        omezarr.open_image(tmp_path / "plain.zarr")


def test_write_labels_rows_makes_a_label_image_readers_open(tmp_path):
    lab = np.random.default_rng(1).integers(0, 50, (700, 530)).astype(np.int32)
    out = tmp_path / "lab.ome.zarr"
    omezarr.write_labels_rows(out, lab.shape, iter([(0, lab[:300]), (300, lab[300:])]))
    np.testing.assert_array_equal(omezarr.read_labels(out), lab)
    nodes = [n for n in Reader(parse_url(str(out)))() if n.load(Label) is not None]
    assert nodes and nodes[0].data[0].shape == (700, 530)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.ome.zarr"]  # no temporaries
    # Incomplete bands: refused, and the existing store is kept as it was.
    with pytest.raises(ValueError, match="stopped at row 300 of 700"):
        omezarr.write_labels_rows(out, lab.shape, iter([(0, lab[:300] * 0)]))
    np.testing.assert_array_equal(omezarr.read_labels(out), lab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.ome.zarr"]


def test_stores_are_single_inputs_with_store_outputs(tmp_path):
    _store(tmp_path / "a.ome.zarr", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((64, 64), np.uint16))
    found = expand_paths([tmp_path], role="images")
    assert [p.name for p in found] == ["a.ome.zarr", "b.tif"]
    assert expand_paths([tmp_path / "a.ome.zarr"]) == [tmp_path / "a.ome.zarr"]
    outs = output_paths(found, tmp_path / "out")
    assert [p.name for p in outs] == ["a_labels.ome.zarr", "b_labels.tif"]
    assert output_paths(found[:1], tmp_path / "x.ome.zarr") == [tmp_path / "x.ome.zarr"]


def test_predict_ome_zarr_to_ome_zarr_block_by_block(tmp_path):
    scene = simulate_cells((600, 700), seed=4)
    _store(tmp_path / "img.ome.zarr", scene.image[None, None, None], "tczyx", (1, 1, 1, 256, 256))
    tifffile.imwrite(tmp_path / "img.tif", scene.image)
    out = tmp_path / "lab.ome.zarr"
    r = run_cli(
        "predict",
        str(tmp_path / "img.ome.zarr"),
        "--out",
        str(out),
        "--diameter",
        "20",
        "--block-size",
        "256",
        "--table",
    )
    assert r.returncode == 0, r.stderr
    assert "in 9 blocks of 256 px" in r.stdout and "axes YX" in r.stdout
    labels = omezarr.read_labels(out)
    n = len(np.unique(labels)) - 1
    assert labels.shape == (600, 700) and n > 100
    (row,) = read_rows(tmp_path / "lab_counts.csv")
    assert int(row["count"]) == n
    assert len(read_rows(tmp_path / "img_cells.csv")) == n
    # The same image as TIFF, whole, written to OME-Zarr: the same cells (to the block edges).
    r = run_cli(
        "predict",
        str(tmp_path / "img.tif"),
        "--out",
        str(tmp_path / "whole.ome.zarr"),
        "--diameter",
        "20",
    )
    assert r.returncode == 0, r.stderr
    whole = omezarr.read_labels(tmp_path / "whole.ome.zarr")
    from napari_cellfocus.core.metrics import evaluate

    assert evaluate(whole, labels, 0.5)["f1"] >= 0.99
    # An existing store is an output like a file: refused without --overwrite.
    r = run_cli(
        "predict",
        str(tmp_path / "img.ome.zarr"),
        "--out",
        str(out),
        "--counts",
        str(tmp_path / "c2.csv"),
    )
    assert r.returncode == 2 and "lab.ome.zarr: the file exists" in r.stderr
    # The input store is never an output.
    r = run_cli(
        "predict",
        str(tmp_path / "img.ome.zarr"),
        "--out",
        str(tmp_path / "img.ome.zarr"),
        "--overwrite",
        "--counts",
        str(tmp_path / "c3.csv"),
    )
    assert r.returncode == 2 and "is the input" in r.stderr
