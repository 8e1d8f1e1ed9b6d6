"""sCMOS camera calibration files (Picasso 0.11's layout) and their diagnostic plot.

Layout, identical to what ``picasso camera-calibrate`` writes and ``picasso localize -cm`` reads:

* HDF5 datasets ``offset`` (ADU), ``variance`` (ADU²) and, when light movies were measured, ``gain``
  (ADU per photoelectron); float32, ``(height, width)``;
* the file attribute ``metadata``: one JSON string with everything else (``Height``, ``Width``, ``Frames``,
  ``model``, the summary numbers, ...). Our own entries (``Sensor origin``, ``Notices``, ...) are extra keys
  of the same JSON, which Picasso carries along without reading.

Written atomically (temporary file, then rename): a failed write never leaves half a file or destroys an
earlier calibration.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from ..core.camera_calibration import CameraCalibration, CameraCalibrationError
from ..core.errors import OutputError
from .publish import Publisher, describe_os_error

MAPS = ("offset", "variance", "gain")


class CameraCalibrationFileError(CameraCalibrationError):
    """A calibration file that cannot be read or written; the message names the file."""


def default_calibration_path(dark_movie_path) -> str:
    """``<dark movie base>_scmos_calib.hdf5``, Picasso's default name."""
    return os.path.splitext(os.fspath(dark_movie_path))[0] + "_scmos_calib.hdf5"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def save_camera_calibration(path, cal: CameraCalibration) -> str:
    """Write ``cal`` in Picasso 0.11's layout; returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CameraCalibrationFileError(f"{path}: the folder {folder} does not exist")
    meta = dict(cal.metadata)
    meta["Height"], meta["Width"] = (int(s) for s in cal.shape)
    if tuple(cal.origin) != (0, 0):
        meta["Sensor origin"] = list(cal.origin)
    meta["Path"] = os.path.abspath(path)
    with Publisher([path]) as pub:  # the one atomic publisher: no temp file left, an earlier file kept on failure
        try:
            with h5py.File(pub.temp(path), "w") as f:
                for name in MAPS:
                    data = getattr(cal, name)
                    if data is not None:
                        f.create_dataset(name, data=np.ascontiguousarray(data, np.float32))
                f.attrs["metadata"] = json.dumps(meta, default=_json_default)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, path)) from None
        pub.commit()
    return path


def load_camera_calibration(path) -> CameraCalibration:
    """Read a calibration written by napari-localize or by ``picasso camera-calibrate``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CameraCalibrationFileError(f"{path}: no such camera calibration file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CameraCalibrationFileError(f"{path}: not an HDF5 file ({exc}); a camera calibration is the "
                                         "_scmos_calib.hdf5 written by camera-calibrate") from None
    with f:
        missing = [n for n in ("offset", "variance") if n not in f]
        if missing or "metadata" not in f.attrs:
            what = ", ".join([f"dataset {m!r}" for m in missing] + (["attribute 'metadata'"]
                                                                     if "metadata" not in f.attrs else []))
            raise CameraCalibrationFileError(
                f"{path}: not an sCMOS camera calibration (missing {what}); make one with "
                "'napari-localize camera-calibrate DARK --light ...' or 'picasso camera-calibrate'")
        raw = f.attrs["metadata"]
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            meta = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise CameraCalibrationFileError(f"{path}: its 'metadata' attribute is not JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise CameraCalibrationFileError(f"{path}: its 'metadata' attribute is not a JSON object")
        maps = {}
        for name in MAPS:
            if name in f:
                ds = f[name]
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.dtype.kind not in "fiu":
                    raise CameraCalibrationFileError(
                        f"{path}: {name!r} must be a 2D numeric dataset, got "
                        f"{getattr(ds, 'shape', '?')} {getattr(ds, 'dtype', type(ds).__name__)}")
                maps[name] = ds[()].astype(np.float32)
    origin = meta.get("Sensor origin") or (0, 0)
    try:
        cal = CameraCalibration(maps["offset"], maps["variance"], maps.get("gain"), meta,
                                (int(origin[0]), int(origin[1])))
    except CameraCalibrationError as exc:
        raise CameraCalibrationFileError(f"{path}: {exc}") from None
    except (TypeError, ValueError, IndexError):
        raise CameraCalibrationFileError(f"{path}: 'Sensor origin' must be [row, column], got {origin!r}") from None
    cal.metadata["Path"] = os.path.abspath(path)
    return cal


def calibration_record(cal: CameraCalibration, placement: str | None = None) -> dict:
    """What the fit document of ``_locs.yaml`` records about the calibration a run used.

    The first keys are those Picasso 0.11 writes for ``localize -cm`` (``Camera calibration path``,
    ``... frames``, ``Camera offset source``, ``Camera gain source``, the median offset and variance and the
    hot-pixel count), so a reader of either program's files finds them; then the calibration's own metadata and
    which part of it lay under the movie.
    """
    m = cal.metadata
    rec = {"Camera calibration path": m.get("Path", "N/A"),
           "Camera calibration frames": m.get("Frames"),
           "Camera offset source": "per-pixel map",
           "Camera gain source": "per-pixel map" if cal.has_gain else "Sensitivity (scalar)",
           "Camera noise model": "sCMOS (Huang et al. 2013): per-pixel readout variance / gain^2"}
    for key in ("Offset median (ADU)", "Variance median (ADU^2)", "Hot pixels"):
        if key in m:
            rec[f"Camera calibration {key}"] = m[key]
    keep = ("Generated by", "model", "Height", "Width", "Dark movie", "Light movies", "Gain levels",
            "Hot pixel threshold (ADU^2)", "Gain median (ADU/e-)", "Sensor origin")
    rec["Camera calibration metadata"] = {k: m[k] for k in keep if k in m}
    if placement:
        rec["Camera calibration window"] = placement
    return json.loads(json.dumps(rec, default=_json_default))


# ------------------------------------------------------------------------------------------------ plot
def plot_path(calibration_path) -> str:
    return os.path.splitext(os.fspath(calibration_path))[0] + ".png"


def plot_camera_calibration(cal: CameraCalibration, png_path) -> str:
    """Maps, histograms (log counts, hot-pixel threshold marked) and the photon-transfer levels, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..core.camera_calibration import hot_pixel_threshold

    maps = [("offset", "offset (ADU)"), ("variance", "variance (ADU²)")]
    if cal.has_gain:
        maps.append(("gain", "gain (ADU/e⁻)"))
    fig = Figure(figsize=(4.2 * len(maps), 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(maps), squeeze=False)
    threshold = hot_pixel_threshold(cal.variance)
    for col, (name, label) in enumerate(maps):
        data = getattr(cal, name)
        ax = axes[0, col]
        lo, hi = np.percentile(data, [0.5, 99.5])
        im = ax.imshow(np.log10(data) if name == "variance" else data, cmap="magma",
                       vmin=np.log10(lo) if name == "variance" else lo,
                       vmax=np.log10(hi) if name == "variance" else hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label=("log10 " if name == "variance" else "") + label)
        ax.set_title(f"{name} map, median {np.median(data):.3g}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax = axes[1, col]
        values = data.ravel()
        if name == "variance":
            bins = np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-6, 80)
            ax.set_xscale("log")
        else:
            bins = 80
        ax.hist(values, bins=bins, color="tab:blue")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("pixels")
        if name == "variance":
            ax.axvline(threshold, color="tab:red", lw=1)
            ax.set_title(f"{int((cal.variance > threshold).sum())} hot pixels (> {threshold:.3g} ADU²)")
    m = cal.metadata
    fig.suptitle(f"{m.get('Frames', '?')} dark frames, {m.get('Gain levels', 0)} light levels"
                 + (f"; level medians {', '.join(f'{v:.0f}' for v in m['Level median signal (ADU)'])} ADU"
                    if m.get("Level median signal (ADU)") else ""), fontsize=10)
    fig.tight_layout()
    png_path = os.fspath(png_path)
    fig.savefig(png_path, dpi=110)
    return png_path
