"""Tests for napari_cellfocus.engine.networks (CPU, tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from napari_cellfocus.engine.networks import (
    DDTModel,
    ResidualUNet,
    UNet,
    _pad_to_multiple,
    build_network,
    count_parameters,
)

TINY = {"depth": 3, "width": 4}


def _nets(dims: int):
    return [
        UNet(dims=dims, **TINY),
        UNet(dims=dims, norm="group", residual=True, dropout=0.1, **TINY),
        UNet(dims=dims, norm="instance", **TINY),
        UNet(dims=dims, norm=None, **TINY),
        ResidualUNet(dims=dims, **TINY),
    ]


@pytest.mark.parametrize("dims", [2, 3])
def test_output_shape_equals_input_shape_for_odd_sizes(dims):
    """Odd sizes (37x53 in 2D, 5x9x11 in 3D) are padded to the divisor and cropped back."""
    torch.manual_seed(0)
    spatial = (37, 53) if dims == 2 else (5, 9, 11)
    for net in _nets(dims):
        x = torch.randn(2, net.in_channels, *spatial)
        out = net(x)
        assert out.shape == (2, 3, *spatial), type(net).__name__
        assert torch.isfinite(out).all()


def test_input_smaller_than_divisor():
    """3x5 input with divisor 8: padding (5 and 3) exceeds what reflection allows, so edge
    replication is used; the output still has the input size."""
    net = UNet(depth=4, width=4).eval()
    assert net.divisor == 8
    with torch.no_grad():
        assert net(torch.randn(1, 1, 3, 5)).shape == (1, 3, 3, 5)


def test_pad_to_multiple_reflects_and_crops_back():
    """37 -> 40 with divisor 8: 1 pixel before, 2 after; reflect padding mirrors without
    repeating the edge (padded[0] = x[1], padded[-1] = x[-3]); the crop returns x."""
    x = torch.arange(37.0).reshape(1, 1, 1, 37).expand(1, 1, 8, 37).contiguous()
    padded, crop = _pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 40)
    assert padded[0, 0, 0, 0] == 1.0 and padded[0, 0, 0, 1] == 0.0
    assert padded[0, 0, 0, -1] == 34.0 and padded[0, 0, 0, -2] == 35.0
    assert torch.equal(padded[crop], x)
    same, crop2 = _pad_to_multiple(x[..., :32], 8)
    assert same.shape == (1, 1, 8, 32) and torch.equal(same[crop2], x[..., :32])


def test_forward_is_core_on_padded_input():
    """The any-size forward equals the network core run on the reflect-padded input,
    cropped: i.e. the padding does not shift the output relative to the input."""
    torch.manual_seed(0)
    net = UNet(**TINY).eval()
    x = torch.randn(1, 1, 10, 13)
    # divisor 4: Y 10 -> 12 (1, 1), X 13 -> 16 (1, 2)
    padded = F.pad(x, (1, 2, 1, 1), mode="reflect")
    with torch.no_grad():
        expected = net._core(padded)[:, :, 1:11, 1:14]
        assert torch.allclose(net(x), expected, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 4, 5])
def test_divisor(depth):
    assert UNet(depth=depth, width=2).divisor == 2 ** (depth - 1)
    if depth >= 2:
        assert ResidualUNet(depth=depth, width=2).divisor == 2 ** (depth - 1)


def test_thesis_unet_parameter_count():
    """T Table 1: U-Net with RGB input, 64 first-level filters, 4 poolings, no
    normalisation, plus the 1x1 head to 4 classes (64*4 + 4 = 260): 31,379,140 trainable
    parameters. Built on the meta device so no memory is allocated."""
    with torch.device("meta"):
        net = UNet(in_channels=3, out_channels=4, depth=5, width=64, norm=None)
    assert count_parameters(net) == 31_379_140


@pytest.mark.parametrize(
    "net",
    [
        UNet(in_channels=2, out_channels=4, depth=3, width=6, norm="group", residual=True),
        ResidualUNet(in_channels=3, out_channels=2, depth=3, width=4, norm="instance"),
        DDTModel(depth=3, width=4, top_input="ddt", detach_ddt=True),
        UNet(dims=3, **TINY),
    ],
    ids=["unet", "residual_unet", "ddt", "unet3d"],
)
def test_config_round_trip(net):
    """config is JSON-serialisable; build_network(config) rebuilds the same architecture
    (same config, same parameter names and shapes), and loading the weights reproduces
    the outputs."""
    cfg = json.loads(json.dumps(net.config))
    assert cfg["architecture"] in ("unet", "residual_unet", "ddt")
    rebuilt = build_network(cfg)
    assert type(rebuilt) is type(net)
    assert rebuilt.config == net.config
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    x = torch.randn(1, net.in_channels, *((7, 9) if net.dims == 2 else (3, 5, 6)))
    with torch.no_grad():
        a, b = net(x), rebuilt(x)
    if isinstance(a, tuple):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    else:
        assert torch.equal(a, b)


def test_build_network_fills_defaults_and_rejects_bad_configs():
    net = build_network({"architecture": "unet", "width": 8})
    assert isinstance(net, UNet)
    assert net.config["depth"] == 4 and net.config["norm"] == "batch"
    with pytest.raises(ValueError, match="unknown network architecture"):
        build_network({"architecture": "segnet"})
    with pytest.raises(ValueError, match="unknown network architecture"):
        build_network({"width": 8})
    with pytest.raises(ValueError, match="unknown parameter"):
        build_network({"architecture": "unet", "filters": 8})
    with pytest.raises(ValueError, match="must be a dict"):
        build_network("unet")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": 4}, "dims"),
        ({"norm": "layer"}, "norm"),
        ({"depth": 0}, "depth"),
        ({"width": 2.5}, "width"),
        ({"dropout": 1.5}, "dropout"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_residual_unet_specific_arguments():
    with pytest.raises(ValueError, match="depth"):
        ResidualUNet(depth=1)
    with pytest.raises(ValueError, match="odd"):
        ResidualUNet(bottleneck_kernel=4)
    with pytest.raises(ValueError, match="activation"):
        ResidualUNet(activation="tanh")
    with pytest.raises(ValueError, match="top_input"):
        DDTModel(top_input="image")


def test_wrong_input_raises():
    net = UNet(**TINY)
    with pytest.raises(ValueError, match=r"\(N, C, Y, X\)"):
        net(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="1 input channel"):
        net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, Z, Y, X\)"):
        UNet(dims=3, **TINY)(torch.zeros(1, 1, 8, 8))


def test_residual_unet_colour_input_and_structure():
    """C 4.4: with 3 input channels a learned 1x1 conv maps colour to one grey channel; the
    bottleneck holds two residual units with 5x5 kernels; encoder shortcuts that change the
    channel count are 1x1 convolutions."""
    torch.manual_seed(0)
    net = ResidualUNet(in_channels=3, depth=4, width=4)
    assert net.grey_input is True
    assert tuple(net.to_grey.weight.shape) == (1, 3, 1, 1)
    assert tuple(net.encoder[0].body[2].weight.shape)[1] == 1  # first conv sees 1 channel
    kernels = [m.kernel_size for m in net.bottleneck.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (5, 5) in kernels and all(k in ((5, 5), (1, 1)) for k in kernels)
    assert sum(k == (5, 5) for k in kernels) == 4
    assert net.encoder[1].shortcut.kernel_size == (1, 1)
    out = net(torch.rand(2, 3, 21, 30))
    assert out.shape == (2, 3, 21, 30)
    assert ResidualUNet(in_channels=1, **TINY).grey_input is False
    assert isinstance(ResidualUNet(in_channels=1, **TINY).to_grey, torch.nn.Identity)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("top_input", ["ddt", "ddt+image"])
def test_ddt_forward_shapes_and_range(dims, top_input):
    """forward returns (class_logits, ddt): (N, C, *S) and (N, 1, *S) with ddt in [0, 1];
    the top U-Net sees 1 channel (DDT) or 1 + in_channels (DDT and image)."""
    torch.manual_seed(0)
    net = DDTModel(in_channels=2, out_channels=3, top_input=top_input, dims=dims, **TINY)
    assert net.top.in_channels == (1 if top_input == "ddt" else 3)
    spatial = (19, 26) if dims == 2 else (3, 7, 10)
    x = torch.randn(2, 2, *spatial)
    logits, ddt = net(x)
    assert logits.shape == (2, 3, *spatial)
    assert ddt.shape == (2, 1, *spatial)
    assert float(ddt.detach().min()) >= 0.0 and float(ddt.detach().max()) <= 1.0
    assert net.forward_ddt(x).shape == (2, 1, *spatial)


def test_ddt_detach_stops_class_gradient_at_backbone():
    """detach_ddt=True: a loss on the class logits gives no gradient to the backbone; with
    end-to-end training (False) it does."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    for detach, expect_grad in ((True, False), (False, True)):
        net = DDTModel(detach_ddt=detach, **TINY)
        logits, _ = net(x)
        logits.sum().backward()
        grads = [p.grad for p in net.backbone.parameters()]
        has = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
        assert has is expect_grad


def test_tiny_unet_overfits_toy_target():
    """A tiny U-Net learns a 32x32 toy segmentation (bright disk = cell, ring around its
    edge = touching class, rest background) in 40 Adam steps: the cross entropy drops by
    more than 5x."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r = ((yy - 15.5) ** 2 + (xx - 13.0) ** 2).sqrt()
    target = torch.zeros(32, 32, dtype=torch.long)
    target[r < 10] = 2
    target[r < 8] = 1
    image = (target == 1).float() + 0.5 * (target == 2).float() + 0.1 * torch.randn(32, 32)
    x, y = image[None, None], target[None]
    net = UNet(depth=3, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 5


def test_default_unet_size():
    """Default U-Net (depth 4, width 16, batch norm) stays small enough for CPU training."""
    net = UNet()
    assert net.divisor == 8
    assert count_parameters(net) < 600_000
