"""core.outputs (the output-path policy) and core.io.atomic_write, without torch."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tifffile

from napari_cellfocus.core.io import atomic_write, remove_stale_temporaries, write_image
from napari_cellfocus.core.outputs import OutputPathError, check_outputs, same_file


def test_same_file_through_spellings_and_links(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert same_file(a, tmp_path / "sub" / ".." / "a.tif")
    link = tmp_path / "l.tif"
    link.symlink_to(a)
    assert same_file(a, link)
    hard = tmp_path / "h.tif"
    os.link(a, hard)
    assert same_file(a, hard)
    assert not same_file(a, tmp_path / "b.tif")


def test_check_outputs_refusals_name_the_file(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    with pytest.raises(OutputPathError, match="is the input"):
        check_outputs([a], [("--out", a)], overwrite=True)  # never, even with overwrite
    out = tmp_path / "o.tif"
    with pytest.raises(OutputPathError, match="same file"):
        check_outputs([a], [("--out", out), ("--probs", tmp_path / "." / "o.tif")])
    existing = tmp_path / "e.tif"
    existing.write_bytes(b"y")
    with pytest.raises(OutputPathError, match=f"{existing}.*--overwrite"):
        check_outputs([a], [("--out", existing)])
    check_outputs([a], [("--out", existing)], overwrite=True)
    check_outputs([a], [("--out", tmp_path / "new" / "deeper" / "o.tif")])  # created later
    with pytest.raises(OutputPathError, match="is a folder"):
        check_outputs([a], [("--out", tmp_path)], overwrite=True)
    with pytest.raises(OutputPathError, match="not a folder"):
        check_outputs([a], [("--out", a / "x" / "o.tif")])
    assert a.read_bytes() == b"x" and existing.read_bytes() == b"y"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_outputs([], [("--out", ro / "o.tif")])
    finally:
        ro.chmod(0o700)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(fh):
        fh.write(b"half")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    atomic_write(path, lambda fh: fh.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_write_image_round_trip_and_permissions(tmp_path):
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = write_image(tmp_path / "sub" / "a.tif", arr)
    np.testing.assert_array_equal(tifffile.imread(path), arr)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["a.tif"]


def test_stale_temporaries_are_removed_fresh_ones_kept(tmp_path):
    path = tmp_path / "m.pt"
    stale, fresh, part = (tmp_path / n for n in (".m.pt.abc.tmp", ".m.pt.def.tmp", "m.pt.part"))
    for p in (stale, fresh, part):
        p.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(part, (old, old))
    atomic_write(path, lambda fh: fh.write(b"model"))
    assert not stale.exists() and not part.exists() and fresh.exists()
    assert remove_stale_temporaries(path) == []
