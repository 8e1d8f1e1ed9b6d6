"""Localize in a napari ``thread_worker``: progress per chunk, a working Cancel, files written only on success.

The generator :func:`localize_steps` is the whole run: it drives the one run of :mod:`napari_localize.core.run`
into memory (and, for a movie with a file, into the streamed ``_locs.hdf5`` beside it), yields
``(frames_done, frames_total)`` after each chunk and returns the result. The heavy work is numba code that releases
the GIL, so the viewer stays responsive. Cancel sets a :class:`CancelToken` that the run checks before every chunk;
the chunks are small (see :data:`GUI_CHUNK_PIXELS`) so a cancel lands within a fraction of a second, and the file is
only published after the last chunk, so a cancelled run writes nothing.
"""

from __future__ import annotations

import os

import numpy as np

from ..api import calibrate_z_steps
from ..core.pipeline import CancelToken, LocalizeCancelled, chunk_frames_for
from ..core.run import MemorySink, TeeSink, ZRun, run_dtype, run_steps
from ..io.locs import LocsWriter, choice_suffix, locs_paths

#: pixels per chunk in the viewer: 1 Mpx (64 frames of 128x128) keeps cancel and progress prompt
GUI_CHUNK_PIXELS = 1 << 20


class Cancelled:
    """Returned by :func:`localize_steps` when the user cancelled; nothing was written."""


def localize_steps(movie, p, cancel: CancelToken, movie_path: str | None, chunk_frames: int | None = None,
                   close_movie: bool = False, z=None, suffix: str = "", camera=None):
    """Generator: localize ``movie`` with ``p``, yielding ``(frames_done, frames_total)`` per chunk.

    Returns ``(locs, info, stats, paths)``; ``paths`` is ``None`` when ``movie_path`` is ``None`` (nothing
    written), else the ``_locs.hdf5`` and ``_locs.yaml`` written beside the movie. Returns a
    :class:`Cancelled` instance if ``cancel`` was set before the end. ``close_movie``: close ``movie`` when
    done, whatever the outcome. ``z``: ``(calibration, z_options, calibration_path)`` for a 3D run
    (:func:`~napari_localize.api.iter_localize_3d`, the code of ``localize_movie_3d``), ``None`` for 2D.
    ``suffix``: file names ``<movie><suffix>_locs.hdf5`` (as ``localize --suffix``).
    ``camera``: per-pixel sCMOS maps (:func:`~napari_localize.api.camera_maps`).
    """
    try:
        return (yield from _localize_steps(movie, p, cancel, movie_path, chunk_frames, z, suffix, camera))
    finally:
        if close_movie:
            movie.close()


def _localize_steps(movie, p, cancel, movie_path, chunk_frames, z=None, suffix="", camera=None):
    # the one run (core/run.py) into memory, and with a movie path also into the streamed _locs.hdf5 beside it
    n_frames, height, width = movie.shape
    p.validate(n_frames, height, width)
    step = chunk_frames or max(1, min(chunk_frames_for(height, width), GUI_CHUNK_PIXELS // (height * width)))
    zrun = None if z is None else ZRun(*z)
    sink = MemorySink(run_dtype(p, zrun))
    if movie_path is not None:
        # the panel's suffix (by default the channel's name), else _ch<k>/_pos<k>: channels never collide
        sink = TeeSink(sink, LocsWriter(locs_paths(movie_path, suffix or choice_suffix(movie))[0], sink.dtype))
    try:
        res = yield from run_steps(movie, p, sink, zrun, cancel, step, camera=camera)
    except LocalizeCancelled:
        return Cancelled()
    return res.locs, res.info, res.stats, res.paths


def calibrate_steps(movie, p, step_nm: float, magnification_factor: float, track_beads: bool, cancel: CancelToken,
                    stack_path: str | None, chunk_frames: int | None = None, close_movie: bool = False):
    """Generator: calibrate astigmatism from the bead z-stack ``movie``, yielding ``(frames_done, total)``.

    The frame range of ``p`` (if set) gives the calibration's frame bounds, as ``calibrate-z --frames`` does.
    Returns ``(calibration, yaml_path, png_path)``: with a ``stack_path`` the calibration YAML and its PNG are
    written beside the stack (the names of ``napari-localize calibrate-z``), else both paths are ``None``.
    Returns :class:`Cancelled` if cancelled before the end (nothing written).
    """
    from ..io.calibration import calibration_paths, plot_calibration, save_calibration

    try:
        n_frames, height, width = movie.shape
        p.validate(n_frames, height, width)
        step = chunk_frames or max(1, min(chunk_frames_for(height, width),
                                          GUI_CHUNK_PIXELS // (height * width)))
        path = os.path.abspath(stack_path) if stack_path else None
        try:
            cal = yield from calibrate_z_steps(movie, p, step_nm, magnification_factor, p.frame_range,
                                               track_beads, path, cancel, step)
        except LocalizeCancelled:
            return Cancelled()
        if cancel.cancelled:
            return Cancelled()
        if stack_path is None:
            return cal, None, None
        yaml_path, png_path = calibration_paths(stack_path)
        save_calibration(yaml_path, cal)
        plot_calibration(cal, png_path)
        return cal, yaml_path, png_path
    finally:
        if close_movie:
            movie.close()


def calibrate_spline_steps(movie, p, step_nm: float, options, cancel: CancelToken, stack_path: str | None,
                           close_movie: bool = False):
    """Generator: a spline PSF calibration of the bead z-stack ``movie``, yielding ``(step, 4)``.

    Returns ``(psf, hdf5_path, png_path)`` (written beside the stack with the names of ``calibrate-z --model
    spline``; paths None without a stack file) or :class:`Cancelled` (nothing written).
    """
    from ..core.spline_calibrate import calibrate_spline
    from ..io.spline_calibration import (
        load_spline_calibration,
        plot_spline_calibration,
        save_spline_calibration,
        spline_calibration_paths,
    )

    try:
        yield 0, 4
        frames = np.asarray(movie[:])
        if cancel.cancelled:
            return Cancelled()
        path = os.path.abspath(stack_path) if stack_path else None
        psf = calibrate_spline(frames, p, step_nm, options, path=path)
        yield 3, 4
        if cancel.cancelled:
            return Cancelled()
        if stack_path is None:
            return psf, None, None
        hdf5_path, png_path = spline_calibration_paths(stack_path)
        save_spline_calibration(hdf5_path, psf)
        plot_spline_calibration(psf, png_path)
        # the run uses the calibration as written (float32 table), as the CLI reading the file does
        written = load_spline_calibration(hdf5_path)
        written.diagnostics = psf.diagnostics
        yield 4, 4
        return written, hdf5_path, png_path
    finally:
        if close_movie:
            movie.close()


def start_localize(gen, on_yield, on_return, on_error, on_finish):
    """Run ``gen`` in a napari thread worker (napari's activity dock shows it); return the started worker."""
    from napari.qt.threading import thread_worker

    @thread_worker(start_thread=False)
    def run():
        return (yield from gen)

    worker = run()
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finish)
    worker.start()
    return worker


class CancellableRun:
    """Mixin for a dock widget whose one button starts a run and, while it runs, cancels it.

    The widget names that button and its idle text in :attr:`run_button_idle` and has a ``status`` label.
    While a run is going ``self._cancel`` is its :class:`CancelToken` (``None`` otherwise) and ``self._pbar``
    napari's progress bar.
    """

    #: (attribute name of the start/cancel button, its text when no run is going)
    run_button_idle = ("run_button", "Run")
    _cancel: CancelToken | None = None
    _pbar = None

    @property
    def running(self) -> bool:
        return self._cancel is not None

    def cancel(self):
        """Stop the run before its next chunk; the interrupted work writes nothing."""
        if self._cancel is not None:
            self._cancel.cancel()
            self.status.value = "cancelling..."

    def _run_or_cancel(self, start):
        if self.running:
            self.cancel()
        else:
            start()

    def _begin_run(self, total: int, description: str) -> CancelToken:
        """A new cancel token, a progress bar of ``total`` steps, and the button turned into Cancel."""
        from napari.utils import progress

        self._cancel = CancelToken()
        self._pbar = progress(total=total, desc=f"napari-localize: {description}")
        getattr(self, self.run_button_idle[0]).text = "Cancel"
        return self._cancel

    def _advance(self, done: int):
        if self._pbar is not None:
            self._pbar.n = done
            self._pbar.refresh()

    def _on_finished(self):
        self._cancel = None
        name, text = self.run_button_idle
        getattr(self, name).text = text
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
