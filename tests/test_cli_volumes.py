"""``cellfocus predict`` on volumes, movies and multi-channel images (process runs, the
built-in model, 64-80 px planes)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from cli_helpers import read_rows, run_cli
from napari_cellfocus.core.simulate import simulate_cells

run = functools.partial(run_cli, one_thread=True)


@pytest.fixture(scope="module")
def scene2d():
    return simulate_cells(shape=(64, 64), radius=7, seed=3)


def test_volume_stitched_and_planes_on_request(tmp_path):
    """A simulated (12, 64, 64) volume (ImageJ metadata says ZYX): --z-mode stitch joins
    the planes into 3D objects (one counts row, fewer ids than plane by plane, close to
    the true count) and says so; --z-mode planes gives a row per plane."""
    scene = simulate_cells(shape=(12, 64, 64), radius=8, seed=2)
    path = tmp_path / "in" / "vol.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, scene.image, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "stitch"
    res = run(
        "predict", str(path), "--out", str(out), "--diameter", "14", "--device", "cpu",
        "--z-mode", "stitch",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "axes ZYX" in res.stdout and "stitched across z" in res.stdout
    stitched = tifffile.imread(out / "vol_labels.tif")
    rows = read_rows(out / "counts.csv")
    assert len(rows) == 1 and rows[0]["plane"] == "" and "frame" not in rows[0]
    assert int(rows[0]["count"]) == stitched.max() == np.unique(stitched).size - 1
    n_true = scene.labels.max()
    assert abs(stitched.max() - n_true) <= max(3, 0.35 * n_true)

    out2 = tmp_path / "planes"
    res = run(
        "predict", str(path), "--out", str(out2), "--diameter", "14", "--device", "cpu",
        "--z-mode", "planes",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "plane by plane" in res.stdout
    planes = tifffile.imread(out2 / "vol_labels.tif")
    rows = read_rows(out2 / "counts.csv")
    assert [r["plane"] for r in rows] == [str(z) for z in range(12)]
    assert planes.max() > 2 * stitched.max()


def test_movie_one_row_per_frame_and_linking(tmp_path, scene2d):
    """A (3, 64, 64) movie of a scene shifted by 1 px per frame, --axes TYX --link:
    counts.csv has frame 0, 1, 2, each the number of ids in that frame, and the cells
    keep their ids (most ids are in all three frames)."""
    movie = np.stack([np.roll(scene2d.image, t, axis=1) for t in range(3)])
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, photometric="minisblack")
    out = tmp_path / "out"
    res = run(
        "predict", str(path), "--out", str(out), "--axes", "TYX", "--link", "--table",
        "--diameter", "14", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "3 frames (linked" in res.stdout
    labels = tifffile.imread(out / "movie_labels.tif")
    rows = read_rows(out / "counts.csv")
    assert list(rows[0]) == ["file", "frame", "plane", "count", "diameter_px"]
    assert [r["frame"] for r in rows] == ["0", "1", "2"]
    for t, row in enumerate(rows):
        assert int(row["count"]) == np.unique(labels[t]).size - 1 > 0
    in_all = set(np.unique(labels[0])) & set(np.unique(labels[1])) & set(np.unique(labels[2]))
    assert len(in_all - {0}) >= 0.8 * (np.unique(labels[0]).size - 1)
    table = read_rows(out / "movie_cells.csv")
    assert table[0]["frame"] == "0" and len(table) == sum(int(r["count"]) for r in rows)


def test_channels_need_a_channel(tmp_path, scene2d):
    """A (2, 64, 64) image: without metadata refused as ambiguous (naming the shape and
    --axes); with --axes CYX but no --channel refused naming the shape and the axes;
    with --channel 1 the nuclear channel is segmented as the 2D image alone would be."""
    cyx = np.stack([np.zeros_like(scene2d.image), scene2d.image])
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, cyx)
    out = tmp_path / "out"
    res = run("predict", str(path), "--out", str(out), "--device", "cpu")
    assert res.returncode == 2
    assert "(2, 64, 64)" in res.stderr and "--axes CYX" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("predict", str(path), "--out", str(out), "--axes", "CYX", "--device", "cpu")
    assert res.returncode == 2
    assert "(2, 64, 64)" in res.stderr and "CYX" in res.stderr and "--channel" in res.stderr
    assert not out.exists() or not list(out.glob("*.tif"))

    res = run(
        "predict", str(path), "--out", str(out / "c1.tif"), "--axes", "CYX", "--channel", "1",
        "--diameter", "14", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, scene2d.image)
    res = run(
        "predict", str(single), "--out", str(out / "s.tif"), "--diameter", "14", "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    c1 = tifffile.imread(out / "c1.tif")
    assert c1.shape == (64, 64) and np.array_equal(c1, tifffile.imread(out / "s.tif"))


def test_bad_axes_and_threshold_exit_2(tmp_path, scene2d):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, scene2d.image)
    res = run("predict", str(path), "--out", str(tmp_path / "o"), "--axes", "ZYX")
    assert res.returncode == 2 and "(64, 64)" in res.stderr and "ZYX" in res.stderr
    res = run("predict", str(path), "--out", str(tmp_path / "o"), "--stitch-threshold", "0")
    assert res.returncode == 2 and "--stitch-threshold" in res.stderr


def test_ortho_z_mode_with_z_scale(tmp_path):
    """--z-mode ortho --z-scale 2 on a simulated (12, 64, 64) volume (z step 2 px, as
    the simulator makes it): 3D instances from the averaged YX, ZX and ZY views, one
    counts row, the count close to the truth, and the line says the mode, the z scale
    and the 3D post-processing."""
    scene = simulate_cells(shape=(12, 64, 64), radius=8, seed=2)
    assert scene.params["z_anisotropy"] == 2.0
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, scene.image, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "ortho"
    res = run(
        "predict", str(path), "--out", str(out), "--diameter", "14", "--device", "cpu",
        "--z-mode", "ortho", "--z-scale", "2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "YX, ZX and ZY views averaged, z scale 2, 3D TH gamma1 0.6, gamma2 0.3" in res.stdout
    labels = tifffile.imread(out / "vol_labels.tif")
    assert labels.shape == (12, 64, 64)
    rows = read_rows(out / "counts.csv")
    assert len(rows) == 1 and rows[0]["plane"] == ""
    assert int(rows[0]["count"]) == labels.max() == np.unique(labels).size - 1
    n_true = int(scene.labels.max())
    assert abs(int(labels.max()) - n_true) <= max(3, 0.35 * n_true)
    spans = [s[0].stop - s[0].start for s in ndimage.find_objects(labels) if s]
    assert np.median(spans) >= 3  # 3D cells over several planes, not per-plane pieces
    # the same volume with its voxel size in the ImageJ metadata (1 um pixels, planes 2 um
    # apart) and no --z-scale: the z scale comes from the file, the labels are the same
    tagged = tmp_path / "tagged.tif"
    tifffile.imwrite(
        tagged,
        scene.image,
        imagej=True,
        resolution=(1.0, 1.0),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "micron"},
    )
    res = run(
        "predict", str(tagged), "--out", str(tmp_path / "meta"), "--diameter", "14",
        "--device", "cpu", "--z-mode", "ortho",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "z scale 2 from the file's metadata" in res.stdout
    got = tifffile.imread(tmp_path / "meta" / "tagged_labels.tif")
    np.testing.assert_array_equal(got, labels)


def test_z_trim_and_split_options(tmp_path):
    """--z-trim 0 --z-split 0: stitched cells keep every plane their per-plane objects
    had (the foreground of --z-mode planes); the default cut removes planes. Out-of-range
    values and a bad --z-scale are refused before any work (exit 2)."""
    scene = simulate_cells(shape=(12, 64, 64), radius=8, seed=2)
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, scene.image, imagej=True, metadata={"axes": "ZYX"})
    common = ("--diameter", "14", "--device", "cpu", "--z-mode")
    for name, extra in (
        ("uncut", ("stitch", "--z-trim", "0", "--z-split", "0")),
        ("cut", ("stitch",)),
        ("planes", ("planes",)),
    ):
        res = run("predict", str(path), "--out", str(tmp_path / name), *common, *extra)
        assert res.returncode == 0, res.stderr
    uncut, cut, planes = (
        tifffile.imread(tmp_path / n / "vol_labels.tif") for n in ("uncut", "cut", "planes")
    )
    np.testing.assert_array_equal(uncut > 0, planes > 0)
    assert (cut > 0).sum() < (uncut > 0).sum()
    for bad, word in (
        (("--z-trim", "1.5"), "--z-trim"),
        (("--z-split", "1"), "--z-split"),
        (("--z-scale", "0"), "--z-scale"),
    ):
        res = run("predict", str(path), "--out", str(tmp_path / "bad"), *bad)
        assert res.returncode == 2 and word in res.stderr and "Traceback" not in res.stderr


def test_z_mode_choices_and_default_match_the_engine():
    """The parser's --z-mode choices and default (kept torch-free) are the engine's."""
    from napari_cellfocus import cli_predict
    from napari_cellfocus.engine.segment import DEFAULT_Z_MODE, Z_MODES

    assert set(cli_predict.Z_MODE_CHOICES) == set(Z_MODES)
    assert cli_predict.CLI_DEFAULT_Z_MODE == DEFAULT_Z_MODE == "ortho"
