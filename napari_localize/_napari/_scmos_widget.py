"""The sCMOS part of the camera panel: load a per-pixel calibration, see its numbers, show its maps as layers.

Loading and checking the file is :mod:`napari_localize.io.camera_calibration`; placing a cropped movie on the
chip is :func:`napari_localize.core.camera.calibration_for_movie`. This widget only shows and holds the choice.
"""

from __future__ import annotations

import os

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton
from psygnal import Signal

from ..core.camera_calibration import CameraCalibration, CameraCalibrationError
from ..io.camera_calibration import load_camera_calibration


class SCMOSCalibrationWidget(Container):
    """A calibration file picker, its summary, and "show maps" (offset, variance, gain as image layers).

    Attributes
    ----------
    calibration : CameraCalibration or None
        The loaded calibration (``None``: the scalar baseline and sensitivity are used).

    Signals
    -------
    changed(object)
        The new calibration (or ``None``) after a load or a clear.
    """

    changed = Signal(object)

    def __init__(self, viewer=None, **kwargs):
        self._file = FileEdit(label="sCMOS calibration", mode="r", filter="*.hdf5 *.h5", nullable=True,
                              tooltip="per-pixel offset/variance/gain maps from 'napari-localize camera-calibrate' "
                                      "or 'picasso camera-calibrate' (_scmos_calib.hdf5); replaces the baseline "
                                      "and, with a gain map, the sensitivity")
        self._summary = Label(value="none: scalar baseline and sensitivity")
        self._show = PushButton(text="show maps as layers", enabled=False,
                                tooltip="add the offset, variance (log10) and gain maps to the viewer")
        self._clear = PushButton(text="clear", enabled=False)
        super().__init__(widgets=[self._file, self._summary, self._show, self._clear], **kwargs)
        for child in (self._file, self._show, self._clear):
            child.changed.disconnect()
        self.viewer = viewer
        #: sensor row and column of the movie's pixel (0, 0), so the maps are drawn under the movie's pixels
        self.movie_origin = (0, 0)
        self.calibration: CameraCalibration | None = None
        self.error: str | None = None
        self._file.changed.connect(self._on_file)
        self._show.changed.connect(lambda *_: self.show_maps())
        self._clear.changed.connect(lambda *_: self.clear())

    @property
    def path(self) -> str | None:
        return None if self.calibration is None else self.calibration.metadata.get("Path")

    def load(self, path) -> CameraCalibration | None:
        """Load ``path``; on error keep nothing, show why, and return ``None``."""
        try:
            cal = load_camera_calibration(path)
        except (CameraCalibrationError, OSError) as exc:
            self.calibration, self.error = None, str(exc)
            self._summary.value = f"not loaded: {exc}"
            self._show.enabled = self._clear.enabled = False
            self.changed.emit(None)
            return None
        self.calibration, self.error = cal, None
        with self._file.changed.blocked():
            self._file.value = os.fspath(path)
        m = cal.metadata
        maps = "offset, variance, gain" if cal.has_gain else "offset, variance (no gain: scalar sensitivity)"
        self._summary.value = (f"{cal.shape[0]}x{cal.shape[1]} px, {m.get('Frames', '?')} dark frames; {maps}\n"
                               f"offset {np.median(cal.offset):.1f} ADU, variance {np.median(cal.variance):.2f} "
                               f"ADU² (median), {m.get('Hot pixels', '?')} hot pixels")
        self._show.enabled = self._clear.enabled = True
        self.changed.emit(cal)
        return cal

    def clear(self):
        self.calibration, self.error = None, None
        with self._file.changed.blocked():
            self._file.value = None
        self._summary.value = "none: scalar baseline and sensitivity"
        self._show.enabled = self._clear.enabled = False
        self.changed.emit(None)

    def show_maps(self) -> list:
        """Add the maps to the viewer as image layers (replacing earlier ones); returns the layers."""
        if self.calibration is None or self.viewer is None:
            return []
        cal = self.calibration
        name = os.path.basename(self.path or "calibration")
        layers = []
        for key, data, cmap, unit in (("offset", cal.offset, "gray", "ADU"),
                                      ("variance (log10)", np.log10(cal.variance), "magma", "log10 ADU²"),
                                      ("gain", cal.gain, "viridis", "ADU/e-")):
            if data is None:
                continue
            title = f"{name} {key}"
            if title in self.viewer.layers:
                self.viewer.layers.remove(title)
            lo, hi = np.percentile(data, [0.5, 99.5])
            layers.append(self.viewer.add_image(data, name=title, colormap=cmap, contrast_limits=(float(lo), float(hi)),
                                                translate=(cal.origin[0] - self.movie_origin[0],
                                                           cal.origin[1] - self.movie_origin[1]),
                                                visible=key.startswith("variance"),
                                                metadata={"unit": unit, "camera_calibration": self.path}))
        return layers

    def _on_file(self, path):
        if not path or not os.path.isfile(path):
            return
        self.load(path)
