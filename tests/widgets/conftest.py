"""Fixtures of the widget tests: a tiny trained model, a small scene, docked widgets.

The tests drive a real napari viewer (``make_napari_viewer``; pytest-xvfb provides the
display). Models are tiny (a 2-level U-Net of width 8) so that everything runs on a
2-core CPU in seconds; they are injected into the widgets, so the tests do not depend
on the built-in default model.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def scene():
    """A 128 x 128 simulated 8-bit image of nuclei with its ground truth (fixed seed)."""
    from napari_cellfocus.core.simulate import simulate_cells

    return simulate_cells(shape=(128, 128), seed=3)


@pytest.fixture(scope="session")
def tiny_model(scene):
    """``(UNet, ModelInfo)`` trained for 150 steps on ``scene`` (2-10 s on a CPU).

    Seeded, so every session gets the same model; it finds the nuclei well enough
    (F1 about 0.8 on the scene) for counts and scores to be meaningful. It stays in
    CPU memory for the whole session; widgets copy it before fine-tuning.
    """
    import torch

    from napari_cellfocus.engine.checkpoint import ModelInfo
    from napari_cellfocus.engine.networks import UNet
    from napari_cellfocus.engine.train import TrainConfig, Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1)
        net = UNet(in_channels=1, out_channels=3, depth=2, width=8)
        info = ModelInfo(network=net.config)
        config = TrainConfig(steps=150, batch_size=2, crop_size=64, lr=3e-3, weights="balance")
        trainer = Trainer([scene.image], [scene.labels], config, init=(net, info), device="cpu")
        return trainer.run()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run torch on one thread in widget tests.

    The test machine has 2 cores shared with other jobs; with torch's default of one
    thread per core a busy machine makes every step wait for the slowest thread (a
    tiny training went from 3 s to 30 s). Restored after each test.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def viewer(make_napari_viewer, scene):
    """A viewer holding the scene image and its ground truth."""
    v = make_napari_viewer()
    v.add_image(scene.image, name="nuclei")
    v.add_labels(scene.labels, name="ground truth")
    return v
