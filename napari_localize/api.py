"""The Python API: localize a movie file (or array) and write Picasso-compatible files.

The CLI and the napari widgets call these functions, so all three give identical results.
"""

from __future__ import annotations

import os

import numpy as np

from . import __version__
from .core.parameters import LocalizeParameters, fit_document, identify_document
from .core.pipeline import CancelToken, LocalizeStats, localize
from .io.locs import locs_paths, save_locs
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
                  cancel: CancelToken | None = None, movie_options: dict | None = None):
    """Localize the movie at ``path`` and write ``<base><suffix>_locs.hdf5`` and ``.yaml``.

    Nothing is written unless the whole run succeeds. Returns ``(hdf5_path, yaml_path, stats)``.
    """
    p = p or LocalizeParameters()
    hdf5_path, _ = locs_paths(path, suffix, output_dir)
    if output_dir is not None and not os.path.isdir(output_dir):
        raise FileNotFoundError(f"output folder {output_dir} does not exist")
    with open_movie(path, **(movie_options or {})) as movie:
        locs, info, stats = localize_movie(movie, p, progress, cancel)
    written = save_locs(hdf5_path, np.asarray(locs), info)
    return written[0], written[1], stats


# ------------------------------------------------------------------------------------------------ 3D
def load_zcalibration(path, magnification_factor: float | None = None):
    """Load an astigmatic calibration YAML (ours or Picasso's); see :class:`~napari_localize.core.zfit.ZCalibration`."""
    from .io.calibration import load_calibration

    return load_calibration(path, magnification_factor)


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
    from .core.zfit import calibrate_z, calibrate_z_beads

    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    locs, _ = localize(movie, p.replace(frame_range=None), progress=progress, cancel=cancel)
    n_frames = int(movie.shape[0])
    if len(locs) == 0:
        raise ValueError("no spots found in the calibration stack: lower the minimum net gradient")
    if track_beads:
        try:
            return calibrate_z_beads(movie, p, step_nm, magnification_factor, frame_bounds, path, locs=locs)
        except ValueError:
            pass  # no bead could be followed (crowded stack): the pooled calibration still works
    return calibrate_z(locs, n_frames, step_nm, magnification_factor, frame_bounds, path)


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


def localize_movie_3d(movie, p: LocalizeParameters, calibration, options=None, progress=None,
                      cancel: CancelToken | None = None, calibration_path=None):
    """Localize in 3D: 2D localization then z per chunk of frames; return ``(locs, info, stats)``.

    ``calibration`` is a :class:`~napari_localize.core.zfit.ZCalibration`; ``options`` a
    :class:`~napari_localize.core.zfit.ZFitOptions` (one outlier policy for the CLI, API and widgets, written
    to the 3D document of ``_locs.yaml``). Locs gain ``z``, ``d_zcalib``, ``lpz`` (nm) after the 2D fields
    (and ``z_gof`` with the z MLE).
    """
    from .core.pipeline import LocalizeCancelled, chunk_frames_for, localize_frames
    from .core.zfit import ZFitOptions, z_document

    options = options or ZFitOptions()
    options.validate()
    if not isinstance(movie, Movie):
        movie = ArrayMovie(movie)
    n_frames, height, width = (int(s) for s in movie.shape[-3:])
    p.validate(n_frames, height, width)
    start, stop = p.frame_span(n_frames)
    step = chunk_frames_for(height, width)
    stats = LocalizeStats()
    parts = []
    for a in range(start, stop, step):
        if cancel is not None and cancel.cancelled:
            raise LocalizeCancelled("localization cancelled")
        b = min(a + step, stop)
        frames = np.asarray(movie[a:b])
        locs2d = localize_frames(frames, p, a, stats)
        parts.append(fit_z_frames(frames, locs2d, p, calibration, options, a))
        if progress is not None:
            progress(b - start, stop - start)
    if parts:
        locs = np.concatenate(parts)
    else:
        from .core.locs import locs_dtype
        from .core.zfit import with_z_fields

        locs = with_z_fields(np.zeros(0, locs_dtype(p.fit_method)), gof=options.method == "mle")
    stats.localized = len(locs)
    info = metadata_documents(movie.info, p, stats)
    info.append(z_document(calibration, options, GENERATED_BY, calibration_path))
    return locs, info, stats
