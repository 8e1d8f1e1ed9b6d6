"""The Python API: localize a movie file (or array) and write Picasso-compatible files.

The CLI and the napari widgets call these functions, so all three give identical results.
"""

from __future__ import annotations

import os
import time

import numpy as np

from . import __version__
from .core.parameters import LocalizeParameters, fit_document, identify_document
from .core.locs import locs_dtype
from .core.pipeline import CancelToken, LocalizeStats, iter_localize, localize
from .io.locs import LocsWriter, locs_paths
from .io.movies import ArrayMovie, Movie, open_movie

GENERATED_BY = f"napari-localize v{__version__}"


def metadata_documents(movie_info: dict, p: LocalizeParameters, stats: LocalizeStats | None = None) -> list:
    """The ``_locs.yaml`` documents: movie info, identification, fit (with the run's counts)."""
    fit = fit_document(p, GENERATED_BY)
    if stats is not None:
        fit.update(stats.as_dict())
    return [dict(movie_info), identify_document(p, GENERATED_BY), fit]


def localize_movie(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None):
    """Localize a :class:`Movie` or an array ``(frames, height, width)``; return ``(locs, info, stats)``.

    ``info`` is the list of metadata documents that :func:`save_locs` writes to ``_locs.yaml``.
    """
    p = p or LocalizeParameters()
    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    locs, stats = localize(movie, p, progress=progress, cancel=cancel)
    return locs, metadata_documents(movie.info, p, stats), stats


def localize_file(path, p: LocalizeParameters | None = None, suffix: str = "", output_dir=None, progress=None,
                  cancel: CancelToken | None = None, movie_options: dict | None = None, calibration=None,
                  z_options=None, calibration_path=None):
    """Localize the movie at ``path`` and write ``<base><suffix>_locs.hdf5`` and ``.yaml``.

    Localizations are streamed to disk chunk by chunk (:func:`localize_to_file`), so memory does not grow
    with the movie; nothing is published unless the whole run succeeds. With a ``calibration`` the run is 3D
    (see :func:`localize_movie_3d`). Returns ``(hdf5_path, yaml_path, stats)``.
    """
    p = p or LocalizeParameters()
    hdf5_path, _ = locs_paths(path, suffix, output_dir)
    if output_dir is not None and not os.path.isdir(output_dir):
        raise FileNotFoundError(f"output folder {output_dir} does not exist")
    with open_movie(path, **(movie_options or {})) as movie:
        written, stats = localize_to_file(movie, p, hdf5_path, progress, cancel, calibration, z_options,
                                          calibration_path)
    return written[0], written[1], stats


def iter_locs(movie, p: LocalizeParameters, progress=None, cancel: CancelToken | None = None,
              stats: LocalizeStats | None = None, calibration=None, z_options=None, chunk_frames: int | None = None):
    """Yield the localizations of ``movie`` chunk by chunk (with ``z`` when a ``calibration`` is given).

    The z outlier filter of ``z_options`` is not applied here: its RMS is taken over the whole run (see
    :func:`z_filter_limit`).

    ``progress(frames_done, frames_total)`` is called as each chunk is ready; cancelling raises
    :class:`~napari_localize.core.pipeline.LocalizeCancelled` before the next one.
    """
    stats = stats if stats is not None else LocalizeStats()
    n_frames = int(movie.shape[-3])
    p.validate(n_frames, int(movie.shape[-2]), int(movie.shape[-1]))
    start, stop = p.frame_span(n_frames)
    if calibration is None:
        chunks = iter_localize(movie, p, cancel, chunk_frames, stats)
    else:
        chunks = iter_localize_3d(movie, p, calibration, z_options, cancel, chunk_frames, stats)
    for chunk in chunks:
        if progress is not None:
            progress(chunk.stop - start, stop - start)
        locs, chunk = chunk.locs, None  # let the chunk's frames go before the next chunk is fitted
        yield locs


def locs_dtype_for(p: LocalizeParameters, z_options=None) -> np.dtype:
    """The dtype of the table a run with ``p`` writes: 2D, or with ``z_options`` (a
    :class:`~napari_localize.core.zfit.ZFitOptions`) the 3D fields ``z``, ``d_zcalib``, ``lpz`` (+ ``z_gof``
    for the z MLE)."""
    dtype = locs_dtype(p.fit_method, p.max_emitters)
    if z_options is not None:
        from .core.zfit import with_z_fields

        dtype = with_z_fields(np.zeros(0, dtype), gof=z_options.method == "mle").dtype
    return dtype


def run_documents(movie_info: dict, p: LocalizeParameters, stats: LocalizeStats, calibration=None,
                  z_options=None, calibration_path=None, extra_fit_info: dict | None = None) -> list:
    """All ``_locs.yaml`` documents of a run: movie, identification, fit (+ ``extra_fit_info``), 3D."""
    info = metadata_documents(movie_info, p, stats)
    if extra_fit_info:
        info[2].update(extra_fit_info)
    if calibration is not None:
        from .core.zfit import ZFitOptions, z_document

        info.append(z_document(calibration, z_options or ZFitOptions(), GENERATED_BY, calibration_path))
    return info


def localize_to_file(movie, p: LocalizeParameters, hdf5_path, progress=None, cancel: CancelToken | None = None,
                     calibration=None, z_options=None, calibration_path=None, extra_fit_info: dict | None = None,
                     chunk_frames: int | None = None):
    """Localize ``movie`` (2D, or 3D with a ``calibration``) straight into ``hdf5_path`` and its YAML.

    Each chunk's localizations are appended to a temporary file as soon as they are fitted, so peak memory
    is one chunk of frames whatever the movie's length; the files are renamed into place only at the end
    (a failed or cancelled run leaves an earlier result untouched and no partial file).
    ``progress(frames_done, frames_total)`` is called after each chunk. Returns
    ``((hdf5_path, yaml_path), stats)``.
    """
    steps = localize_to_file_steps(movie, p, hdf5_path, cancel, calibration, z_options, calibration_path,
                                   extra_fit_info, chunk_frames)
    while True:
        try:
            done, total = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None and done > 0:
            progress(done, total)


def localize_to_file_steps(movie, p: LocalizeParameters, hdf5_path, cancel: CancelToken | None = None,
                           calibration=None, z_options=None, calibration_path=None,
                           extra_fit_info: dict | None = None, chunk_frames: int | None = None):
    """Generator form of :func:`localize_to_file` for GUI workers: yields ``(frames_done, frames_total)``
    (first ``(0, total)``, then after each chunk) and returns ``((hdf5_path, yaml_path), stats)``."""
    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    if calibration is not None:
        from .core.zfit import ZFitOptions

        z_options = z_options or ZFitOptions()
        z_options.validate()
    stats = LocalizeStats()
    n_frames = int(movie.shape[-3])
    p.validate(n_frames, int(movie.shape[-2]), int(movie.shape[-1]))
    start, stop = p.frame_span(n_frames)
    yield 0, stop - start
    done = []
    d_sum_sq = 0.0  # for the z outlier filter, whose RMS is over the whole run
    with LocsWriter(hdf5_path, locs_dtype_for(p, z_options if calibration is not None else None)) as writer:
        for locs in iter_locs(movie, p, lambda d, t: done.append(d), cancel, stats, calibration, z_options,
                              chunk_frames):
            t = time.perf_counter()
            writer.append(locs)
            if calibration is not None:
                d_sum_sq += float(np.sum(np.asarray(locs["d_zcalib"], float) ** 2))
            stats.seconds["write"] += time.perf_counter() - t
            yield (done[-1] if done else 0), stop - start
        if cancel is not None:
            cancel.raise_if_cancelled()
        if calibration is not None and z_options.filter > 0 and writer.rows:
            t = time.perf_counter()
            limit = z_options.filter * np.sqrt(d_sum_sq / writer.rows)  # as z_filter_limit, streamed
            writer.keep_where(lambda rows: rows["d_zcalib"] <= limit)
            stats.seconds["write"] += time.perf_counter() - t
        stats.localized = writer.rows
        info = run_documents(movie.info, p, stats, calibration, z_options, calibration_path, extra_fit_info)
        t = time.perf_counter()
        written = writer.commit(info)
        stats.seconds["write"] += time.perf_counter() - t
    return written, stats


# ------------------------------------------------------------------------------------------------ 3D
def load_zcalibration(path, magnification_factor: float | None = None):
    """Load an astigmatic calibration YAML (ours or Picasso's); see :class:`~napari_localize.core.zfit.ZCalibration`."""
    from .io.calibration import load_calibration

    return load_calibration(path, magnification_factor)


def calibrate_z_steps(movie, p: LocalizeParameters, step_nm: float, magnification_factor: float = 0.79,
                      frame_bounds=None, track_beads: bool = True, path=None, cancel: CancelToken | None = None,
                      chunk_frames: int | None = None):
    """Generator form of :func:`calibrate_z_stack`: yields ``(frames_done, frames_total)`` while the stack is
    localized, then returns the :class:`~napari_localize.core.zfit.ZCalibration`.

    The napari widget drives it in a thread worker; :func:`calibrate_z_stack` drives it with a callback, so
    both give the same calibration. Cancelling ``cancel`` raises
    :class:`~napari_localize.core.pipeline.LocalizeCancelled` before the next chunk.
    """
    from .core.locs import locs_dtype
    from .core.pipeline import iter_localize
    from .core.zfit import calibrate_z, calibrate_z_beads

    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    q = p.replace(frame_range=None)
    n_frames = int(movie.shape[0])
    parts = []
    yield 0, n_frames
    for chunk in iter_localize(movie, q, cancel, chunk_frames):
        parts.append(chunk.locs)
        yield chunk.stop, n_frames
    locs = np.concatenate(parts) if parts else np.zeros(0, locs_dtype(q.fit_method, q.max_emitters))
    if len(locs) == 0:
        raise ValueError("no spots found in the calibration stack: lower the minimum net gradient")
    if track_beads:
        try:
            return calibrate_z_beads(movie, p, step_nm, magnification_factor, frame_bounds, path, locs=locs)
        except ValueError:
            pass  # no bead could be followed (crowded stack): the pooled calibration still works
    return calibrate_z(locs, n_frames, step_nm, magnification_factor, frame_bounds, path)


def calibrate_z_stack(movie, p: LocalizeParameters, step_nm: float, magnification_factor: float = 0.79,
                      frame_bounds=None, track_beads: bool = True, path=None, progress=None,
                      cancel: CancelToken | None = None):
    """Calibrate astigmatism from a bead z-stack (a :class:`Movie` or an array ``(frames, height, width)``).

    The stack is localized with ``p``; with ``track_beads`` every bead is followed in a fixed box through the
    stack (:func:`~napari_localize.core.zfit.calibrate_z_beads`), else all spots are pooled per frame as
    Picasso does (:func:`~napari_localize.core.zfit.calibrate_z`). Returns the
    :class:`~napari_localize.core.zfit.ZCalibration` (its ``diagnostics`` hold the per-position tables,
    the calibration's own z precision in nm and notices about empty positions).
    """
    steps = calibrate_z_steps(movie, p, step_nm, magnification_factor, frame_bounds, track_beads, path, cancel)
    next(steps)  # the (0, total) start marker
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)


def fit_z_frames(frames, locs, p: LocalizeParameters, calibration, options=None, first_frame: int = 0):
    """Give the 2D ``locs`` of the in-memory ``frames`` (ADU, movie frames ``first_frame ..``) a height."""
    from .core.locs import sane
    from .core.zfit import ZFitOptions, cut_boxes, fit_z

    options = options or ZFitOptions()
    frames = np.asarray(frames)
    spots = None
    if options.method == "mle" and len(locs):
        spots = cut_boxes(frames, locs, first_frame, options.z_box(p.box_size), p.baseline, p.sensitivity,
                          p.em_gain)
    out, _ = fit_z(locs, calibration, p.pixelsize, p.fit_method, options, spots, frames.shape[-2:])
    return out[sane(out, frames.shape[-1], frames.shape[-2])]


def iter_localize_3d(movie, p: LocalizeParameters, calibration, options=None, cancel: CancelToken | None = None,
                     chunk_frames: int | None = None, stats: LocalizeStats | None = None):
    """Localize in 3D chunk by chunk, yielding a :class:`~napari_localize.core.pipeline.Chunk` of 3D locs.

    The per-chunk z fit runs without the outlier filter (whose RMS must be taken over the whole run); apply
    it with :func:`finish_localize_3d`. Cancelling ``cancel`` raises
    :class:`~napari_localize.core.pipeline.LocalizeCancelled` before the next chunk.
    """
    import dataclasses

    from .core.pipeline import Chunk
    from .core.zfit import ZFitOptions

    options = options or ZFitOptions()
    options.validate()
    per_chunk = dataclasses.replace(options, filter=0.0)
    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    stats = stats if stats is not None else LocalizeStats()
    for chunk in iter_localize(movie, p, cancel, chunk_frames, stats):
        t = time.perf_counter()
        locs = fit_z_frames(chunk.frames, chunk.locs, p, calibration, per_chunk, chunk.start)
        stats.seconds["fit"] += time.perf_counter() - t
        out, chunk = Chunk(chunk.start, chunk.stop, locs, chunk.frames), None
        yield out
        out = None


def z_filter_limit(d_zcalib, factor: float) -> float:
    """Picasso's z outlier rule over a whole run: keep ``d_zcalib <= factor * RMS(d_zcalib)``."""
    d = np.asarray(d_zcalib, float)
    return factor * float(np.sqrt(np.mean(d**2))) if len(d) else np.inf


def finish_localize_3d(parts, movie_info: dict, p: LocalizeParameters, calibration, options, stats: LocalizeStats,
                       calibration_path=None):
    """Join the chunks of :func:`iter_localize_3d`, apply the outlier filter over the whole run; return
    ``(locs, info)`` with the 3D document last in ``info``."""
    from .core.zfit import ZFitOptions

    options = options or ZFitOptions()
    locs = np.concatenate(parts) if parts else np.zeros(0, locs_dtype_for(p, options))
    if options.filter > 0 and len(locs):
        locs = locs[locs["d_zcalib"] <= z_filter_limit(locs["d_zcalib"], options.filter)]
    stats.localized = len(locs)
    info = run_documents(movie_info, p, stats, calibration, options, calibration_path)
    return locs, info


def localize_movie_3d(movie, p: LocalizeParameters, calibration, options=None, progress=None,
                      cancel: CancelToken | None = None, calibration_path=None):
    """Localize in 3D: 2D localization then z per chunk of frames; return ``(locs, info, stats)``.

    ``calibration`` is a :class:`~napari_localize.core.zfit.ZCalibration`; ``options`` a
    :class:`~napari_localize.core.zfit.ZFitOptions` (one outlier policy for the CLI, API and widgets, written
    to the 3D document of ``_locs.yaml``). Locs gain ``z``, ``d_zcalib``, ``lpz`` (nm) after the 2D fields
    (and ``z_gof`` with the z MLE).
    The outlier filter's RMS is taken over the whole run, so the result does not depend on the chunking.
    """
    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    stats = LocalizeStats()
    start, stop = p.frame_span(int(movie.shape[-3]))
    parts = []
    for chunk in iter_localize_3d(movie, p, calibration, options, cancel, None, stats):
        parts.append(chunk.locs)
        if progress is not None:
            progress(chunk.stop - start, stop - start)
    locs, info = finish_localize_3d(parts, movie.info, p, calibration, options, stats, calibration_path)
    return locs, info, stats
