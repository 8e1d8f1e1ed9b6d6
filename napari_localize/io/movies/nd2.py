"""Nikon ``.nd2`` movies via the ``nd2`` package.

Axes T, Z and any others are flattened into frames (time-major); C (channel) and P (position) are chosen.
The camera name and settings become a Micro-Manager-style metadata dict so the camera config can match them.
"""

from __future__ import annotations

import re

import numpy as np

from ._base import LibraryMovie, MovieError, movie_info
from .metadata import MovieChoiceError, choose, plain


def nd2_camera_metadata(text_info: dict) -> tuple[str, dict]:
    """``(camera name, {"<camera>-<setting>": value})`` parsed from nd2 ``text_info`` description/capturing."""
    desc = str(text_info.get("description", ""))
    m = re.search(r"Camera Name:\s*(.+)", desc)
    camera = m.group(1).strip() if m else ""
    if not camera:
        capturing = str(text_info.get("capturing", "")).strip().splitlines()
        camera = capturing[0].strip() if capturing else ""
    settings = {}
    block = str(text_info.get("capturing", "")) + "\n" + desc
    for line in block.splitlines():
        line = line.strip()
        mm = re.match(r"^\{?([A-Za-z][A-Za-z0-9 ./()-]*?)\}?:\s*(.+)$", line)
        if mm and mm.group(1) not in ("Camera Name", "Dimensions", "Metadata", "Name"):
            settings.setdefault(f"{camera}-{mm.group(1).strip()}", mm.group(2).strip())
    if "Readout Mode" in " ".join(settings) or "Conversion Gain" in " ".join(settings):
        mode = settings.get(f"{camera}-Readout Mode", "")
        gain = settings.get(f"{camera}-Conversion Gain", "")
        settings[f"{camera}-Sensitivity/DynamicRange"] = f"{mode} {gain}".strip()
    if f"{camera}-Readout Rate" in settings:
        settings[f"{camera}-PixelReadoutRate"] = settings[f"{camera}-Readout Rate"]
    return camera, settings


class Nd2Movie(LibraryMovie):
    """One channel/position of an ``.nd2`` file as ``(frames, height, width)``; the file is closed on close()."""

    def __init__(self, path, channel=None, position=None):
        import nd2

        self._open(path, nd2.ND2File, "ND2", channel, position)

    def _setup(self, channel, position):
        f = self._f
        sizes = dict(f.sizes)
        if f.is_rgb or sizes.get("S", 1) > 1:
            raise MovieError(f"{self.path}: RGB ND2 images are not single-molecule movies")
        try:
            ch_names = [c.channel.name for c in f.metadata.channels] if "C" in sizes else []
        except Exception:
            ch_names = []
        if "C" in sizes and len(ch_names) != sizes["C"]:
            ch_names = [str(i) for i in range(sizes["C"])]
        pos_names = [f"P{i}" for i in range(sizes["P"])] if "P" in sizes else []
        if (channel is None and len(ch_names) > 1) or (position is None and len(pos_names) > 1):
            raise MovieChoiceError(self.path, ch_names if channel is None else (),
                                   pos_names if position is None else ())
        ci = choose(self.path, "channel", ch_names, channel)
        pi = choose(self.path, "position", pos_names, position)
        # the file's frame sequence runs over all axes except C, Y, X (and S)
        seq_axes = [a for a in sizes if a not in ("C", "Y", "X", "S")]
        seq_shape = tuple(sizes[a] for a in seq_axes)
        frame_axes = [a for a in seq_axes if a != "P"]
        frame_shape = tuple(sizes[a] for a in frame_axes)
        frames = int(np.prod(frame_shape)) if frame_shape else 1
        grids = np.unravel_index(np.arange(frames), frame_shape) if frame_shape else ()
        full = []
        gi = iter(grids)
        for a in seq_axes:
            full.append(np.full(frames, pi) if a == "P" else next(gi))
        self._seq = np.ravel_multi_index(full, seq_shape).astype(np.intp) if seq_axes else np.zeros(1, np.intp)
        self._audit_frame_count(int(np.prod(seq_shape)) if seq_shape else 1)
        self._c_axis = [k for k in sizes if k not in seq_axes and k not in ("Y", "X", "S")].index("C") \
            if "C" in sizes else None
        self._ci = ci
        height, width = sizes["Y"], sizes["X"]
        self.shape = (frames, int(height), int(width))
        self.dtype = np.dtype(f.dtype).newbyteorder("=")
        self.channel, self.position = ci, pi
        self.channel_names, self.position_names = ch_names, pos_names
        text = f.text_info or {}
        camera, mm = nd2_camera_metadata(text)
        extra = {"Camera": camera or "None", "Micro-Manager Metadata": mm,
                 "nd2 Metadata": plain(dict(text.items()))}
        try:
            vx = f.voxel_size()
            if vx.x and vx.x > 0:
                extra["Pixelsize"] = float(vx.x) * 1000.0
        except Exception:
            pass
        if ch_names:
            extra["Channel"] = ch_names[ci]
        if pos_names:
            extra["Position"] = pos_names[pi]
        self.info = movie_info(self.shape, self.dtype, self.path, **extra)

    def _audit_frame_count(self, n_read: int):
        """Compare the images the file's attributes and chunk map count with the loops it reads; refuse a read
        that would silently drop images, or one whose images are missing from the file."""
        f = self._f
        counts = {}
        try:
            counts["its attributes (sequenceCount)"] = int(f.attributes.sequenceCount)
        except Exception:  # noqa: BLE001 (damaged attributes: the other counts decide)
            pass
        try:
            offsets = f._rdr._frame_offsets  # the image chunks the file's chunk map lists
            counts["its chunk map"] = sum(1 for o in (offsets.values() if isinstance(offsets, dict) else offsets)
                                          if o is not None)
        except Exception:  # noqa: BLE001 (private API of nd2; advisory)
            pass
        for where, n in counts.items():
            if n > n_read:
                raise MovieError(f"{self.path}: {where} counts {n} images but the experiment loops describe only "
                                 f"{n_read}; the file's metadata is damaged; refusing to read a part of the movie "
                                 "silently. Export the movie again from NIS-Elements.")
        chunks = counts.get("its chunk map")
        if chunks is not None and chunks < n_read:
            raise MovieError(f"{self.path}: the file is truncated or damaged: {chunks} of the {n_read} images its "
                             "experiment describes are in the file. Copy the file again from the acquisition "
                             "computer.")

    def _read(self, start, stop):
        out = np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        for k, seq in enumerate(self._seq[start:stop]):
            try:
                frame = self._f.read_frame(int(seq))
            except Exception as exc:
                raise MovieError(f"{self.path}: frame {start + k} cannot be read ({exc})") from None
            if self._c_axis is not None and frame.ndim == 3:
                frame = frame[self._ci]
            out[k] = frame
        return out

