"""Choice of the fit engine: the CPU (numba, every core) or a CUDA GPU (numba.cuda, one thread per spot).

The choice comes from the argument, else the environment variable ``NAPARI_LOCALIZE_DEVICE``:

``auto`` (default)
    the GPU when numba finds a usable CUDA device, else the CPU, silently.
``cpu``
    always the CPU.
``cuda``
    the GPU; a clear :class:`DeviceError` at the start of the run if there is none.

Only the MLE and LQ fits run on the GPU, and only for boxes up to :data:`MAX_BOX` pixels; anything else
runs on the CPU. Both engines fit the same model with the same algorithm (the engine, ``core/engine/``,
compiled for each), so their results agree to rounding. ``numba.cuda`` is imported only when the choice is not ``cpu``.
"""

from __future__ import annotations

import functools
import os

from . import psf

DEVICE_ENV = "NAPARI_LOCALIZE_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: largest box side (pixels) the CUDA kernel handles (its per-thread arrays have this fixed size)
MAX_BOX = 15
#: fit methods with a CUDA engine
CUDA_METHODS = ("mle", "lq")


class DeviceError(ValueError):
    """The requested fit device is unknown or not usable."""


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether numba can run CUDA kernels here, and why not.

    Any import or driver error means no GPU. Cached for the process. On Linux, a machine without the CUDA
    driver library (``libcuda.so``, which numba loads the same way) is answered without importing
    ``numba.cuda`` (~0.05 s of every run on a machine without a GPU).
    """
    if not _driver_library_present():
        return False, "no CUDA driver library (libcuda.so) on this machine"
    try:
        from numba import cuda

        if cuda.is_available():
            return True, ""
        return False, "numba found no CUDA driver or no CUDA GPU"
    except Exception as exc:  # noqa: BLE001 - any failure to load CUDA means "no GPU"
        return False, f"{type(exc).__name__}: {exc}"


def _driver_library_present() -> bool:
    """False only where numba could not load a CUDA driver either: Linux, no simulator, no
    ``NUMBA_CUDA_DRIVER``, and ``libcuda.so``/``libcuda.so.1`` found neither by the dynamic loader nor in the
    directories numba also searches."""
    import sys

    from numba.core import config

    if not sys.platform.startswith("linux") or config.ENABLE_CUDASIM or os.environ.get("NUMBA_CUDA_DRIVER"):
        return True
    import ctypes

    for folder in ("", "/usr/lib", "/usr/lib64", "/usr/lib/wsl/lib"):
        for name in ("libcuda.so", "libcuda.so.1"):
            try:
                ctypes.CDLL(os.path.join(folder, name))
            except OSError:
                continue
            return True
    return False


def cuda_available() -> bool:
    """True if a CUDA GPU is usable by numba (or the CUDA simulator is enabled)."""
    return cuda_status()[0]


def requested_device(choice: str | None = None) -> str:
    """The requested device, ``auto``, ``cpu`` or ``cuda``: ``choice`` or ``$NAPARI_LOCALIZE_DEVICE``."""
    source = "device" if choice else DEVICE_ENV
    value = choice if choice else os.environ.get(DEVICE_ENV, "") or "auto"
    value = value.strip().lower()
    if value not in DEVICE_CHOICES:
        raise DeviceError(f"{source} must be one of {', '.join(DEVICE_CHOICES)}, not {value!r}")
    return value


def check_device(choice: str | None = None) -> str:
    """Validate the requested device; raise :class:`DeviceError` if ``cuda`` is asked for without a GPU."""
    want = requested_device(choice)
    if want == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise DeviceError(
                f"the CUDA fit engine was requested ({DEVICE_ENV}=cuda or --device cuda) but no CUDA GPU is "
                f"usable ({why}); use 'auto' or 'cpu', or install a CUDA driver and numba-cuda "
                "(pip install 'napari-localize[gpu]')"
            )
    return want


def select_device(box_size: int, fit_method: str = "mle", choice: str | None = None) -> str:
    """The engine that fits: ``"cuda"`` or ``"cpu"``.

    Parameters
    ----------
    box_size : int
        Box side in pixels; boxes larger than :data:`MAX_BOX` are fitted on the CPU.
    fit_method : str
        ``mle``, ``lq`` or ``avg`` (``avg`` has no iterative fit and always runs on the CPU).
    choice : str, optional
        ``auto``, ``cpu`` or ``cuda``; default ``$NAPARI_LOCALIZE_DEVICE`` (else ``auto``).
    """
    want = check_device(choice)
    if want == "cpu" or fit_method not in CUDA_METHODS or int(box_size) > MAX_BOX:
        return "cpu"
    return "cuda" if cuda_available() else "cpu"


def fit_device(run_device: str, box_size: int) -> str:
    """The engine for one batch of boxes of a run on ``run_device``: the GPU only for boxes it handles
    (:data:`MAX_BOX`), else the CPU (a 3D run's z box is larger than its 2D box)."""
    return "cuda" if run_device == "cuda" and int(box_size) <= MAX_BOX else "cpu"


def fit_spots(spots, mode, eps, max_iterations, device: str | None = None, variance=None, crlb: bool = True):
    """:func:`psf.fit_spots` on the chosen engine (``device`` None: :func:`select_device` decides).

    Same arguments and returns as :func:`napari_localize.core.psf.fit_spots`.
    """
    if device is None:
        method = "mle" if mode == psf.MODE_POISSON else "lq"
        device = select_device(int(spots.shape[-1]), method)
    if device == "cuda" and int(spots.shape[-1]) <= MAX_BOX:
        return psf.fit_spots(spots, mode, eps, max_iterations, device="cuda", variance=variance, crlb=crlb)
    if device not in ("cpu", "cuda"):
        raise DeviceError(f"device must be 'cpu' or 'cuda', not {device!r}")
    return psf.fit_spots(spots, mode, eps, max_iterations, variance=variance, crlb=crlb)
