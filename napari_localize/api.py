"""The Python API: localize a movie file (or array) and write Picasso-compatible files.

The CLI and the napari widgets call these functions, so all three give identical results.
"""

from __future__ import annotations

import os

import numpy as np

from . import __version__
from .core.parameters import LocalizeParameters
from .core.pipeline import CancelToken, LocalizeStats
from .core.run import MemorySink, RunResult, ZRun, run, run_documents, run_dtype, run_steps  # noqa: F401
from .io.locs import LocsWriter, locs_paths
from .io.movies import ArrayMovie, Movie, open_movie

GENERATED_BY = f"napari-localize v{__version__}"


def metadata_documents(movie_info: dict, p: LocalizeParameters, stats: LocalizeStats | None = None) -> list:
    """The ``_locs.yaml`` documents of a 2D run: movie info, identification, fit (with the run's counts)."""
    return run_documents(movie_info, p, stats)


def _zrun(calibration, z_options=None, calibration_path=None):
    return None if calibration is None else ZRun(calibration, z_options, calibration_path)


def _as_movie(movie):
    return movie if isinstance(movie, Movie) else ArrayMovie(movie)


def localize_movie(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None):
    """Localize a :class:`Movie` or an array ``(frames, height, width)``; return ``(locs, info, stats)``.

    ``info`` is the list of metadata documents that :func:`save_locs` writes to ``_locs.yaml``.
    """
    p = p or LocalizeParameters()
    res = run(_as_movie(movie), p, MemorySink(run_dtype(p)), None, progress, cancel)
    return res.locs, res.info, res.stats


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


def locs_dtype_for(p: LocalizeParameters, z_options=None) -> np.dtype:
    """The dtype of the table a run with ``p`` writes: 2D, or with ``z_options`` (a
    :class:`~napari_localize.core.zfit.ZFitOptions`) the 3D fields ``z``, ``d_zcalib``, ``lpz`` (+ ``z_gof``
    for the z MLE)."""
    return run_dtype(p, None if z_options is None else ZRun(None, z_options))


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
    z = _zrun(calibration, z_options, calibration_path)
    res = run(_as_movie(movie), p, LocsWriter(hdf5_path, run_dtype(p, z)), z, progress, cancel, chunk_frames,
              extra_fit_info)
    return res.paths, res.stats


def localize_to_file_steps(movie, p: LocalizeParameters, hdf5_path, cancel: CancelToken | None = None,
                           calibration=None, z_options=None, calibration_path=None,
                           extra_fit_info: dict | None = None, chunk_frames: int | None = None):
    """Generator form of :func:`localize_to_file` for GUI workers: yields ``(frames_done, frames_total)``
    (first ``(0, total)``, then after each chunk) and returns ``((hdf5_path, yaml_path), stats)``."""
    z = _zrun(calibration, z_options, calibration_path)
    res = yield from run_steps(_as_movie(movie), p, LocsWriter(hdf5_path, run_dtype(p, z)), z, cancel,
                               chunk_frames, extra_fit_info)
    return res.paths, res.stats


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
    locs = np.concatenate(parts) if parts else np.zeros(0, locs_dtype(q.fit_method))
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
    """Give the 2D ``locs`` of the in-memory ``frames`` (ADU, movie frames ``first_frame ..``) a height
    (the run's per-chunk z step, :func:`napari_localize.core.run.fit_z_chunk`, with ``options.filter``
    applied over these locs)."""
    from .core.run import fit_z_chunk

    z = ZRun(calibration, options)
    out = fit_z_chunk(frames, locs, p, z, first_frame)
    if z.options.filter > 0 and len(out):
        d = np.asarray(out["d_zcalib"], float)
        out = out[d <= z.options.filter * np.sqrt(np.mean(d**2))]
    return out


def localize_movie_3d(movie, p: LocalizeParameters, calibration, options=None, progress=None,
                      cancel: CancelToken | None = None, calibration_path=None):
    """Localize in 3D: 2D localization then z per chunk of frames; return ``(locs, info, stats)``.

    ``calibration`` is a :class:`~napari_localize.core.zfit.ZCalibration`; ``options`` a
    :class:`~napari_localize.core.zfit.ZFitOptions` (one outlier policy for the CLI, API and widgets, written
    to the 3D document of ``_locs.yaml``). Locs gain ``z``, ``d_zcalib``, ``lpz`` (nm) after the 2D fields
    (and ``z_gof`` with the z MLE).
    The outlier filter's RMS is taken over the whole run, so the result does not depend on the chunking.
    """
    z = ZRun(calibration, options, calibration_path)
    res = run(_as_movie(movie), p, MemorySink(run_dtype(p, z)), z, progress, cancel)
    return res.locs, res.info, res.stats
