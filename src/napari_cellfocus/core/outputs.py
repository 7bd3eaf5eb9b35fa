"""One output-path policy for every command that writes files.

Before any work starts, :func:`check_outputs` refuses an output that

* is one of the inputs (same file after resolving symlinks, ``..`` and other spellings),
* is another output of the same run (``--probs`` equal to ``--out``, two images whose
  results get one name),
* already exists, unless ``overwrite`` is given (for instance a ground-truth
  ``NAME_labels.tif`` next to the images when ``--out`` is the images' folder),
* is a folder, or lies under a file, or in a folder that cannot be written.

Every refusal is an :class:`OutputPathError` (a ``ValueError``) whose one-line message
names the file, so the command line prints it without a traceback and exits with 2.
Only the standard library is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["OutputPathError", "check_outputs", "check_writable", "same_file"]


class OutputPathError(ValueError):
    """An output path that must not be written, with a message naming it."""


def _key(path: Path) -> Path:
    """A canonical spelling of ``path`` (absolute, symlinks and ``..`` resolved, case
    folded where the file system ignores case)."""
    resolved = Path(os.path.realpath(os.path.abspath(path)))
    return Path(os.path.normcase(str(resolved)))


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (also through symlinks / hard links)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return _key(a) == _key(b)


def check_writable(path: str | Path, flag: str = "output") -> None:
    """Raise :class:`OutputPathError` unless a file can be created at ``path``: it is
    not a folder, no parent is a file, and the first existing parent folder is writable
    (the missing ones are created then)."""
    path = Path(path)
    if path.is_dir() and not path.name.lower().endswith(".zarr"):  # a store is one output
        raise OutputPathError(f"{flag} {path}: is a folder, expected a file name.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{flag} {path}: the file exists and is read-only.")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise OutputPathError(f"{flag} {path}: {parent} is a broken symbolic link.")
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(
            f"{flag} {path}: {parent} is a file, not a folder, so {path.name} cannot be "
            "written under it."
        )
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: the folder {parent} is not writable.")


def check_outputs(
    inputs: Iterable[str | Path],
    outputs: Sequence[tuple[str, str | Path]],
    overwrite: bool = False,
) -> None:
    """Check every planned output before any work starts.

    Parameters
    ----------
    inputs : the files the run reads (images, labels, stacks).
    outputs : ``(what, path)`` pairs: ``what`` says which option or result it is
        (``"--out"``, ``"--probs"``, ``"counts CSV"``, ...), used in the messages.
    overwrite : replace existing files (never an input, never another output).

    Raises :class:`OutputPathError` naming the file and what to do.
    """
    ins = [Path(p) for p in inputs]
    in_keys = {_key(p): p for p in ins}
    seen: dict[Path, tuple[str, Path]] = {}
    for what, out in outputs:
        out = Path(out)
        key = _key(out)
        source = in_keys.get(key)
        if source is None:
            source = next((p for p in ins if same_file(p, out)), None)
        if source is not None:
            raise OutputPathError(
                f"{what} {out}: is the input {source}; writing there would destroy it. "
                "Choose another output name."
            )
        if key in seen:
            other_what, other = seen[key]
            raise OutputPathError(
                f"{what} {out} and {other_what} {other} are the same file; one result would "
                "replace the other. Give them different names."
            )
        seen[key] = (what, out)
        check_writable(out, what)
        if out.exists() and not overwrite:
            raise OutputPathError(
                f"{what} {out}: the file exists (pass --overwrite to replace it, or choose "
                "another output)."
            )
