"""``cellfocus predict`` on folders: name filters, counts.csv, per-cell tables, overlay PNGs
and ``--param`` post-processing parameters, run as a process with the built-in model on
64-px images (one thread)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import io as skio
from skimage.segmentation import find_boundaries

from cli_helpers import read_rows, run_cli
from napari_cellfocus.cli_common import CliError, filter_names
from napari_cellfocus.cli_predict import count_rows, method_parameters, param_help
from napari_cellfocus.core.simulate import simulate_cells

AMBER = (255, 204, 0)


run = functools.partial(run_cli, one_thread=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """a.tif, b.tif (64 px simulated nuclei), a_labels.tif (ground truth: never an image)
    and skip_me.tif (left out by --exclude)."""
    root = tmp_path_factory.mktemp("batch")
    for name, seed in (("a", 3), ("b", 5), ("skip_me", 7)):
        scene = simulate_cells(shape=(64, 64), seed=seed)
        tifffile.imwrite(root / f"{name}.tif", scene.image)
        if name == "a":
            tifffile.imwrite(root / "a_labels.tif", scene.labels)
    return root


@pytest.fixture(scope="module")
def batch(folder, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`predict FOLDER --exclude 'skip*' --table --overlay` (diameter estimated)."""
    out = tmp_path_factory.mktemp("out")
    res = run(
        "predict", str(folder), "--out", str(out), "--exclude", "SKIP*", "--table",
        "--overlay", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out, res


def test_only_the_filtered_images_are_segmented(batch):
    out, _ = batch
    assert sorted(p.name for p in out.glob("*_labels.tif")) == ["a_labels.tif", "b_labels.tif"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a_overlay.png", "b_overlay.png"]


def test_counts_csv_rows_are_the_written_label_counts(batch):
    out, res = batch
    rows = read_rows(out / "counts.csv")
    assert list(rows[0]) == ["file", "plane", "count", "diameter_px"]
    assert [Path(r["file"]).name for r in rows] == ["a.tif", "b.tif"]
    for row in rows:
        labels = tifffile.imread(out / f"{Path(row['file']).stem}_labels.tif")
        assert row["plane"] == ""
        assert int(row["count"]) == labels.max() == np.unique(labels).size - 1 > 0
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith(row["file"]))
        shown = float(line.split("nucleus diameter ")[1].split(" px")[0])
        assert float(row["diameter_px"]) == pytest.approx(shown, abs=0.051)


def test_cell_table_has_one_row_per_label(batch, folder):
    out, _ = batch
    labels = tifffile.imread(out / "a_labels.tif")
    image = tifffile.imread(folder / "a.tif")
    rows = read_rows(out / "a_cells.csv")
    assert len(rows) == labels.max()
    assert [int(r["label"]) for r in rows] == list(range(1, labels.max() + 1))
    assert sum(int(r["area"]) for r in rows) == np.count_nonzero(labels)
    assert float(rows[0]["mean_intensity"]) == pytest.approx(image[labels == 1].mean(), rel=1e-5)


def test_overlay_png_is_the_image_with_the_label_outlines(batch):
    out, _ = batch
    labels = tifffile.imread(out / "b_labels.tif")
    png = skio.imread(out / "b_overlay.png")
    assert png.shape == (*labels.shape, 3) and png.dtype == np.uint8
    amber = np.all(png == AMBER, axis=-1)
    np.testing.assert_array_equal(amber, find_boundaries(labels, mode="inner"))
    grey = png[~amber]
    assert np.all(grey[:, 0] == grey[:, 1]) and np.all(grey[:, 1] == grey[:, 2])


def test_param_min_size_changes_the_result(batch, folder, tmp_path):
    """A minimum size larger than the image leaves no cell; the row says 0."""
    out = tmp_path / "big"
    res = run(
        "predict", str(folder), "--include", "b.tif", "--out", str(out),
        "--param", "min_size=100000", "--diameter", "20", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert tifffile.imread(out / "b_labels.tif").max() == 0
    rows = read_rows(out / "counts.csv")
    assert [(Path(r["file"]).name, r["count"]) for r in rows] == [("b.tif", "0")]
    assert int(read_rows(batch[0] / "counts.csv")[1]["count"]) > 0  # without it: cells


def test_param_th_gives_what_the_python_api_gives(folder, tmp_path):
    """`--post th --param gamma1=0.7 --param min_size=20` writes the labels of
    Segmenter.segment(method="th", post_params=...) and its count."""
    import torch

    from napari_cellfocus.engine.segment import Segmenter

    torch.set_num_threads(1)
    out = tmp_path / "b.tif"
    res = run(
        "predict", str(folder / "b.tif"), "--out", str(out), "--post", "th",
        "--param", "gamma1=0.7", "--param", "min_size=20", "--diameter", "20", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    api = Segmenter("default", device="cpu").segment(
        tifffile.imread(folder / "b.tif"),
        method="th",
        post_params={"gamma1": 0.7, "min_size": 20},
        diameter=20,
    )
    assert api.post_params["gamma1"] == 0.7 and api.post_params["min_size"] == 20
    np.testing.assert_array_equal(tifffile.imread(out), api.labels)
    # one image and --out FILE.tif: the counts go next to it, named after it
    assert read_rows(tmp_path / "b_counts.csv")[0]["count"] == str(api.count)


def test_bad_param_exits_2_naming_it(folder, tmp_path):
    out = tmp_path / "bad"
    res = run("predict", str(folder), "--out", str(out), "--param", "gamma1=0.5")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # the default model post-processes with MAP, which has no gamma1
    assert "--param gamma1" in res.stderr and "min_size, fill_holes" in res.stderr
    assert "--post th" in res.stderr
    assert not out.exists()  # checked before anything is segmented or written

    res = run("predict", str(folder), "--out", str(out), "--post", "th", "--param", "gamma1=1.5")
    assert res.returncode == 2 and "gamma1" in res.stderr and "[0, 1]" in res.stderr
    res = run("predict", str(folder), "--out", str(out), "--param", "min_size=many")
    assert res.returncode == 2 and "min_size=many" in res.stderr
    res = run("predict", str(folder), "--out", str(out), "--param", "min_size")
    assert res.returncode == 2 and "NAME=VALUE" in res.stderr


def test_stack_counts_one_row_per_plane(folder, tmp_path):
    """A (2, Y, X) stack with the 2D model, plane by plane (--z-mode planes; a first axis
    of 2 without metadata needs --axes): counts.csv has one row per plane (plane 0, 1),
    each the number of labels in that plane; one overlay PNG per plane."""
    a, b = (tifffile.imread(folder / f"{n}.tif") for n in ("a", "b"))
    stack = tmp_path / "in" / "stack.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, np.stack([a, b]))
    out = tmp_path / "out"
    res = run(
        "predict", str(stack.parent), "--out", str(out), "--overlay", "--table",
        "--diameter", "20", "--device", "cpu", "--axes", "ZYX", "--z-mode", "planes",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    labels = tifffile.imread(out / "stack_labels.tif")
    rows = read_rows(out / "counts.csv")
    assert [r["plane"] for r in rows] == ["0", "1"]
    for i, row in enumerate(rows):
        assert int(row["count"]) == np.unique(labels[i]).size - 1 > 0
    assert sum(int(r["count"]) for r in rows) == labels.max()
    assert len(read_rows(out / "stack_cells.csv")) == labels.max()
    for i in range(2):
        assert skio.imread(out / f"stack_overlay_{i:03d}.png").shape == (64, 64, 3)


def test_filters_and_name_clashes_fail_clearly(folder, tmp_path):
    res = run("predict", str(folder), "--out", str(tmp_path / "o"), "--include", "*.png")
    assert res.returncode == 2 and "--include *.png" in res.stderr
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "a.tif", np.zeros((16, 16), np.uint8))
    res = run("predict", str(folder), str(other), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "a_labels.tif" in res.stderr and "both" in res.stderr


def test_filter_names_matches_file_names_ignoring_case():
    paths = [Path("x/A_dapi.TIF"), Path("x/b_gfp.tif"), Path("dapi/c.tif")]
    assert filter_names(paths, ["*_dapi.tif"]) == [paths[0]]
    assert filter_names(paths, [], ["*gfp*"]) == [paths[0], paths[2]]  # not the folder name
    assert filter_names(paths, ["a*", "b*"], ["b*"]) == [paths[0]]
    with pytest.raises(CliError, match="no file left of 3"):
        filter_names(paths, ["*.png"])


def test_count_rows():
    """(frame, plane, count) rows: per plane of a stack segmented plane by plane, one row
    for stitched 3D cells, per frame and plane of a movie of stacks."""
    lab = np.zeros((2, 8, 8), np.int32)
    lab[0, :2, :2], lab[0, 4:, 4:], lab[1, :3, :3] = 1, 2, 3
    assert count_rows(lab, "ZYX", "planes") == [("", "0", 2), ("", "1", 1)]
    assert count_rows(lab, "ZYX", "stitch") == [("", "", 3)]
    assert count_rows(lab[None], "TZYX", "planes") == [("0", "0", 2), ("0", "1", 1)]
    assert count_rows(lab, "TYX", None) == [("0", "", 2), ("1", "", 1)]


def test_param_help_lists_each_methods_parameters():
    """--method's choices and the --param help name each method's real keywords (the
    registry's parameters, which must be the function's)."""
    import inspect

    from napari_cellfocus.core.postprocess import METHODS

    assert list(param_help()) == ["map", "th", "wt"]
    for method, names in param_help().items():
        assert names == ", ".join(method_parameters(method))
        keywords = list(inspect.signature(METHODS[method]).parameters)[1:]
        assert names == ", ".join(keywords)
