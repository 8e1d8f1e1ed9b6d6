"""Compile, in other processes, the kernels a run will need, while this process starts the run.

numba compiles a kernel the first time it is called, once per machine (then it loads it from its disk cache),
and compiling holds one core. A 2D run needs the single-Gaussian fit kernel after the first chunk's
identification and, with the crowded-fields default, the crowded screening's kernels (for the movie's dtype)
after the first chunk's single fits, then the multi-emitter fit kernel of the crowded refit. For each that is
not in the cache yet, :func:`compile_ahead` starts ``python -m napari_localize.core.warmup <job> ...`` (``M:N``:
the fit kernel of model M, noise N; ``crowded:uint16``: the screening's kernels) to compile its jobs, in order,
into the cache on another core (a run starts two: the fit kernels, the screening); :func:`wait_for` /
:func:`wait_for_crowded` (called by the CPU engine and the crowded refit before a kernel's first use) wait until
that process has put the job into the cache, and the kernel is then loaded from the cache instead of being
compiled twice. The first run after installing is shorter by those compile times; later runs find the
kernels cached and start nothing.

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
_CHECKS: list = []  # threads of start_compile_ahead still deciding what to compile


def enabled() -> bool:
    return os.environ.get("NAPARI_LOCALIZE_COMPILE_AHEAD", "1").strip().lower() not in ("0", "false", "no", "off")


def in_cache(dispatcher, accept) -> bool:
    """Whether numba's disk cache of ``dispatcher`` (a ``cache=True`` kernel) holds an entry for this code and
    this CPU whose signature ``accept(signature)`` takes, or the kernel is compiled here for one."""
    if any(accept(sig) for sig in dispatcher.signatures):
        return True
    cache = getattr(dispatcher, "_cache", None)
    try:
        index = cache._cache_file._load_index()
        codegen = dispatcher.targetctx.codegen()
        return any(key == cache._index_key(key[0], codegen) and accept(key[0]) for key in index)
    except Exception:  # noqa: BLE001  (no cache, or numba's private layout changed: treat as not cached)
        return False


def is_cached(model: int, noise: int) -> bool:
    """Whether the CPU fit kernel of (model, noise) is in numba's disk cache for this machine and this code
    (its index has an entry with this function's bytecode and this CPU). Also True when it is compiled here."""
    from .engine.cpu import kernel

    return in_cache(kernel(model, noise), lambda sig: True)


def crowded_job(frames_dtype) -> tuple:
    """The job that compiles the crowded refit's screening and residual kernels for frames of this dtype."""
    import numpy as np

    return ("crowded", np.dtype(frames_dtype).name)


def _is_cached(job) -> bool:
    if job[0] == "crowded":
        from .crowded import kernels_cached

        return kernels_cached(job[1])
    return is_cached(*job)


def _cache_writable() -> bool:
    from .engine.cpu import kernel

    try:
        kernel(0, 0)._cache._impl.locator.ensure_cache_path()  # numba's own writability check
    except Exception:  # noqa: BLE001
        return False
    return True


def _job(item) -> tuple | None:
    # (model, noise) of a fit kernel compile_kernel can fit, or ("crowded", dtype name); None: not a job
    from .engine import MODEL_GAUSS, MODEL_GAUSS_FIXED, MODEL_MULTI

    if len(item) == 2 and item[0] == "crowded":
        import numpy as np

        return crowded_job(item[1]) if np.dtype(item[1]).kind in "uif" else None
    m, n = (int(v) for v in item)
    return (m, n) if m in (MODEL_GAUSS, MODEL_GAUSS_FIXED, MODEL_MULTI) else None


def compile_ahead(jobs, nice: int = 0) -> list:
    """Start one background process compiling, in order, the jobs of ``jobs`` that are neither cached nor
    already being compiled; return the jobs it compiles (empty: nothing started). A job is a (model, noise)
    fit kernel or :func:`crowded_job` (the crowded refit's kernels for one movie dtype). ``nice``: the
    process's niceness increment, so that a process compiling what a run needs later yields the cores to
    the run and to what it needs first (on two cores, that order is most of the first run's time)."""
    if not enabled():
        return []
    from numba import config

    if config.DISABLE_JIT:
        return []
    with _LOCK:
        todo = []
        for job in (_job(item) for item in jobs):
            if job is not None and job not in _STARTED and job not in todo and not _is_cached(job):
                todo.append(job)
        if not todo or not _cache_writable():
            return []
        args = [sys.executable, "-m", __name__, f"--nice={int(nice)}"] + [":".join(str(v) for v in j) for j in todo]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, close_fds=True)
        except OSError:
            return []
        for job in todo:
            _STARTED[job] = proc
    return todo


def start_compile_ahead(groups) -> threading.Thread | None:
    """:func:`compile_ahead` of each ``(jobs, nice)`` of ``groups``, in order, on a background thread, so that
    a run reads and identifies its first chunk meanwhile: the check builds each fit kernel's specialised
    source (~0.2 s of Python) and reads numba's cache index. :func:`wait_for` and :func:`wait_for_crowded`
    wait for the thread first; :func:`join_checks` at the end of a run. Returns the thread (None: disabled)."""
    if not enabled():
        return None

    def check():
        for jobs, nice in groups:
            try:
                compile_ahead(jobs, nice=nice)
            except Exception:  # noqa: BLE001  (only a head start: the run compiles what it needs itself)
                pass

    thread = threading.Thread(target=check, name="napari-localize-compile-ahead", daemon=True)
    with _LOCK:
        # started under the lock: join_checks (another thread's run) never sees a thread not yet started
        thread.start()
        _CHECKS.append(thread)
    return thread


def join_checks() -> None:
    """Wait for the threads of :func:`start_compile_ahead` (they have then started every process they
    decided on)."""
    with _LOCK:
        pending = [t for t in _CHECKS if t is not threading.current_thread()]
    for t in pending:
        t.join()
    with _LOCK:
        _CHECKS[:] = [t for t in _CHECKS if t.is_alive()]


def _wait(job, timeout: float) -> None:
    # until the process compiling ``job`` has finished it (its entry is in the cache: a process may compile
    # more jobs after it) or has ended
    join_checks()
    with _LOCK:
        proc = _STARTED.get(job)
    if proc is None or proc.poll() is not None:
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not _is_cached(job):
        time.sleep(0.05)


def wait_for(model: int, noise: int, timeout: float = WAIT_S) -> None:
    """Before the first call of the (model, noise) kernel: wait for the process compiling it, if any (at most
    ``timeout`` s; a process still running then is left to finish on its own)."""
    _wait((int(model), int(noise)), timeout)


def wait_for_crowded(frames_dtype, timeout: float = WAIT_S) -> None:
    """Before the crowded screening's first call: wait for the process compiling its kernels, if any."""
    _wait(crowded_job(frames_dtype), timeout)


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
    """``run``: :func:`localize_tiny_movie`; ``M:N`` items: :func:`compile_kernel` of model M, noise N;
    ``crowded:DTYPE``: :func:`~napari_localize.core.crowded.compile_kernels` for frames of that dtype."""
    for item in (sys.argv[1:] if argv is None else argv):
        if item.startswith("--nice="):
            try:
                os.nice(int(item.split("=", 1)[1]))
            except (OSError, AttributeError, ValueError):  # not allowed or not POSIX: compile at normal priority
                pass
            continue
        if item == "run":
            localize_tiny_movie()
            continue
        kind, value = item.split(":")
        if kind == "crowded":
            from .crowded import compile_kernels

            compile_kernels(value)
            continue
        compile_kernel(int(kind), int(value))
    return 0


if __name__ == "__main__":
    code = main()
    import gc

    gc.freeze()  # a compile leaves ~10^6 objects: the shutdown's collection of them cost ~0.4 s of CPU (cli.py)
    sys.exit(code)
