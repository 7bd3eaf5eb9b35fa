"""The plugin's napari reader and writer for OME-Zarr (``_omezarr_io``), through a real
viewer: a store opens lazily as layers, segments in the Segment dock, and labels save
back as an OME-Zarr label image."""

from __future__ import annotations

import numpy as np
import zarr
from ome_zarr.writer import write_image
from widget_helpers import dock, wait_idle

from napari_cellfocus.core import omezarr
from napari_cellfocus.widgets._layers import labels_name


def test_open_segment_and_save_an_ome_zarr_store(make_napari_viewer, qtbot, tmp_path, scene):
    store = tmp_path / "plate.ome.zarr"
    root = zarr.open_group(str(store), mode="w")
    write_image(scene.image, root, axes="yx", storage_options={"chunks": (64, 64)})
    viewer = make_napari_viewer()
    layers = viewer.open(str(store), plugin="napari-cellfocus")
    assert [layer.name for layer in layers] == ["plate"]
    image = viewer.layers["plate"]
    assert image.data.shape == scene.image.shape
    assert not isinstance(image.data, np.ndarray)  # dask, read on demand
    seg = dock(viewer, "Segment")
    seg.run()
    wait_idle(qtbot, seg)
    labels = viewer.layers[labels_name("plate")]
    assert labels.data.shape == scene.image.shape and labels.data.max() > 5
    out = tmp_path / "plate_labels.ome.zarr"
    viewer.layers.selection = {labels}
    written = viewer.layers.save(str(out), selected=True, plugin="napari-cellfocus")
    assert [str(p) for p in written] == [str(out)]
    np.testing.assert_array_equal(omezarr.read_labels(out), labels.data)
    (back,) = viewer.open(str(out), plugin="napari-cellfocus")
    assert back._type_string == "labels" and back.name == "plate_labels"
    assert not back.multiscale  # 128 px: one level (pyramids start above 512 px)
    np.testing.assert_array_equal(np.asarray(back.data), labels.data)
