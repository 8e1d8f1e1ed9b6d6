"""Batches on a Dask distributed cluster: each movie, and each block of frames of a long movie, is a task.

No job system of our own: a ``LocalCluster`` for ``scheduler="local"``, or any running Dask scheduler by address
(for SLURM/PBS start one with dask-jobqueue, see the README). Workers open the movie themselves (the path must be
readable on every worker) and run the one pipeline (:func:`napari_localize.core.run.run`, 2D or 3D) on their
frame block into memory; the client takes the blocks as they complete (``distributed.as_completed``), appends
them in frame order to the movie's streamed file (holding only blocks that arrived early) and finishes the run
with the same tail as a serial run (:func:`napari_localize.core.run.finish_run`: whole-run z filter, stats,
documents, atomic publish), so the result is identical to a one-by-one run.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .core.parameters import LocalizeParameters
from .core.pipeline import LocalizeCancelled, LocalizeStats


class FileOutcome(NamedTuple):
    """One movie of a Dask batch: the ``_locs.hdf5`` written and the run's stats, or the error (a failed movie
    is reported, not raised, so the batch goes on)."""

    path: str
    hdf5_path: str | None
    stats: LocalizeStats | None
    error: str | None

#: frames per task for long movies
FRAMES_PER_TASK = 2000


def _localize_block(path, p: LocalizeParameters, start: int, stop: int, movie_options: dict, z=None,
                    camera=None):
    """Worker side: run frames [start, stop) of one movie file into memory (3D with ``z``, without the whole-run
    z filter; per-pixel sCMOS ``camera`` maps of the movie, or None); return ``(locs, stats, movie info, sum of
    d_zcalib^2)``."""
    import dataclasses

    import numpy as np

    from .core.run import MemorySink, ZRun, run, run_dtype
    from .io.movies import open_movie

    zb = None if z is None else ZRun(z.calibration, dataclasses.replace(z.options, filter=0.0))
    with open_movie(path, **movie_options) as movie:
        n = movie.shape[0]
        first, last = p.frame_span(n)
        a, b = max(start, first), min(stop, last)
        block = p.replace(frame_range=(a, b - 1))
        res = run(movie, block, MemorySink(run_dtype(block, zb)), zb, camera=camera)
        d2 = float(np.sum(np.asarray(res.locs["d_zcalib"], float) ** 2)) if z is not None else 0.0
        return res.locs, res.stats, movie.info, d2


def _message(exc, path) -> str:
    """One line for a movie's failure: a project error as it is; anything else with its type and the file."""
    from .core.errors import LocalizeError

    text = " ".join(str(exc).split())
    if isinstance(exc, LocalizeError):
        return text
    return f"{path}: {type(exc).__name__}: {text[:300]}"


def _client(scheduler: str, workers: int | None):
    from dask.distributed import Client, LocalCluster

    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        from .core.errors import ParameterError

        raise ParameterError(f"workers must be a whole number >= 1, got {workers!r}")
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers or max(1, (os.cpu_count() or 2) // 2), threads_per_worker=None,
                               host="127.0.0.1", dashboard_address=None, processes=True)
        return Client(cluster), cluster
    return Client(scheduler), None


class _Movie:
    """Client-side state of one movie: its blocks, the file sink, the blocks that arrived early."""

    def __init__(self, path, p, hdf5_path, z, n_blocks, fit_info=None):
        self.path, self.p, self.hdf5_path, self.z = path, p, hdf5_path, z
        self.fit_info = fit_info
        self.n_blocks = n_blocks
        self.next = 0
        self.early = {}
        self.writer = None
        self.stats = LocalizeStats()
        self.info = None
        self.d_sum_sq = 0.0

    def add(self, index, block):
        """Store a finished block; append every block now in frame order. True when the movie is complete."""
        from .core.run import run_dtype
        from .io.locs import LocsWriter

        self.early[index] = block
        while self.next in self.early:
            locs, stats, info, d2 = self.early.pop(self.next)
            if self.writer is None:
                self.writer = LocsWriter(self.hdf5_path, run_dtype(self.p, self.z)).__enter__()
            self.writer.append(locs)
            self.stats.merge(stats)
            self.info = info
            self.d_sum_sq += d2
            self.next += 1
        return self.next == self.n_blocks

    def finish(self):
        from .core.run import finish_run

        try:
            res = finish_run(self.writer, self.info, self.p, self.stats, self.z, self.d_sum_sq, self.fit_info)
        except BaseException as exc:
            self.abort(exc)
            raise
        self.writer.__exit__(None, None, None)
        return res.paths[0], res.stats

    def abort(self, exc=None):
        if self.writer is not None:
            self.writer.__exit__(type(exc) if exc else RuntimeError, exc, None)  # removes the temporary file
            self.writer = None


def iter_files_distributed(paths, p: LocalizeParameters | dict, scheduler: str = "local",
                           workers: int | None = None, suffix: str = "", output_dir=None,
                           movie_options: dict | None = None, frames_per_task: int = FRAMES_PER_TASK,
                           calibration=None, z_options=None, calibration_path=None, cancel=None, cameras=None,
                           fit_infos=None):
    """Generator: localize movie files on a Dask cluster, yielding a :class:`FileOutcome` ``(path, hdf5_path or
    None, stats or None, error or None)`` as each movie finishes (3D with a ``calibration``). Cancelling
    ``cancel`` raises :class:`~napari_localize.core.pipeline.LocalizeCancelled` before the next block is taken;
    unfinished files are not published. ``cameras``: ``{path: CameraMaps}``, per-pixel sCMOS maps of the movies
    that have them (windowed to each movie, :func:`~napari_localize.api.camera_maps`); each is sent to the
    cluster once and shared by that movie's blocks. ``fit_infos``: ``{path: dict}``, entries for the fit
    document of a movie's ``_locs.yaml`` (the camera config it matched), as ``extra_fit_info`` of a serial run."""
    from dask.distributed import as_completed

    from .core.run import ZRun
    from .io.locs import choice_suffix, locs_paths
    from .io.movies import open_movie

    movie_options = movie_options or {}
    params = p if isinstance(p, dict) else dict.fromkeys(paths, p)
    z = None if calibration is None else ZRun(calibration, z_options, calibration_path)
    client, cluster = _client(scheduler, workers)
    movies = {}
    try:
        futures = {}
        for path in paths:
            q = params[path]
            try:
                with open_movie(path, **movie_options) as movie:
                    shape = movie.shape
                    out_suffix = choice_suffix(movie) + suffix  # _ch<k>/_pos<k>: channels never collide
                q.validate(*shape)
                first, last = q.frame_span(shape[0])
                blocks = [(a, min(a + frames_per_task, last)) for a in range(first, last, frames_per_task)]
                hdf5_path, _ = locs_paths(path, out_suffix, output_dir)
                camera = (cameras or {}).get(path)
                fit_info = {**((fit_infos or {}).get(path) or {}),
                            **(camera.source if camera is not None and camera.source else {})}
                movies[path] = _Movie(path, q, hdf5_path, z, len(blocks), fit_info or None)
                shared = None if camera is None else client.scatter(camera, broadcast=True)
                for index, (a, b) in enumerate(blocks):
                    f = client.submit(_localize_block, os.path.abspath(path), q, a, b, movie_options, z, shared,
                                      pure=False)
                    futures[f] = (path, index)
            except Exception as exc:  # noqa: BLE001 (this movie's failure is reported; the others run)
                yield FileOutcome(path, None, None, _message(exc, path))
        failed = set()
        for future in as_completed(list(futures)):
            if cancel is not None and cancel.cancelled:
                raise LocalizeCancelled("batch cancelled")
            path, index = futures.pop(future)
            if path in failed:
                future.release()
                continue
            m = movies[path]
            try:
                block = future.result()
                future.release()
                if m.add(index, block):
                    written, stats = m.finish()
                    del movies[path]
                    yield FileOutcome(path, written, stats, None)
            except Exception as exc:  # noqa: BLE001 (a worker's failure: reported, the batch goes on)
                m.abort(exc)
                failed.add(path)
                del movies[path]
                yield FileOutcome(path, None, None, _message(exc, path))
    finally:
        for m in movies.values():
            m.abort()
        client.close()
        if cluster is not None:
            cluster.close()


def localize_files_distributed(paths, p: LocalizeParameters | dict, scheduler: str = "local",
                               workers: int | None = None,
                               suffix: str = "", output_dir=None, movie_options: dict | None = None,
                               frames_per_task: int = FRAMES_PER_TASK, on_done=None, calibration=None,
                               z_options=None, calibration_path=None, cameras=None, fit_infos=None):
    """Localize movie files on a Dask cluster and write each movie's ``_locs.hdf5`` + ``.yaml`` (3D with a
    ``calibration``).

    ``p`` is one parameter set for all movies, or a dict mapping each path to its own; ``cameras`` the per-pixel
    sCMOS maps of the movies that have them and ``fit_infos`` their fit-document entries
    (:func:`iter_files_distributed`).
    Returns a list of :class:`FileOutcome` ``(path, hdf5_path or None, stats or None, error message or None)``
    in input order.
    ``on_done(path, hdf5_path, stats, error)`` is called as each movie finishes.
    """
    done = {}
    for row in iter_files_distributed(paths, p, scheduler, workers, suffix, output_dir, movie_options,
                                      frames_per_task, calibration, z_options, calibration_path,
                                      cameras=cameras, fit_infos=fit_infos):
        done[row[0]] = row
        if on_done is not None:
            on_done(*row)
    return [done[path] for path in paths]
