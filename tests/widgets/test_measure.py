"""Measure widget: per-cell table, count, metrics against ground truth, boxes, CSV export."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from widget_helpers import dock, segment, wait_idle

from napari_cellfocus.core.measure import cell_table, match_boxes
from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.widgets._layers import BOXES_NAME, labels_name
from napari_cellfocus.widgets.measure import camera_of


def test_cell_table_by_hand():
    """Two objects in a 4 x 5 image:

    label 3 covers (0,0), (0,1), (1,0): area 3, centroid y = (0+0+1)/3 = 1/3,
    x = (0+1+0)/3 = 1/3, mean intensity (1+2+3)/3 = 2.
    label 7 covers (3,4): area 1, centroid (3, 4), mean intensity 10.
    """
    lab = np.zeros((4, 5), np.int32)
    lab[0, 0] = lab[0, 1] = lab[1, 0] = 3
    lab[3, 4] = 7
    img = np.zeros((4, 5), np.float32)
    img[0, 0], img[0, 1], img[1, 0], img[3, 4] = 1, 2, 3, 10
    t = cell_table(lab, img)
    assert list(t) == ["label", "area", "centroid_y", "centroid_x", "mean_intensity"]
    np.testing.assert_array_equal(t["label"], [3, 7])
    np.testing.assert_array_equal(t["area"], [3, 1])
    np.testing.assert_allclose(t["centroid_y"], [1 / 3, 3])
    np.testing.assert_allclose(t["centroid_x"], [1 / 3, 4])
    np.testing.assert_allclose(t["mean_intensity"], [2, 10])


def test_cell_table_3d_and_bad_shape():
    """In a (3, 2, 2) volume, label 1 fills z in {1, 2} and every y, x: 2*2*2 = 8 voxels,
    centroid z = (1+2)/2 = 1.5, y = x = (0+1)/2 = 0.5; an intensity of another shape fails."""
    lab = np.zeros((3, 2, 2), np.int32)
    lab[1:] = 1
    t = cell_table(lab)
    assert list(t) == ["label", "area", "centroid_z", "centroid_y", "centroid_x"]
    assert t["area"].tolist() == [8]
    np.testing.assert_allclose([t["centroid_z"][0], t["centroid_y"][0]], [1.5, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        cell_table(lab, np.zeros((2, 2)))


def test_match_boxes_by_hand():
    """gt: object 1 at rows 0-1, cols 0-1; object 2 at (4,4). pred: object 5 equals gt 1
    (IoU 1 -> TP), object 6 at (0,4) overlaps nothing (FP); gt 2 is missed (FN).
    Boxes surround pixel centres: rows 0-1 -> y from -0.5 to 1.5."""
    from napari_cellfocus.core.metrics import match_instances

    gt = np.zeros((5, 5), np.int32)
    gt[0:2, 0:2] = 1
    gt[4, 4] = 2
    pred = np.zeros((5, 5), np.int32)
    pred[0:2, 0:2] = 5
    pred[0, 4] = 6
    shapes, status = match_boxes(gt, pred, match_instances(gt, pred))
    assert status == ["TP", "FP", "FN"]
    np.testing.assert_allclose(shapes[0], [[-0.5, -0.5], [-0.5, 1.5], [1.5, 1.5], [1.5, -0.5]])
    np.testing.assert_allclose(shapes[1][0], [-0.5, 3.5])
    np.testing.assert_allclose(shapes[2][2], [4.5, 4.5])


def test_measure_segmentation_metrics_boxes_and_csv(viewer, qtbot, tiny_model, tmp_path):
    """After Segment: the table has one row per cell with areas summing to the labelled
    pixels, the metrics equal evaluate(gt, labels), the boxes layer has TP + FP + FN
    rectangles, and the CSV files hold the same numbers."""
    segment(viewer, qtbot, tiny_model)
    widget = dock(viewer, "Measure")
    assert widget.labels.currentText() == labels_name("nuclei")
    assert widget.gt.currentText() == "ground truth"
    assert widget.intensity.layers.currentText() == "nuclei"  # the segmented image
    widget.boxes_check.setChecked(True)
    widget.measure()
    wait_idle(qtbot, widget)
    labels = np.asarray(viewer.layers[labels_name("nuclei")].data)
    gt = np.asarray(viewer.layers["ground truth"].data)
    image = np.asarray(viewer.layers["nuclei"].data, dtype=np.float64)
    ids = np.unique(labels[labels > 0])
    table = widget.result.table
    assert widget.count_label.text() == f"Cells: {ids.size}"
    assert widget.cells_table.rowCount() == ids.size
    assert table["area"].sum() == (labels > 0).sum()
    first = ids[0]
    assert table["mean_intensity"][0] == pytest.approx(image[labels == first].mean())
    expected = evaluate(gt, labels)
    assert widget.result.metrics == expected
    boxes = viewer.layers[BOXES_NAME]
    status = list(boxes.features["status"])
    assert status.count("TP") == expected["tp"]
    assert status.count("FP") == expected["fp"]
    assert status.count("FN") == expected["fn"]
    assert widget.metrics_table.item(0, 0).text() == "f1"
    assert widget.metrics_table.item(0, 1).text() == f"{expected['f1']:.4f}"

    written = widget.export_csv(tmp_path / "cells.csv")
    assert [p.name for p in written] == ["cells.csv", "cells_metrics.csv"]
    with open(written[0]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == ids.size
    assert [int(r["label"]) for r in rows] == ids.tolist()
    assert sum(int(r["area"]) for r in rows) == (labels > 0).sum()
    with open(written[1]) as f:
        metrics = {r["metric"]: r["value"] for r in csv.DictReader(f)}
    assert float(metrics["f1"]) == pytest.approx(expected["f1"], rel=1e-5)
    assert int(metrics["tp"]) == expected["tp"]

    widget.measure()  # measuring again replaces the boxes layer, never adds a second
    wait_idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers].count(BOXES_NAME) == 1


def test_mean_intensity_in_a_chosen_channel(make_napari_viewer, qtbot):
    """A (2, 8, 8) two-channel image: channel 1 holds 5 inside the square label, channel 0
    holds 100: with 'axis 0: channel 1' the mean intensity is 5."""
    viewer = make_napari_viewer()
    img = np.zeros((2, 8, 8), np.float32)
    img[0] = 100
    img[1, 2:4, 2:4] = 5
    viewer.add_image(img, name="two channels")
    lab = np.zeros((8, 8), np.int32)
    lab[2:4, 2:4] = 1
    viewer.add_labels(lab, name="cells")
    widget = dock(viewer, "Measure")
    widget.intensity.set_source(viewer.layers["two channels"], (0, 1))
    widget.measure()
    wait_idle(qtbot, widget)
    assert widget.result.table["mean_intensity"].tolist() == [5.0]
    assert widget.result.metrics is None
    assert widget.metrics_table.rowCount() == 0


def _click_row(qtbot, table, row):
    """A real mouse click on the first cell of ``row`` of a QTableWidget."""
    from qtpy.QtCore import Qt

    item = table.item(row, 0)
    table.scrollToItem(item)
    rect = table.visualItemRect(item)
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_clicking_a_row_selects_and_centres_the_cell(make_napari_viewer, qtbot):
    """2D labels with scale (2, 0.5) and translate (10, 5): label 3 covers rows 4-5,
    columns 10-13 (centroid (4.5, 11.5) in pixels, world (10 + 2 * 4.5, 5 + 0.5 * 11.5) =
    (19, 10.75)); label 8 is one pixel at (30, 50), world (70, 30). Clicking its row
    selects the label in the layer and centres the camera there."""
    viewer = make_napari_viewer()
    lab = np.zeros((40, 60), np.int32)
    lab[4:6, 10:14] = 3
    lab[30, 50] = 8
    layer = viewer.add_labels(lab, name="cells", scale=(2, 0.5), translate=(10, 5))
    widget = dock(viewer, "Measure")
    widget.measure()
    wait_idle(qtbot, widget)
    assert widget.cells_table.rowCount() == 2
    qtbot.waitExposed(widget.cells_table)
    _click_row(qtbot, widget.cells_table, 1)
    assert layer.selected_label == 8
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (70.0, 30.0))
    _click_row(qtbot, widget.cells_table, 0)
    assert layer.selected_label == 3
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (19.0, 10.75))


def test_clicking_a_row_of_a_stack_goes_to_its_plane(make_napari_viewer, qtbot):
    """A (3, 40, 60) stack with z scale 4: label 5 lies in plane 2 at rows 20-21, columns
    30-31 (centroid (20.5, 30.5)), label 2 in plane 0. Clicking label 5's row moves the z
    slider to plane 2 (world z 8), centres the view on (20.5, 30.5) and selects label 5."""
    viewer = make_napari_viewer()
    lab = np.zeros((3, 40, 60), np.int32)
    lab[0, 5:8, 5:8] = 2
    lab[2, 20:22, 30:32] = 5
    layer = viewer.add_labels(lab, name="stack cells", scale=(4, 1, 1))
    viewer.dims.set_point(0, 0)
    widget = dock(viewer, "Measure")
    widget.measure()
    wait_idle(qtbot, widget)
    qtbot.waitExposed(widget.cells_table)
    _click_row(qtbot, widget.cells_table, 1)
    assert layer.selected_label == 5
    assert viewer.dims.current_step[0] == 2
    assert viewer.dims.point[0] == pytest.approx(8.0)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (20.5, 30.5))
    _click_row(qtbot, widget.cells_table, 0)
    assert layer.selected_label == 2 and viewer.dims.current_step[0] == 0


def _movie_pair():
    """A 3-frame (T, Y, X) movie of two 4 x 4 squares: ground truth with the same two ids
    in every frame; the prediction finds both in frames 0 and 2 and splits the second
    square in frame 1 into two 4 x 2 halves (IoU 0.5 each: no match)."""
    gt = np.zeros((3, 20, 20), np.int32)
    gt[:, 2:6, 2:6] = 1
    gt[:, 10:14, 10:14] = 2
    pred = gt.copy()
    pred[1, 10:14, 12:14] = 3
    return gt, pred


def test_frame_table_and_frame_metrics_by_hand():
    """Rows per cell and frame; per-frame matching: frames 0 and 2 have TP 2, frame 1
    TP 1, FP 2 (the halves), FN 1. Pooled: TP 5, FP 2, FN 1, F1 = 5 / (5 + 1.5) = 10/13."""
    from napari_cellfocus.core.measure import frame_counts, frame_table
    from napari_cellfocus.core.metrics import evaluate_frames

    gt, pred = _movie_pair()
    table = frame_table(pred)
    assert list(table)[:3] == ["frame", "label", "area"]
    np.testing.assert_array_equal(table["frame"], [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(table["area"], [16, 16, 16, 8, 8, 16, 16])
    assert frame_counts(pred) == [2, 3, 2]
    scores = evaluate_frames(gt, pred)
    assert [f["tp"] for f in scores["frames"]] == [2, 1, 2]
    pooled = scores["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (5, 2, 1)
    assert pooled["f1"] == pytest.approx(10 / 13)


def test_time_series_is_measured_frame_by_frame(make_napari_viewer, qtbot, tmp_path):
    """Labels whose first axis is labelled 't': a frame column, the pooled per-frame
    metrics (not those of one 3D volume), the cells-per-frame plot, boxes per frame, a
    per-frame metrics CSV, and a row click moves the time slider to the cell's frame."""
    from napari_cellfocus.core.metrics import evaluate_frames

    gt, pred = _movie_pair()
    viewer = make_napari_viewer()
    viewer.add_labels(pred, name="pred", axis_labels=("t", "y", "x"))
    viewer.add_labels(gt, name="truth")
    widget = dock(viewer, "Measure")
    widget.labels.set_layer(viewer.layers["pred"])
    widget.gt.set_layer(viewer.layers["truth"])
    widget.boxes_check.setChecked(True)
    assert widget.is_time_series(viewer.layers["pred"])
    widget.measure()
    wait_idle(qtbot, widget)
    out = widget.result
    assert out.frames and out.counts == [2, 3, 2]
    assert out.metrics == evaluate_frames(gt, pred)["pooled"]
    assert not widget.frames_plot.isHidden()  # shown for a time series only
    assert widget.frames_plot.line_data() == [([0.0, 1.0, 2.0], [2.0, 3.0, 2.0])]
    assert "Cells per frame: 2-3" in widget.count_label.text()
    boxes = viewer.layers[BOXES_NAME]
    assert len(boxes.data) == 7 + 1  # 5 TP + 2 FP rectangles, 1 FN
    assert {float(r[0, 0]) for r in boxes.data} == {0.0, 1.0, 2.0}
    written = widget.export_csv(tmp_path / "cells.csv")
    assert [p.name for p in written] == [
        "cells.csv",
        "cells_metrics.csv",
        "cells_metrics_per_frame.csv",
    ]
    with open(tmp_path / "cells_metrics_per_frame.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["tp"]) for r in rows] == [2, 1, 2]
    row = int(np.flatnonzero(out.table["frame"] == 2)[0])
    assert widget.go_to_cell(row)
    assert viewer.dims.point[0] == pytest.approx(2.0)
