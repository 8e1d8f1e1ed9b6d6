"""The localization table: Picasso's field names, order and dtypes per fit method, and its sanity filter."""

from __future__ import annotations

import numpy as np

_BASE = [
    ("frame", "<u4"), ("x", "<f4"), ("y", "<f4"), ("photons", "<f4"), ("sx", "<f4"), ("sy", "<f4"),
    ("bg", "<f4"), ("lpx", "<f4"), ("lpy", "<f4"), ("ellipticity", "<f4"), ("net_gradient", "<f4"),
]
_MLE = [
    ("log_likelihood", "<f4"), ("iterations", "<u4"), ("photons_unc", "<f4"), ("bg_unc", "<f4"),
    ("sx_unc", "<f4"), ("sy_unc", "<f4"),
]
#: 3D fields, appended after the 2D fields of any method
Z_FIELDS = [("z", "<f4"), ("d_zcalib", "<f4"), ("lpz", "<f4")]

LOCS_DTYPES = {
    "lq": np.dtype(_BASE),
    "avg": np.dtype(_BASE),
    "mle": np.dtype(_BASE + _MLE),
}

#: columns that must be >= 0 where present (Picasso's ``ensure_sanity``)
NON_NEGATIVE = ("x", "y", "lpx", "lpy", "lpz", "photons", "ellipticity", "sx", "sy")


#: ours, after Picasso's fields when several emitters may share a box: emitters fitted jointly in that box, and
#: twice the log-likelihood gain of its last accepted emitter (0 for a box of one)
CROWDED_FIELDS = [("n_emitters", "<u4"), ("llr", "<f4")]


def locs_dtype(fit_method: str, max_emitters: int = 1) -> np.dtype:
    """Fields of a run's table: Picasso's for ``fit_method``, then :data:`CROWDED_FIELDS` if ``max_emitters > 1``."""
    dtype = LOCS_DTYPES[fit_method]
    if max_emitters > 1 and fit_method in ("mle", "lq"):
        dtype = np.dtype(dtype.descr + CROWDED_FIELDS)
    return dtype


def ellipticity(sx, sy):
    """(max - min) / max of the two widths, as Picasso defines it."""
    hi = np.maximum(sx, sy)
    lo = np.minimum(sx, sy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hi - lo) / hi


def sane(locs, width: int, height: int) -> np.ndarray:
    """Boolean mask of rows that Picasso's sanity filter keeps: all finite, inside the frame, non-negative."""
    keep = np.ones(len(locs), bool)
    for name in locs.dtype.names:
        col = locs[name]
        if col.dtype.kind == "f":
            keep &= np.isfinite(col)
    for name in NON_NEGATIVE:
        if name in locs.dtype.names:
            keep &= locs[name] >= 0
    keep &= locs["x"] < width
    keep &= locs["y"] < height
    return keep
