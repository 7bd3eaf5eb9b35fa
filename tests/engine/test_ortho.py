"""``z_mode="ortho"``: a 2D model's YX, ZX and ZY views of a volume, averaged in 3D.

Hand-made stub models with known outputs (one tile per slice, no rescaling unless the
test gives the model a scale), so the views, the z rescale round trip, the averaging,
the normalisation and the progress can be checked exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.stitch import check_z_scale, combine_views, resize_axis
from napari_cellfocus.engine.checkpoint import ModelInfo
from napari_cellfocus.engine.segment import (
    ORTHO_METHOD,
    ORTHO_POST_PARAMS,
    Segmenter,
    postprocess_planes,
)

torch.set_num_threads(1)
SHAPE = (12, 64, 80)  # Z, Y, X: every view's slices have their own shape


class ViewStub(torch.nn.Module):
    """One-hot class by the slice's shape: a YX plane (H == 64 * zoom) -> background,
    a ZX slice (W == 80 * zoom) -> cell, a ZY slice -> touching. Records input shapes."""

    divisor = 1

    def __init__(self, zoom: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.zoom = zoom
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        self.seen.append((h, w))
        if h == round(SHAPE[1] * self.zoom):
            k = 0
        elif w == round(SHAPE[2] * self.zoom):
            k = 1
        else:
            k = 2
        out = torch.full((n, 3, h, w), -20.0)
        out[:, k] = 20.0
        return out + 0 * self.w


class PointStub(torch.nn.Module):
    """Pixel-wise: cell logit 8 (x - 0.5) of the normalised input, background 0,
    touching never; so each view's cell probability is a function of the voxel alone."""

    divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 8 * (x - 0.5), torch.full_like(x, -20.0)], 1)


def _seg(net: torch.nn.Module, **defaults) -> Segmenter:
    info = ModelInfo(network={"dims": 2, "in_channels": 1}, defaults=defaults)
    return Segmenter((net, info), device="cpu")


def _ball_volume(z_sigma: float = 3.0) -> np.ndarray:
    """Two smooth blobs in a (12, 64, 80) volume; x >= 60 is background only."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    vol = np.exp(-((z - 5) ** 2) / (2 * z_sigma**2) - ((y - 30) ** 2 + (x - 20) ** 2) / 72)
    vol += np.exp(-((z - 7) ** 2) / (2 * z_sigma**2) - ((y - 20) ** 2 + (x - 45) ** 2) / 50)
    return (100 + 1000 * vol).astype(np.float32)


def test_three_views_are_predicted_and_averaged():
    """YX planes, ZX slices (one per y) and ZY slices (one per x) of the volume resampled
    to 24 planes (z scale 2) are predicted; each view comes back on the volume's grid;
    the result is their mean (1/3 of each class here), or with boundary='max' the
    touching class at its maximum, renormalised."""
    net = ViewStub()
    seg = _seg(net)
    views: list[np.ndarray] = []
    vol = _ball_volume()
    probs = seg.predict_ortho(vol, z_scale=2.0, views=views)
    assert probs.shape == (3, *SHAPE) and probs.dtype == np.float32
    assert [v.shape for v in views] == [(3, *SHAPE)] * 3
    for k, view in enumerate(views):  # view k is one-hot class k everywhere
        np.testing.assert_allclose(view[k], 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)
    # 12 YX planes of 64 x 80, 64 ZX slices of 24 x 80, 80 ZY slices of 24 x 64
    assert sorted(set(net.seen)) == [(24, 64), (24, 80), (64, 80)]
    assert [net.seen.count(s) for s in [(64, 80), (24, 80), (24, 64)]] == [12, 64, 80]
    mx = combine_views(views, "max")
    np.testing.assert_allclose(mx[:, 0, 0, 0], [0.2, 0.2, 0.6], atol=1e-6)
    np.testing.assert_allclose(mx.sum(0), 1.0, atol=1e-6)


def test_z_rescale_round_trip_and_volume_normalisation():
    """A pixel-wise model on a volume smooth in z: the side views, predicted on the
    volume resampled to 2x the planes and resampled back, match the YX view; ZX and ZY
    agree with each other (the same resampled volume, transposed). With z scale 1 the
    three views are identical. All views share the volume's intensity range: slices
    through background only (x >= 60) are not stretched to look like nuclei."""
    seg = _seg(PointStub())
    vol = _ball_volume(z_sigma=3.0)
    views: list[np.ndarray] = []
    seg.predict_ortho(vol, z_scale=2.0, views=views)
    yx, zx, zy = (v[1] for v in views)
    np.testing.assert_allclose(zx, zy, atol=1e-5)
    # (linear resampling before a steep non-linear model: close, not exact)
    assert np.abs(zx - yx).max() < 0.1 and np.abs(zx - yx).mean() < 0.005
    same: list[np.ndarray] = []
    seg.predict_ortho(vol, z_scale=1.0, views=same)
    np.testing.assert_allclose(same[1], same[0], atol=1e-6)
    np.testing.assert_allclose(same[2], same[0], atol=1e-6)
    assert yx[:, :, 60:].max() < 0.05 and zy[:, :, 60:].max() < 0.05
    # plane by plane (the model's own per-plane normalisation) a background slice is
    # stretched to full range: the reason for one range per volume
    per_plane = seg.predict(np.ascontiguousarray(vol[:, :, 60:].transpose(2, 0, 1)))
    assert per_plane[1].max() > 0.5


def test_the_diameter_rescaling_applies_to_every_view():
    """A model of 20 px nuclei on nuclei of 10 px: every view is predicted at 2x."""
    net = ViewStub(zoom=2.0)
    seg = _seg(net, diameter=20.0)
    views: list[np.ndarray] = []
    probs = seg.predict_ortho(_ball_volume(), diameter=10.0, z_scale=2.0, views=views)
    assert probs.shape == (3, *SHAPE)
    assert sorted(set(net.seen)) == [(48, 128), (48, 160), (128, 160)]
    for k, view in enumerate(views):
        assert view[k].min() > 0.99


def test_progress_spans_the_three_views():
    """Updates count every slice of the three views plus the combination step; the
    last one (done == total) carries the combined probabilities."""
    seg = _seg(ViewStub())
    updates = list(seg.iter_predict_ortho(_ball_volume(), z_scale=2.0))
    dones = [u.done for u in updates]
    assert dones == sorted(dones) and dones[-1] == updates[-1].total
    assert {u.total for u in updates} == {12 + 64 + 80 + 1}
    np.testing.assert_allclose(updates[-1].probs, 1 / 3, atol=1e-6)
    assert updates[0].probs.shape == (3, *SHAPE)  # the YX view streams in first


def test_resize_axis_maps_centres_and_round_trips():
    up = resize_axis(np.array([0.0, 1.0]), 4)
    np.testing.assert_allclose(up, [0.0, 0.25, 0.75, 1.0])
    ramp = np.arange(12, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    back = resize_axis(resize_axis(ramp, 24, axis=0), 12, axis=0)
    np.testing.assert_allclose(back[1:-1], ramp[1:-1], atol=1e-4)
    np.testing.assert_allclose(resize_axis(np.ones((2, 5, 3)), 7, axis=1), 1.0)
    assert resize_axis(np.ones((2, 5, 3)), 7, axis=1).shape == (2, 7, 3)
    assert check_z_scale(None) == 1.0 and check_z_scale("2") == 2.0
    with pytest.raises(ValueError, match="z scale"):
        check_z_scale(0)


def test_postprocess_in_3d_separates_nuclei_stacked_in_z():
    """Hand-made 3D probabilities: two cells one above the other with a touching layer
    between them give two 3D objects; plane by plane gives one object per cell plane
    (the touching plane, with no cell pixel in it, is background)."""
    probs = np.zeros((3, 9, 10, 10), np.float32)
    probs[0] = 1.0
    probs[:, 1:4, 2:8, 2:8] = [[[[0]]], [[[1]]], [[[0]]]]
    probs[:, 4, 2:8, 2:8] = [[[0]], [[0]], [[1]]]
    probs[:, 5:8, 2:8, 2:8] = [[[[0]]], [[[1]]], [[[0]]]]
    params = {"gamma1": 0.5, "gamma2": 0.5, "min_size": 1}
    labels, count = postprocess_planes(probs, 2, "th", params, axes="ZYX", z_mode="ortho")
    assert count == 2 and labels.shape == (9, 10, 10)
    assert len(np.unique(labels[1:4])) == 2 and len(np.unique(labels[5:8])) == 2
    assert labels[2, 5, 5] != labels[6, 5, 5]
    planes, n = postprocess_planes(probs, 2, "th", params, axes="ZYX", z_mode="planes")
    assert n == 6 and not planes[4].any()
    # T, Z: each frame in 3D, ids unique across frames; linked: the same ids
    tz = np.stack([probs, probs], axis=1)
    lab, n = postprocess_planes(tz, 2, "th", params, axes="TZYX", z_mode="ortho")
    assert n == 4 and np.array_equal(lab[1] > 0, lab[0] > 0)
    lab, n = postprocess_planes(tz, 2, "th", params, axes="TZYX", z_mode="ortho", link=True)
    assert n == 2 and np.array_equal(lab[1], lab[0])


def test_segment_ortho_result_and_defaults():
    """segment(z_mode='ortho'): 3D probabilities and labels of the volume's shape; the
    result says the mode and the z scale; with the model's method (None) the 3D
    post-processing is ortho's own TH, its size filter a volume in voxels."""
    seg = _seg(PointStub(), diameter=8.0, min_size_fraction=0.4, method="map")
    vol = _ball_volume()
    res = seg.segment(vol, axes="ZYX", z_mode="ortho", z_scale=2.0, diameter=8.0)
    assert (res.axes, res.z_mode, res.z_scale) == ("ZYX", "ortho", 2.0)
    assert res.probs.shape == (3, *SHAPE) and res.labels.shape == SHAPE
    assert res.method == ORTHO_METHOD
    assert {k: res.post_params[k] for k in ORTHO_POST_PARAMS} == ORTHO_POST_PARAMS
    assert res.post_params["min_size"] == seg.min_size_for(8.0, 2.0)
    assert seg.min_size_for(8.0, 2.0) == round(0.4 * np.pi / 6 * 8**3 / 2)
    assert res.count == 2 and res.z_trim == 0.6 and res.z_split is None
    stitched = seg.segment(vol, axes="ZYX", z_mode="stitch", z_scale=2.0, diameter=8.0)
    assert stitched.z_scale is None and stitched.method == "map"
    with pytest.raises(ValueError, match="z scale"):
        seg.segment(vol, axes="ZYX", z_mode="ortho", z_scale=-1)


def test_time_series_of_volumes_frame_by_frame():
    """(T, Z, Y, X): each frame's volume gets its own three views; two equal frames give
    equal 3D cells, ids unique per frame, or the same ids when linked."""
    seg = _seg(ViewStub())
    probs = seg.predict_ortho(np.stack([_ball_volume()] * 2), z_scale=2.0)
    assert probs.shape == (3, 2, *SHAPE)
    np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)
    seg = _seg(PointStub(), diameter=8.0, min_size_fraction=0.4)
    tz = np.stack([_ball_volume()] * 2)
    one = seg.segment(tz[0], axes="ZYX", z_mode="ortho", z_scale=2.0, diameter=8.0)
    res = seg.segment(tz, axes="TZYX", z_mode="ortho", z_scale=2.0, diameter=8.0)
    assert res.z_mode == "ortho" and res.counts == [one.count, one.count] == [2, 2]
    assert res.count == 4 and np.array_equal(res.labels[1] > 0, one.labels > 0)
    linked = seg.segment(
        tz, axes="TZYX", z_mode="ortho", z_scale=2.0, diameter=8.0, link_frames=True
    )
    assert linked.count == 2 and np.array_equal(linked.labels[0], linked.labels[1])
