"""Numerical core: numpy + numba only.

numba's default ``workqueue`` threading layer aborts the process when two threads call parallel kernels at
once (the viewer's live preview while a run fits, Dask's worker threads). The core asks for a thread-safe
layer before any kernel runs: ``threadsafe`` takes TBB (the ``tbb`` dependency) or OpenMP, whichever loads.
``NUMBA_THREADING_LAYER`` set by the user wins.
"""

from ._threading import configure_threading_layer

configure_threading_layer()

# numba's typeof of an array looks at ``np.ma``, which numpy 2 imports on first use. Imported that way on a
# worker thread (a Dask task, the prefetch or identification threads) while another thread builds an AST (an
# import, ``inspect.signature``), CPython 3.11 can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905; a Dask batch test lost a movie to it): import it once, here, on the
# importing thread (~10 ms)
import numpy.ma  # noqa: E402,F401
