"""The package's public names: each importable from ``napari_cellfocus``, the same object
as in its module, and importing the package alone does not load torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import napari_cellfocus


@pytest.mark.parametrize("name", sorted(set(napari_cellfocus.__all__) - {"__version__"}))
def test_every_public_name_resolves(name):
    import importlib

    value = getattr(napari_cellfocus, name)
    module = importlib.import_module(napari_cellfocus._EXPORTS[name])
    assert value is getattr(module, name)
    assert name in dir(napari_cellfocus)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Segmentr'"):
        napari_cellfocus.Segmentr  # noqa: B018


def test_importing_the_package_does_not_load_torch():
    code = (
        "import sys, napari_cellfocus; "
        "assert 'torch' not in sys.modules, 'torch loaded'; "
        "napari_cellfocus.evaluate; assert 'torch' not in sys.modules; "
        "napari_cellfocus.Segmenter; assert 'torch' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
