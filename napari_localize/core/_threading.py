"""Threads of the package: numba's threading layer (a thread-safe one, TBB or OpenMP, see
:mod:`napari_localize.core`) and the named thread pools the serial ``nogil`` kernels run on.

One pool per purpose (``"fit"``, ``"identify"``), not one for everything: a job of one pool may submit work to
another and wait for it (a crowded refit batch on the identification's pool calls the fit engine, which
shares its boxes over the fit pool); with a single fixed-size pool every worker could be waiting on jobs
queued behind it.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def pool(name: str, threads: int) -> ThreadPoolExecutor:
    """The thread pool for ``name`` with ``threads`` workers, created on first use (a new one if the thread
    count changed, e.g. ``NUMBA_NUM_THREADS`` lowered at run time)."""
    threads = max(1, int(threads))
    with _POOLS_LOCK:
        entry = _POOLS.get(name)
        if entry is None or entry[1] != threads:
            entry = _POOLS[name] = (ThreadPoolExecutor(threads, thread_name_prefix=f"napari-localize-{name}"),
                                    threads)
        return entry[0]


def run_shares(fn, n: int, shares: int, pool_name: str, threads: int) -> None:
    """Call ``fn(lo, hi)`` over ``[0, n)`` cut into ``shares`` contiguous shares: on this thread for one share,
    else on pool ``pool_name``; returns when all are done (the first error is raised)."""
    shares = max(1, min(int(shares), int(n)))
    if shares == 1:
        fn(0, n)
        return
    edges = [n * k // shares for k in range(shares + 1)]
    for job in [pool(pool_name, threads).submit(fn, a, b) for a, b in zip(edges[:-1], edges[1:])]:
        job.result()


def run_kernel(kernel, n: int, *args, pool_name: str, parallel: bool = True) -> None:
    """``kernel(lo, hi, *args)``, a serial ``nogil`` numba kernel, over ``[0, n)``: in two shares per numba
    thread on pool ``pool_name`` when ``parallel`` and numba has more than one thread, else on this thread.

    No share runs beforehand to compile the kernel: numba compiles (or loads) it once even when several
    threads call it first at the same time (its compiler lock, then its own check for the signature), and a
    kernel that adds into its outputs would add that share twice."""
    from numba import config

    threads = max(1, int(config.NUMBA_NUM_THREADS))
    shares = 2 * threads if parallel and threads > 1 else 1
    run_shares(lambda a, b: kernel(a, b, *args), n, shares, pool_name, threads)

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
