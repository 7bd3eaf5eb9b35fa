"""napari-cellfocus: segmentation, counting and multi-focus fusion of cells in napari.

The package is split in three layers (see ``docs/design.md``):

``core``    numpy / scipy / scikit-image science: targets, weight maps,
            post-processing, metrics, the simulator and classical fusion.
``engine``  torch: networks, losses, training, tiled prediction, checkpoints.
``widgets`` napari dock widgets, thin wrappers around ``core`` and ``engine``.
"""

__version__ = "0.1.0"
