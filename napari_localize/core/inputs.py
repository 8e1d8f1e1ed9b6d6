"""What the Python API accepts as a movie, made explicit: ``(frames, height, width)`` or one ``(height, width)``
frame, of any real dtype (integers, float16/32/64, either byte order), as numpy, a list, a memmap, a dask array,
a napari layer's data or a :class:`~napari_localize.io.movies.Movie`. Anything else is refused with a
:class:`~napari_localize.core.errors.MovieError` that says what to pass instead.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import MovieError

#: pixel types the kernels take as they are; other real types are converted chunk by chunk
_KERNEL_TYPES = {np.dtype(t) for t in ("uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "uint64",
                                       "float32", "float64")}


class FramesView:
    """A ``(frames, height, width)`` view of an array-like whose slices come back native-endian and in a type
    the kernels take (float16 and bool become float32); nothing is read until sliced."""

    def __init__(self, data, add_frame_axis: bool, dtype):
        self._data = data
        self._add = add_frame_axis
        shape = tuple(int(s) for s in data.shape)
        self.shape = (1,) + shape if add_frame_axis else shape
        self.ndim = 3
        self.dtype = dtype
        self.info = getattr(data, "info", None)
        self.path = getattr(data, "path", None)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if self._add:
            # one frame: select it whole, then index the (1, h, w) array
            out = np.asarray(self._data)[None]
        else:
            out = None
        if out is None:
            if not isinstance(key, tuple):
                key = (key,)
            first, rest = key[0], key[1:]
            out = np.asarray(self._data[first])
            if rest:
                out = out[(slice(None),) * (out.ndim - 2) + rest] if out.ndim == 3 else out[rest]
            return self._convert(out)
        return self._convert(out[key])

    def _convert(self, out):
        out = np.asarray(out)
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def kernel_dtype(dtype) -> np.dtype:
    """The native-endian type frames of ``dtype`` are processed in (float16, bool, small floats: float32)."""
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=")
    if native in _KERNEL_TYPES:
        return native
    if native.kind == "f" or native.kind == "b":
        return np.dtype(np.float32)
    return native


def as_movie_input(movie):
    """``movie`` as something of shape ``(frames, height, width)`` the pipeline can slice, or a MovieError."""
    if isinstance(movie, (str, bytes)) or hasattr(movie, "__fspath__"):
        raise MovieError(f"{movie!s}: a path; use napari_localize.localize_file(path) (or open_movie(path)) to "
                         "localize a movie file")
    if isinstance(movie, numbers.Number):
        raise MovieError(f"a movie is an array of frames, not the number {movie!r}")
    if isinstance(movie, (list, tuple)):
        try:
            movie = np.asarray(movie)
        except ValueError as exc:
            raise MovieError(f"a list that is not a rectangular array of pixels ({exc}); pass a numpy array of "
                             "shape (frames, height, width)") from None
    if not hasattr(movie, "shape") or not hasattr(movie, "__getitem__") or not hasattr(movie, "dtype"):
        raise MovieError(f"cannot localize a {type(movie).__name__}: pass an array of shape (frames, height, width) "
                         "or (height, width) (numpy, dask, a napari layer's data) or a Movie from open_movie")
    shape = tuple(int(s) for s in movie.shape)
    dtype = np.dtype(movie.dtype)
    if dtype.kind not in "uifb":
        raise MovieError(f"pixels of type {dtype} cannot be localized: pass real numbers (integers or floats), "
                         "e.g. data.real.astype('float32') or the camera's uint16 counts")
    if len(shape) not in (2, 3):
        hint = (f"; select one channel/position first, e.g. data[:, 0] for shape {shape}" if len(shape) > 3
                else "")
        raise MovieError(f"a movie has shape (frames, height, width) or (height, width), got shape {shape}{hint}")
    if 0 in shape:
        raise MovieError(f"the movie is empty (shape {shape})")
    target = kernel_dtype(dtype)
    if len(shape) == 3 and target == dtype:
        return movie
    return FramesView(movie, len(shape) == 2, target)
