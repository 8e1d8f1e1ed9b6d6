"""Movie readers behind one protocol: :class:`Movie` and :func:`open_movie`."""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from ._base import ArrayMovie, LibraryMovie, Movie, MovieError, movie_info
from .detect import MovieFormatWarning, MovieKind, _ndtiff_first, detect_movie, is_ndtiff_folder, movie_kind
from .metadata import MovieChoiceError
from .raw import RawMovie, read_raw_info, write_raw_info
from .tiff import TiffMovie, follow_on_of

#: lower-case file endings this package opens as movies, longest first
MOVIE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".raw", ".ims", ".nd2", ".czi", ".lif")

#: endings of files we write ourselves (never movies to localize)
_OWN_OUTPUTS = re.compile(r"(_locs|_render)$", re.IGNORECASE)
_MMSTACK = re.compile(r"^(?P<prefix>.+)_MMStack(_.*)?\.ome\.tiff?$", re.IGNORECASE)


def is_movie_path(path) -> bool:
    """True if ``path`` ends in a movie extension (or is an NDTiff dataset folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return is_ndtiff_folder(path)
    return path.lower().endswith(MOVIE_EXTENSIONS)


def open_movie(path, channel=None, position=None, **options) -> Movie:
    """Open a movie lazily; the single entry point for every format (the CLI, the API, the widgets and the
    npe2 reader all open movies here).

    The reader is chosen by the file's name and its first bytes (:func:`~.detect.detect_movie`): a file
    whose name and signature disagree is read by what its signature says, with a :class:`MovieFormatWarning`;
    one that matches no movie format is refused with a :class:`MovieError` saying what it looks like.

    Parameters
    ----------
    path : str or PathLike
        A movie file (``.ome.tif``, ``.ome.tiff``, ``.tif``, ``.tiff``, ``.raw``, ``.ims``, ``.nd2``, ``.czi``,
        ``.lif``), any file of an NDTiff dataset (its ``NDTiff.index`` too), or the dataset folder. For a
        Micro-Manager set, the first file reads them all.
    channel, position : int or str, optional
        Index or name of the channel / stage position. A file with several and no choice raises
        :class:`MovieChoiceError` (a :class:`MovieError`) listing them: localizing a silently chosen channel
        would be wrong more often than right.
    **options
        ``info`` (dict) for ``.raw`` files without a ``.yaml``; ``series`` (int) for TIFF files.

    Raises
    ------
    MovieError
        With a message naming the file and what to do.
    """
    path = os.fspath(path)
    try:
        movie = _open(path, channel, position, **options)
    except MovieError:
        raise
    except MemoryError:
        raise MovieError(f"{path}: the file describes images too large for this computer's memory; it is "
                         "damaged or not a single-molecule movie") from None
    except (ValueError, OSError, RuntimeError, KeyError, IndexError, TypeError, ZeroDivisionError,
            OverflowError, AttributeError, AssertionError, EOFError, UnicodeError, struct.error) as exc:
        raise MovieError(f"{path}: cannot be read; the file is damaged or not a movie of its type "
                         f"({type(exc).__name__}: {_one_line(exc)})") from None
    try:
        movie.validate()
    except MovieError:
        movie.close()
        raise
    frame_bytes = int(movie.shape[1]) * int(movie.shape[2]) * np.dtype(movie.dtype).itemsize
    if frame_bytes > MAX_FRAME_BYTES:
        movie.close()
        raise MovieError(f"{path}: a frame of {movie.shape[1]} x {movie.shape[2]} {movie.dtype} pixels "
                         f"({frame_bytes / 2**30:.1f} GiB) is larger than napari-localize handles "
                         f"({MAX_FRAME_BYTES / 2**30:.0f} GiB); the file is damaged, or crop it first")
    return movie


#: the largest frame a reader accepts (a damaged header can claim 200000 x 200000 pixels)
MAX_FRAME_BYTES = 4 << 30


def _one_line(exc) -> str:
    return " ".join(str(exc).split())[:300]


def _open(path, channel=None, position=None, **options) -> Movie:
    kind = detect_movie(path)
    return READERS[kind.format](kind.path, channel, position, **options)


def _open_raw(path, channel=None, position=None, info=None, **_):
    for name, value in (("channel", channel), ("position", position)):
        if value not in (None, 0, "0"):
            raise MovieError(f"{path}: .raw movies have one channel and one position; got {name}={value!r}")
    return RawMovie(path, info=info)


def _open_tiff(path, channel=None, position=None, series=0, **_):
    return TiffMovie(path, channel=channel, position=position, series=int(series))


def _open_ims(path, channel=None, position=None, **_):
    from .ims import ImsMovie

    return ImsMovie(path, channel=channel, position=position)


def _open_nd2(path, channel=None, position=None, **_):
    from .nd2 import Nd2Movie

    return Nd2Movie(path, channel=channel, position=position)


def _open_czi(path, channel=None, position=None, **_):  # optional readers (czifile, liffile), imported only here
    from .czi import CziMovie

    return CziMovie(path, channel=channel, position=position)


def _open_lif(path, channel=None, position=None, **_):
    from .lif import LifMovie

    return LifMovie(path, channel=channel, position=position)


#: the reader of each detected format (:mod:`.detect`): ``opener(path, channel, position, **options)``
READERS = {"raw": _open_raw, "tiff": _open_tiff, "ims": _open_ims, "nd2": _open_nd2, "czi": _open_czi,
           "lif": _open_lif}


def movie_choices(path) -> tuple[list[str], list[str]]:
    """``(channel names, position names)`` still to choose for a movie; both empty when it opens as it is."""
    try:
        with open_movie(path):
            return [], []
    except MovieChoiceError as exc:
        return exc.channels, exc.positions


def list_movies(folder) -> list[str]:
    """The movies in a folder, sorted: follow-on files (``*_1.ome.tif``, ``*_NDTiffStack_1.tif``) and our own
    outputs are left out, since opening the first file of a set reads them all."""
    if is_ndtiff_folder(folder):
        return [_ndtiff_first(folder)]
    names = sorted(os.listdir(folder))
    out = []
    mm_sets = set()
    for n in names:
        full = os.path.join(folder, n)
        if not is_movie_path(n) or n.startswith(".") or not os.path.isfile(full):
            continue
        if _OWN_OUTPUTS.search(os.path.splitext(n)[0]) or follow_on_of(full) is not None:
            continue
        if re.search(r"_NDTiffStack_\d+\.tiff?$", n, re.IGNORECASE):
            continue
        m = _MMSTACK.match(n)
        if m is not None:  # one Micro-Manager acquisition: its first file reads every position
            if m["prefix"] in mm_sets:
                continue
            mm_sets.add(m["prefix"])
        out.append(full)
    return out


__all__ = [
    "ArrayMovie", "LibraryMovie", "MOVIE_EXTENSIONS", "list_movies", "Movie", "MovieChoiceError", "MovieError",
    "MovieFormatWarning", "MovieKind", "RawMovie", "TiffMovie", "detect_movie", "is_movie_path",
    "is_ndtiff_folder", "movie_choices", "movie_info", "movie_kind", "open_movie", "read_raw_info",
    "write_raw_info",
]
