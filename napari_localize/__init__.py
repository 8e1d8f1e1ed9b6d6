"""napari-localize: single-molecule localization microscopy in napari.

Find blinking spots, fit them to nanometre precision and write Picasso-compatible ``_locs.hdf5`` files.
"""

__version__ = "0.1.0"

_LAZY = {
    # loaded on first use, so that `napari-localize --help` (and Ctrl-C at start-up) does not wait for numba
    "LocalizeParameters": "core.parameters", "ParameterError": "core.errors", "MovieError": "core.errors",
    "LocalizeError": "core.errors", "OutputError": "core.errors", "CancelToken": "core.pipeline",
    "LocalizeCancelled": "core.pipeline", "localize": "core.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    # the file-level API imports h5py/tifffile; load it on first use only
    if name in ("localize_file", "localize_movie"):
        from . import api

        return getattr(api, name)
    if name in ("load_locs", "save_locs"):
        from .io import locs

        return getattr(locs, name)
    if name == "open_movie":
        from .io.movies import open_movie

        return open_movie
    raise AttributeError(name)


__all__ = [
    "LocalizeError", "MovieError", "OutputError", "CancelToken", "LocalizeCancelled", "LocalizeParameters",
    "ParameterError", "__version__", "load_locs",
    "localize", "localize_file", "localize_movie", "open_movie", "save_locs",
]
