"""Numerical core: numpy + numba only.

numba's default ``workqueue`` threading layer aborts the process when two threads call parallel kernels at
once (the viewer's live preview while a run fits, Dask's worker threads). The core asks for a thread-safe
layer before any kernel runs: ``threadsafe`` takes TBB (the ``tbb`` dependency) or OpenMP, whichever loads.
``NUMBA_THREADING_LAYER`` set by the user wins.
"""

from ._threading import configure_threading_layer

configure_threading_layer()
