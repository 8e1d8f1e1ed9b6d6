"""Picasso ``.raw`` movies: headerless frames described by a ``<base>.yaml`` beside them."""

from __future__ import annotations

import os

import numpy as np
import yaml

from .. import safe_yaml
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
    try:
        docs = [d for d in safe_yaml.load_all(info_path) if d is not None]
    except yaml.YAMLError as exc:
        raise MovieError(f"{info_path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except (OSError, UnicodeError) as exc:
        raise MovieError(f"{info_path}: cannot be read ({exc})") from None
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
    from ..publish import write_text

    return write_text(info_path, yaml.safe_dump(doc, default_flow_style=False))


def _count(path, sidecar, key, value) -> int:
    """A positive integer from the sidecar, or a MovieError naming the key and the value."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and np.isfinite(value) and \
        float(value) == int(value) and 1 <= value <= 2**40
    if not ok:
        raise MovieError(f"{path}: {key} in {sidecar} must be a positive whole number, got {value!r}")
    return int(value)


class RawMovie(Movie):
    """A ``.raw`` movie read frame range by frame range; big-endian data is swapped per chunk read, never whole."""

    def __init__(self, path, info: dict | None = None):
        self.path = os.fspath(path)
        raw = dict(info) if info is not None else read_raw_info(path)
        sidecar = raw_info_path(self.path) if info is None else "the info given"
        order = raw["Byte Order"]
        if not isinstance(order, str) or order not in ("<", ">", "little", "big"):
            raise MovieError(f"{self.path}: Byte Order in {sidecar} must be '<' (little-endian) or '>' "
                             f"(big-endian), got {order!r}")
        order = {"little": "<", "big": ">"}.get(order, order)
        dtype_name = raw["Data Type"]
        try:
            if not isinstance(dtype_name, str):
                raise TypeError
            native = np.dtype(dtype_name)
        except TypeError:
            raise MovieError(f"{self.path}: unknown Data Type {dtype_name!r} in {sidecar}; use a numpy type name "
                             "such as uint16, uint8, int16, float32") from None
        if native.byteorder in "<>" or dtype_name.startswith(("<", ">", "=", "|")):
            raise MovieError(f"{self.path}: Data Type {dtype_name!r} in {sidecar} carries a byte order; write "
                             f"the type alone (e.g. {native.newbyteorder('=').name}) and the order as "
                             "'Byte Order: <' or '>'")
        if native.kind not in "uif" or native.itemsize > 8:
            raise MovieError(f"{self.path}: unsupported Data Type {native} in {sidecar} (need an integer or float "
                             "type such as uint16 or float32)")
        frames, height, width = (_count(self.path, sidecar, k, raw[k]) for k in ("Frames", "Height", "Width"))
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
