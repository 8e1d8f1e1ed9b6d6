"""The one small state object the dock widgets share (one per viewer), and the saved parameters.

Widgets only edit ``session.parameters`` and listen to ``session.events``; they never compute. The
parameters last used are written to ``<config dir>/parameters.json`` and restored in the next session; the
config dir is ``$NAPARI_LOCALIZE_CONFIG_DIR`` if set, else the platform's user config folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import weakref
from dataclasses import dataclass

import numpy as np
from psygnal import Signal

from ..core.parameters import LocalizeParameters
from ..core.zfit import ZFitOptions
from ..io.movies import ArrayMovie, Movie, open_movie

PARAMETERS_FILE = "parameters.json"


def config_dir() -> str:
    """Folder of the user's napari-localize settings (created on first save); the camera configs' folder too."""
    from ..io.camera_config import user_config_dir

    return os.fspath(user_config_dir())


def load_saved_parameters() -> LocalizeParameters:
    """The parameters saved by the last session; defaults where the file is missing, unreadable or stale."""
    path = os.path.join(config_dir(), PARAMETERS_FILE)
    defaults = LocalizeParameters()
    try:
        with open(path) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return defaults
    if not isinstance(saved, dict):
        return defaults
    known = {f.name for f in dataclasses.fields(LocalizeParameters)}
    # the ROI and frame range belong to one movie: never carried into the next session
    values = {k: v for k, v in saved.items() if k in known and k not in ("roi", "frame_range")}
    try:
        p = defaults.replace(**values)
        p.validate()
    except (TypeError, ValueError):
        return defaults
    return p


def save_parameters(p: LocalizeParameters) -> str | None:
    """Write ``p`` for the next session; return the path, or ``None`` if the folder is not writable."""
    folder = config_dir()
    path = os.path.join(folder, PARAMETERS_FILE)
    values = dataclasses.asdict(p)
    values.pop("roi")
    values.pop("frame_range")
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(values, fh, indent=1)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


@dataclass
class LocalizeResult:
    """The outcome of the last run: localizations, metadata documents and where they were written."""

    locs: np.ndarray
    info: list
    movie_shape: tuple
    paths: tuple[str, str] | None = None
    stats: object = None


class LocalizeSession:
    """State shared by the dock widgets of one viewer.

    Attributes
    ----------
    parameters : LocalizeParameters
        What the next preview and run use; edit through :meth:`update`.
    movie_layer : napari Image layer or None
        The movie being localized.
    result : LocalizeResult or None
        The last finished run.
    zcalibration : ZCalibration or None
        The astigmatic calibration for 3D (loaded from a YAML or made from a bead stack).
    zcalibration_path : str or None
        Its file (``None`` for a calibration kept in memory only).
    fit_z : bool
        Whether the next run fits z (only with a calibration; see :meth:`wants_3d`).
    z_options : ZFitOptions
        How z is fitted (method, outlier filter, out-of-range policy).
    """

    #: emitted with the new parameters after :meth:`update`
    parameters_changed = Signal(object)
    #: emitted with the new movie layer (or None)
    movie_changed = Signal(object)
    #: emitted with the :class:`LocalizeResult` of a finished run
    result_changed = Signal(object)
    #: emitted with the new z calibration (or None)
    zcalibration_changed = Signal(object)

    def __init__(self, viewer, parameters: LocalizeParameters | None = None):
        self._viewer_ref = weakref.ref(viewer)
        self.parameters = parameters if parameters is not None else load_saved_parameters()
        self.movie_layer = None
        self.result: LocalizeResult | None = None
        self.zcalibration = None
        self.zcalibration_path: str | None = None
        self.fit_z = False
        self.z_options = ZFitOptions()

    @property
    def viewer(self):
        return self._viewer_ref()

    def update(self, **changes):
        """Change parameters (only the given fields), remember them, and tell the widgets."""
        new = self.parameters.replace(**changes)
        if new == self.parameters:
            return
        self.parameters = new
        save_parameters(new)
        self.parameters_changed.emit(new)

    def set_zcalibration(self, calibration, path: str | None = None):
        """Use ``calibration`` (a :class:`ZCalibration`, or None) for 3D runs; ``path`` is its YAML file."""
        self.zcalibration = calibration
        self.zcalibration_path = path if calibration is not None else None
        if calibration is None:
            self.fit_z = False
        self.zcalibration_changed.emit(calibration)

    def wants_3d(self) -> bool:
        """True when the next run fits z: Fit z is on and a calibration is loaded."""
        return bool(self.fit_z) and self.zcalibration is not None

    def set_movie_layer(self, layer):
        if layer is self.movie_layer:
            return
        self.movie_layer = layer
        self.movie_changed.emit(layer)

    def movie(self) -> Movie | None:
        """The current movie layer as a :class:`Movie` (lazy: a dask layer stays lazy)."""
        layer = self.movie_layer
        if layer is None:
            return None
        data = layer.data
        if getattr(layer, "multiscale", False):
            data = data[0]
        meta = layer.metadata or {}
        info = dict(meta.get("movie_info") or {})
        for key in ("Byte Order", "Data Type", "Frames", "Height", "Width"):
            info.pop(key, None)
        path = meta.get("movie_path")
        info.pop("File", None)
        return ArrayMovie(data, info=info, path=path)

    def movie_for_run(self) -> tuple[Movie | None, bool]:
        """The movie to localize and whether the caller must close it.

        A layer read from a file gets its own file handle (the file reopened), so the worker never shares a
        reader with napari's display thread; other layers are wrapped as they are.
        """
        path = self.movie_path()
        layer = self.movie_layer
        if path is not None and layer is not None and os.path.exists(path):
            try:
                movie = open_movie(path)
            except (ValueError, OSError):
                return self.movie(), False
            if tuple(movie.shape) == tuple(int(s) for s in layer.data.shape[-3:]):
                return movie, True
            movie.close()
        return self.movie(), False

    def movie_path(self) -> str | None:
        layer = self.movie_layer
        return None if layer is None else (layer.metadata or {}).get("movie_path")

    def current_frame(self) -> int:
        """The frame the viewer shows (axis 0 of the movie)."""
        viewer = self.viewer
        if viewer is None or self.movie_layer is None:
            return 0
        step = viewer.dims.current_step
        n = self.movie_layer.data.shape[0] if self.movie_layer.ndim >= 3 else 1
        axis0 = viewer.dims.ndim - self.movie_layer.ndim
        return int(min(max(step[axis0], 0), n - 1)) if self.movie_layer.ndim >= 3 else 0


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> LocalizeSession:
    """The one session of ``viewer`` (created on first use), shared by all our dock widgets."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = LocalizeSession(viewer)
        _SESSIONS[viewer] = session
    return session


