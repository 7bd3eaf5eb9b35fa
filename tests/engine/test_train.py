"""Training: overfitting a simulated image, weak labels, cancel safety, bad input, NaN guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellfocus.core.augment import AugmentConfig
from napari_cellfocus.core.metrics import evaluate
from napari_cellfocus.core.simulate import simulate_cells
from napari_cellfocus.engine.checkpoint import load_checkpoint
from napari_cellfocus.engine.segment import Segmenter
from napari_cellfocus.engine.train import TrainConfig, Trainer

TINY = {
    "architecture": "unet",
    "in_channels": 1,
    "out_channels": 3,
    "depth": 3,
    "width": 8,
    "norm": "batch",
    "dims": 2,
}
NO_PHOTOMETRIC = AugmentConfig(
    elastic_prob=0.0, gamma_range=(1.0, 1.0), brightness=0.0, noise_std=0.0, touch_contrast=False
)


@pytest.fixture(scope="module")
def scene():
    return simulate_cells(shape=(96, 96), seed=3, radius=(7, 10), density=0.3, photons=500)


def test_tiny_model_overfits_one_image(scene):
    """A depth-3, width-8 U-Net trained 150 steps on one 96x96 simulated image (12 cells)
    must reproduce its instances: PQ > 0.9 with MAP post-processing."""
    cfg = TrainConfig(
        steps=150, batch_size=2, crop_size=96, lr=5e-3, weights="balance", augment=NO_PHOTOMETRIC
    )
    model, info = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu").run()
    assert len(info.history) == 150 and info.history[-1]["loss"] < info.history[0]["loss"] / 3
    result = Segmenter((model, info), device="cpu").segment(scene.image, method="map")
    assert evaluate(scene.labels, result.labels)["pq"] > 0.9


def test_weak_labels_do_not_teach_background_on_unannotated_cells():
    """Cells are annotated in the left third of the image only, as when a user corrects
    one region. Trained as weak labels (W3), the model still finds the unannotated cells
    that lie farther than W3's ``beta`` (30 px) from every annotation; trained on the
    same labels as if they were complete (plain cross entropy), it learns to call them
    background. Same seed, data and budget for both; the recalls are averaged over two
    scenes, so that no single 150-step run (whose floats differ between CPU kinds and
    thread counts) sits on the threshold.

    Measured on AMD EPYC (recall on those cells, scenes 5 / 7): weak 0.74 / 0.95 (mean
    0.85) with 2 threads, 0.78 / 0.95 (0.87) with 1 thread, 0.87 / 1.00 with training
    seed 1 (1 thread); dense 0.00 in every run (it cannot tell these cells from the
    annotated ones and misses those too). 27 s on 2 idle cores. Controls, not run here: plain cross
    entropy on the complete labels finds 0.78 / 0.73 of the same cells, so the dense
    failure is the missing labels, not the budget; class-balanced dense weights
    ("balance") partly make up for the missing labels and scatter (0.35 to 0.96 over
    four runs), too noisy a contrast. The earlier version left half of the cells out at
    random in a crowded image: most unannotated cells then lie within ``beta`` of an
    annotated one, where W3 does teach background, and weak vs balanced dense recall
    was 0.727 vs 0.727 on this machine (means 0.81 vs 0.79 over 13 seeds and scenes).
    """
    from scipy import ndimage as ndi

    def hidden_recalls(scene_seed: int) -> tuple[float, float]:
        sc = simulate_cells(
            shape=(128, 256),
            seed=scene_seed,
            radius=(7, 10),
            density=0.3,
            photons=500,
            cluster_fraction=0.3,
        )
        ids = np.arange(1, int(sc.labels.max()) + 1)
        centres = ndi.center_of_mass(sc.labels > 0, sc.labels, ids)
        annotated = [i for i, (_, x) in zip(ids, centres, strict=True) if x < 256 / 3]
        weak = np.where(np.isin(sc.labels, annotated), sc.labels, 0)
        far = ndi.distance_transform_edt(weak == 0) > 30
        hidden_ids = [i for i in ids if i not in annotated and far[sc.labels == i].all()]
        hidden = np.where(np.isin(sc.labels, hidden_ids), sc.labels, 0)
        assert len(hidden_ids) >= 15

        def recall(weak_mode: bool) -> float:
            # weights: the dense run's; the weak run uses W3 whatever this says.
            cfg = TrainConfig(
                steps=150, batch_size=2, crop_size=96, lr=5e-3, weak=weak_mode, weights="none"
            )
            model, info = Trainer([sc.image], [weak], cfg, network=TINY, device="cpu").run()
            pred = Segmenter((model, info), device="cpu").segment(sc.image, method="map").labels
            on_hidden = np.unique(pred[hidden > 0])
            return evaluate(hidden, np.where(np.isin(pred, on_hidden), pred, 0))["recall"]

        return recall(True), recall(False)

    weak_recalls, dense_recalls = zip(*(hidden_recalls(seed) for seed in (5, 7)), strict=True)
    weak_recall, dense_recall = float(np.mean(weak_recalls)), float(np.mean(dense_recalls))
    print(f"weak {weak_recalls} -> {weak_recall:.3f}, dense {dense_recalls} -> {dense_recall:.3f}")
    assert weak_recall >= 0.6, weak_recalls
    assert dense_recall <= 0.3, dense_recalls


def test_cancel_keeps_a_loadable_checkpoint(tmp_path, scene):
    """Stopping after 3 of 50 steps writes the model of step 3 atomically; it loads, its
    history has 3 steps and it is marked cancelled."""
    out = tmp_path / "model.pt"
    cfg = TrainConfig(steps=50, batch_size=1, crop_size=64, checkpoint_every=0)
    trainer = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu", out=out)
    seen = []
    trainer.run(on_step=seen.append, should_stop=lambda: len(seen) >= 3)
    assert trainer.cancelled and trainer.step == 3
    model, info = load_checkpoint(out)
    assert len(info.history) == 3 and info.training["last_run"]["cancelled"] is True
    assert not list(tmp_path.glob("*.part"))
    for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_closing_the_generator_cancels(scene):
    """The napari worker stops a generator between yields: closing it must leave the
    trainer cancelled with finite weights."""
    cfg = TrainConfig(steps=20, batch_size=1, crop_size=64)
    trainer = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu")
    gen = trainer.steps()
    next(gen)
    next(gen)
    gen.close()
    assert trainer.cancelled and not trainer.finished and trainer.step == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_non_finite_loss_restores_last_good_model(scene):
    cfg = TrainConfig(steps=10, batch_size=1, crop_size=64)
    trainer = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu")
    gen = trainer.steps()
    next(gen)
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.loss_fn = lambda logits, y, weight=None: (logits * float("nan")).mean()
    with pytest.raises(FloatingPointError, match="last good step"):
        next(gen)
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, good[k])


def test_bad_training_input_is_named(scene):
    cfg = TrainConfig(steps=1, batch_size=1, crop_size=64)
    with pytest.raises(ValueError, match=r"labels of cells\.tif: no cell is annotated"):
        Trainer(
            [scene.image], [np.zeros_like(scene.labels)], cfg, network=TINY, names=["cells.tif"]
        )
    with pytest.raises(ValueError, match="same shape"):
        Trainer([scene.image], [scene.labels[:50]], cfg, network=TINY)
    with pytest.raises(ValueError, match="RGB"):
        Trainer([np.zeros((96, 96, 3))], [scene.labels], cfg, network=TINY)
    with pytest.raises(ValueError, match="2 images but 1"):
        Trainer([scene.image, scene.image], [scene.labels], cfg, network=TINY)
    with pytest.raises(ValueError, match="j4"):
        TrainConfig(loss="j4", n_classes=3)


def test_finetune_class_mismatch_is_clear(tmp_path, scene):
    cfg = TrainConfig(steps=1, batch_size=1, crop_size=64)
    out = tmp_path / "m.pt"
    Trainer([scene.image], [scene.labels], cfg, network=TINY, out=out).run()
    with pytest.raises(ValueError, match="predicts 3 classes but training asks for 4"):
        Trainer([scene.image], [scene.labels], TrainConfig(n_classes=4), init=out)


def test_training_is_deterministic_under_a_seed(scene):
    cfg = TrainConfig(steps=3, batch_size=2, crop_size=64, seed=7)
    a = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu")
    assert a._pool is None  # crops made in the training thread on the CPU by default
    a.run()
    b = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu", workers=2)
    b.run()
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history])


def test_ddt_model_trains_both_stages(scene):
    """DDT paper: the backbone regresses the inverse distance transform (MAE) while the top
    model predicts classes from [DDT, image]. After 60 steps the backbone's MAE to the DDT
    target of the training image must have dropped well below that of the untrained model."""
    from napari_cellfocus.core.targets import inverse_distance_target

    net = {"architecture": "ddt", "depth": 2, "width": 8, "top_input": "ddt+image"}
    cfg = TrainConfig(steps=60, batch_size=2, crop_size=96, lr=5e-3, augment=NO_PHOTOMETRIC)
    trainer = Trainer([scene.image], [scene.labels], cfg, network=net, device="cpu")
    target = torch.from_numpy(inverse_distance_target(scene.labels))[None, None]
    x = torch.from_numpy(trainer.train_samples[0].image)[None, None]

    def backbone_mae() -> float:
        trainer.model.eval()
        with torch.no_grad():
            return float((trainer.model.forward_ddt(x) - target).abs().mean())

    before = backbone_mae()
    model, info = trainer.run()
    after = backbone_mae()
    assert after < 0.6 * before
    probs = Segmenter((model, info), device="cpu").predict(scene.image)
    assert probs.shape == (3, 96, 96)


def test_weak_finetune_teaches_the_starting_model_outside_the_annotations(scene):
    """Weak fine-tuning from a model: pixels farther than `annotation_margin` from every
    annotated cell take the starting model's argmax as target, with weight
    pseudo_label_weight x median(W3 weight in the annotated zone); inside the zone the
    annotations rule. Batch-norm layers stay in eval mode with freeze_norm."""
    from scipy import ndimage as ndi

    from napari_cellfocus.engine.checkpoint import ModelInfo
    from napari_cellfocus.engine.networks import build_network
    from napari_cellfocus.engine.predict import predict_probabilities

    torch.manual_seed(0)
    start = build_network(TINY).eval()
    info = ModelInfo(network=start.config)
    weak = np.where(scene.labels == 1, 1, 0)
    cfg = TrainConfig(
        weak=True, steps=1, batch_size=1, crop_size=64, pseudo_label_weight=0.5, freeze_norm=True
    )
    trainer = Trainer([scene.image], [weak], cfg, init=(start, info), device="cpu")
    sample = trainer.train_samples[0]
    zone = ndi.binary_dilation(weak > 0, iterations=3)
    expected = predict_probabilities(start, scene.image).argmax(0)
    np.testing.assert_array_equal(sample.target[~zone], expected[~zone])
    assert np.all(sample.target[weak > 0] > 0)  # annotated cell pixels stay cell/touching
    w_outside = np.unique(sample.weight[~zone])
    assert len(w_outside) == 1 and w_outside[0] > 0
    trainer.train_mode()
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and trainer.model.training


def test_learning_rate_warmup_and_cosine(scene):
    """lr at step s (0-based) = lr * cosine(s) * min(1, (s + 1) / warmup): with lr 1e-3,
    4 steps, warmup 2: step 0 -> cos factor 1 * 1/2 = 5e-4; step 1 -> cosine of 1/3 of the
    way, 0.05 + 0.95 * 0.5 * (1 + cos(pi/3)) = 0.7625, times 2/2 -> 7.625e-4."""
    cfg = TrainConfig(
        steps=4, batch_size=1, crop_size=64, lr=1e-3, lr_schedule="cosine", warmup_steps=2
    )
    trainer = Trainer([scene.image], [scene.labels], cfg, network=TINY, device="cpu")
    seen = []
    for _ in trainer.steps():
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(5e-4)
    assert seen[1] == pytest.approx(7.625e-4)
    assert seen[3] == pytest.approx(1e-3 * 0.05)


def test_example_threads_one_on_cpu_more_on_accelerators():
    """Crops are made in the training thread on the CPU, in up to 8 threads elsewhere (any
    non-CPU device; "meta" stands in for a GPU here); an explicit count always wins."""
    import os

    from napari_cellfocus.engine.device import example_threads

    assert example_threads(torch.device("cpu")) == 1
    assert example_threads(torch.device("meta")) == min(8, os.cpu_count() or 1)
    assert example_threads(torch.device("cpu"), 3) == 3
    assert example_threads(torch.device("meta"), 0) == 1
