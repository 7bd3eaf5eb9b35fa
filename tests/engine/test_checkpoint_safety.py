"""Issue 15: checkpoint saves are atomic and checked.

Two processes saving 50 times each to one path, with a reader loading all along: every
load gives one writer's model exactly (never a mix), none fails, and no temporary file
is left. A file with flipped bytes, or with edited metadata, is refused with a message
naming it; a checkpoint without a hash (as shipped) still loads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_cellfocus.engine.checkpoint import (
    HASH_KEY,
    METADATA_HASH_KEY,
    CheckpointError,
    ModelInfo,
    content_hash,
    default_model_path,
    metadata_hashes,
    read_checkpoint,
    save_checkpoint,
)

WRITER = """
import sys, torch
from napari_cellfocus.engine.checkpoint import ModelInfo, save_checkpoint
path, value = sys.argv[1], float(sys.argv[2])
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
for i in range(50):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    save_checkpoint(path, model, ModelInfo(network={"who": value}, training={"i": i}))
"""


def test_two_writers_and_a_reader_never_see_a_mixed_model(tmp_path):
    path = tmp_path / "m.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), v], env=env)
        for v in ("1.0", "2.0")
    ]
    loads, failures = 0, []
    seen = set()
    try:
        while any(w.poll() is None for w in writers):
            if not path.exists():
                time.sleep(0.01)
                continue
            try:
                state, info = read_checkpoint(path)
            except CheckpointError as err:
                failures.append(str(err))
                continue
            loads += 1
            who = info.network["who"]
            seen.add(who)
            for name, tensor in state.items():  # every tensor is the writer's own
                assert torch.all(tensor == who), f"mixed model: {name} in a file of {who}"
    finally:
        for w in writers:
            w.wait(timeout=300)
    assert [w.returncode for w in writers] == [0, 0]
    assert not failures, failures[:3]
    assert loads > 0
    state, info = read_checkpoint(path)
    assert all(torch.all(t == info.network["who"]) for t in state.values())
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left


def _saved(tmp_path: Path) -> Path:
    model = torch.nn.Linear(64, 64)
    return save_checkpoint(tmp_path / "m.pt", model, ModelInfo(network={"kind": "linear"}))


def test_flipped_bytes_are_refused(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(20):
        data[middle + i] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: content hash mismatch") as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value)
    one = bytearray(path.read_bytes())
    one[middle] ^= 0x01  # a single bit
    bad.write_bytes(bytes(one))
    with pytest.raises(CheckpointError, match=str(bad).replace(".", r"\.")):
        read_checkpoint(bad)


def test_hash_is_stored_and_covers_the_weights(tmp_path):
    path = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    assert payload[HASH_KEY] == content_hash(payload)
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state["bias"][0] += 1
    assert content_hash(dict(payload, state_dict=state)) != payload[HASH_KEY]


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        ("defaults", {"method": "wt"}),  # a tool adding settings by hand
        ("classes", ["background", "cell", "gap"]),
        ("network", {"kind": "linear", "width": 9}),
        ("training", {"steps": 10**6}),
        ("history", [{"step": 1, "loss": 0.0}]),
        ("task", "fusion"),
    ],
)
def test_edited_metadata_are_refused_naming_the_entry(tmp_path, entry, value):
    path = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    assert payload[METADATA_HASH_KEY] == metadata_hashes(payload)
    edited = tmp_path / "edited.pt"
    torch.save(dict(payload, **{entry: value}), edited)
    with pytest.raises(CheckpointError, match="corrupt or edited") as err:
        read_checkpoint(edited)
    message = str(err.value)
    assert str(edited) in message and f"({entry})" in message
    assert "\n" not in message


def test_removed_or_added_metadata_are_refused_too(tmp_path):
    payload = torch.load(_saved(tmp_path), weights_only=True)
    gone = tmp_path / "gone.pt"
    torch.save({k: v for k, v in payload.items() if k != "defaults"}, gone)
    with pytest.raises(CheckpointError, match=r"metadata \(defaults\)"):
        read_checkpoint(gone)
    extra = tmp_path / "extra.pt"
    torch.save(dict(payload, notes="mine"), extra)
    with pytest.raises(CheckpointError, match=r"metadata \(notes\)"):
        read_checkpoint(extra)
    damaged = tmp_path / "damaged.pt"
    torch.save(dict(payload, **{METADATA_HASH_KEY: "0" * 64}), damaged)
    with pytest.raises(CheckpointError, match="metadata hash is damaged"):
        read_checkpoint(damaged)


def test_metadata_hash_ignores_key_order_and_tuples(tmp_path):
    """The same metadata spelled differently (keys reordered, a tuple for a list, as a
    torch.load / torch.save round trip may give) hash the same; a different float does
    not."""
    payload = {"network": {"a": 1, "b": [1.5, 2]}, "training": {"x": (1, 2)}}
    shuffled = {"training": {"x": [1, 2]}, "network": {"b": (1.5, 2), "a": 1}}
    assert metadata_hashes(payload) == metadata_hashes(shuffled)
    assert (
        metadata_hashes(payload)["network"]
        != metadata_hashes({"network": {"a": 1, "b": [1.5000001, 2]}})["network"]
    )
    assert metadata_hashes({"t": {"k": 1}}) != metadata_hashes({"t": {"k": True}})
    assert metadata_hashes({"t": {"k": "1"}}) != metadata_hashes({"t": {"k": 1}})


def test_metadata_changed_through_save_checkpoint_load(tmp_path):
    """The way to change a model's settings: load, change its ModelInfo, save."""
    path = _saved(tmp_path)
    state, info = read_checkpoint(path)
    info.defaults = {"method": "wt"}
    model = torch.nn.Linear(64, 64)
    model.load_state_dict(state)
    again = save_checkpoint(tmp_path / "again.pt", model, info)
    assert read_checkpoint(again)[1].defaults == {"method": "wt"}


def test_checkpoints_without_a_metadata_hash_still_load(tmp_path):
    """Files written before the metadata hash (weights hash only) load, edited or not;
    their weights are still checked."""
    payload = torch.load(_saved(tmp_path), weights_only=True)
    del payload[METADATA_HASH_KEY]
    older = tmp_path / "older.pt"
    torch.save(dict(payload, defaults={"method": "wt"}), older)
    assert read_checkpoint(older)[1].defaults == {"method": "wt"}
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state["bias"][0] += 1
    torch.save(dict(payload, state_dict=state), older)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        read_checkpoint(older)


def test_checkpoints_without_a_hash_still_load(tmp_path):
    path = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    del payload[HASH_KEY], payload[METADATA_HASH_KEY]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    state, _ = read_checkpoint(old)
    assert set(state) == {"weight", "bias"}
    read_checkpoint(default_model_path())  # the shipped model, saved before the hash


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, torch.nn.Linear(64, 64), ModelInfo(network={}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_save_into_a_folder_or_under_a_file_is_a_clear_error(tmp_path):
    """A CheckpointError (one line for the CLI) that is an OSError as well (what the
    Save model button catches)."""
    with pytest.raises(OSError, match="is a folder"):
        save_checkpoint(tmp_path, torch.nn.Linear(2, 2), ModelInfo(network={}))
    note = tmp_path / "note.txt"
    note.write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        save_checkpoint(note / "m.pt", torch.nn.Linear(2, 2), ModelInfo(network={}))
