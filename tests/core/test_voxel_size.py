"""The z scale (z step / pixel size) read from ImageJ TIFF, OME-TIFF and OME-Zarr metadata."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image

from napari_cellfocus.core.voxel_size import z_scale_from_metadata

VOLUME = np.zeros((4, 16, 16), np.uint16)


def test_imagej_spacing_and_resolution(tmp_path):
    # 0.25 um pixels (4 pixels a micron), planes 1.5 um apart: 1.5 / 0.25 = 6
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        VOLUME,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"},
    )
    assert z_scale_from_metadata(path) == pytest.approx(6.0)


def test_ome_tiff_physical_sizes_in_their_units(tmp_path):
    # x 500 nm, z 2 um: 2 / 0.5 = 4
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(
        path,
        VOLUME,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 500.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 500.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 2.0,
            "PhysicalSizeZUnit": "µm",
        },
    )
    assert z_scale_from_metadata(path) == pytest.approx(4.0)


def test_ome_zarr_scale_transformations(tmp_path):
    root = zarr.open_group(str(tmp_path / "vol.ome.zarr"), mode="w")
    # planes 3 um apart, 0.5 um pixels (what ome-zarr writes at the full resolution)
    write_image(VOLUME, root, axes="zyx", scale={"z": 3.0, "y": 0.5, "x": 0.5})
    assert z_scale_from_metadata(tmp_path / "vol.ome.zarr") == pytest.approx(6.0)


def test_no_metadata_or_nonsense_is_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, VOLUME, photometric="minisblack")
    assert z_scale_from_metadata(plain) is None
    no_spacing = tmp_path / "nospacing.tif"
    tifffile.imwrite(no_spacing, VOLUME, imagej=True, metadata={"axes": "ZYX"})
    assert z_scale_from_metadata(no_spacing) is None
    silly = tmp_path / "silly.tif"  # 1000 planes a pixel: outside [0.05, 50], ignored
    tifffile.imwrite(
        silly,
        VOLUME,
        imagej=True,
        resolution=(1.0, 1.0),
        metadata={"axes": "ZYX", "spacing": 1000.0},
    )
    assert z_scale_from_metadata(silly) is None
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    assert z_scale_from_metadata(broken) is None
