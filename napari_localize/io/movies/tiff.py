"""TIFF movies (``.tif``, ``.tiff``, ``.ome.tif``) read page by page with tifffile."""

from __future__ import annotations

import os

import numpy as np
import tifffile

from ._base import Movie, MovieError, movie_info


class TiffMovie(Movie):
    """The first series of a TIFF file as ``(frames, height, width)``; frames are read on demand."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise MovieError(f"{self.path}: not a readable TIFF file ({exc})") from None
        series = self._tif.series[0]
        shape = series.shape
        if len(shape) < 2:
            self.close()
            raise MovieError(f"{self.path}: the image has shape {shape}, not frames of height x width")
        height, width = shape[-2], shape[-1]
        frames = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        self._series = series
        self.shape = (frames, int(height), int(width))
        self.dtype = np.dtype(series.dtype).newbyteorder("=")
        if self.dtype.kind not in "uif":
            self.close()
            raise MovieError(f"{self.path}: unsupported pixel type {self.dtype}")
        self.info = movie_info(self.shape, self.dtype, self.path)
        self.info["Byte Order"] = self._tif.byteorder

    def _read(self, start, stop):
        if stop <= start:
            return self._empty()
        data = self._series.asarray(key=range(start, stop)) if self.shape[0] > 1 else self._series.asarray()
        return np.asarray(data, self.dtype).reshape((stop - start,) + self.shape[1:])

    def close(self):
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
        self._tif = None
