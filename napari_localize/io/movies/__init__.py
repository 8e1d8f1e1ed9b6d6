"""Movie readers behind one protocol: :class:`Movie` and :func:`open_movie`."""

from __future__ import annotations

import os

from ._base import ArrayMovie, Movie, MovieError, movie_info
from .raw import RawMovie, read_raw_info, write_raw_info
from .tiff import TiffMovie

#: lower-case file endings this package opens as movies, longest first
MOVIE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".raw")


def is_movie_path(path) -> bool:
    return os.fspath(path).lower().endswith(MOVIE_EXTENSIONS)


def open_movie(path, **options) -> Movie:
    """Open a movie file lazily; raise :class:`MovieError` with a clear message if it cannot be read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MovieError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(".raw"):
        return RawMovie(path)
    if lower.endswith((".tif", ".tiff")):
        return TiffMovie(path)
    raise MovieError(
        f"{path}: unknown movie type; napari-localize reads {', '.join(MOVIE_EXTENSIONS)}"
    )


__all__ = [
    "ArrayMovie", "MOVIE_EXTENSIONS", "list_movies", "Movie", "MovieError", "RawMovie", "TiffMovie", "is_movie_path",
    "movie_info", "open_movie", "read_raw_info", "write_raw_info",
]


def list_movies(folder) -> list[str]:
    """The movies in a folder, sorted, without our own outputs."""
    names = sorted(os.listdir(folder))
    return [os.path.join(folder, n) for n in names
            if is_movie_path(n) and not n.startswith(".") and os.path.isfile(os.path.join(folder, n))]
