"""The camera panel: a camera config's cameras, cascading sensitivity menus and the photon-conversion fields.

The widget only shows and edits; choosing values from the config and the movie's metadata is done by
:mod:`napari_localize.core.camera`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label
from psygnal import Signal

from ..core.camera import (
    DEFAULT_PHOTON_PARAMETERS,
    CameraConfig,
    CameraConfigError,
    CameraMatch,
    match_camera,
    sensitivity_choices,
    sensitivity_value,
)
from ..io.camera_config import discover_camera_config, load_camera_config

_FIELDS = ("baseline", "sensitivity", "em_gain", "qe", "pixelsize")


class CameraWidget(Container):
    """Camera, sensitivity categories, emission wavelength and the editable photon-conversion values.

    Parameters
    ----------
    config : CameraConfig, str, Path or None
        The camera config, or its path. ``None`` looks for one (explicit env variable, the user's
        config folder, Picasso's ``config.yaml``); with ``discover=False`` it starts without one.
    discover : bool
        Whether to look for a config when ``config`` is ``None``.

    Signals
    -------
    changed(dict)
        Emitted with :meth:`values` whenever a value changes, by the user or by :meth:`match_movie`.
    """

    changed = Signal(dict)

    def __init__(self, config=None, discover: bool = True, **kwargs):
        self._config_file = FileEdit(label="camera config", mode="r", filter="*.yaml *.yml", nullable=True,
                                     tooltip="optional: a config.yaml in Picasso's schema describing the lab's "
                                             "cameras; without one the values below are used as typed")
        self._camera = ComboBox(label="camera", choices=[], nullable=False,
                                tooltip="the config's camera; chosen from the movie's metadata when it matches")
        self._categories = Container(labels=True, name="sensitivity_categories")
        self._wavelength = ComboBox(label="emission wavelength (nm)", choices=[], nullable=False,
                                    tooltip="sets the quantum efficiency and the 3D calibration")
        self._baseline = FloatSpinBox(label="baseline (ADU)", min=-1e6, max=1e6, step=1.0,
                                      tooltip="camera offset in counts, subtracted before conversion")
        self._sensitivity = FloatSpinBox(label="sensitivity (e⁻/ADU)", min=1e-4, max=1e4, step=0.0001,
                                         tooltip="electrons per camera count (conversion factor)")
        self._em_gain = FloatSpinBox(label="EM gain", min=1.0, max=1e4, step=1.0,
                                     tooltip="electron-multiplying gain; 1 for sCMOS and CCD cameras")
        self._qe = FloatSpinBox(label="quantum efficiency", min=0.0, max=1.0, step=0.01,
                                tooltip="recorded in _locs.yaml only; photons are photoelectrons")
        self._pixelsize = FloatSpinBox(label="pixel size (nm)", min=0.01, max=1e5, step=0.1,
                                       tooltip="camera pixel size in the sample plane")
        self._notice = Label(value="")
        self._inputs = [self._baseline, self._sensitivity, self._em_gain, self._qe, self._pixelsize]
        super().__init__(
            widgets=[self._config_file, self._camera, self._categories, self._wavelength, *self._inputs,
                     self._notice],
            **kwargs,
        )
        # the base class forwards every child change as ``changed(self)``; this widget emits its values instead
        for child in (self._config_file, self._camera, self._categories, self._wavelength, *self._inputs):
            child.changed.disconnect()
        self._updating = False
        self._config: CameraConfig | None = None
        self._info: dict | None = None
        self.notices: list[str] = []
        self._set_fields(DEFAULT_PHOTON_PARAMETERS)

        self._config_file.changed.connect(self._on_config_file)
        self._camera.changed.connect(self._on_camera)
        self._wavelength.changed.connect(self._on_wavelength)
        for w in self._inputs:
            w.changed.connect(self._emit)

        if config is None and discover:
            try:
                config = discover_camera_config()
            except CameraConfigError as exc:
                self._show([str(exc)])
        if config is not None:
            self.load_config(config)
        if self._config is None:  # no config: only the file field (and why, if one failed), no empty menus
            for w in (self._camera, self._categories, self._wavelength):
                w.visible = False
            self._notice.visible = bool(self.notices)

    # ------------------------------------------------------------------------------------------ public
    @property
    def config(self) -> CameraConfig | None:
        return self._config

    def values(self) -> dict:
        """``baseline`` (ADU), ``sensitivity`` (e-/ADU), ``em_gain``, ``qe``, ``pixelsize`` (nm), ``camera``."""
        out = {name: float(w.value) for name, w in zip(_FIELDS, self._inputs, strict=True)}
        out["camera"] = self._camera.value or None
        return out

    def set_value_fields_visible(self, visible: bool):
        """Show or hide this widget's own value fields (hidden when a dock widget shows the values itself)."""
        for w in self._inputs:
            w.visible = visible

    def selections(self) -> dict:
        """The chosen value of each sensitivity category."""
        return {w.label: w.value for w in self._categories}

    def load_config(self, config) -> CameraConfig | None:
        """Use ``config`` (a :class:`CameraConfig` or a path); on error keep the old one and show why."""
        if not isinstance(config, CameraConfig):
            try:
                config = load_camera_config(config)
            except CameraConfigError as exc:
                self._show([str(exc)])
                return None
        self._config = config
        self._camera.visible = True
        with self._quiet():
            if config.source and self._config_file.value != config.source:
                self._config_file.value = config.source
            self._camera.choices = config.camera_names()
        if self._info is not None:
            self.match_movie(self._info)
        else:
            self._apply(match_camera(config, camera=self._camera.value or config.camera_names()[0]))
        return config

    def match_movie(self, movie_info: dict | None) -> CameraMatch | None:
        """Select the camera, categories and wavelength that the movie's metadata names, and their values.

        Returns the :class:`CameraMatch` (``None`` without a config, when only the movie's pixel size is used).
        """
        self._info = dict(movie_info or {})
        if self._config is None:
            px = self._info.get("Pixelsize")
            with self._quiet():
                if px:
                    self._pixelsize.value = float(px)
            self._show(["no camera config: enter baseline, sensitivity and EM gain by hand, or load a config"])
            self._emit()
            return None
        m = match_camera(self._config, self._info)
        self._apply(m)
        return m

    # ------------------------------------------------------------------------------------------ internals
    @contextmanager
    def _quiet(self):
        """Programmatic updates: the handlers of the children do nothing, nothing is emitted."""
        before, self._updating = self._updating, True
        try:
            yield
        finally:
            self._updating = before

    def _emit(self, *_):
        if not self._updating:
            self.changed.emit(self.values())

    def _show(self, notices):
        self.notices = list(notices)
        self._notice.value = "\n".join(self.notices)
        self._notice.visible = bool(self.notices)

    def _set_fields(self, values: dict):
        with self._quiet():
            for name, w in zip(_FIELDS, self._inputs, strict=True):
                if values.get(name) is not None:
                    w.value = float(values[name])

    def _apply(self, m: CameraMatch):
        """Show a match: camera, category menus, wavelength, values; then emit once."""
        spec = self._config[m.camera]
        with self._quiet():
            self._camera.value = m.camera
            self._categories.clear()
            chosen = []
            for category in spec.categories:
                combo = ComboBox(label=category, choices=sensitivity_choices(spec, chosen),
                                 tooltip=f"metadata property {m.camera}-{category}")
                combo.value = m.selections[category]
                chosen.append(combo.value)
                self._categories.append(combo)
                combo.changed.disconnect()
                combo.changed.connect(self._on_category)
            self._categories.changed.disconnect()
            self._categories.visible = bool(spec.categories)
            self._wavelength.choices = spec.wavelengths
            if m.wavelength in spec.wavelengths:
                self._wavelength.value = m.wavelength
            self._wavelength.visible = bool(spec.wavelengths)
            self._set_fields(m.values())
        self._show(m.notices)
        self._emit()

    def _on_config_file(self, path):
        if self._updating or not path or not os.path.isfile(path):
            return
        self.load_config(path)

    def _on_camera(self, name):
        if self._updating or not name or self._config is None:
            return
        self._apply(match_camera(self._config, self._info, camera=name))

    def _on_category(self, *_):
        """Refill the menus below the one that changed, then set the leaf's sensitivity."""
        if self._updating or self._config is None:
            return
        spec = self._config[self._camera.value]
        combos = list(self._categories)
        with self._quiet():
            chosen = []
            for combo in combos:
                choices = sensitivity_choices(spec, chosen)
                if list(combo.choices) != choices:
                    previous = combo.value
                    combo.choices = choices
                    combo.value = previous if previous in choices else choices[0]
                chosen.append(combo.value)
            self._sensitivity.value = sensitivity_value(spec, chosen)
        self._emit()

    def _on_wavelength(self, wavelength):
        if self._updating or self._config is None or not self._camera.value:
            return
        m = match_camera(self._config, camera=self._camera.value, selections=self.selections(),
                         wavelength=wavelength)
        with self._quiet():
            if m.qe is not None:
                self._qe.value = m.qe
        self._emit()
