"""The loss the Trainer optimises (its own ``_loss`` path), worked out by hand.

J3 / J4 are T 5.2.2's plain CE + Youden J unless a weight map is asked for; with weak
labels the CE term is the W3-weighted mean and J leaves out the unannotated zone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_cellfocus.core.weights import overcrowding_map, triplex_weight_map
from napari_cellfocus.engine.losses import mae_loss
from napari_cellfocus.engine.train import TrainConfig, Trainer, ddt_network, target_and_weight

TINY = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 3,
    "depth": 2,
    "width": 4,
    "norm": "batch",
    "dims": 2,
}

#: softmax outputs of a 1 x 4 batch (classes in the rows' order bg / cell / touching) and
#: the target classes of its pixels
PROBS = [(0.5, 0.25, 0.25), (0.2, 0.6, 0.2), (0.1, 0.1, 0.8), (0.2, 0.4, 0.4)]
TARGET = [0, 1, 2, 0]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.log(torch.tensor(PROBS, dtype=torch.float64)).T.reshape(1, 3, 1, 4)
    return logits, torch.tensor(TARGET).reshape(1, 1, 4)


def _scene(size: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Two 6x6 cells touching side by side near the top-left corner, one more far away."""
    labels = np.zeros((size, size), np.int32)
    labels[4:10, 4:10] = 1
    labels[4:10, 10:16] = 2
    labels[60:66, 60:66] = 3
    rng = np.random.default_rng(0)
    image = (labels > 0) * 1.0 + 0.1 * rng.random((size, size))
    return image.astype(np.float32), labels


def _trainer(**cfg) -> Trainer:
    image, labels = _scene()
    config = TrainConfig(steps=1, batch_size=1, crop_size=64, **cfg)
    return Trainer([image], [labels], config, network=TINY, device="cpu", workers=1)


def test_youden_losses_use_no_weight_map_unless_asked():
    assert TrainConfig().weight_scheme == "saw"  # wce keeps its default map
    assert TrainConfig(loss="j3").weight_scheme == "none"
    assert TrainConfig(loss="j4", n_classes=4).weight_scheme == "none"
    assert TrainConfig(loss="j4", n_classes=4, weights="saw").weight_scheme == "saw"
    assert TrainConfig(loss="j3", weak=True).weight_scheme == "w3"
    assert TrainConfig(loss="jaccard", weights="saw").weight_scheme == "none"
    _, labels = _scene()
    for cfg in (TrainConfig(loss="j3"), TrainConfig(loss="j4", n_classes=4)):
        _, weight = target_and_weight(labels, cfg)
        assert np.array_equal(weight, np.ones(labels.shape, np.float32))
    trainer = _trainer(loss="j3")
    assert all(np.array_equal(s.weight, np.ones_like(s.weight)) for s in trainer.train_samples)
    last_run = trainer.current_info().training["last_run"]
    assert last_run["weights"] is None and last_run["weight_scheme"] == "none"


def test_trainer_j3_loss_is_plain_ce_plus_youden_by_hand():
    """Through Trainer._loss with the weight map the Trainer builds (ones):
    CE = mean of -log z_target = -(log .5 + log .6 + log .8 + log .2) / 4.
    n_0 = 2, n_1 = n_2 = 1; alpha_0 = (.5 + .2) / 2 = .35, alpha_1 = .6, alpha_2 = .8;
    beta_{i,k} = 1 - mean of z_i over class-k pixels: beta_01 = .8, beta_02 = .9,
    beta_10 = 1 - (.25 + .4) / 2 = .675, beta_12 = .9, beta_20 = .675, beta_21 = .8;
    J = -sum_{i != k} log((alpha_i + beta_ik) / 2)."""
    trainer = _trainer(loss="j3")
    logits, y = _batch()
    w = torch.ones(1, 1, 4)
    ce = -(math.log(0.5) + math.log(0.6) + math.log(0.8) + math.log(0.2)) / 4
    halves = [0.575, 0.625, 0.6375, 0.75, 0.7375, 0.8]
    j = -sum(math.log(h) for h in halves)
    assert float(trainer._loss(logits, y, w)) == pytest.approx(ce + j, rel=1e-6)
    # pixels of zero weight (padding, outside the image) are left out of both terms:
    # CE over pixels 0-2; n_0 = 1 so alpha_0 = .5, beta_10 = beta_20 = .75
    w0 = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    ce0 = -(math.log(0.5) + math.log(0.6) + math.log(0.8)) / 3
    j0 = -sum(math.log(h) for h in [0.65, 0.7, 0.675, 0.75, 0.775, 0.8])
    assert float(trainer._loss(logits, y, w0)) == pytest.approx(ce0 + j0, rel=1e-6)


def test_trainer_weak_j3_loss_by_hand():
    """Weak labels: w = W3 weights (2, 1, 4) on the annotated zone, 0 on the unannotated
    pixel 3. CE = the W3-weighted mean (2 * -log .5 + 1 * -log .6 + 4 * -log .8) / 7,
    whatever the scale of W3 (here x1e-3: it used to shrink CE 1000-fold); J over pixels
    0-2 only, as in the second case of the test above."""
    trainer = _trainer(loss="j3", weak=True)
    logits, y = _batch()
    ce = (2 * -math.log(0.5) - math.log(0.6) - 4 * math.log(0.8)) / 7
    j = -sum(math.log(h) for h in [0.65, 0.7, 0.675, 0.75, 0.775, 0.8])
    for scale in (1.0, 1e-3):
        w = scale * torch.tensor([[[2.0, 1.0, 4.0, 0.0]]])
        assert float(trainer._loss(logits, y, w)) == pytest.approx(ce + j, rel=1e-6)


def test_weak_youden_weight_map_is_w3_cut_to_the_annotated_zone():
    """W3 inside the zone (within beta = 30 px of an annotated cell), exactly 0 beyond it;
    and on a real batch of the Trainer, uniform logits give CE = log 3 (not ~1e-3 log 3,
    the size of W3's weights) plus J = log 2 per ordered pair of the classes present."""
    _, labels = _scene()
    _, weight = target_and_weight(labels, TrainConfig(loss="j3", weak=True))
    w3 = triplex_weight_map(labels, beta=30.0)
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    # distance to the nearest cell pixel, by brute force over the three squares
    cells = np.argwhere(labels > 0)
    d = np.min(np.hypot(yy[..., None] - cells[:, 0], xx[..., None] - cells[:, 1]), axis=-1)
    np.testing.assert_allclose(weight[d < 30], w3[d < 30], rtol=1e-6)
    assert np.all(weight[d >= 30] == 0) and np.count_nonzero(d >= 30) > 0
    assert float(w3.mean()) < 0.05  # the scale that made CE vanish beside J

    trainer = _trainer(loss="j3", weak=True)
    _, y, w = trainer._batch()
    present = int(torch.unique(y[w > 0]).numel())
    logits = torch.zeros(1, 3, *y.shape[1:])
    expected = math.log(3) + present * (present - 1) * math.log(2)
    assert float(trainer._loss(logits, y, w)) == pytest.approx(expected, rel=1e-5)


def test_explicit_weight_map_gives_the_weighted_variant():
    """weights="balance" with J3: the CE term is the class-balance weighted mean."""
    trainer = _trainer(loss="j3", weights="balance")
    sample = trainer.train_samples[0]
    assert not np.allclose(sample.weight, 1.0)
    logits, y = _batch()
    w = torch.tensor([[[3.0, 1.0, 1.0, 1.0]]])
    ce = (3 * -math.log(0.5) - math.log(0.6) - math.log(0.8) - math.log(0.2)) / 6
    j = -sum(math.log(h) for h in [0.575, 0.625, 0.6375, 0.75, 0.7375, 0.8])
    assert float(trainer._loss(logits, y, w)) == pytest.approx(ce + j, rel=1e-6)


def _backbone_grads(trainer: Trainer, loss: torch.Tensor) -> list[torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in trainer.model.backbone.parameters()]


@pytest.mark.parametrize("paper", [True, False])
def test_ddt_paper_mode_keeps_the_class_loss_off_the_backbone(paper):
    """ddt_network() is D's mode (detach_ddt=True): through the Trainer's own batch loss
    (class loss + MAE), the backbone's gradient is exactly that of the MAE alone, as when
    the DDT is trained first and the top model then on its output. paper=False trains
    end to end: the class loss reaches the backbone too."""
    image, labels = _scene()
    net = ddt_network(depth=2, width=4)
    assert net["detach_ddt"] is True and net["top_input"] == "ddt+image"
    config = TrainConfig(steps=1, batch_size=2, crop_size=64, weights="none")
    trainer = Trainer(
        [image],
        [labels],
        config,
        network=ddt_network(depth=2, width=4, paper=paper),
        device="cpu",
        workers=1,
    )
    assert trainer.model.detach_ddt is paper
    assert trainer.current_info().network["detach_ddt"] is paper
    trainer.train_mode()
    x, y, w, ddt_target = trainer._batch()
    full = _backbone_grads(trainer, trainer._batch_loss(x, y, w, ddt_target))
    mae_only = _backbone_grads(trainer, mae_loss(trainer.model(x)[1], ddt_target))
    pairs = zip(full, mae_only, strict=True)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in pairs)
    assert same is paper


def test_overcrowding_sigma_is_the_cells_median_radius():
    """C 4.2: sigma = the average cell radius (25 px on C's images). The Trainer uses the
    labels' median radius: three 6x6 cells, equivalent diameter 2 sqrt(36 / pi) = 6.77 px,
    so sigma = 3.39 px, not 25."""
    _, labels = _scene()
    _, weight = target_and_weight(labels, TrainConfig(weights="overcrowding"))
    sigma = math.sqrt(36 / math.pi)
    np.testing.assert_allclose(weight, overcrowding_map(labels, sigma=sigma), rtol=1e-6)
    assert not np.allclose(weight, overcrowding_map(labels))
