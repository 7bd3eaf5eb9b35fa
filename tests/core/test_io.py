"""TIFF reading/writing: atomic writes, grey planes kept as such, clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_cellfocus.core.io import expand_paths, output_paths, read_image, write_image


def test_three_plane_stack_round_trips_without_rgb_guess(tmp_path):
    """A (3, Y, X) uint8 stack (or 3-class map) must read back with the same shape and
    values, not be stored as an RGB image."""
    stack = np.arange(3 * 5 * 7, dtype=np.uint8).reshape(3, 5, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_image(tmp_path / "sub" / "stack.tif", stack)
    np.testing.assert_array_equal(read_image(path), stack)
    assert not list(tmp_path.rglob("*.part"))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tif"):
        read_image(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"bad\.tif: cannot be read"):
        read_image(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: folder holds no \.tif"):
        expand_paths([empty])


def test_output_paths_file_or_folder(tmp_path):
    one = [tmp_path / "a.tif"]
    assert output_paths(one, tmp_path / "out.tif") == [tmp_path / "out.tif"]
    two = [tmp_path / "a.tif", tmp_path / "b.tif"]
    assert output_paths(two, tmp_path / "o") == [
        tmp_path / "o" / "a_labels.tif",
        tmp_path / "o" / "b_labels.tif",
    ]
    with pytest.raises(ValueError, match="need a folder"):
        output_paths(two, tmp_path / "out.tif")
