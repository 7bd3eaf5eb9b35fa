"""The npe2 manifest: widgets, menus and sample data, loaded as napari loads them."""

from __future__ import annotations

import pytest
from widget_helpers import PLUGIN, dock

WIDGETS = {
    "Segment": "SegmentWidget",
    "Tune": "TuneWidget",
    "Correct and fine-tune": "FinetuneWidget",
    "Measure": "MeasureWidget",
    "Fuse": "FuseWidget",
}


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution(PLUGIN)


def test_manifest_lists_widgets_menus_and_samples():
    """The five dock widgets, the menu entries and the three samples are contributed."""
    mf = _manifest()
    widgets = {w.display_name: w.command for w in mf.contributions.widgets}
    assert set(widgets) == set(WIDGETS)
    commands = {c.id: c.python_name for c in mf.contributions.commands}
    for name, cls in WIDGETS.items():
        assert commands[widgets[name]].endswith(f":{cls}")
    menus = mf.contributions.menus
    segment_menu = {item.command for item in menus["napari/layers/segment"]}
    assert segment_menu == {widgets["Segment"], widgets["Tune"], widgets["Correct and fine-tune"]}
    assert {item.command for item in menus["napari/layers/measure"]} == {widgets["Measure"]}
    assert {item.command for item in menus["napari/layers/project"]} == {widgets["Fuse"]}
    assert {s.key for s in mf.contributions.sample_data} == {"cells", "focus_stack", "real_cell"}


@pytest.mark.parametrize("name", list(WIDGETS))
def test_each_widget_loads_through_the_manifest(make_napari_viewer, name):
    """add_plugin_dock_widget (the Plugins menu) builds the widget with the viewer."""
    viewer = make_napari_viewer()
    widget = dock(viewer, name)
    assert type(widget).__name__ == WIDGETS[name]
    assert widget.viewer is viewer


def test_sample_data_opens_through_the_manifest(make_napari_viewer):
    """File > Open Sample > CellFocus > Crowded nuclei gives an image and its labels."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells")
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"cells (simulated)": "Image", "cells ground truth": "Labels"}


def test_widgets_share_one_state_per_viewer(make_napari_viewer):
    """Widgets of one viewer share one state; another viewer has its own."""
    from napari_cellfocus.widgets._state import get_state

    viewer = make_napari_viewer()
    seg = dock(viewer, "Segment")
    tune = dock(viewer, "Tune")
    assert seg.state is tune.state is get_state(viewer)
    other = make_napari_viewer()
    assert get_state(other) is not seg.state


def test_menu_entries_reach_napari_menus(make_napari_viewer):
    """napari registers the widgets under Layers > Segment / Measure / Project."""
    from napari._app_model import get_app_model

    make_napari_viewer()
    menus = get_app_model().menus
    mf = _manifest()
    widgets = {w.display_name: w.command for w in mf.contributions.widgets}

    def commands(menu_id):
        return {
            getattr(item, "command", None) and item.command.id for item in menus.get_menu(menu_id)
        }

    segment_menu = commands("napari/layers/segment")
    assert {widgets["Segment"], widgets["Tune"], widgets["Correct and fine-tune"]} <= segment_menu
    assert widgets["Measure"] in commands("napari/layers/measure")
    assert widgets["Fuse"] in commands("napari/layers/project")
