"""Tiled prediction: exact agreement with whole-image prediction, no seams, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.normalize import PercentileNormalization
from napari_cellfocus.engine.networks import UNet
from napari_cellfocus.engine.predict import iter_predict, predict_probabilities
from napari_cellfocus.engine.tiling import axis_tiling, grid_tiles


def _tiny_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=1, out_channels=3, depth=2, width=4, norm="batch")
    # Non-trivial BatchNorm statistics so eval mode is not an identity.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize(
    "length,window,halo,blend", [(100, 40, 8, 6), (256, 64, 16, 16), (33, 64, 8, 8)]
)
def test_axis_weights_partition_of_unity(length, window, halo, blend):
    """Normalised weights of all windows sum to exactly 1 at every pixel, are 0 in the
    inner halos, and every window keeps the same size (so tiles can be batched)."""
    t = axis_tiling(length, window, halo, blend)
    total = np.zeros(length)
    for s, w in zip(t.starts, t.weights, strict=True):
        assert w.shape == (min(window, length),)
        total[s : s + t.window] += w
        if s > 0:
            assert np.all(w[:halo] == 0)
        if s + t.window < length:
            assert np.all(w[-halo:] == 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tile_too_small_for_halo_is_clear():
    with pytest.raises(ValueError, match="too small"):
        axis_tiling(200, 20, 8, 8)


def test_tiled_equals_whole_image():
    """Depth-2 U-Net with 3x3 convs: receptive-field radius 2*(1+1) + 2*2*(1+1) ... < 16 px,
    so with a 16-pixel halo every kept pixel sees exactly what it sees in the whole image;
    the tiled result must match the untiled one to float precision (1e-4)."""
    net = _tiny_unet()
    rng = np.random.default_rng(1)
    image = rng.random((96, 160)).astype(np.float32)
    norm = PercentileNormalization()
    whole = predict_probabilities(net, image, normalizer=norm, tile_size=1024, halo=0, blend=0)
    tiled = predict_probabilities(
        net, image, normalizer=norm, tile_size=48, halo=16, blend=8, batch_size=3
    )
    assert len(grid_tiles(image.shape, 48, 16, 8)) > 6
    assert whole.shape == tiled.shape == (3, 96, 160)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_no_seams_on_flat_input_and_streaming_updates():
    """On a constant image the whole-image output is spatially constant away from the
    borders; a tiled result must not show tile edges (no jumps between neighbours larger
    than inside tiles), and every update reports a growing count ending at the total."""
    net = _tiny_unet()
    image = np.full((128, 128), 5.0, np.float32)
    image[::7, ::5] = 6.0  # a regular texture so the network output is not trivially flat
    updates = list(iter_predict(net, image, tile_size=64, halo=16, blend=16, batch_size=1))
    done = [u.done for u in updates]
    assert done == sorted(done) and done[-1] == updates[-1].total > 1
    tiled = updates[-1].probs
    whole = predict_probabilities(net, image, tile_size=512, halo=0, blend=0)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_stack_predicted_plane_by_plane():
    net = _tiny_unet()
    rng = np.random.default_rng(2)
    stack = rng.random((3, 40, 48)).astype(np.float32)
    probs = predict_probabilities(net, stack, tile_size=64, halo=8, blend=4)
    assert probs.shape == (3, 3, 40, 48)
    single = predict_probabilities(net, stack[1], tile_size=64, halo=8, blend=4)
    np.testing.assert_allclose(probs[:, 1], single, atol=1e-5)


def test_bad_inputs_are_named():
    net = _tiny_unet()
    with pytest.raises(ValueError, match=r"my layer.*NaN"):
        predict_probabilities(net, np.full((32, 32), np.nan, np.float32), name="my layer")
    with pytest.raises(ValueError, match="RGB"):
        predict_probabilities(net, np.zeros((32, 32, 3), np.float32))


def test_cancel_through_should_stop():
    net = _tiny_unet()
    image = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    seen = []
    with pytest.raises(InterruptedError):
        predict_probabilities(
            net,
            image,
            tile_size=48,
            halo=8,
            blend=8,
            on_tile=seen.append,
            should_stop=lambda: len(seen) >= 2,
        )
    assert len(seen) == 2


class _OutOfMemoryAbove(torch.nn.Module):
    """Wraps a network and raises CUDA's out-of-memory error for tiles larger than
    ``limit`` pixels, as a small GPU would."""

    def __init__(self, net: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.divisor = net, limit, net.divisor
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[-1])
        if x.shape[-1] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return self.net(x)


def test_out_of_memory_retries_with_smaller_tiles():
    """256-pixel tiles 'do not fit'; prediction halves the tile to 128, warns, and gives the
    same result as an untroubled run with 128-pixel tiles."""
    net = _tiny_unet()
    model = _OutOfMemoryAbove(net, limit=128)
    image = np.random.default_rng(3).random((256, 256)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="retrying .* with 128-pixel tiles"):
        probs = predict_probabilities(model, image, tile_size=256, halo=16, blend=8)
    # after the refusal, tiles of at most 128 px: three of 112 px per axis (the fewest
    # of <= 128 px that cover 256 px with 2 * 16 + 8 px of overlap, all the same size)
    assert 256 in model.sizes and model.sizes[-1] == 112
    expected = predict_probabilities(net, image, tile_size=128, halo=16, blend=8)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error():
    model = _OutOfMemoryAbove(_tiny_unet(), limit=8)
    image = np.zeros((128, 128), np.float32)
    with pytest.raises(MemoryError, match="out of GPU memory even with 64-pixel tiles"):
        with pytest.warns(RuntimeWarning):
            predict_probabilities(model, image, tile_size=128, halo=8, blend=8)


@pytest.mark.parametrize(
    "length,window,halo,blend,align", [(300, 96, 16, 8, 8), (517, 128, 32, 16, 16)]
)
def test_aligned_tiles_still_cover_everything(length, window, halo, blend, align):
    """Starts are multiples of the pooling factor (except the last, which ends at the edge)
    and the normalised weights still sum to one everywhere."""
    t = axis_tiling(length, window, halo, blend, align)
    assert all(s % align == 0 for s in t.starts[:-1])
    assert t.starts[-1] + t.window == length
    total = np.zeros(length)
    for s, w in zip(t.starts, t.weights, strict=True):
        total[s : s + t.window] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tiled_equals_whole_image_with_deeper_pooling():
    """Depth-3 U-Net (pooling factor 4) on an image whose tiles would start off the pooling
    grid without alignment: tiled and whole-image outputs agree to 1e-4."""
    torch.manual_seed(1)
    net = UNet(in_channels=1, out_channels=3, depth=3, width=4, norm="batch").eval()
    image = np.random.default_rng(4).random((200, 236)).astype(np.float32)
    whole = predict_probabilities(net, image, tile_size=1024, halo=0, blend=0)
    tiled = predict_probabilities(net, image, tile_size=96, halo=28, blend=6)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


@pytest.mark.parametrize(
    "dtype,high", [(np.uint16, 65535), (np.uint8, 255), (np.int32, 10**6), (np.float64, 1.0)]
)
def test_device_side_normalisation_matches_host(dtype, high):
    """The accelerator path (whole plane uploaded in its own dtype, converted, percentile-
    normalised and blended on the device) gives the host path's result. Forced on the CPU
    here so CI checks it; uint16 values above 32767 exercise the int16 reinterpretation."""
    net = _tiny_unet()
    rng = np.random.default_rng(5)
    stack = (rng.random((2, 72, 88)) * high).astype(dtype)
    if dtype == np.uint16:
        assert stack.max() > 32767
    kw = {"tile_size": 48, "halo": 16, "blend": 8, "batch_size": 2}
    host = predict_probabilities(net, stack, normalize_on_device=False, **kw)
    device = predict_probabilities(net, stack, normalize_on_device=True, **kw)
    np.testing.assert_allclose(device, host, atol=1e-5)
    streamed = list(iter_predict(net, stack, normalize_on_device=True, stream=True, **kw))
    np.testing.assert_allclose(streamed[-1].probs, host, atol=1e-5)


def test_device_side_normalisation_rejects_nan_by_name():
    image = np.zeros((32, 32), np.float32)
    image[3, 4] = np.inf
    with pytest.raises(ValueError, match=r"layer X.*NaN or infinite"):
        predict_probabilities(_tiny_unet(), image, name="layer X", normalize_on_device=True)


def test_tile_weight_is_the_outer_product_of_its_factors():
    for t in grid_tiles((70, 90), 40, 8, 6):
        assert len(t.factors) == 2
        np.testing.assert_array_equal(t.weight, np.multiply.outer(*t.factors))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stream", [False, True])
def test_cuda_prediction_matches_the_cpu(stream):
    """On CUDA (device-side normalisation, GPU blending, pinned result) a uint16 stack gives
    the CPU result; float32 without autocast or TF32, so only cuDNN's summation order differs."""
    net = _tiny_unet()
    rng = np.random.default_rng(6)
    stack = (rng.random((2, 200, 232)) * 60000).astype(np.uint16)
    kw = {"tile_size": 64, "halo": 16, "blend": 8, "mixed_precision": False}
    cpu = predict_probabilities(net, stack, **kw)
    gpu_net = _tiny_unet().cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        updates = list(iter_predict(gpu_net, stack, stream=stream, batch_size=3, **kw))
    np.testing.assert_allclose(updates[-1].probs, cpu, atol=1e-4)
    assert updates[-1].done == updates[-1].total
