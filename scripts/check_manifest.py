"""Check that the installed plugin works through its napari manifest alone.

Run by ``scripts/check_plain_install.sh`` in a fresh virtual environment that holds only
napari (with a Qt backend) and ``pip install .`` of this repository, without extras. It
loads the npe2 manifest of the installed distribution, imports every command's
``python_name``, opens every dock widget in a real napari viewer and opens every sample,
all the way a napari user reaches them. A runtime import that is not declared in
``[project] dependencies`` (matplotlib once was) fails here with the command's name.

Needs a display: run it under ``xvfb-run -a`` on a machine without one. Exits 0 when every
contribution works, 1 with one line per failure otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

DISTRIBUTION = "napari-cellfocus"


def resolve(python_name: str) -> object:
    """The object named ``"package.module:attr.sub"``: import the module, then getattr."""
    module_name, _, attr_path = python_name.partition(":")
    obj: object = importlib.import_module(module_name)
    for attr in attr_path.split(".") if attr_path else []:
        obj = getattr(obj, attr)
    return obj


def open_sample(viewer: object, key: str) -> None:
    """Open sample ``key`` of the plugin in ``viewer``; it must add at least one layer."""
    layers = viewer.open_sample(DISTRIBUTION, key)  # type: ignore[attr-defined]
    if not layers:
        raise RuntimeError("it added no layer")


def _try(failures: list[str], what: str, action: Callable[[], object]) -> None:
    """Run ``action``; on an exception record ``what`` and the error, print the traceback."""
    try:
        action()
    except Exception as exc:  # report every failing contribution, not just the first
        failures.append(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    else:
        print(f"ok  {what}", flush=True)


def main() -> int:
    """Check every command, dock widget and sample of the manifest; 0 when all work."""
    import npe2

    manifest = npe2.PluginManifest.from_distribution(DISTRIBUTION)
    spec = importlib.util.find_spec("napari_cellfocus")
    location = Path(spec.origin if spec and spec.origin else "?").resolve()
    print(f"{DISTRIBUTION} {manifest.package_version} from {location}", flush=True)
    if Path(sys.prefix).resolve() not in location.parents:
        print(f"FAIL: napari_cellfocus was not imported from this environment ({sys.prefix})")
        return 1

    contributions = manifest.contributions
    failures: list[str] = []
    commands = contributions.commands or []
    for command in commands:
        if command.python_name:
            _try(
                failures,
                f"command {command.id} ({command.python_name})",
                lambda name=command.python_name: resolve(name),
            )

    import napari

    viewer = napari.Viewer(show=False)
    try:
        for widget in contributions.widgets or []:
            _try(
                failures,
                f"dock widget {widget.display_name!r} (command {widget.command})",
                lambda name=widget.display_name: viewer.window.add_plugin_dock_widget(
                    DISTRIBUTION, name
                ),
            )
        for sample in contributions.sample_data or []:
            _try(
                failures,
                f"sample {sample.key!r} (command {getattr(sample, 'command', '?')})",
                lambda key=sample.key: open_sample(viewer, key),
            )
    finally:
        viewer.close()

    n_checked = (
        len(commands) + len(contributions.widgets or []) + len(contributions.sample_data or [])
    )
    if not n_checked:
        failures.append("the manifest lists no command, widget or sample")
    if failures:
        print(f"\nFAIL: {len(failures)} of the plugin's contributions do not work:")
        for line in failures:
            print(f"  {line}")
        return 1
    print(f"\nOK: {n_checked} commands, dock widgets and samples of {DISTRIBUTION} work.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
