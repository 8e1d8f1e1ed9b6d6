"""Zeiss ``.czi`` movies via ``czifile`` (optional extra ``napari-localize[zeiss]``), read lazily.

Frames are the subblocks of one channel (C) and scene (S, a "position"), ordered by T, then Z (so a z-stack
without T reads as frames). Each frame read decodes only its own subblock. Mosaic tiles (M > 1) and pyramid
levels are not single-molecule movies and are refused with a message. Pixel size from
``Scaling/Items/Distance[@Id='X']`` (metres), channel names from ``Information/Image/Dimensions/Channels``.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np

from ._base import LibraryMovie, MovieError, movie_info
from .metadata import MovieChoiceError, choose


def _import():
    try:
        import czifile
    except ImportError:
        raise MovieError("reading .czi needs the optional package czifile: pip install czifile "
                         "(or napari-localize[zeiss])") from None
    return czifile


class CziMovie(LibraryMovie):
    """One channel and scene of a ``.czi`` file as ``(frames, height, width)``."""

    def __init__(self, path, channel=None, position=None):
        self._open(path, _import().CziFile, "CZI", channel, position)

    def _setup(self, channel, position):
        f = self._f
        entries = []
        for e in f.filtered_subblock_directory:  # czifile leaves pyramid levels out of this list
            entries.append(({d.dimension: (d.start, d.size) for d in e.dimension_entries}, e))
        if not entries:
            raise MovieError(f"{self.path}: the CZI holds no image subblocks")
        tiles = {dims.get("M", (0, 1))[0] for dims, _ in entries}
        if len(tiles) > 1:
            raise MovieError(f"{self.path}: a mosaic CZI ({len(tiles)} tiles per plane); export the tile you "
                             "need, or stitch it, before localizing")
        meta = self._metadata()
        channels = sorted({dims.get("C", (0, 1))[0] for dims, _ in entries})
        scenes = sorted({dims.get("S", (0, 1))[0] for dims, _ in entries})
        names = meta.get("channels", [])
        ch_names = [names[c] if c < len(names) else str(c) for c in channels] if len(channels) > 1 else []
        sc_names = [f"S{s}" for s in scenes] if len(scenes) > 1 else []
        if (channel is None and len(ch_names) > 1) or (position is None and len(sc_names) > 1):
            raise MovieChoiceError(self.path, ch_names if channel is None else (),
                                   sc_names if position is None else ())
        ci = choose(self.path, "channel", ch_names, channel)
        si = choose(self.path, "position", sc_names, position)
        c_val, s_val = channels[ci], scenes[si]
        chosen = [(dims, e) for dims, e in entries
                  if dims.get("C", (0, 1))[0] == c_val and dims.get("S", (0, 1))[0] == s_val]
        chosen.sort(key=lambda de: (de[0].get("T", (0, 1))[0], de[0].get("Z", (0, 1))[0]))
        shapes = {(de[0]["Y"][1], de[0]["X"][1]) for de in chosen}
        if len(shapes) != 1:
            raise MovieError(f"{self.path}: the planes of this channel differ in size ({sorted(shapes)})")
        height, width = shapes.pop()
        self._entries = [e for _, e in chosen]
        self.dtype = np.dtype(f.dtype).newbyteorder("=")
        samples = f.shape[-1] if str(f.axes).endswith("0") else 1
        if self.dtype.kind not in "uif" or samples != 1:
            raise MovieError(f"{self.path}: pixel type {f.dtype} with {samples} samples per pixel (RGB?) is not "
                             "a single-molecule movie")
        self.shape = (len(self._entries), int(height), int(width))
        self.channel, self.position = ci, si
        self.channel_names, self.position_names = ch_names, sc_names
        extra = {"Camera": meta.get("camera") or "None"}
        if meta.get("pixelsize"):
            extra["Pixelsize"] = meta["pixelsize"]
        if ch_names:
            extra["Channel"] = ch_names[ci]
        if sc_names:
            extra["Position"] = sc_names[si]
        extra["CZI Axes"] = str(f.axes)
        self.info = movie_info(self.shape, self.dtype, self.path, **extra)

    def _metadata(self) -> dict:
        out = {}
        try:
            xml = self._f.metadata()
        except Exception:
            return out
        if not isinstance(xml, str):
            return out
        m = re.search(r'<Distance Id="X">\s*<Value>([^<]+)</Value>', xml)
        if m:
            with contextlib.suppress(ValueError):
                out["pixelsize"] = float(m.group(1)) * 1e9  # metres -> nm
        block = re.search(r"<Dimensions>\s*<Channels>(.*?)</Channels>", xml, re.S)
        if block:
            out["channels"] = re.findall(r'<Channel [^>]*Name="([^"]*)"', block.group(1))
        m = re.search(r"<Detector [^>]*Name=\"([^\"]+)\"", xml)
        if m:
            out["camera"] = m.group(1)
        return out

    def _read(self, start, stop):
        out = np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        for k, entry in enumerate(self._entries[start:stop]):
            try:
                data = entry.data_segment().data()
            except Exception as exc:
                raise MovieError(f"{self.path}: frame {start + k} cannot be read ({exc})") from None
            out[k] = np.asarray(data).reshape(self.shape[1:])
        return out

