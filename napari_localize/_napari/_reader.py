"""npe2 reader hook: movies as lazy image layers, ``*_locs.hdf5`` as points layers.

The hook claims a movie when :func:`~napari_localize.io.movies.movie_kind` (the detection
:func:`~napari_localize.io.movies.open_movie` uses for the CLI and the API: name and file signature) names a
reader for it, so the plugin and the CLI accept the same files. It never raises: a file it declines gives
``None`` so napari can try other readers.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..io.locs import LocsFileError, get_metadata, load_locs
from ..io.movies import MovieChoiceError, MovieError, movie_kind, open_movie
from ..io.movies.raw import raw_info_path


def napari_get_reader(path):
    """Return a reader for ``path`` if we can open it, else ``None``. Never raises."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        if not isinstance(path, (str, os.PathLike)):
            return None
        path = os.fspath(path)
        if path.endswith("_locs.hdf5"):
            return read_locs if os.path.isfile(path) else None
        if path.lower().endswith(".hdf5"):  # _undrift.hdf5 and other tables: claimed if they hold 'locs'
            return read_locs if _has_locs(path) else None
        if path.lower().endswith(".csv"):
            from ..io.export import is_thunderstorm_csv

            return read_thunderstorm_csv if os.path.isfile(path) and is_thunderstorm_csv(path) else None
        if movie_kind(path) is not None:  # the factory's own detection (an NDTiff folder too)
            return read_movie
    except Exception:  # a reader hook must never raise
        return None
    return None


def _contrast_limits(movie) -> tuple[float, float]:
    n = len(movie)
    picks = sorted({0, n // 2, n - 1}) if n > 3 else range(n)
    sample = np.stack([movie[i] for i in picks]).astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(sample, (0.1, 99.9)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _in_napari() -> bool:
    try:
        import napari

        return napari.current_viewer() is not None
    except Exception:
        return False


def _layer(movie, path, suffix=""):
    meta = {"movie_info": movie.info, "movie_path": path,
            "movie_channel": getattr(movie, "channel", None), "movie_position": getattr(movie, "position", None)}
    name = os.path.basename(os.path.normpath(path)) + suffix
    kwargs = {"name": name, "contrast_limits": _contrast_limits(movie), "metadata": meta}
    # the movie stays open while the layer's dask array reads from it
    return (movie.to_dask(), kwargs, "image")


def read_movie(path):
    """Layers for a movie: one per channel/position when the file holds several; ``[]`` if unreadable."""
    path = path[0] if isinstance(path, (list, tuple)) else path
    path = os.fspath(path)
    options = {}
    if path.lower().endswith(".raw") and not os.path.exists(raw_info_path(path)) and _in_napari():
        from ._raw_dialog import ask_raw_info

        info = ask_raw_info(path)
        if info is None:
            return []
        options["info"] = info
    try:
        movie = open_movie(path, **options)
        return [_layer(movie, path)]
    except MovieChoiceError as choice:
        layers = []
        channels = list(range(len(choice.channels))) or [None]
        positions = list(range(len(choice.positions))) or [None]
        for p in positions:
            for c in channels:
                movie = open_movie(path, channel=c, position=p, **options)
                suffix = "".join(f" [{what} {names[i]}]" for what, names, i in (
                    ("position", choice.positions, p), ("channel", choice.channels, c)) if i is not None)
                layers.append(_layer(movie, path, suffix))
        return layers
    except MovieError as exc:
        warnings.warn(str(exc), stacklevel=2)
        return []


def _has_locs(path) -> bool:
    try:
        import h5py

        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return False
        with h5py.File(path, "r") as f:
            return "locs" in f
    except Exception:  # unreadable: decline
        return False


def read_thunderstorm_csv(path):
    """A ThunderSTORM CSV as a points layer in camera pixels (frame, y, x); the pixel size comes from a
    ``<base>.yaml`` beside it (our export writes one), else 130 nm, as the layer's metadata says."""
    from ..io.export import ExportError, read_thunderstorm, sidecar_pixelsize

    path = path[0] if isinstance(path, (list, tuple)) else path
    pixelsize = sidecar_pixelsize(path)
    assumed = pixelsize is None
    try:
        locs, info = read_thunderstorm(path, pixelsize or 130.0)
    except ExportError as exc:
        warnings.warn(str(exc), stacklevel=2)
        return []
    if assumed:
        info["Pixelsize assumed"] = "no pixel size beside the CSV: 130 nm assumed"
    return [_points_layer(locs, [info], path)]


def _points_layer(locs, info, path, features=None):
    coords = np.column_stack([locs["frame"].astype(float), locs["y"], locs["x"]]) if len(locs) else \
        np.zeros((0, 3))
    features = features if features is not None else {name: locs[name] for name in locs.dtype.names}
    meta = {"locs_info": info, "locs_path": path, "pixelsize": get_metadata(info, "Pixelsize", 130)}
    kwargs = {"name": os.path.basename(path), "features": features, "metadata": meta, "size": 0.5,
              "face_color": "photons" if "photons" in features else "white", "border_width": 0}
    return (coords, kwargs, "points")


def read_locs(path):
    """A points layer (frame, y, x) with every localization column as a feature."""
    path = path[0] if isinstance(path, (list, tuple)) else path
    try:
        locs, info = load_locs(path)
    except LocsFileError as exc:
        warnings.warn(str(exc), stacklevel=2)
        return []
    coords = np.column_stack([locs["frame"].astype(float), locs["y"], locs["x"]]) if len(locs) else \
        np.zeros((0, 3))
    features = {name: locs[name] for name in locs.dtype.names}
    try:  # every column of the file, including ones load_locs does not keep
        import h5py

        with h5py.File(path, "r") as fh:
            table = fh["locs"][...]
        if len(table) == len(locs) and table.dtype.names:
            for name in table.dtype.names:
                features.setdefault(name, table[name])
    except Exception:  # the columns from load_locs suffice
        pass
    meta = {"locs_info": info, "locs_path": path, "pixelsize": get_metadata(info, "Pixelsize", 130)}
    kwargs = {"name": os.path.basename(path), "features": features, "metadata": meta, "size": 0.5,
              "face_color": "photons" if "photons" in features else "white", "border_width": 0}
    return [(coords, kwargs, "points")]
