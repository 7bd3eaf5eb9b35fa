"""A small matplotlib canvas for the loss curve and the PQ-versus-threshold curve.

The live loss curve is *blitted*: its line is an animated artist drawn over a saved
picture of the axes, so a new point costs a few milliseconds on the Qt thread
instead of a full figure redraw (text, ticks and layout: 50-200 ms on a busy 2-core
CPU). The axes are redrawn in full only when a point falls outside their limits,
which grow with headroom so that this stays rare.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

_BG = "#262930"  # napari's dark theme background
_FG = "#d6d6d6"


class PlotCanvas(FigureCanvasQTAgg):
    """One set of axes; ``plot_lines`` redraws it with a few named lines."""

    def __init__(self, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
        # Fixed margins, no layout engine: a constrained layout measures every text
        # twice per draw and doubles the cost of a redraw (~180 vs ~100 ms here).
        figure = Figure(figsize=(3.2, 2.0), dpi=100, facecolor=_BG)
        super().__init__(figure)
        self.axes = figure.add_subplot(111)
        figure.subplots_adjust(left=0.2, right=0.96, bottom=0.22, top=0.88)
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.setMinimumHeight(170)
        self._live = None  # the blitted line of update_line
        self._background = None
        #: Full redraws of the axes made by update_line (blitted updates are not counted).
        self.full_draws = 0
        self.mpl_connect("draw_event", self._on_draw)
        self.clear()

    def _style(self) -> None:
        ax = self.axes
        ax.set_facecolor(_BG)
        for spine in ax.spines.values():
            spine.set_color(_FG)
        ax.tick_params(colors=_FG, labelsize=7)
        ax.set_title(self.title, color=_FG, fontsize=8)
        ax.set_xlabel(self.xlabel, color=_FG, fontsize=8)
        ax.set_ylabel(self.ylabel, color=_FG, fontsize=8)

    def clear(self) -> None:
        """Empty axes (no redraw when they hold no line: a redraw costs ~100 ms)."""
        drawn = bool(self.axes.get_lines())
        self.axes.clear()
        self._live = None
        self._background = None
        self._style()
        if drawn:
            self.draw_idle()

    def _on_draw(self, event: object) -> None:
        """After a full draw: keep the picture of the axes and draw the live line on it."""
        if self._live is None:
            return
        self._background = self.copy_from_bbox(self.figure.bbox)
        self.axes.draw_artist(self._live)

    def plot_lines(
        self,
        lines: Sequence[tuple[Sequence[float], Sequence[float], str]],
        title: str | None = None,
        marker: tuple[float, float] | None = None,
        ylim: tuple[float, float] | None = None,
        logy: bool = False,
    ) -> None:
        """Redraw with ``(x, y, label)`` lines, an optional point marker and y range."""
        if title is not None:
            self.title = title
        ax = self.axes
        ax.clear()
        self._style()
        for x, y, label in lines:
            ax.plot(x, y, label=label, linewidth=1.2, marker="." if len(x) < 30 else None)
        if marker is not None:
            ax.plot([marker[0]], [marker[1]], "o", color="#ffcc00", markersize=5)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if logy:
            ax.set_yscale("log")
        if len(lines) > 1 or (lines and lines[0][2]):
            legend = ax.legend(fontsize=7, facecolor=_BG, edgecolor=_FG, labelcolor=_FG)
            legend.get_frame().set_alpha(0.6)
        self.draw_idle()

    def update_line(
        self,
        x: Sequence[float],
        y: Sequence[float],
        title: str | None = None,
        xmax: float | None = None,
    ) -> None:
        """Show one live line with the data ``(x, y)`` (y >= 0, e.g. a loss).

        ``xmax``: where the x axis ends (e.g. the number of steps), so it need not grow.
        A redraw of the axes happens only when a point leaves the limits; otherwise
        the line is blitted over the saved axes.
        """
        if not len(x):
            return
        ax = self.axes
        if self._live is None or self._live not in ax.get_lines():
            ax.clear()
            self._style()
            (self._live,) = ax.plot([], [], linewidth=1.2, animated=True)
            self._background = None
        line = self._live
        line.set_data(x, y)
        line.set_marker("." if len(x) < 30 else "None")
        titled = title is not None and title != self.title
        if titled:
            self.title = title
            ax.set_title(title, color=_FG, fontsize=8)
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        ylo, yhi = float(min(y)), float(max(y))
        fits = min(x) >= x0 and max(x) <= x1 and ylo >= y0 and yhi <= y1
        if fits and not titled and self._background is not None:
            self.restore_region(self._background)
            ax.draw_artist(line)
            self.blit(self.figure.bbox)
            return
        right = float(xmax) if xmax else max(float(max(x)) * 1.5, 10.0)
        ax.set_xlim(0.0, max(right, float(max(x))))
        ax.set_ylim(0.0, yhi * 1.25 if yhi > 0 else 1.0)
        self.full_draws += 1
        self.draw_idle()  # _on_draw saves the new background and draws the line

    def line_data(self) -> list[tuple[list[float], list[float]]]:
        """The (x, y) data of the lines drawn (for tests and screenshots)."""
        return [
            (list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
            for line in self.axes.get_lines()
        ]
