"""Localize in a napari ``thread_worker``: progress per chunk, a working Cancel, files written only on success.

The generator :func:`localize_steps` is the whole run. It yields ``(frames_done, frames_total)`` after each
chunk of :func:`~napari_localize.core.pipeline.iter_localize` and returns the result; the heavy work is numba
code that releases the GIL, so the viewer stays responsive. Cancel sets a :class:`CancelToken` that the
pipeline checks before every chunk; the chunks are small (see :data:`GUI_CHUNK_PIXELS`) so a cancel lands
within a fraction of a second, and ``save_locs`` is only reached after the last chunk, so a cancelled run
writes nothing. With ``NAPARI_LOCALIZE_SYNC=1`` the same generator runs on the calling thread (tests).
"""

from __future__ import annotations

import os

import numpy as np

from ..api import metadata_documents
from ..core.locs import locs_dtype
from ..core.pipeline import (
    CancelToken,
    LocalizeCancelled,
    LocalizeStats,
    chunk_frames_for,
    iter_localize,
)
from ..io.locs import locs_paths, save_locs

SYNC_ENV = "NAPARI_LOCALIZE_SYNC"
#: pixels per chunk in the viewer: 1 Mpx (64 frames of 128x128) keeps cancel and progress prompt
GUI_CHUNK_PIXELS = 1 << 20


def run_synchronously() -> bool:
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes")


class Cancelled:
    """Returned by :func:`localize_steps` when the user cancelled; nothing was written."""


def localize_steps(movie, p, cancel: CancelToken, movie_path: str | None, chunk_frames: int | None = None,
                   close_movie: bool = False):
    """Generator: localize ``movie`` with ``p``, yielding ``(frames_done, frames_total)`` per chunk.

    Returns ``(locs, info, stats, paths)``; ``paths`` is ``None`` when ``movie_path`` is ``None`` (nothing
    written), else the ``_locs.hdf5`` and ``_locs.yaml`` written beside the movie. Returns a
    :class:`Cancelled` instance if ``cancel`` was set before the end. ``close_movie``: close ``movie`` when
    done, whatever the outcome.
    """
    try:
        return (yield from _localize_steps(movie, p, cancel, movie_path, chunk_frames))
    finally:
        if close_movie:
            movie.close()


def _localize_steps(movie, p, cancel, movie_path, chunk_frames):
    n_frames, height, width = movie.shape
    p.validate(n_frames, height, width)
    start, stop = p.frame_span(n_frames)
    step = chunk_frames or max(1, min(chunk_frames_for(height, width), GUI_CHUNK_PIXELS // (height * width)))
    stats = LocalizeStats()
    parts = []
    yield 0, stop - start
    try:
        for chunk in iter_localize(movie, p, cancel, step, stats):
            parts.append(chunk.locs)
            yield chunk.stop - start, stop - start
    except LocalizeCancelled:
        return Cancelled()
    if cancel.cancelled:
        return Cancelled()
    locs = np.concatenate(parts) if parts else np.zeros(0, locs_dtype(p.fit_method))
    info = metadata_documents(movie.info, p, stats)
    paths = None
    if movie_path is not None:
        hdf5_path, _ = locs_paths(movie_path)
        paths = save_locs(hdf5_path, locs, info)
    return locs, info, stats, paths


class SyncWorker:
    """Runs a generator on the calling thread with the signals of napari's GeneratorWorker that we use."""

    def __init__(self, gen, on_yield, on_return, on_error, on_finish):
        self._gen = gen
        self._cb = (on_yield, on_return, on_error, on_finish)
        self.abort_requested = False

    def quit(self):
        self.abort_requested = True

    def start(self):
        on_yield, on_return, on_error, on_finish = self._cb
        try:
            while True:
                try:
                    value = next(self._gen)
                except StopIteration as stop:
                    on_return(stop.value)
                    break
                on_yield(value)
        except Exception as exc:  # noqa: BLE001  (reported to the user like the threaded path does)
            on_error(exc)
        finally:
            on_finish()


def start_localize(gen, on_yield, on_return, on_error, on_finish):
    """Run ``gen`` in a napari thread worker (or synchronously if :data:`SYNC_ENV` is set); return the worker."""
    if run_synchronously():
        worker = SyncWorker(gen, on_yield, on_return, on_error, on_finish)
        worker.start()
        return worker
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
