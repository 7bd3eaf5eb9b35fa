"""Segmenter on volumes (z stitching), movies (per-frame counts, linking) and channels,
with the built-in 2D model on small simulated images (one CPU thread)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.segment import Segmenter, postprocess_planes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def seg():
    return Segmenter("default", device="cpu")


@pytest.fixture(scope="module")
def scene2d():
    return simulate_cells(shape=(64, 64), radius=7, seed=3)


@pytest.fixture(scope="module")
def volume():
    return simulate_cells(shape=(12, 64, 64), radius=8, seed=2)


def test_volume_stitched_vs_planes(seg, volume):
    """Stitching gives far fewer ids than plane by plane, close to the true count; the
    result says which mode was used; the planes mode is the old per-plane behaviour."""
    st = seg.segment(volume.image, diameter=14, z_mode="stitch")  # axes default: ZYX
    pl = seg.segment(volume.image, diameter=14, z_mode="planes")
    assert (st.axes, st.z_mode, pl.z_mode) == ("ZYX", "stitch", "planes")
    assert st.labels.shape == volume.image.shape and st.labels.dtype == np.int32
    n_true = int(volume.labels.max())
    assert st.count == st.labels.max() == np.unique(st.labels).size - 1
    assert pl.count > 2 * st.count
    assert abs(st.count - n_true) <= max(3, 0.35 * n_true)
    # without the z cut the stitched objects are unions of the per-plane objects (same
    # foreground); the cut only removes planes of objects
    uncut = seg.segment(volume.image, diameter=14, z_mode="stitch", z_trim=None)
    assert np.array_equal(uncut.labels > 0, pl.labels > 0)
    assert not np.any((st.labels > 0) & (pl.labels == 0))
    assert st.z_trim == 0.6 and uncut.z_trim is None and pl.z_trim is None
    old, _ = postprocess_planes(st.probs, 2, st.method, st.post_params)
    assert np.array_equal(old, pl.labels)


def test_movie_counts_and_linking(seg, scene2d):
    movie = np.stack([np.roll(scene2d.image, t, axis=1) for t in range(3)])
    res = seg.segment(movie, axes="TYX", diameter=14)
    assert res.axes == "TYX" and res.z_mode is None and not res.linked
    assert res.counts == [np.unique(f).size - 1 for f in res.labels]
    assert res.count == sum(res.counts)  # unlinked: ids unique per frame
    linked = seg.segment(movie, axes="TYX", diameter=14, link_frames=True)
    assert linked.linked and linked.counts == res.counts
    first = set(np.unique(linked.labels[0])) - {0}
    kept = first & set(np.unique(linked.labels[1])) & set(np.unique(linked.labels[2]))
    assert len(kept) >= 0.8 * len(first)
    assert linked.count < 1.5 * res.counts[0]
    # a frame shifted by 1 px: a cell's id sits at the shifted place
    for lab in list(kept)[:5]:
        ys, xs = np.nonzero(linked.labels[0] == lab)
        hit = linked.labels[1, ys, (xs + 1) % 64]
        assert np.mean(hit == lab) > 0.7


def test_channels_need_a_channel(seg, scene2d):
    cyx = np.stack([np.zeros_like(scene2d.image), scene2d.image])
    with pytest.raises(ValueError, match=r"\(2, 64, 64\).*CYX.*channel"):
        seg.segment(cyx, axes="CYX")
    with pytest.raises(ValueError, match=r"\(2, 64, 64\).*--axes CYX"):
        seg.segment(cyx)  # no axes: ambiguous, never guessed
    alone = seg.segment(scene2d.image, diameter=14)
    c1 = seg.segment(cyx, axes="CYX", channel=1, diameter=14)
    assert c1.axes == "YX" and np.array_equal(c1.labels, alone.labels)
    yxc = np.moveaxis(cyx, 0, -1)
    assert np.array_equal(
        seg.segment(yxc, axes="YXC", channel=1, diameter=14).labels, alone.labels
    )


def test_plain_2d_unchanged(seg, scene2d):
    res = seg.segment(scene2d.image, diameter=14)
    assert (res.axes, res.z_mode, res.counts, res.linked) == ("YX", None, None, False)
    assert np.array_equal(seg.segment(scene2d.image, diameter=14, axes="YX").labels, res.labels)
    with pytest.raises(ValueError, match="z_mode"):
        seg.segment(scene2d.image, z_mode="3d")


def test_tzyx_is_stitched_per_frame(seg, volume):
    """Two frames of one volume: each frame stitched on its own (ids unique across frames
    unless linked); linked, frame 1 has frame 0's ids."""
    vol = volume.image[:6]
    tz = np.stack([vol, vol])
    res = seg.segment(tz, axes="TZYX", diameter=14, z_mode="stitch")
    one = seg.segment(vol, axes="ZYX", diameter=14, z_mode="stitch")
    assert res.axes == "TZYX" and res.z_mode == "stitch"
    assert res.counts == [one.count, one.count] and res.count == 2 * one.count
    linked = seg.segment(tz, axes="TZYX", diameter=14, z_mode="stitch", link_frames=True)
    assert linked.count == one.count and np.array_equal(linked.labels[0], linked.labels[1])
    assert np.array_equal(linked.labels[0] > 0, one.labels > 0)


def test_stack_diameter_estimated_on_several_planes(seg, scene2d):
    """A movie of one scene repeated: the estimate equals the single image's."""
    movie = np.stack([scene2d.image] * 4)
    assert seg.estimate_diameter(movie) == pytest.approx(seg.estimate_diameter(scene2d.image))


def test_z_cut_and_split_bring_stitched_cells_close_to_the_nuclei():
    """A simulated 16-plane volume of 21 touching nuclei. Without the z cut the stitched
    cells run on into the out-of-focus planes (longer in z than the true nuclei); the cut
    makes them shorter, closer to the truth, and the 3D PQ rises. Without the split some
    nuclei stacked in z stay merged (18 cells); splitting at waists brings the count
    closer to 21 and the PQ up again."""
    from scipy import ndimage

    from napari_cellfocus.core.metrics import evaluate
    from napari_cellfocus.core.simulate import simulate_cells
    from napari_cellfocus.engine.segment import Segmenter

    torch.set_num_threads(1)
    scene = simulate_cells(shape=(16, 96, 96), seed=2)
    seg = Segmenter("default", device="cpu")
    st = {"axes": "ZYX", "diameter": 14.0, "z_mode": "stitch"}
    default = seg.segment(scene.image, **st)
    no_split = seg.segment(scene.image, **st, z_split=None)
    neither = seg.segment(scene.image, **st, z_split=None, z_trim=None)

    def mean_extent(labels):
        return np.mean([s[0].stop - s[0].start for s in ndimage.find_objects(labels) if s])

    def pq(result):
        return evaluate(scene.labels, result.labels)["pq"]

    truth, n_true = mean_extent(scene.labels), int(scene.labels.max())
    assert mean_extent(neither.labels) > truth
    assert abs(mean_extent(no_split.labels) - truth) < abs(mean_extent(neither.labels) - truth)
    assert pq(no_split) > pq(neither)
    assert abs(default.count - n_true) < abs(no_split.count - n_true)
    assert pq(default) > pq(no_split)
    assert (default.z_trim, default.z_split) == (0.6, 0.85)


def test_ortho_is_the_default_for_volumes_and_finds_3d_cells(seg, volume):
    """A 2D model on a (12, 64, 64) simulated volume (z step 2 px): the default z mode is
    the orthogonal views; with the volume's z scale it finds about the true number of
    3D cells, each over several planes, and the result says mode and z scale."""
    from scipy import ndimage

    from napari_cellfocus.engine.segment import DEFAULT_Z_MODE

    assert DEFAULT_Z_MODE == "ortho"
    res = seg.segment(volume.image, diameter=14, z_scale=2.0)
    assert (res.axes, res.z_mode, res.z_scale, res.z_trim) == ("ZYX", "ortho", 2.0, 0.6)
    assert res.probs.shape == (3, 12, 64, 64) and res.labels.shape == (12, 64, 64)
    n_true = int(volume.labels.max())
    assert abs(res.count - n_true) <= max(3, 0.25 * n_true)
    spans = [s[0].stop - s[0].start for s in ndimage.find_objects(res.labels) if s]
    assert np.median(spans) >= 3
    # the plain 2D image is unaffected by the z mode
    assert seg.segment(volume.image[6], diameter=14).z_mode is None
