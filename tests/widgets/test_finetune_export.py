"""Correct-and-fine-tune widget: "Export to BioImage.IO…" after a fine-tune."""

from __future__ import annotations

import sys

import pytest
import torch
from widget_helpers import dock, segment, wait_idle

from napari_cellfocus.engine.checkpoint import read_checkpoint
from napari_cellfocus.widgets._layers import labels_name

pytest.importorskip("bioimageio.spec")


def _finetuned(viewer, qtbot, tiny_model):
    seg = segment(viewer, qtbot, tiny_model)
    viewer.layers[labels_name("nuclei")].paint((20, 20), 99)
    widget = dock(viewer, "Correct and fine-tune")
    widget.steps_spin.setValue(2)
    widget.preview_spin.setValue(0)
    widget.config_overrides = {"batch_size": 2, "crop_size": 64}
    widget.start()
    wait_idle(qtbot, widget)
    assert seg.state.model.kind == "session"
    return widget


def test_export_button_is_off_for_the_builtin_model(viewer):
    widget = dock(viewer, "Correct and fine-tune")
    assert widget.state.model.kind == "builtin"
    assert not widget.export_button.isEnabled()  # the built-in model: cellfocus export


def test_export_button_writes_the_finetuned_model(viewer, qtbot, tiny_model, tmp_path):
    widget = _finetuned(viewer, qtbot, tiny_model)
    assert widget.export_button.isEnabled()
    out = tmp_path / "tuned.zip"
    widget.export_bioimageio(out)
    assert not widget.export_button.isEnabled()  # one export at a time
    wait_idle(qtbot, widget, attr="export_worker", timeout=120_000)
    assert "exported to" in widget.status.text() and out.exists()
    assert widget.export_button.isEnabled()

    model, info = widget.state.model.spec
    state, back = read_checkpoint(out)  # the package reads back as that very model
    assert back == info and back.training["last_run"]["steps_done"] == 2
    ours = model.state_dict()
    assert state.keys() == ours.keys()
    assert all(torch.equal(state[k], ours[k].cpu()) for k in ours)


def test_export_button_without_the_extra_says_so(viewer, qtbot, tiny_model, tmp_path, monkeypatch):
    widget = _finetuned(viewer, qtbot, tiny_model)
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import fails
    widget.export_bioimageio(tmp_path / "m.zip")
    wait_idle(qtbot, widget, attr="export_worker")
    assert "napari-cellfocus[bioimageio]" in widget.status.text()
    assert not (tmp_path / "m.zip").exists()
    assert widget.export_button.isEnabled()
