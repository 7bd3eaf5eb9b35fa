"""Axes strings: validation, TIFF metadata, the default rule and the helpers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cellfocus.core.axes import (
    axes_from_tiff,
    canonical,
    default_axes,
    iter_frames,
    resolve_axes,
    select_channel,
    validate_axes,
)


@pytest.mark.parametrize("axes", ["YX", "ZYX", "TYX", "CYX", "YXC", "TZYX", "TCYX", "CZYX"])
def test_valid_axes(axes):
    assert validate_axes(axes.lower(), len(axes)) == axes


@pytest.mark.parametrize(
    ("axes", "ndim", "words"),
    [
        ("ZQX", 3, "unknown letter"),
        ("ZZYX", 4, "more than once"),
        ("YXZ", 3, "end in YX"),
        ("ZYX", 2, "2"),
        ("", 2, "string"),
    ],
)
def test_invalid_axes(axes, ndim, words):
    with pytest.raises(ValueError, match=words):
        validate_axes(axes, ndim)


def test_default_rule():
    assert default_axes((64, 64)) == "YX"
    assert default_axes((12, 64, 64)) == "ZYX"
    with pytest.raises(ValueError, match=r"\(2, 64, 64\).*--axes CYX.*ZYX"):
        default_axes((2, 64, 64))
    with pytest.raises(ValueError, match=r"\(4, 64, 64\)"):
        default_axes((4, 64, 64))
    assert default_axes((5, 64, 64)) == "ZYX"
    with pytest.raises(ValueError, match=r"\(64, 64, 3\).*RGB"):
        default_axes((64, 64, 3))
    with pytest.raises(ValueError, match="TZYX"):
        default_axes((2, 3, 64, 64))


def test_resolve_prefers_given_then_metadata():
    assert resolve_axes((2, 8, 8), "cyx") == ("CYX", "given")
    assert resolve_axes((2, 8, 8), None, "TYX") == ("TYX", "metadata")
    assert resolve_axes((9, 8, 8), None, "TZYX") == ("ZYX", "default")  # does not fit
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8\)"):
        resolve_axes((2, 8, 8), "TZYX")
    with pytest.raises(ValueError, match="--axes"):
        resolve_axes((2, 8, 8))


def test_axes_from_tiff(tmp_path):
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, np.zeros((3, 2, 8, 9), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    assert axes_from_tiff(ij) == "ZCYX"
    ome = tmp_path / "ome.tif"
    tifffile.imwrite(ome, np.zeros((2, 3, 8, 9), np.uint8), ome=True, metadata={"axes": "TZYX"})
    assert axes_from_tiff(ome) == "TZYX"
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    assert axes_from_tiff(rgb) == "YXC"  # samples = channels last
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 8, 9), np.uint8), photometric="minisblack")
    assert axes_from_tiff(plain) is None  # tifffile says 'QYX': unknown
    assert axes_from_tiff(tmp_path / "missing.tif") is None


def test_select_channel():
    img = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out, axes = select_channel(img, "CYX", 1)
    assert axes == "YX" and np.array_equal(out, img[1])
    out, axes = select_channel(img, "YXC", 2)
    assert axes == "YX" and np.array_equal(out, img[..., 2])
    out, axes = select_channel(img, "ZYX", None)
    assert axes == "ZYX" and out is img
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) with axes CYX: 2 channels"):
        select_channel(img, "CYX", None)
    with pytest.raises(ValueError, match="out of range"):
        select_channel(img, "CYX", 2)
    with pytest.raises(ValueError, match="no channel axis"):
        select_channel(img, "ZYX", 1)
    out, axes = select_channel(img[:1], "CYX", None)  # one channel: dropped
    assert axes == "YX" and out.shape == (3, 4)


def test_canonical_and_frames():
    img = np.zeros((5, 6, 2))
    out, axes = canonical(img, "YXC")
    assert out.shape == (2, 5, 6) and axes == "CYX"
    movie = np.arange(3 * 2 * 4 * 4).reshape(2, 3, 4, 4)  # Z, T, Y, X
    out, axes = canonical(movie, "ZTYX")
    assert axes == "TZYX" and out.shape == (3, 2, 4, 4)
    assert np.array_equal(out[1, 0], movie[0, 1])
    frames = list(iter_frames(out, axes))
    assert [t for t, _, _ in frames] == [0, 1, 2]
    assert all(a == "ZYX" and f.shape == (2, 4, 4) for _, f, a in frames)
    assert [(t, a) for t, _, a in iter_frames(np.zeros((4, 4)), "YX")] == [(None, "YX")]
