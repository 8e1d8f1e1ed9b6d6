"""The one protocol every movie reader implements."""

from __future__ import annotations

import abc
import os
import threading

import numpy as np

from ...core.errors import MovieError  # noqa: F401  (the reader layer's error; defined with the others)


class Movie(abc.ABC):
    """A lazily read movie of shape ``(frames, height, width)``: the abstract base of every reader.

    A reader implements the two abstract methods, :meth:`_read` (a contiguous frame range, as an array
    ``(stop - start, height, width)`` of ``dtype``) and :meth:`close` (release its file), and sets four data
    attributes in its ``__init__``: ``shape`` (three ints), ``dtype`` (a numpy dtype), ``info`` (Picasso-style
    movie metadata: ``Byte Order``, ``Data Type``, ``Frames``, ``Height``, ``Width``, ``File``, ...) and
    ``path`` (None for an array). :meth:`validate` checks that contract; :func:`~napari_localize.io.movies.open_movie`
    (the one factory: extension and file signature) calls it on every movie it opens.

    Everything else is shared: indexing with numpy's semantics (an int, slice or index array on the first axis
    reads only those frames), ``len``, ``np.asarray(movie)``, :meth:`to_dask`, thread-safe reads, and the
    context manager (``with open_movie(path) as movie:`` closes the file).
    """

    path: str | None = None
    shape: tuple[int, int, int]
    dtype: np.dtype
    info: dict

    # -- to implement --------------------------------------------------------------------------
    @abc.abstractmethod
    def _read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` (``0 <= start <= stop <= frames``) as an array ``(stop - start, height, width)``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file (idempotent); reads after it may fail."""

    # -- the contract --------------------------------------------------------------------------
    def validate(self):
        """Check the data attributes a reader must set; return ``self``. Raises :class:`MovieError`."""
        name = type(self).__name__
        shape = getattr(self, "shape", None)
        if not (isinstance(shape, tuple) and len(shape) == 3
                and all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape)):
            raise MovieError(f"{self.path}: {name} gave shape {shape!r}, not (frames, height, width)")
        dtype = getattr(self, "dtype", None)
        try:
            ok = dtype is not None and np.dtype(dtype).kind in "biuf"
        except TypeError:
            ok = False
        if not ok:
            raise MovieError(f"{self.path}: {name} gave no numeric pixel type (dtype {dtype!r})")
        info = getattr(self, "info", None)
        if not isinstance(info, dict):
            raise MovieError(f"{self.path}: {name} gave no movie metadata (info {info!r})")
        for key, n in zip(("Frames", "Height", "Width"), shape):
            if key in info and int(info[key]) != int(n):
                raise MovieError(f"{self.path}: {name}'s metadata says {key} {info[key]} but the movie has {n}")
        return self

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
            data = self._checked_read(0, self.shape[0])
        return data if dtype is None else data.astype(dtype)

    def _checked_read(self, start, stop):
        """:meth:`_read`, with any failure of a format library turned into a MovieError naming the file."""
        try:
            return self._read(start, stop)
        except MovieError:
            raise
        except MemoryError:
            raise MovieError(f"{self.path}: frames {start}..{stop - 1} do not fit in memory; read fewer frames "
                             "at a time") from None
        except Exception as exc:  # noqa: BLE001 (tifffile, h5py and nd2 raise many types on damaged data)
            raise MovieError(f"{self.path}: frames {start}..{stop - 1} cannot be read; the file is damaged "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None

    def __getitem__(self, key):
        with self._io_lock:
            return self._getitem(key)

    def _getitem(self, key):
        """``movie[key]`` with numpy's semantics exactly, reading only the frames the key selects."""
        n = self.shape[0]
        key = _expand_key(key, 3)
        if key is None:  # an index numpy treats specially (a scalar boolean): read everything, let numpy decide
            return np.asarray(self._checked_read(0, n))[_as_tuple(key)]
        at = next((k for k, item in enumerate(key) if item is not None), None)
        if at is None:
            key, at = key + (slice(None),), len(key)
        first = key[at]
        try:
            frames = np.arange(n)[first]  # numpy's own checks and errors for the frame index
        except IndexError as exc:
            raise IndexError(f"{exc} (the movie has {n} frames)") from None
        if isinstance(first, slice):
            order = np.asarray(frames).ravel()
            data = self._read_frames(order)
            local = slice(None)
        else:
            wanted = np.unique(np.asarray(frames).ravel())
            data = self._read_frames(wanted)
            local = np.searchsorted(wanted, frames)
            if np.ndim(first) == 0 and not isinstance(first, np.ndarray):
                local = int(local)
        return data[key[:at] + (local,) + key[at + 1:]]

    def _read_frames(self, frames) -> np.ndarray:
        """The frames at the (1D, int) positions ``frames``, in that order, read in contiguous runs."""
        frames = np.asarray(frames, np.intp)
        if frames.size == 0:
            return self._empty()
        breaks = np.nonzero(np.diff(frames) != 1)[0] + 1
        runs = np.split(frames, breaks)
        parts = [self._checked_read(int(r[0]), int(r[-1]) + 1) for r in runs]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _empty(self):
        return np.zeros((0,) + tuple(self.shape[1:]), self.dtype)

    def to_dask(self, frames_per_chunk: int = 1):
        """A lazy dask array over the movie (for napari layers); each chunk reads its frames on demand."""
        import dask.array as da

        return da.from_array(self, chunks=(frames_per_chunk,) + tuple(self.shape[1:]), asarray=False,
                             fancy=False, lock=False, meta=np.empty((0, 0, 0), self.dtype))

    def __repr__(self):
        return f"<{type(self).__name__} {self.path!r} shape={self.shape} dtype={self.dtype}>"


def _as_tuple(key):
    return key if isinstance(key, tuple) else (key,)


def _expand_key(key, ndim):
    """``key`` as a tuple of basic indices (int, slice, None) and integer arrays, with the Ellipsis expanded and
    every boolean array replaced by its ``nonzero()`` (numpy's own equivalence); ``None`` for a key numpy treats
    specially (a scalar boolean), which the caller evaluates on the whole array."""
    out = []
    for item in _as_tuple(key):
        if isinstance(item, (bool, np.bool_)):
            return None
        if isinstance(item, (list, np.ndarray)) or (hasattr(item, "__array__") and not isinstance(item, Movie)):
            arr = np.asarray(item)
            if arr.dtype == bool:
                if arr.ndim == 0:
                    return None
                out.extend(arr.nonzero())
                continue
            if arr.size == 0 and arr.dtype.kind not in "iu":
                arr = arr.astype(np.intp)  # numpy takes an empty list as an empty integer index
            out.append(arr)
        else:
            out.append(item)
    if sum(1 for item in out if item is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in [i for i in out if not isinstance(i, np.ndarray)]:
        k = next(k for k, i in enumerate(out) if not isinstance(i, np.ndarray) and i is Ellipsis)
        used = sum(1 for i in out if i is not None and not (not isinstance(i, np.ndarray) and i is Ellipsis))
        out[k:k + 1] = [slice(None)] * max(ndim - used, 0)
    return tuple(out)


class LibraryMovie(Movie):
    """A movie read through a format library's file object (``self._f``): opening and choosing the channel and
    position (the subclass's ``_setup(channel, position)``) turn any library failure into one :class:`MovieError`
    naming the file, and the file is always closed."""

    _f = None

    def _open(self, path, open_file, kind: str, channel=None, position=None):
        self.path = os.fspath(path)
        self._f = None
        try:
            self._f = open_file(self.path)
            self._setup(channel, position)
        except MovieError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 (format libraries raise many types on damaged files)
            self.close()
            raise MovieError(f"{self.path}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None

    @abc.abstractmethod
    def _setup(self, channel, position):
        """Choose the channel and position in ``self._f``; set ``shape``, ``dtype`` and ``info``."""

    def close(self):
        f, self._f = self._f, None
        if f is not None:
            f.close()


class ArrayMovie(Movie):
    """Wrap an in-memory or lazy array (numpy, memmap, dask, a napari layer's data) as a :class:`Movie`."""

    def __init__(self, data, info: dict | None = None, path: str | None = None):
        from ...core.inputs import as_movie_input

        data = as_movie_input(data)
        self._data = data
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        self.path = path
        self.info = movie_info(self.shape, self.dtype, path, **(info or {}))

    def _read(self, start, stop):
        return np.asarray(self._data[start:stop])

    def close(self):
        pass  # the array belongs to the caller


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
            whole = start + got // max(self.frame_bytes, 1)
            raise MovieError(f"{self.path}: the file is truncated: frames {start}..{stop - 1} were asked for but "
                             f"it ends inside frame {whole} (frames 0..{whole - 1} are complete)" if whole else
                             f"{self.path}: the file is truncated: it ends before frame 0 is complete")
        return buf if buf.dtype == np.dtype(out_dtype) else buf.astype(out_dtype)

    def close(self):
        self._fh.close()
