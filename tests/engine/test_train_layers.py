"""Cheaper fine-tune steps (issue 16): the decoder-only fine-tune and the one-reduction
check of the weights."""

from __future__ import annotations

import pytest
import torch

from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.networks import build_network
from napari_cellfocus.engine.train import (
    TrainConfig,
    Trainer,
    finite_parameters,
    quick_finetune_config,
    set_trainable,
)

TINY = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 3,
    "depth": 3,
    "width": 4,
    "norm": "batch",
    "dims": 2,
}


@pytest.fixture(scope="module")
def scene():
    return simulate_cells(shape=(64, 64), seed=5, radius=(6, 8), density=0.3, photons=500)


def _per_tensor_check(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_finite_parameters_finds_one_bad_weight_anywhere(bad):
    model = build_network(TINY)
    assert finite_parameters(model) and _per_tensor_check(model)
    params = list(model.parameters())
    for index in (0, len(params) // 2, len(params) - 1):
        model = build_network(TINY)
        with torch.no_grad():
            target = list(model.parameters())[index]
            target.view(-1)[target.numel() // 2] = bad
        assert not finite_parameters(model)
        assert finite_parameters(model) == _per_tensor_check(model)


def test_finite_parameters_of_a_model_without_weights():
    assert finite_parameters(torch.nn.ReLU())


def test_decoder_fine_tune_keeps_the_encoder_and_trains_the_rest(scene):
    config = TrainConfig(
        steps=3, batch_size=1, crop_size=32, lr=1e-2, checkpoint_every=0, train_layers="decoder"
    )
    trainer = Trainer([scene.image], [scene.labels], config, network=TINY, device="cpu")
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    learning = sum(len(g["params"]) for g in trainer.optimizer.param_groups)
    encoder = len(list(trainer.model.encoder.parameters()))
    assert learning == len(list(trainer.model.parameters())) - encoder
    model, _ = trainer.run()
    params = dict(model.named_parameters())
    for name, value in params.items():
        moved = not torch.equal(value.detach(), start[name])
        assert moved is not name.startswith("encoder."), name
    # the returned model is an ordinary one again: a later fine-tune may train it all
    assert all(p.requires_grad for p in model.parameters())


def test_full_fine_tune_after_a_decoder_one_trains_the_encoder(scene):
    """``set_trainable`` resets the flags, so a model that left a decoder-only run (or
    a frozen copy) is trained whole by the next run that asks for it."""
    model = build_network(TINY)
    set_trainable(model, "decoder")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    config = TrainConfig(steps=2, batch_size=1, crop_size=32, lr=1e-2, checkpoint_every=0)
    trainer = Trainer(
        [scene.image], [scene.labels], config, init=(model, _info(model)), device="cpu"
    )
    before = trainer.model.encoder[0].conv1.weight.detach().clone()
    trainer.run()
    assert not torch.equal(trainer.model.encoder[0].conv1.weight.detach(), before)


def _info(model):
    from napari_cellfocus.engine.checkpoint import ModelInfo

    return ModelInfo(network=model.config, classes=["background", "cell", "touching"])


def test_train_layers_is_checked():
    with pytest.raises(ValueError, match="train_layers must be one of 'all', 'decoder'"):
        TrainConfig(train_layers="encoder")
    with pytest.raises(ValueError, match="needs a network with an encoder"):
        set_trainable(torch.nn.Conv2d(1, 3, 3), "decoder")
    assert quick_finetune_config().train_layers in ("all", "decoder")
