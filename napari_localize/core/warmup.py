"""Compile, in other processes, the fit kernels a run will need, while this process starts the run.

numba compiles a kernel the first time it is called, once per machine (then it loads it from its disk cache),
and compiling holds one core. A 2D run needs the single-Gaussian fit kernel after the first chunk's
identification and, with the crowded-fields default, the multi-emitter kernel of the crowded refit after the
first chunk's screening (the larger compile). For each that is not in the cache yet, :func:`compile_ahead`
starts ``python -m napari_localize.core.warmup <model>:<noise>`` to compile it into the cache on another core;
:func:`wait_for` (called by the CPU engine before a kernel's first use) waits for that process, and the
kernel is then loaded from the cache instead of being compiled twice. The first run after installing is
shorter by those compile times; later runs find the kernels cached and start nothing.

Nothing depends on the other processes: if one fails, is killed or cannot write the cache, the run compiles
the kernel itself (the results are the same). ``NAPARI_LOCALIZE_COMPILE_AHEAD=0`` turns it off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

#: how long a run waits for the second process before it compiles the kernel itself
WAIT_S = 300.0

_LOCK = threading.Lock()
_STARTED: dict = {}  # (model, noise) -> subprocess.Popen


def enabled() -> bool:
    return os.environ.get("NAPARI_LOCALIZE_COMPILE_AHEAD", "1").strip().lower() not in ("0", "false", "no", "off")


def is_cached(model: int, noise: int) -> bool:
    """Whether the CPU fit kernel of (model, noise) is in numba's disk cache for this machine and this code
    (its index has an entry with this function's bytecode and this CPU). Also True when it is compiled here."""
    from .engine.cpu import kernel

    k = kernel(model, noise)
    if k.signatures:
        return True
    cache = getattr(k, "_cache", None)
    try:
        index = cache._cache_file._load_index()
        codegen = k.targetctx.codegen()
        return any(key == cache._index_key(key[0], codegen) for key in index)
    except Exception:  # noqa: BLE001  (no cache, or numba's private layout changed: treat as not cached)
        return False


def _cache_writable() -> bool:
    from .engine.cpu import kernel

    try:
        kernel(0, 0)._cache._impl.locator.ensure_cache_path()  # numba's own writability check
    except Exception:  # noqa: BLE001
        return False
    return True


def compile_ahead(pairs) -> list:
    """Start one background process compiling the fit kernels of ``pairs`` ((model, noise) tuples) that are
    neither cached nor already being compiled; return the pairs it compiles (empty: nothing started)."""
    if not enabled():
        return []
    from numba import config

    if config.DISABLE_JIT:
        return []
    from .engine import MODEL_GAUSS, MODEL_GAUSS_FIXED, MODEL_MULTI

    with _LOCK:
        todo = [(int(m), int(n)) for m, n in pairs if (int(m), int(n)) not in _STARTED
                and int(m) in (MODEL_GAUSS, MODEL_GAUSS_FIXED, MODEL_MULTI)]  # models compile_kernel can fit
        todo = [pair for pair in todo if not is_cached(*pair)]
        if not todo or not _cache_writable():
            return []
        args = [sys.executable, "-m", __name__] + [f"{m}:{n}" for m, n in todo]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, close_fds=True)
        except OSError:
            return []
        for pair in todo:
            _STARTED[pair] = proc
    return todo


def wait_for(model: int, noise: int, timeout: float = WAIT_S) -> None:
    """Before the first call of the (model, noise) kernel: wait for the process compiling it, if any (at most
    ``timeout`` s; a process still running then is left to finish on its own)."""
    with _LOCK:
        proc = _STARTED.get((int(model), int(noise)))
    if proc is None or proc.poll() is not None:
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def compile_kernel(model: int, noise: int) -> None:
    """Compile (or load) the CPU fit kernel of (model, noise) with the argument types every run passes: a
    small fit through :func:`~napari_localize.core.engine.fit_boxes` (which normalises every array). Models:
    the Gaussian, the fixed-width Gaussian and the multi-emitter Gaussian (the 3D models need a calibration)."""
    import numpy as np

    from .engine import MODEL_GAUSS_FIXED, MODEL_MULTI, NOISE_SCMOS, NOISE_WLSQ, fit_boxes

    box = 7
    spots = np.full((1, box, box), 10.0, np.float32)
    aux = {MODEL_MULTI: np.array([2.0]), MODEL_GAUSS_FIXED: np.array([1.0, 1.0])}.get(model)
    theta0 = None
    if model == MODEL_MULTI:
        theta0 = np.array([[2.5, 3.0, 500.0, 10.0, 1.0, 1.0, 4.0, 3.5, 400.0]])
    variance = np.ones((1, box, box)) if noise in (NOISE_SCMOS, NOISE_WLSQ) else None
    other = np.zeros((1, box, box))
    fit_boxes(spots, model, noise, theta0=theta0, aux=aux, other=other, variance=variance, max_iterations=2)


def localize_tiny_movie() -> None:
    """Localize a tiny simulated movie with MLE and LQ and the crowded-fields default: compiles (or loads) the
    identification, the single fits, the crowded screening and (through :func:`compile_ahead`, waited for)
    the multi-emitter fits of both methods: every kernel a plain 2D run uses."""
    from ..cli import suggested_min_net_gradient
    from .engine import MODEL_MULTI
    from .parameters import LocalizeParameters
    from .pipeline import fit_noise, localize
    from .simulate import SimulationParameters, simulate_frames

    sim = SimulationParameters(n_frames=2, height=24, width=24, spots_per_frame=2, photons=3000, bg=10,
                               baseline=100, min_separation=8, margin=5, seed=0)
    frames, _ = simulate_frames(sim)
    for method in ("mle", "lq"):
        p = LocalizeParameters(box_size=7, min_net_gradient=suggested_min_net_gradient(sim), baseline=100,
                               fit_method=method)
        localize(frames, p)
        wait_for(MODEL_MULTI, fit_noise(p))


def compile_in_background_process(timeout: float = WAIT_S) -> bool:
    """Run :func:`localize_tiny_movie` in a second process (``python -m napari_localize.core.warmup run``) and
    wait for it: the kernels land in numba's cache without this process compiling (compiling holds the GIL,
    which a viewer needs). True if it finished cleanly."""
    if not enabled():
        return False
    try:
        done = subprocess.run([sys.executable, "-m", __name__, "run"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def main(argv=None) -> int:
    """``run``: :func:`localize_tiny_movie`; ``M:N`` items: :func:`compile_kernel` of model M, noise N."""
    for item in (sys.argv[1:] if argv is None else argv):
        if item == "run":
            localize_tiny_movie()
            continue
        model, noise = (int(v) for v in item.split(":"))
        compile_kernel(model, noise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
