"""Stitching planes into 3D instances and linking frames, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellfocus.core.stitch import link_frames, match_by_overlap, stitch_planes


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_cylinder_across_five_planes_is_one_object():
    plane = np.zeros((20, 20), np.int32)
    plane[disc(plane.shape, 10, 10, 5)] = 1
    stack = np.stack([plane * (z + 1) for z in range(5)])  # ids 1..5, one per plane
    out = stitch_planes(stack, 0.25)
    assert out.dtype == np.int32 and out.max() == 1
    assert np.array_equal(out > 0, stack > 0)


def test_two_touching_discs_shifting_keep_their_ids():
    """Two touching discs move right by 1 px per frame: each keeps its id; the input ids
    are swapped in every other frame to show the ids come from the overlap."""
    frames = []
    for t in range(6):
        f = np.zeros((24, 40), np.int32)
        a, b = (1, 2) if t % 2 == 0 else (2, 1)
        f[disc(f.shape, 12, 8 + t, 5)] = a
        f[disc(f.shape, 12, 18 + t, 5) & (f == 0)] = b  # touching: shares a border
        frames.append(f)
    out = link_frames(np.stack(frames), 0.5)
    assert out.max() == 2
    for t in range(6):
        assert out[t, 12, 8 + t] == 1 and out[t, 12, 18 + t] == 2


def test_gone_cell_and_new_cell_get_new_ids():
    f0 = np.zeros((20, 40), np.int32)
    f0[disc(f0.shape, 10, 8, 4)] = 1
    f0[disc(f0.shape, 10, 20, 4)] = 2
    f1 = np.zeros_like(f0)
    f1[disc(f1.shape, 10, 8, 4)] = 7  # stays
    f1[disc(f1.shape, 10, 32, 4)] = 3  # new cell elsewhere; cell 2 is gone
    f2 = np.zeros_like(f0)
    f2[disc(f2.shape, 10, 20, 4)] = 1  # where 2 was: not re-used, a new id
    out = link_frames(np.stack([f0, f1, f2]), 0.25)
    assert out[1, 10, 8] == 1 and out[1, 10, 32] == 3
    assert out[2, 10, 20] == 4
    assert out.max() == 4


def test_iou_exactly_at_the_threshold_joins():
    """Squares of 4x4: shifted by 2 columns they share 8 px of a 24 px union: IoU 1/3."""
    a = np.zeros((2, 8, 10), np.int32)
    a[0, 2:6, 2:6] = 1
    a[1, 2:6, 4:8] = 1
    assert stitch_planes(a, 1 / 3).max() == 1
    assert stitch_planes(a, 1 / 3 + 1e-6).max() == 2
    assert stitch_planes(a, 0.5).max() == 2


def test_one_to_one_greedy_by_iou():
    """One object of plane 0 overlapped by two of plane 1: the one of higher IoU takes its
    id, the other starts a new object (and a second such object of plane 0 is free)."""
    p0 = np.zeros((10, 12), np.int32)
    p0[2:8, 1:9] = 5  # 48 px
    p1 = np.zeros_like(p0)
    p1[2:8, 1:6] = 1  # 30 px inside: IoU 30/48
    p1[2:8, 6:9] = 2  # 18 px inside: IoU 18/48
    m = match_by_overlap(p0, p1, 0.25)
    assert m == {1: 5}
    out = stitch_planes(np.stack([p0, p1]), 0.25)
    assert out.max() == 2
    assert out[1, 4, 2] == out[0, 4, 2] == 1 and out[1, 4, 7] == 2


def test_ids_are_consecutive_and_empty_planes_are_fine():
    s = np.zeros((4, 10, 10), np.int32)
    s[0, 1:4, 1:4] = 9
    s[2, 1:4, 1:4] = 4  # plane 1 empty in between: a new object
    s[3, 6:9, 6:9] = 2
    out = stitch_planes(s)
    assert sorted(np.unique(out)) == [0, 1, 2, 3]
    assert stitch_planes(np.zeros((3, 5, 5), np.int32)).max() == 0


def test_bad_input():
    with pytest.raises(ValueError, match="IoU"):
        stitch_planes(np.zeros((2, 4, 4), np.int32), 0)
    with pytest.raises(ValueError, match="Z, Y, X"):
        stitch_planes(np.zeros((4, 4), np.int32))


def test_trim_z_cuts_the_dim_out_of_focus_planes_by_hand():
    """One object through 5 planes whose mean intensity above the background is
    10, 50, 100, 70, 20 (the background, 5th percentile, is 0: the pixel (0, 0) of every
    plane). With fraction 0.6 the planes of 100 and 70 stay (>= 60); 0.5 keeps 50 too; 0
    keeps all. A second object, as bright in its only plane, is untouched."""
    from napari_cellfocus.core.stitch import trim_z

    lab = np.zeros((5, 6, 6), np.int32)
    lab[:, 1:3, 1:3] = 1
    lab[4, 4:6, 4:6] = 2
    img = np.zeros((5, 6, 6))
    for z, value in enumerate([10, 50, 100, 70, 20]):
        img[z, 1:3, 1:3] = value
    img[4, 4:6, 4:6] = 5.0
    kept = lambda out: [int((out[z] == 1).any()) for z in range(5)]  # noqa: E731
    assert kept(trim_z(lab, img, 0.6)) == [0, 0, 1, 1, 0]
    assert kept(trim_z(lab, img, 0.5)) == [0, 1, 1, 1, 0]
    assert kept(trim_z(lab, img, 0.0)) == [1, 1, 1, 1, 1]
    assert (trim_z(lab, img, 0.6) == 2).sum() == 4
    with pytest.raises(ValueError, match="same shape"):
        trim_z(lab, img[:4], 0.6)


def test_split_z_cuts_an_object_at_its_waist_by_hand():
    """Areas along z of one stitched object: 4, 9, 4, 9, 4 (2x2, 3x3, 2x2, 3x3, 2x2
    squares): plane 2 is a local minimum, 4 < 0.85 * min(9, 9) = 7.65, so planes 3-4 become
    a second object. A shallow waist (9, 8, 9: 8 >= 7.65) is not cut; ratio 0 cuts
    nothing; a second object elsewhere keeps its own id."""
    from napari_cellfocus.core.stitch import split_z

    lab = np.zeros((5, 10, 10), np.int32)
    for z, side in enumerate([2, 3, 2, 3, 2]):
        lab[z, :side, :side] = 7
    lab[:, 8:, 8:] = 3
    out = split_z(lab, 0.85)
    assert len(set(np.unique(out[:3, :3, :3])) - {0}) == 1
    assert out[0, 0, 0] == out[2, 0, 0] != out[3, 0, 0] == out[4, 0, 0]
    assert int(out.max()) == 3 and len(np.unique(out[:, 8:, 8:])) == 1
    shallow = np.zeros((3, 10, 10), np.int32)
    shallow[0, :3, :3] = shallow[2, :3, :3] = 1
    shallow[1, :2, :4] = 1  # area 8
    assert int(split_z(shallow, 0.85).max()) == 1
    assert int(split_z(lab, 0.0).max()) == 2
