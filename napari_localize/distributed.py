"""Batches on a Dask distributed cluster: each movie, and each block of frames of a long movie, is a task.

No job system of our own: a ``LocalCluster`` for ``scheduler="local"``, or any running Dask scheduler by address
(for SLURM/PBS start one with dask-jobqueue, see the README). Workers open the movie themselves (the path must be
readable on every worker), localize their frame block with the same pipeline as a serial run and send back the
compact localization table; the client appends the blocks in frame order to the output file as they arrive (never
holding a whole movie's table) and publishes it when complete, so the result is identical to a one-by-one run.
"""

from __future__ import annotations

import os


from .core.parameters import LocalizeParameters
from .core.pipeline import LocalizeStats

#: frames per task for long movies
FRAMES_PER_TASK = 2000


def _localize_block(path, p: LocalizeParameters, start: int, stop: int, movie_options: dict):
    """Worker side: localize frames [start, stop) of one movie file; return (locs, stats dict, movie info)."""
    from .core.pipeline import localize
    from .io.movies import open_movie

    with open_movie(path, **movie_options) as movie:
        n = movie.shape[0]
        first, last = p.frame_span(n)
        a, b = max(start, first), min(stop, last)
        block = p.replace(frame_range=(a, b - 1))
        locs, stats = localize(movie, block)
        return locs, stats, movie.info


def _client(scheduler: str, workers: int | None):
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers or max(1, (os.cpu_count() or 2) // 2), threads_per_worker=None,
                               host="127.0.0.1", dashboard_address=None, processes=True)
        return Client(cluster), cluster
    return Client(scheduler), None


def localize_files_distributed(paths, p: LocalizeParameters | dict, scheduler: str = "local", workers: int | None = None,
                               suffix: str = "", output_dir=None, movie_options: dict | None = None,
                               frames_per_task: int = FRAMES_PER_TASK, on_done=None):
    """Localize movie files on a Dask cluster and write each movie's ``_locs.hdf5`` + ``.yaml``.

    ``p`` is one parameter set for all movies, or a dict mapping each path to its own.
    Returns a list of ``(path, hdf5_path or None, stats or None, error message or None)`` in input order.
    ``on_done(path, hdf5_path, stats, error)`` is called as each movie finishes.
    """
    from .api import metadata_documents
    from .core.locs import locs_dtype
    from .io.locs import LocsWriter, locs_paths
    from .io.movies import open_movie

    movie_options = movie_options or {}
    params = p if isinstance(p, dict) else {path: p for path in paths}
    client, cluster = _client(scheduler, workers)
    results = []
    try:
        plans = []
        for path in paths:
            p = params[path]
            try:
                with open_movie(path, **movie_options) as movie:
                    shape = movie.shape
                p.validate(*shape)
                first, last = p.frame_span(shape[0])
                blocks = [(a, min(a + frames_per_task, last)) for a in range(first, last, frames_per_task)]
                futures = [client.submit(_localize_block, os.path.abspath(path), p, a, b, movie_options, pure=False)
                           for a, b in blocks]
                plans.append((path, futures, None))
            except (ValueError, OSError) as exc:
                plans.append((path, [], str(exc)))
        for path, futures, error in plans:
            p = params[path]
            if error is None:
                try:
                    stats = LocalizeStats()
                    hdf5_path, _ = locs_paths(path, suffix, output_dir)
                    movie_info = None
                    with LocsWriter(hdf5_path, locs_dtype(p.fit_method, p.max_emitters)) as writer:
                        for future in futures:  # in frame order; each block is written, then let go
                            locs, s, movie_info = future.result()
                            future.release()
                            writer.append(locs)
                            for key in ("frames", "identified", "not_converged", "not_sane", "localized"):
                                setattr(stats, key, getattr(stats, key) + getattr(s, key))
                            stats.device = stats.device or s.device
                            for key, value in s.seconds.items():
                                stats.seconds[key] += value
                        written = writer.commit(metadata_documents(movie_info, p, stats))[0]
                    results.append((path, written, stats, None))
                except (ValueError, OSError) as exc:
                    results.append((path, None, None, str(exc)))
            else:
                results.append((path, None, None, error))
            if on_done is not None:
                on_done(*results[-1])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results
