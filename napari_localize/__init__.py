"""napari-localize: single-molecule localization microscopy in napari.

Find blinking spots, fit them to nanometre precision and write Picasso-compatible ``_locs.hdf5`` files.

The public API (docs/api.md): :func:`localize` (a movie or array, in memory or streamed to a file),
:func:`localize_file` (a movie file, written beside it) and :func:`localize_steps` return a
:class:`LocalizeResult` (``.locs``, ``.info``, ``.stats``, ``.paths``); :func:`calibrate_z_stack`,
:func:`calibrate_spline_stack` and :func:`calibrate_camera` return their calibration objects;
:func:`open_movie` opens any movie as a :class:`Movie`; :func:`load_locs` / :func:`save_locs` read and write
Picasso's files.
"""

__version__ = "0.1.0"

_LAZY = {
    # loaded on first use, so that `napari-localize --help` (and Ctrl-C at start-up) does not wait for numba
    "LocalizeParameters": "core.parameters", "ParameterError": "core.errors", "MovieError": "core.errors",
    "LocalizeError": "core.errors", "OutputError": "core.errors", "CancelToken": "core.pipeline",
    "LocalizeCancelled": "core.pipeline", "LocalizeStats": "core.pipeline",
    # the file-level API imports h5py/tifffile
    "localize": "api", "localize_file": "api", "localize_steps": "api", "LocalizeResult": "api",
    "calibrate_z_stack": "api", "calibrate_spline_stack": "api", "calibrate_camera": "api",
    "camera_maps": "api", "load_zcalibration": "api",
    "localize_movie": "api",  # deprecated (returns a tuple): use localize
    "load_locs": "io.locs", "save_locs": "io.locs",
    "open_movie": "io.movies", "Movie": "io.movies", "MovieChoiceError": "io.movies",
    "MovieFormatWarning": "io.movies",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = [
    "CancelToken", "LocalizeCancelled", "LocalizeError", "LocalizeParameters", "LocalizeResult", "LocalizeStats",
    "Movie", "MovieChoiceError", "MovieError", "MovieFormatWarning", "OutputError", "ParameterError",
    "__version__", "calibrate_camera", "calibrate_spline_stack", "calibrate_z_stack", "camera_maps",
    "load_locs", "load_zcalibration", "localize", "localize_file", "localize_steps", "open_movie", "save_locs",
]
