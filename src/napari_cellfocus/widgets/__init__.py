"""napari dock widgets: thin wrappers around core and engine."""
