"""Leica ``.lif`` movies via ``liffile`` (optional extra ``napari-localize[leica]``), read frame by frame.

A LIF file holds several image series: each series is a "position" to choose (by index or name). Within a
series, C is the channel to choose, the other axes besides Y and X (T, Z, ...) are flattened into frames in
the file's order. Pixel size from the X coordinates (metres).
"""

from __future__ import annotations

import itertools

import numpy as np

from ._base import LibraryMovie, MovieError, movie_info
from .metadata import MovieChoiceError, choose


def _import():
    try:
        import liffile
    except ImportError:
        raise MovieError("reading .lif needs the optional package liffile: pip install liffile "
                         "(or napari-localize[leica])") from None
    return liffile


class LifMovie(LibraryMovie):
    """One channel of one image series of a ``.lif`` file as ``(frames, height, width)``."""

    def __init__(self, path, channel=None, position=None):
        self._open(path, _import().LifFile, "LIF", channel, position)

    def _setup(self, channel, position):
        images = [im for im in self._f.images if "X" in im.dims and "Y" in im.dims]
        if not images:
            raise MovieError(f"{self.path}: the LIF file holds no image series")
        series_names = [im.name for im in images] if len(images) > 1 else []
        if position is None and len(series_names) > 1:
            # the channels of the first series are listed too when they also need a choice
            first = images[0].sizes.get("C", 1)
            raise MovieChoiceError(self.path, [str(i) for i in range(first)] if channel is None and first > 1
                                   else (), series_names)
        pi = choose(self.path, "position", series_names, position)
        im = images[pi]
        sizes = dict(im.sizes)
        if sizes.get("S", 1) > 1:
            raise MovieError(f"{self.path}: series {im.name!r} is RGB, not a single-molecule movie")
        ch_names = self._channel_names(im, sizes.get("C", 1)) if sizes.get("C", 1) > 1 else []
        if channel is None and len(ch_names) > 1:
            raise MovieChoiceError(self.path, ch_names, ())
        ci = choose(self.path, "channel", ch_names, channel)
        frame_axes = [a for a in im.dims if a not in ("C", "Y", "X", "S")]
        ranges = [range(sizes[a]) for a in frame_axes]
        self._index = [dict(zip(frame_axes, idx)) for idx in itertools.product(*ranges)] if frame_axes else [{}]
        if ch_names:
            for idx in self._index:
                idx["C"] = ci
        self._im = im
        self.dtype = np.dtype(im.dtype).newbyteorder("=")
        self.shape = (len(self._index), int(sizes["Y"]), int(sizes["X"]))
        self.channel, self.position = ci, pi
        self.channel_names, self.position_names = ch_names, series_names
        extra = {"Camera": "None", "Series": im.name, "LIF Axes": "".join(im.dims)}
        try:
            xs = np.asarray(im.coords["X"], float)
            if len(xs) > 1 and xs[1] > xs[0]:
                extra["Pixelsize"] = float(xs[1] - xs[0]) * 1e9  # metres -> nm
        except Exception:  # no coordinates: leave the pixel size to the user
            pass
        if ch_names:
            extra["Channel"] = ch_names[ci]
        if series_names:
            extra["Position"] = series_names[pi]
        self.info = movie_info(self.shape, self.dtype, self.path, **extra)

    @staticmethod
    def _channel_names(im, n):
        try:
            names = [c.lut_name or str(i) for i, c in enumerate(im._channels)]  # LUT names: how LAS X shows them
        except Exception:
            names = []
        return names if len(names) == n else [str(i) for i in range(n)]

    def _read(self, start, stop):
        out = np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        for k, idx in enumerate(self._index[start:stop]):
            try:
                out[k] = self._im.frame(**idx)
            except Exception as exc:
                raise MovieError(f"{self.path}: frame {start + k} cannot be read ({exc})") from None
        return out

