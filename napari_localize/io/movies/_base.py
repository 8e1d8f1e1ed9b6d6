"""The one protocol every movie reader implements."""

from __future__ import annotations

import threading

import numpy as np


class MovieError(ValueError):
    """A movie that cannot be read as asked; the message names the file and what to do."""


class Movie:
    """A lazily read movie of shape ``(frames, height, width)``.

    Subclasses implement :meth:`_read` (a contiguous frame range) and set ``shape``, ``dtype``, ``info``
    (Picasso-style movie info: ``Byte Order``, ``Data Type``, ``Frames``, ``Height``, ``Width``, ``File``, ...)
    and ``path``. Indexing with an int or a slice on the first axis reads only those frames; further indices
    are applied to what was read. Use as a context manager, or call :meth:`close`.
    """

    path: str | None = None
    shape: tuple[int, int, int]
    dtype: np.dtype
    info: dict

    # -- to implement --------------------------------------------------------------------------
    def _read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared behaviour ----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _io_lock(self):
        # one reader at a time per movie: napari's display, the preview and a worker may read concurrently, and
        # file handles and tifffile pages are not thread-safe (dict.setdefault is atomic in CPython)
        return self.__dict__.setdefault("_io_lock_object", threading.RLock())

    def __array__(self, dtype=None, copy=None):
        with self._io_lock:
            data = self._read(0, self.shape[0])
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, key):
        with self._io_lock:
            return self._getitem(key)

    def _getitem(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"frame {key} is outside the movie's {n} frames")
            data = self._read(i, i + 1)[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                data = self._read(start, stop) if stop > start else self._empty()
            else:
                data = np.stack([self._read(i, i + 1)[0] for i in range(start, stop, step)]) \
                    if len(range(start, stop, step)) else self._empty()
        else:
            idx = np.arange(n)[key]
            data = np.stack([self._read(int(i), int(i) + 1)[0] for i in idx]) if len(idx) else self._empty()
        return data[rest] if rest else data

    def _empty(self):
        return np.zeros((0,) + tuple(self.shape[1:]), self.dtype)

    def to_dask(self, frames_per_chunk: int = 1):
        """A lazy dask array over the movie (for napari layers); each chunk reads its frames on demand."""
        import dask.array as da

        return da.from_array(self, chunks=(frames_per_chunk,) + tuple(self.shape[1:]), asarray=False,
                             fancy=False, lock=False, meta=np.empty((0, 0, 0), self.dtype))

    def __repr__(self):
        return f"<{type(self).__name__} {self.path!r} shape={self.shape} dtype={self.dtype}>"


class ArrayMovie(Movie):
    """Wrap an in-memory or lazy array (numpy, memmap, dask, a napari layer's data) as a :class:`Movie`."""

    def __init__(self, data, info: dict | None = None, path: str | None = None):
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise MovieError(f"expected an array of shape (frames, height, width), got shape {data.shape}")
        self._data = data
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        self.path = path
        self.info = movie_info(self.shape, self.dtype, path, **(info or {}))

    def _read(self, start, stop):
        return np.asarray(self._data[start:stop])


def movie_info(shape, dtype, path=None, **extra) -> dict:
    """Picasso's movie-info dict (the first document of ``_locs.yaml``)."""
    dtype = np.dtype(dtype)
    info = {
        "Byte Order": ">" if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False)
        else "<",
        "Data Type": dtype.newbyteorder("=").name,
        "Frames": int(shape[0]),
        "Height": int(shape[1]),
        "Width": int(shape[2]),
    }
    if path is not None:
        info["File"] = str(path)
    info.update(extra)
    return info


class FrameFile:
    """Contiguous frames in a file, read with plain reads (no memory map, so resident memory stays bounded).

    Parameters
    ----------
    path : str
        The file.
    offset : int
        Byte offset of frame 0.
    dtype : numpy.dtype
        Pixel type as stored (with its byte order).
    frame_shape : tuple of int
        ``(height, width)`` in pixels.
    """

    def __init__(self, path, offset, dtype, frame_shape):
        import threading

        self.path = path
        self._fh = open(path, "rb")
        self._lock = threading.Lock()
        self.offset = int(offset)
        self.dtype = np.dtype(dtype)
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize

    def read(self, start: int, stop: int, out_dtype) -> np.ndarray:
        """Frames ``start:stop`` converted to ``out_dtype`` (native byte order)."""
        n = max(stop - start, 0)
        buf = np.empty((n,) + self.frame_shape, self.dtype)
        with self._lock:
            self._fh.seek(self.offset + start * self.frame_bytes)
            got = self._fh.readinto(memoryview(buf).cast("B"))
        if got != buf.nbytes:
            raise MovieError(f"{self.path}: frame {start + got // max(self.frame_bytes, 1)} is missing or "
                             "incomplete; the file is truncated")
        return buf if buf.dtype == np.dtype(out_dtype) else buf.astype(out_dtype)

    def close(self):
        self._fh.close()
