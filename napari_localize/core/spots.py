"""Cutting box-sized spots out of frames."""

from __future__ import annotations

import numpy as np
from numba import njit


# a copy of a few MB per chunk: one thread keeps up with the fit, and a serial loop compiles in a fraction of
# the time of a parallel one (first run after installing)
@njit(cache=True, nogil=True)
def _cut(frames, local_frame, y, x, r, out):
    for n in range(local_frame.shape[0]):
        f = local_frame[n]
        for k in range(2 * r + 1):
            for m in range(2 * r + 1):
                out[n, k, m] = frames[f, y[n] - r + k, x[n] - r + m]


def cut_spots(frames, local_frame, y, x, box_size):
    """Return ``(n, box, box)`` float32 windows of ``frames`` centred on each (frame, y, x).

    ``local_frame`` indexes ``frames`` (not the movie). The centres must lie at least ``box_size // 2``
    pixels from every frame edge, which :func:`~napari_localize.core.identify.identify` guarantees.
    """
    r = box_size // 2
    out = np.empty((len(y), box_size, box_size), np.float32)
    if len(y):
        _cut(np.asarray(frames), np.asarray(local_frame, np.int64), np.asarray(y, np.int64),
             np.asarray(x, np.int64), r, out)
    return out
