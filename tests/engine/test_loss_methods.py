"""The loss and weight-map registries (engine.loss_methods, core.weight_methods): each
declared once; ``cellfocus train --loss / --weights`` offer what they hold, and a toy loss
and a toy weight map registered in a test reach the parser and the trainer."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cellfocus.core import methods, weight_methods
from napari_cellfocus.core import weights as wm
from napari_cellfocus.engine import loss_methods
from napari_cellfocus.engine import losses as lo

DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def _train_choices(option: str) -> list[str]:
    from napari_cellfocus import cli

    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    (action,) = [a for a in train._actions if option in a.option_strings]
    return list(action.choices)


def test_loss_registry_holds_the_losses_and_how_they_are_bound():
    assert list(loss_methods.LOSS_METHODS) == ["wce", "j3", "j4", "jaccard", "mae", "bce"]
    assert lo.LOSSES["wce"] is lo.weighted_cross_entropy
    j3 = lo.LOSSES["j3"]
    assert isinstance(j3, partial) and j3.func is lo.ce_youden_loss
    assert j3.keywords == {"n_classes": 3}
    assert loss_methods.get_loss_method("j4").classes == (4,)
    assert loss_methods.get_loss_method("wce").default_weights == "saw"
    assert loss_methods.get_loss_method("jaccard").call == "unweighted"


def test_weight_registry_holds_the_maps():
    keys = ["saw", "dwm", "unet", "balance", "w3", "overcrowding", "none"]
    assert list(weight_methods.WEIGHT_METHODS) == keys
    assert wm.WEIGHT_MAPS["saw"] is wm.shape_aware_weight_map
    labels = np.zeros((8, 8), np.int32)
    labels[2:5, 2:5] = 1
    np.testing.assert_array_equal(wm.weight_map("none", labels), np.ones((8, 8), np.float32))


def test_train_choices_come_from_the_registries():
    """The same choices as the hard-coded lists of before (fusion / DDT losses and W3,
    which comes with --weak, are not offered)."""
    assert _train_choices("--loss") == ["wce", "j3", "j4", "jaccard"]
    assert set(_train_choices("--weights")) == {
        "saw",
        "dwm",
        "unet",
        "balance",
        "overcrowding",
        "none",
    }


def test_docs_tables_are_in_sync_with_the_registries():
    text = DOC.read_text(encoding="utf-8")
    for marker, table in (
        ("loss-registry", loss_methods.markdown_table()),
        ("weight-registry", weight_methods.markdown_table()),
    ):
        assert methods.replace_docs_section(text, table, marker) == text, marker


def toy_loss(logits, target, weight=None):
    """Cross entropy of the toy registry test (weighted mean when given a map)."""
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce * weight).mean() if weight is not None else ce.mean()


def toy_weights(labels, target=None, scale=2.0):
    """Toy weight map: ``scale`` on cells, 1 on the background."""
    return np.where(np.asarray(labels) > 0, scale, 1.0).astype(np.float32)


def test_a_registered_loss_and_weight_map_reach_parser_dispatch_and_trainer():
    """One entry each: the toy loss and weight map are CLI choices, get_loss /
    weight_map return them, and a 2-step training uses both (train.py unchanged)."""
    from napari_cellfocus.core.simulate import simulate_cells
    from napari_cellfocus.engine.checkpoint import ModelInfo
    from napari_cellfocus.engine.networks import UNet
    from napari_cellfocus.engine.train import TrainConfig, Trainer, target_and_weight

    calls = []

    def counted(logits, target, weight=None):
        calls.append(None if weight is None else float(weight.max()))
        return toy_loss(logits, target, weight)

    loss_methods.register_loss_method(
        loss_methods.LossMethod("toy", counted, "toy cross entropy", default_weights="toyw")
    )
    weight_methods.register_weight_method(
        weight_methods.WeightMethod("toyw", toy_weights, "2 on cells, 1 elsewhere")
    )
    try:
        assert "toy" in _train_choices("--loss") and "toyw" in _train_choices("--weights")
        assert lo.get_loss("TOY") is counted
        scene = simulate_cells(shape=(48, 48), seed=1)
        expected = toy_weights(scene.labels)
        np.testing.assert_array_equal(wm.weight_map("toyw", scene.labels), expected)
        config = TrainConfig(loss="toy", weights="toyw", steps=2, batch_size=1, crop_size=32)
        _, weight = target_and_weight(scene.labels, config)
        np.testing.assert_array_equal(weight, expected)
        torch.manual_seed(0)
        net = UNet(in_channels=1, out_channels=3, depth=2, width=4)
        trainer = Trainer(
            [scene.image],
            [scene.labels],
            config,
            init=(net, ModelInfo(network=net.config)),
            device="cpu",
        )
        trainer.run()
        assert len(calls) >= 2 and max(w for w in calls if w is not None) == pytest.approx(2.0)
    finally:
        loss_methods.unregister_loss_method("toy")
        weight_methods.unregister_weight_method("toyw")
    assert "toy" not in lo.LOSSES and "toyw" not in wm.WEIGHT_MAPS
    with pytest.raises(ValueError, match="unknown loss"):
        lo.get_loss("toy")
