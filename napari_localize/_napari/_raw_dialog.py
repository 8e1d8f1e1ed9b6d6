"""A small dialog asking for the layout of a ``.raw`` movie that has no ``.yaml`` beside it."""

from __future__ import annotations

import os

from qtpy.QtWidgets import QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QSpinBox, QVBoxLayout

from ..io.movies.raw import raw_info_path, write_raw_info

DATA_TYPES = ("uint16", "uint8", "uint32", "int8", "int16", "int32", "float16", "float32", "float64")


class RawInfoDialog(QDialog):
    """Ask for Byte Order, Data Type, Frames, Height and Width; optionally save them as ``<movie>.yaml``."""

    def __init__(self, path, parent=None):
        super().__init__(parent)
        self.path = os.fspath(path)
        self.setWindowTitle("Raw movie layout")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"{os.path.basename(self.path)} has no {os.path.basename(raw_info_path(path))}."
                                "\nDescribe how its frames are stored:"))
        form = QFormLayout()
        self.byte_order = QComboBox()
        self.byte_order.addItems(["Little Endian (<)", "Big Endian (>)"])
        self.data_type = QComboBox()
        self.data_type.addItems(DATA_TYPES)
        self.frames, self.height, self.width = (QSpinBox() for _ in range(3))
        for box in (self.frames, self.height, self.width):
            box.setRange(1, 2**31 - 1)
        self.frames.setValue(1)
        self.height.setValue(512)
        self.width.setValue(512)
        form.addRow("Byte Order", self.byte_order)
        form.addRow("Data Type", self.data_type)
        form.addRow("Frames", self.frames)
        form.addRow("Height (px)", self.height)
        form.addRow("Width (px)", self.width)
        layout.addLayout(form)
        self.save_info = QCheckBox("Save info to yaml file")
        self.save_info.setChecked(True)
        layout.addWidget(self.save_info)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def info(self) -> dict:
        """The raw-movie info as entered (the keys of Picasso's ``.yaml``)."""
        return {"Byte Order": "<" if self.byte_order.currentIndex() == 0 else ">",
                "Data Type": self.data_type.currentText(), "Frames": self.frames.value(),
                "Height": self.height.value(), "Width": self.width.value()}

    def accept(self):
        if self.save_info.isChecked():
            i = self.info()
            write_raw_info(self.path, i["Byte Order"], i["Data Type"], i["Frames"], i["Height"], i["Width"])
        super().accept()


def ask_raw_info(path, parent=None) -> dict | None:
    """Show the dialog modally; the info dict, or ``None`` if cancelled."""
    dialog = RawInfoDialog(path, parent)
    return dialog.info() if dialog.exec() == QDialog.DialogCode.Accepted else None
