"""Metadata helpers shared by the movie readers: Micro-Manager flattening, channel/position choice."""

from __future__ import annotations

import json
import os

from ._base import MovieError


class MovieChoiceError(MovieError):
    """A movie holds several channels or positions and the caller did not choose one.

    Attributes
    ----------
    channels, positions : list of str
        The names of the choices (index ``i`` is what ``channel=i`` / ``position=i`` selects).
    """

    def __init__(self, path, channels=(), positions=()):
        self.path = os.fspath(path)
        self.channels = [str(c) for c in channels]
        self.positions = [str(p) for p in positions]
        parts = []
        if len(self.channels) > 1:
            listed = ", ".join(f"{i}: {n}" for i, n in enumerate(self.channels))
            parts.append(f"{len(self.channels)} channels ({listed}); choose one with channel=INT (CLI: --channel)")
        if len(self.positions) > 1:
            listed = ", ".join(f"{i}: {n}" for i, n in enumerate(self.positions))
            parts.append(f"{len(self.positions)} positions ({listed}); choose one with position=INT "
                         "(CLI: --position)")
        super().__init__(f"{self.path}: the movie has " + " and ".join(parts))


def choose(path, what: str, names, chosen):
    """Index of the chosen channel/position; ``None`` allowed only when there is a single one."""
    n = len(names)
    if chosen is None:
        return 0 if n <= 1 else None
    try:
        i = int(chosen)
    except (TypeError, ValueError):
        if str(chosen) in [str(x) for x in names]:
            return [str(x) for x in names].index(str(chosen))
        raise MovieError(f"{path}: {what} {chosen!r} is not an index or a name; choices: "
                         f"{', '.join(f'{j}: {x}' for j, x in enumerate(names))}") from None
    if not 0 <= i < max(n, 1):
        raise MovieError(f"{path}: {what} {i} does not exist; the movie has {max(n, 1)} {what}"
                         f"{'s' if max(n, 1) != 1 else ''} (0..{max(n, 1) - 1}): "
                         f"{', '.join(f'{j}: {x}' for j, x in enumerate(names)) or '0'}")
    return i


def flatten_propval(meta) -> dict:
    """Micro-Manager per-image metadata as a flat ``{key: value}`` dict.

    Micro-Manager 2.0 stores ``{"Camera-Gain": {"PropVal": "0", "PropType": ...}}``; 1.4 stores the value
    directly. Both become ``{"Camera-Gain": "0"}``; ``scopeDataKeys`` is dropped, nested groups (2.0's
    ``UserData``, ``Summary``) are skipped.
    """
    flat = {}
    if not isinstance(meta, dict):
        return flat
    for key, value in meta.items():
        if key == "scopeDataKeys":
            continue
        if isinstance(value, dict):
            if "PropVal" in value:
                value = value["PropVal"]
            elif key in ("UserData", "Summary", "Axes", "ScopeData"):
                continue
            else:
                continue
        if isinstance(value, (list, tuple)):
            value = list(value)
        flat[str(key)] = value
    return flat


def parse_mm_json(raw) -> dict:
    """JSON text of TIFF tag 51123 (bytes or str, trailing NULs allowed) as a dict; ``{}`` if unreadable."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, bytes):
        raw = raw.rstrip(b"\x00").decode("utf-8", "replace")
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw.rstrip("\x00"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def mm_pixelsize_nm(mm: dict, summary: dict | None = None):
    """Pixel size in nm from Micro-Manager ``PixelSizeUm`` / ``PixelSize_um`` (µm), or ``None``."""
    for source in (mm, summary or {}):
        for key in ("PixelSizeUm", "PixelSize_um"):
            try:
                value = float(source.get(key))
            except (TypeError, ValueError):
                continue
            if value > 0:
                return value * 1000.0
    return None


def plain(value):
    """A YAML-safe copy of ``value`` (numbers, strings, lists, dicts)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
