"""A small matplotlib canvas for the loss curve and the F1-versus-threshold curve."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

_BG = "#262930"  # napari's dark theme background
_FG = "#d6d6d6"


class PlotCanvas(FigureCanvasQTAgg):
    """One set of axes; ``plot_lines`` redraws it with a few named lines."""

    def __init__(self, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
        figure = Figure(figsize=(3.2, 2.0), dpi=100, facecolor=_BG, layout="constrained")
        super().__init__(figure)
        self.axes = figure.add_subplot(111)
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.setMinimumHeight(170)
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
        self.axes.clear()
        self._style()
        self.draw_idle()

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
        self, x: Sequence[float], y: Sequence[float], title: str | None = None
    ) -> None:
        """Replace the data of a single line (cheaper than :meth:`plot_lines` for live curves)."""
        lines = self.axes.get_lines()
        if len(lines) != 1:
            self.plot_lines([(x, y, "")], title=title)
            return
        lines[0].set_data(x, y)
        lines[0].set_marker("." if len(x) < 30 else "None")
        if title is not None and title != self.title:
            self.title = title
            self.axes.set_title(title, color=_FG, fontsize=8)
        self.axes.relim()
        self.axes.autoscale_view()
        self.draw_idle()

    def line_data(self) -> list[tuple[list[float], list[float]]]:
        """The (x, y) data of the lines drawn (for tests and screenshots)."""
        return [
            (list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
            for line in self.axes.get_lines()
        ]
