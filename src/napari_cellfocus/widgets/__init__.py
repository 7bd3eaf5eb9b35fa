"""napari dock widgets: thin wrappers around core and engine.

Segment -> Tune -> Correct and fine-tune -> Measure share one state per viewer
(:mod:`._state`): the model in use and the last segmentation's probabilities.
Modules are imported lazily by napari through the manifest (``napari.yaml``).
"""

__all__ = ["FinetuneWidget", "MeasureWidget", "SegmentWidget", "TuneWidget"]


def __getattr__(name: str):
    if name == "SegmentWidget":
        from napari_cellfocus.widgets.segment import SegmentWidget

        return SegmentWidget
    if name == "TuneWidget":
        from napari_cellfocus.widgets.tune import TuneWidget

        return TuneWidget
    if name == "FinetuneWidget":
        from napari_cellfocus.widgets.finetune import FinetuneWidget

        return FinetuneWidget
    if name == "MeasureWidget":
        from napari_cellfocus.widgets.measure import MeasureWidget

        return MeasureWidget
    raise AttributeError(name)
