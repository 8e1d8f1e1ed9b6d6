"""Several TIFF movies read as one, their frames concatenated in order (``localize --concat``).

For acquisitions split into files that are not a Micro-Manager set (those already open as one movie from
their first file): ``run_1.tif``, ``run_2.tif``, ... ``run_10.tif``. The files are ordered by folder, then
by name with numbers compared as numbers (``run_2`` before ``run_10``), as Picasso 0.11 does; a folder is
searched recursively; follow-on files of Micro-Manager sets and our own outputs are left out (their first
file reads them). All files must share the frame size and pixel type.
"""

from __future__ import annotations

import os

import numpy as np

from ._base import Movie, MovieError, movie_info

TIFF_ENDINGS = (".ome.tiff", ".ome.tif", ".tiff", ".tif")


def _natural(path):
    from ...core.camera import natural_key

    folder, name = os.path.split(os.path.abspath(path))
    return (natural_key(folder), natural_key(name))


def concat_paths(paths) -> list[str]:
    """The TIFF movies to concatenate, in frame order, from files and folders (searched recursively)."""
    from . import _OWN_OUTPUTS
    from .tiff import follow_on_of

    found = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(root, n) for n in files if n.lower().endswith(TIFF_ENDINGS)
                             and not n.startswith("."))
        elif os.path.isfile(path):
            if not path.lower().endswith(TIFF_ENDINGS):
                raise MovieError(f"{path}: --concat joins TIFF movies (.tif, .tiff, .ome.tif); this is not one")
            found.append(path)
        else:
            raise MovieError(f"{path}: no such file or folder")
    out = [p for p in found if follow_on_of(p) is None
           and not _OWN_OUTPUTS.search(os.path.splitext(os.path.basename(p))[0])]
    out = sorted(dict.fromkeys(os.path.abspath(p) for p in out), key=_natural)
    if not out:
        raise MovieError(f"no TIFF movies to concatenate in {', '.join(map(str, paths))}")
    return out


class ConcatMovie(Movie):
    """Movies ``parts`` (all ``(frames, height, width)`` of one dtype) as one; frame ``f`` reads only its file.

    The movie info is the first file's, with ``Frames`` the total and ``Concatenated files`` listing every
    file and its frame count.
    """

    def __init__(self, parts, paths=None):
        if not parts:
            raise MovieError("nothing to concatenate")
        self._parts = list(parts)
        first = self._parts[0]
        h, w = first.shape[1:]
        names = [getattr(m, "path", None) or f"part {i}" for i, m in enumerate(self._parts)] if paths is None \
            else [os.fspath(p) for p in paths]
        for m, name in zip(self._parts, names):
            if tuple(m.shape[1:]) != (h, w):
                raise MovieError(f"{name}: frames of {m.shape[1]}x{m.shape[2]} px cannot be concatenated with "
                                 f"{names[0]} ({h}x{w} px)")
            if np.dtype(m.dtype) != np.dtype(first.dtype):
                raise MovieError(f"{name}: pixel type {m.dtype} differs from {names[0]} ({first.dtype})")
        self._starts = np.cumsum([0] + [int(m.shape[0]) for m in self._parts])
        self.shape = (int(self._starts[-1]), int(h), int(w))
        self.dtype = np.dtype(first.dtype)
        self.path = names[0]
        extra = {k: v for k, v in (getattr(first, "info", {}) or {}).items()
                 if k not in ("Byte Order", "Data Type", "Frames", "Height", "Width", "File")}
        extra["Concatenated files"] = [{"File": n, "Frames": int(m.shape[0])} for n, m in zip(names, self._parts)]
        self.info = movie_info(self.shape, self.dtype, self.path, **extra)

    def _read(self, start, stop):
        out = np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            a = pos - self._starts[k]
            b = min(stop, self._starts[k + 1]) - self._starts[k]
            out[pos - start: pos - start + (b - a)] = np.asarray(self._parts[k][int(a):int(b)])
            pos += b - a
            k += 1
        return out

    def close(self):
        for m in self._parts:
            m.close()


def open_concat(paths, channel=None, position=None) -> ConcatMovie:
    """Open the TIFF movies of :func:`concat_paths` ``(paths)`` as one :class:`ConcatMovie`."""
    from . import open_movie

    files = concat_paths(paths)
    parts = []
    try:
        for f in files:
            parts.append(open_movie(f, channel=channel, position=position))
        return ConcatMovie(parts, files)
    except BaseException:
        for m in parts:
            m.close()
        raise
