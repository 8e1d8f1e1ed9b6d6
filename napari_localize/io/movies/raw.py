"""Picasso ``.raw`` movies: headerless frames described by a ``<base>.yaml`` beside them."""

from __future__ import annotations

import os

import numpy as np
import yaml

from ._base import FrameFile, Movie, MovieError, movie_info

RAW_KEYS = ("Byte Order", "Data Type", "Frames", "Height", "Width")


def raw_info_path(path) -> str:
    return os.path.splitext(os.fspath(path))[0] + ".yaml"


def read_raw_info(path) -> dict:
    """The first YAML document beside a ``.raw`` file, checked for the keys a reader needs."""
    info_path = raw_info_path(path)
    if not os.path.exists(info_path):
        raise MovieError(
            f"{path}: no {os.path.basename(info_path)} beside it. Write one with the keys "
            "'Byte Order: <' (or '>'), 'Data Type: uint16', 'Frames: N', 'Height: H', 'Width: W' "
            f"at {info_path} (or use write_raw_info)."
        )
    with open(info_path) as fh:
        try:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        except yaml.YAMLError as exc:
            raise MovieError(f"{info_path}: not valid YAML ({exc})") from None
    if not docs or not isinstance(docs[0], dict):
        raise MovieError(f"{info_path}: empty; it needs {', '.join(RAW_KEYS)}")
    info = dict(docs[0])
    missing = [k for k in RAW_KEYS if k not in info]
    if missing:
        raise MovieError(f"{info_path}: missing {', '.join(missing)}")
    return info


def write_raw_info(path, byte_order, data_type, frames, height, width) -> str:
    """Write the ``.yaml`` that describes a ``.raw`` movie; return its path."""
    info_path = raw_info_path(path)
    doc = {"Byte Order": byte_order, "Data Type": str(np.dtype(data_type).name), "Frames": int(frames),
           "Height": int(height), "Width": int(width)}
    with open(info_path, "w") as fh:
        yaml.safe_dump(doc, fh, default_flow_style=False)
    return info_path


class RawMovie(Movie):
    """A ``.raw`` movie read frame range by frame range; big-endian data is swapped per chunk read, never whole."""

    def __init__(self, path, info: dict | None = None):
        self.path = os.fspath(path)
        raw = dict(info) if info is not None else read_raw_info(path)
        order = raw["Byte Order"]
        if order not in ("<", ">", "little", "big"):
            raise MovieError(f"{self.path}: Byte Order must be '<' or '>', got {order!r}")
        order = {"little": "<", "big": ">"}.get(order, order)
        try:
            native = np.dtype(str(raw["Data Type"]))
        except TypeError:
            raise MovieError(f"{self.path}: unknown Data Type {raw['Data Type']!r}") from None
        if native.kind not in "uif":
            raise MovieError(f"{self.path}: unsupported Data Type {native} (need an integer or float type)")
        frames, height, width = int(raw["Frames"]), int(raw["Height"]), int(raw["Width"])
        if min(frames, height, width) < 1:
            raise MovieError(f"{self.path}: Frames, Height and Width must be positive, got "
                             f"{frames}, {height}, {width}")
        on_disk = native.newbyteorder(order)
        expected = frames * height * width * on_disk.itemsize
        size = os.path.getsize(self.path)
        if size != expected:
            frame_bytes = height * width * on_disk.itemsize
            raise MovieError(
                f"{self.path}: the file has {size} bytes but {frames} frames of {height}x{width} {native} "
                f"need {expected} ({size / frame_bytes:.2f} frames of that size fit); check Frames, Height, "
                f"Width and Data Type in {raw_info_path(self.path)}"
            )
        self._file = FrameFile(self.path, 0, on_disk, (height, width))
        self.shape = (frames, height, width)
        self.dtype = native
        extra = {k: v for k, v in raw.items() if k not in RAW_KEYS}
        self.info = movie_info(self.shape, native, self.path, **extra)
        self.info["Byte Order"] = order

    def _read(self, start, stop):
        return self._file.read(start, stop, self.dtype)

    def close(self):
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
        self._file = None
