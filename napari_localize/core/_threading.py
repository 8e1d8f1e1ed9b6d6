"""Choose numba's threading layer: a thread-safe one (TBB or OpenMP), see :mod:`napari_localize.core`."""

from __future__ import annotations

import os
import warnings

_safe_layer: str | None = None


def _loadable(layer: str) -> bool:
    try:
        if layer == "tbb":
            from numba.np.ufunc import tbbpool  # noqa: F401
        elif layer == "omp":
            from numba.np.ufunc import omppool  # noqa: F401
        else:
            return False
    except (ImportError, OSError):
        return False
    return True


def configure_threading_layer() -> str | None:
    """Set ``numba.config.THREADING_LAYER`` to ``"threadsafe"`` when TBB or OpenMP loads; return the layer that
    will be used (``None``: none is thread-safe here, numba's default stays and a warning says so)."""
    global _safe_layer
    import numba

    chosen = os.environ.get("NUMBA_THREADING_LAYER")
    if chosen:
        _safe_layer = chosen if chosen in ("tbb", "omp", "threadsafe") else None
        return _safe_layer
    for layer in ("tbb", "omp"):
        if _loadable(layer):
            numba.config.THREADING_LAYER = "threadsafe"
            _safe_layer = layer
            return layer
    warnings.warn("napari-localize: neither TBB nor OpenMP loads, so numba's workqueue threading layer is used; "
                  "parallel kernels called from two threads at once (preview during a run) may abort. "
                  "Install the 'tbb' package.",
                  stacklevel=2)
    return None
