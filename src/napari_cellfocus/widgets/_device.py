"""The Device row of the docks: a device choice, what it is, and the memory in use.

Segment, Correct-and-fine-tune and Fuse show the same three lines: a combo box
(``auto`` and the devices of this machine), "In use: CPU (2 threads)" or the GPU's
name, and "Memory: RAM 1.4 GiB of 24.0 GiB · GPU ..." refreshed every
``MEMORY_EVERY_MS`` while a job runs and once when it ends.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QComboBox, QLabel, QVBoxLayout, QWidget

#: Refresh period of the memory line while a job runs (ms).
MEMORY_EVERY_MS = 1000


class DevicePicker(QWidget):
    """Device combo box with an "In use" line and a "Memory" line.

    Signals
    -------
    changed(str) : the user picked another device (``"auto"``, ``"cpu"``, ``"cuda:0"``...).
    """

    changed = Signal(str)

    def __init__(self, device: str = "auto", tooltip: str = "") -> None:
        super().__init__()
        self.combo = QComboBox()
        self.combo.setToolTip(
            tooltip or "Where the model runs: auto = CUDA GPU, then MPS, then CPU."
        )
        self.in_use = QLabel()
        self.in_use.setWordWrap(True)
        self.memory = QLabel()
        self.memory.setWordWrap(True)
        self.memory.setToolTip(
            "Memory this napari process holds (RAM), and on a GPU the memory of the "
            "model's tensors and the cache torch keeps."
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.in_use)
        layout.addWidget(self.memory)
        self._timer = QTimer(self)
        self._timer.setInterval(MEMORY_EVERY_MS)
        self._timer.timeout.connect(self.show_memory)
        self._fill(device)
        self.combo.currentIndexChanged.connect(self._chosen)

    def _fill(self, device: str) -> None:
        from napari_cellfocus.engine.device import available_devices

        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(["auto", *available_devices()])
        self.combo.setCurrentIndex(max(self.combo.findText(device), 0))
        self.combo.blockSignals(False)
        self._describe()

    @property
    def device(self) -> str:
        """The chosen device name (``"auto"`` by default)."""
        return self.combo.currentText() or "auto"

    def set_device(self, device: str) -> None:
        index = self.combo.findText(device)
        if index < 0:
            raise ValueError(f"no device {device!r} here (have: {self.choices()})")
        self.combo.setCurrentIndex(index)

    def choices(self) -> list[str]:
        return [self.combo.itemText(i) for i in range(self.combo.count())]

    def _chosen(self, *_: Any) -> None:
        self._describe()
        self.changed.emit(self.device)

    def show_in_use(self, text: str | None) -> None:
        """Show ``text`` as the "In use" line (a method that ignores the combo box,
        e.g. classical fusion); ``None``: describe the chosen device again."""
        self._fixed = text
        self._describe()

    def _describe(self) -> None:
        from napari_cellfocus.engine.device import describe_device, select_device

        if getattr(self, "_fixed", None):
            self.in_use.setText(f"In use: {self._fixed}")
            self.show_memory()
            return
        try:
            self.in_use.setText(f"In use: {describe_device(select_device(self.device))}")
        except ValueError as err:
            self.in_use.setText(str(err))
        self.show_memory()

    def show_memory(self) -> None:
        """Refresh the memory line (cheap: a few system calls)."""
        from napari_cellfocus.engine.device import memory_in_use

        self.memory.setText(f"Memory: {memory_in_use(self.device)}")

    def job_started(self) -> None:
        """Refresh the memory line every second until :meth:`job_finished`."""
        self.show_memory()
        self._timer.start()

    def job_finished(self) -> None:
        self._timer.stop()
        self.show_memory()
