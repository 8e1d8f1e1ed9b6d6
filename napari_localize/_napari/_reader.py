"""npe2 reader hook: movies as lazy image layers, ``*_locs.hdf5`` as points layers."""

from __future__ import annotations

import os

import numpy as np

from ..io.locs import LocsFileError, get_metadata, load_locs
from ..io.movies import MovieError, is_movie_path, open_movie


def napari_get_reader(path):
    """Return a reader for ``path`` if we can open it, else ``None``. Never raises."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    if path.endswith("_locs.hdf5"):
        return read_locs
    if is_movie_path(path):
        return read_movie
    return None


def read_movie(path):
    path = path[0] if isinstance(path, (list, tuple)) else path
    try:
        movie = open_movie(path)
    except MovieError:
        return None
    data = movie.to_dask()
    sample = np.asarray(movie[: min(len(movie), 5)])
    lo, hi = (float(v) for v in np.percentile(sample, (0.1, 99.9)))
    if hi <= lo:
        hi = lo + 1.0
    meta = {"movie_info": movie.info, "movie_path": path}
    name = os.path.basename(path)
    return [(data, {"name": name, "contrast_limits": (lo, hi), "metadata": meta}, "image")]


def read_locs(path):
    path = path[0] if isinstance(path, (list, tuple)) else path
    try:
        locs, info = load_locs(path)
    except LocsFileError:
        return None
    coords = np.column_stack([locs["frame"].astype(float), locs["y"], locs["x"]]) if len(locs) else \
        np.zeros((0, 3))
    features = {name: locs[name] for name in locs.dtype.names}
    meta = {"locs_info": info, "locs_path": path, "pixelsize": get_metadata(info, "Pixelsize", 130)}
    kwargs = {"name": os.path.basename(path), "features": features, "metadata": meta, "size": 0.5,
              "face_color": "photons" if "photons" in features else "white", "border_width": 0}
    return [(coords, kwargs, "points")]
