"""The 2D Gaussian fit on a CUDA GPU: :func:`napari_localize.core.psf.fit_spots` with ``device="cuda"``.

The kernel is the engine's (:mod:`napari_localize.core.engine.cuda`), compiled from the same source as the
CPU driver. Import this module only through :mod:`napari_localize.core.device` (it imports ``numba.cuda``).
"""

from __future__ import annotations

from .engine.cuda import BATCH_BYTES, THREADS, fit_kernel  # noqa: F401
from .psf import fit_spots as _fit_spots


def fit_spots(spots, mode, eps, max_iterations, batch_spots: int | None = None):
    """Fit every spot of a ``(n, box, box)`` stack (photons) on the GPU; returns as
    :func:`napari_localize.core.psf.fit_spots`. Spots go to the GPU in batches of ``batch_spots``
    (default: about 256 MB of spots per batch)."""
    return _fit_spots(spots, mode, eps, max_iterations, device="cuda", batch_spots=batch_spots)
