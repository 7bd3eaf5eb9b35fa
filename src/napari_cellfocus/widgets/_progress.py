"""A progress bar whose updates wait for the next ordinary repaint.

``QProgressBar.setValue`` repaints the bar *at once* whenever its text or length
changes. Inside napari that synchronous repaint makes Qt compose the whole window,
OpenGL canvas included, from the callback that reported the progress: 50-170 ms on
a software-rendered display, on every tile or training step. :meth:`ProgressBar.
set_progress` changes the value with updates switched off; switching them back on
only schedules a repaint, which Qt merges with the next one.
"""

from __future__ import annotations

from qtpy.QtWidgets import QProgressBar


class ProgressBar(QProgressBar):
    """``QProgressBar`` with :meth:`set_progress` for frequent updates."""

    def set_progress(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` (repainted with the next repaint, not now)."""
        self.setUpdatesEnabled(False)
        try:
            if self.maximum() != total:
                self.setMaximum(total)
            self.setValue(done)
        finally:
            self.setUpdatesEnabled(True)  # schedules an update(), never a repaint()
