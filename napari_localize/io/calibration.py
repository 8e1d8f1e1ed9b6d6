"""Astigmatic z calibration files: Picasso's calibration YAML and a PNG plot of the fit.

The YAML holds exactly Picasso's keys (``Frame bounds``, ``Magnification factor``, ``Number of frames``,
``Path``, ``Step size in nm``, ``X Coefficients``, ``Y Coefficients``; coefficients highest power first), so
Picasso loads our calibrations and we load Picasso's.
"""

from __future__ import annotations

import os

import numpy as np
import yaml

from ..core.errors import LocalizeError
from ..core.zfit import ZCalibration
from . import safe_yaml
from .publish import Publisher, write_text


class CalibrationFileError(LocalizeError):
    """A calibration file that cannot be read or written; the message names the file."""


def calibration_paths(stack_path) -> tuple[str, str]:
    """Default output names beside a stack: ``<base>_3d_calib.yaml`` and ``.png``."""
    base = os.path.splitext(os.fspath(stack_path))[0] + "_3d_calib"
    return base + ".yaml", base + ".png"


def save_calibration(path, cal: ZCalibration) -> str:
    """Atomically write ``cal`` as Picasso's calibration YAML (sorted keys); returns the path."""
    path = os.fspath(path)
    if not path.lower().endswith((".yaml", ".yml")):
        raise CalibrationFileError(f"{path}: a z calibration is written as .yaml")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CalibrationFileError(f"{path}: the folder {folder} does not exist")
    write_text(path, yaml.safe_dump(cal.as_picasso_dict(), default_flow_style=False, sort_keys=True))
    return path


def load_calibration(path, magnification_factor: float | None = None) -> ZCalibration:
    """Read a calibration YAML (ours or Picasso's); ``magnification_factor`` overrides the stored one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CalibrationFileError(f"{path}: no such z calibration file")
    try:
        with open(path) as fh:
            d = safe_yaml.load(fh)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise CalibrationFileError(f"{path}: not a valid YAML z calibration ({exc})") from None
    if not isinstance(d, dict):
        raise CalibrationFileError(f"{path}: not a z calibration (expected a mapping with X/Y Coefficients)")
    try:
        return ZCalibration.from_picasso_dict(d, magnification_factor)
    except (ValueError, TypeError) as exc:
        raise CalibrationFileError(f"{path}: {exc}") from None


def plot_calibration(cal: ZCalibration, png_path) -> str:
    """Write a PNG of the calibration: widths vs height with the curves, residuals, z error per position.

    Uses the run's ``cal.diagnostics`` (from :func:`~napari_localize.core.zfit.calibrate_z` or
    :func:`~napari_localize.core.zfit.calibrate_z_beads`). No window is opened.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = cal.diagnostics
    if not d:
        raise CalibrationFileError("this calibration carries no run diagnostics to plot (loaded from a file?)")
    fig = Figure(figsize=(12, 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    z = d["z"]
    lo, hi = cal.z_range
    zz = np.linspace(lo, hi, 400)
    wx, wy = cal.widths(zz)
    spot_z = d["spot_z_true"]

    ax = axes[0, 0]
    ax.plot(spot_z, d["spot_sx"], ".", ms=1.5, color="tab:blue", alpha=0.3)
    ax.plot(spot_z, d["spot_sy"], ".", ms=1.5, color="tab:red", alpha=0.3)
    ax.plot(z, d["mean_sx"], "o", ms=3, color="tab:blue", label="mean sx")
    ax.plot(z, d["mean_sy"], "o", ms=3, color="tab:red", label="mean sy")
    ax.plot(zz, wx, "k-", lw=1)
    ax.plot(zz, wy, "k--", lw=1, label="degree-6 fit")
    ax.set(xlabel="height (nm, calibration)", ylabel="width (pixels)", title="widths vs height")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    rx = d["spot_sx"] - np.polyval(cal.x_coefficients, spot_z)
    ry = d["spot_sy"] - np.polyval(cal.y_coefficients, spot_z)
    ax.plot(spot_z, rx, ".", ms=1.5, color="tab:blue", alpha=0.4, label="sx")
    ax.plot(spot_z, ry, ".", ms=1.5, color="tab:red", alpha=0.4, label="sy")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="height (nm)", ylabel="width - fit (pixels)", title="residuals")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    ax.plot(d["spot_sx"], d["spot_sy"], ".", ms=1.5, alpha=0.3)
    ax.plot(wx, wy, "k-", lw=1)
    ax.set(xlabel="sx (pixels)", ylabel="sy (pixels)", title="sx-sy with the calibration curve")

    ax = axes[1, 0]
    ax.plot(spot_z, d["spot_z_fit"], ".", ms=1.5, alpha=0.3)
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set(xlabel="true height (nm)", ylabel="fitted height (nm)", title="z fit of the calibration spots")

    ax = axes[1, 1]
    ax.plot(z, d["z_rmse"], "-", label="RMSE")
    ax.plot(z, d["z_bias"], "-", label="bias")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="height (nm)", ylabel="z error (nm)",
           title=f"z error per position (RMSE {d['z_precision_nm']:.1f} nm)")
    ax.legend(fontsize=7)

    ax = axes[1, 2]
    ax.bar(z, d["count"], width=abs(cal.step_nm))
    ax.set(xlabel="height (nm)", ylabel="spots used", title="spots per position")
    fig.suptitle(d.get("method", ""), fontsize=9)
    fig.tight_layout()
    png_path = os.fspath(png_path)
    with Publisher([png_path]) as pub:
        fig.savefig(pub.temp(png_path), dpi=150, format="png")
        pub.commit()
    return png_path
