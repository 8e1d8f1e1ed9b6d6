"""Localizations to and from CSV: a plain table, and ThunderSTORM's CSV (read by ThunderSTORM, locan,
napari-storm, SMAP and Picasso's ``csv2hdf``).

ThunderSTORM's CSV: a header of quoted names with units (``"x [nm]"``), one row per localization, positions
and widths in nm, frames 1-based, ``intensity`` and ``offset`` in photons. Our columns map as::

    id                      1..n
    frame                   frame + 1
    x [nm], y [nm]          (x, y) * pixel size        (our pixel-centre convention: pixel i spans i +- 0.5)
    z [nm]                  z (3D)
    sigma [nm]              (sx + sy) / 2 * pixel size  (2D) -- sigma1 [nm], sigma2 [nm]: sx, sy (3D)
    intensity [photon]      photons
    offset [photon]         bg (photons per pixel)
    bkgstd [photon]         sqrt(bg) (the shot noise of the background)
    uncertainty_xy [nm]     (lpx + lpy) / 2 * pixel size (the name Picasso's import reads)

Importing accepts ThunderSTORM's own variants (``uncertainty [nm]``, ``sigma [nm]`` or ``sigma1``/``sigma2``,
``bkgstd``, ``chi2``, ``detections``...), keeps unknown numeric columns, and treats frames as 1-based unless a
frame 0 occurs (Picasso exports 0-based frames).
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from ..core.locs import ellipticity, locs_dtype

FORMATS = ("csv", "thunderstorm")


class ExportError(ValueError):
    """A table that cannot be exported or imported; the message names the file."""


def export_paths(locs_path, fmt: str, output=None) -> str:
    """Default output: ``<locs base>.csv`` (plain) or ``<locs base>_ts.csv`` (ThunderSTORM)."""
    if output is not None:
        return os.fspath(output)
    base = os.path.splitext(os.fspath(locs_path))[0]
    return base + ("_ts.csv" if fmt == "thunderstorm" else ".csv")


def _atomic_text(path, write):
    import io

    from .publish import write_text

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"{path}: the folder {folder} does not exist")
    buf = io.StringIO(newline="")
    write(buf)
    return write_text(path, buf.getvalue())  # the one atomic publisher


def _fmt(col: np.ndarray) -> list[str]:
    if col.dtype.kind in "iu":
        return [str(int(v)) for v in col]
    return [f"{v:.8g}" for v in col.astype(np.float64)]  # 8 digits: 0.01 nm up to 100 um; nan, inf as such


def write_table(path, columns: dict[str, np.ndarray], quote_header: bool = True) -> str:
    """Write named columns as CSV (quoted header names, numeric rows), atomically."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    block = 65536

    def write(fh):
        if quote_header:
            fh.write(",".join('"' + name.replace('"', '""') + '"' for name in names) + "\n")
        else:
            fh.write(",".join(names) + "\n")
        for a in range(0, n, block):
            cols = [_fmt(np.asarray(columns[name][a:a + block])) for name in names]
            fh.write("".join(",".join(row) + "\n" for row in zip(*cols)))

    return _atomic_text(os.fspath(path), write)


def export_csv(path, locs) -> str:
    """Every column of the table, in its own units (positions and widths in camera pixels, frames 0-based)."""
    return write_table(path, {name: locs[name] for name in locs.dtype.names}, quote_header=False)


def thunderstorm_columns(locs, pixelsize: float) -> dict[str, np.ndarray]:
    """ThunderSTORM's columns (see the module docstring) from a localization table."""
    if not pixelsize or not pixelsize > 0:
        raise ExportError("the pixel size (nm) is needed to export to ThunderSTORM; it is not in the metadata: "
                          "give --pixelsize")
    names = locs.dtype.names
    px = float(pixelsize)
    n = len(locs)
    cols = {"id": np.arange(1, n + 1, dtype=np.int64), "frame": np.asarray(locs["frame"], np.int64) + 1,
            "x [nm]": np.asarray(locs["x"], np.float64) * px, "y [nm]": np.asarray(locs["y"], np.float64) * px}
    three_d = "z" in names
    if three_d:
        cols["z [nm]"] = np.asarray(locs["z"], np.float64)
    if "sx" in names and "sy" in names:
        sx = np.asarray(locs["sx"], np.float64) * px
        sy = np.asarray(locs["sy"], np.float64) * px
        if three_d:
            cols["sigma1 [nm]"] = sx
            cols["sigma2 [nm]"] = sy
        else:
            cols["sigma [nm]"] = (sx + sy) / 2
    if "photons" in names:
        cols["intensity [photon]"] = np.asarray(locs["photons"], np.float64)
    if "bg" in names:
        bg = np.asarray(locs["bg"], np.float64)
        cols["offset [photon]"] = bg
        cols["bkgstd [photon]"] = np.sqrt(np.maximum(bg, 0))
    if "lpx" in names and "lpy" in names:
        cols["uncertainty_xy [nm]"] = (np.asarray(locs["lpx"], np.float64)
                                       + np.asarray(locs["lpy"], np.float64)) / 2 * px
    if three_d and "lpz" in names:
        cols["uncertainty_z [nm]"] = np.asarray(locs["lpz"], np.float64)
    if "len" in names:
        cols["detections"] = np.asarray(locs["len"], np.int64)
    return cols


def export_thunderstorm(path, locs, pixelsize: float) -> str:
    """ThunderSTORM CSV of ``locs`` (pixel size in nm)."""
    return write_table(path, thunderstorm_columns(locs, pixelsize))


# ------------------------------------------------------------------------------------------------ import
_UNIT = re.compile(r"^\s*(?P<name>[^\[]+?)\s*(\[(?P<unit>[^\]]*)\])?\s*$")
_TO_NM = {"nm": 1.0, "um": 1000.0, "µm": 1000.0, "px": None, "pixel": None, "": None}


def is_thunderstorm_csv(path) -> bool:
    """True if the first line of ``path`` is a header naming ``x [nm]`` (or µm) and ``y [nm]``."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, csv.Error, StopIteration):
        return False
    names = {h.strip().lower() for h in header}
    return any(f"x [{u}]" in names for u in ("nm", "um", "µm")) and any(
        f"y [{u}]" in names for u in ("nm", "um", "µm"))


def read_thunderstorm(path, pixelsize: float) -> tuple[np.ndarray, dict]:
    """A ThunderSTORM CSV as a localization table (Picasso's LQ columns, 3D columns if ``z`` is there,
    then any other numeric columns) in camera pixels of ``pixelsize`` nm; returns ``(locs, info)``."""
    path = os.fspath(path)
    if not pixelsize or not pixelsize > 0:
        raise ExportError(f"{path}: a pixel size (nm) > 0 is needed to convert nm to camera pixels")
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = [r for r in reader if r and any(c.strip() for c in r)]
    except StopIteration:
        raise ExportError(f"{path}: empty file, not a ThunderSTORM CSV") from None
    except (OSError, csv.Error) as exc:
        raise ExportError(f"{path}: cannot be read as CSV ({exc})") from None
    cols = {}
    for k, raw in enumerate(header):
        m = _UNIT.match(raw)
        name = (m["name"] if m else raw).strip().lower()
        unit = ((m["unit"] if m else "") or "").strip().lower()
        try:
            values = np.array([float(r[k]) if k < len(r) and r[k].strip() else np.nan for r in rows])
        except ValueError:
            continue  # text column
        cols[name] = (values, unit)
    for need in ("x", "y"):
        if need not in cols:
            raise ExportError(f"{path}: no '{need} [nm]' column; ThunderSTORM CSVs name them \"x [nm]\", "
                              f"\"y [nm]\" (found {header})")

    def length_px(name, default=None):
        if name not in cols:
            return default
        values, unit = cols[name]
        scale = _TO_NM.get(unit, 1.0)  # nm per unit; None: already camera pixels
        return values if scale is None else values * scale / pixelsize

    n = len(rows)
    three_d = "z" in cols
    dtype = locs_dtype("lq").descr + ([("z", "<f4"), ("lpz", "<f4")] if three_d else [])
    used = {"id", "frame", "x", "y", "z", "sigma", "sigma1", "sigma2", "intensity", "offset",
            "uncertainty", "uncertainty_xy", "uncertainty_z", "bkgstd"}
    extra = [(name, values) for name, (values, _) in cols.items() if name not in used]
    extra_names = []
    for name, _ in extra:
        clean = re.sub(r"\W+", "_", name).strip("_") or "column"
        while clean in [d[0] for d in dtype] or clean in extra_names:
            clean += "_"
        extra_names.append(clean)
    dtype = dtype + [(c, "<f4") for c in extra_names]
    locs = np.zeros(n, dtype)
    frame = cols["frame"][0] if "frame" in cols else np.zeros(n)
    if n and np.nanmin(frame) >= 1:
        frame = frame - 1  # ThunderSTORM counts frames from 1
    locs["frame"] = np.nan_to_num(frame).astype(np.uint32)
    locs["x"] = length_px("x")
    locs["y"] = length_px("y")
    if three_d:
        locs["z"] = cols["z"][0] * (_TO_NM.get(cols["z"][1]) or 1.0)
    sx = length_px("sigma1", length_px("sigma"))
    sy = length_px("sigma2", length_px("sigma"))
    if sx is not None:
        locs["sx"] = sx
    if sy is not None:
        locs["sy"] = sy
    if "intensity" in cols:
        locs["photons"] = cols["intensity"][0]
    if "offset" in cols:
        locs["bg"] = cols["offset"][0]
    lp = length_px("uncertainty_xy", length_px("uncertainty"))
    if lp is not None:
        locs["lpx"] = locs["lpy"] = lp
    if three_d and "uncertainty_z" in cols:
        locs["lpz"] = cols["uncertainty_z"][0]
    locs["ellipticity"] = np.nan_to_num(ellipticity(locs["sx"], locs["sy"]))
    for clean, (_, values) in zip(extra_names, extra):
        locs[clean] = values
    order = np.argsort(locs["frame"], kind="stable")
    locs = locs[order]
    info = {"Frames": int(locs["frame"].max()) + 1 if n else 0,
            "Width": int(np.ceil(np.nanmax(locs["x"]) + 1)) if n else 0,
            "Height": int(np.ceil(np.nanmax(locs["y"]) + 1)) if n else 0,
            "Pixelsize": float(pixelsize), "File": path, "Generated by": "ThunderSTORM CSV import"}
    return locs, info


def sidecar_pixelsize(path) -> float | None:
    """``Pixelsize`` from a ``<base>.yaml`` beside a CSV (we write one with every export), else ``None``."""
    import yaml

    side = os.path.splitext(os.fspath(path))[0] + ".yaml"
    if not os.path.isfile(side):
        return None
    try:
        with open(side) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError):
        return None
    for d in reversed(docs):
        value = d.get("Pixelsize")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None
