"""The Python API: localize a movie (a file, a :class:`Movie` or an array) and calibrate, with one return
convention.

Every localize entry point returns a :class:`LocalizeResult`: ``.locs`` (the table, or None when it went to
a file only), ``.info`` (the ``_locs.yaml`` documents), ``.stats`` (:class:`LocalizeStats`) and ``.paths``
(``(hdf5, yaml)`` written, or None). Every calibration returns its calibration object, whose fields are the
result: :class:`~napari_localize.core.zcalib.ZCalibration` (:func:`calibrate_z_stack`),
:class:`~napari_localize.core.spline.SplinePSF` (:func:`calibrate_spline_stack`),
:class:`~napari_localize.core.camera_calibration.CameraCalibration` (:func:`calibrate_camera`). docs/api.md
shows them at work.

=====================================  ===========================================================
:func:`localize`                       a Movie or array, in memory (``output=`` streams to a file)
:func:`localize_file`                  a movie file, written beside it as ``_locs.hdf5`` + ``.yaml``
:func:`localize_steps`                 :func:`localize` as a generator of ``(done, total)`` (GUI workers)
=====================================  ===========================================================

The CLI, the napari widgets and Dask call the same run (:mod:`napari_localize.core.run`), so all give
identical results. The older tuple-returning names (:func:`localize_movie`, :func:`localize_movie_3d`,
:func:`localize_to_file`, :func:`localize_to_file_steps`, and unpacking the result of :func:`localize` or
:func:`localize_file` as a tuple) still work in this release and warn with a ``DeprecationWarning``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .core.errors import OutputError
from .core.parameters import LocalizeParameters
from .core.pipeline import CancelToken, LocalizeStats
from .core.run import MemorySink, RunResult, TeeSink, ZRun, run, run_documents, run_dtype, run_steps  # noqa: F401
from .io.locs import LocsWriter, choice_suffix, locs_paths
from .io.movies import ArrayMovie, Movie, open_movie

GENERATED_BY = f"napari-localize v{__version__}"


@dataclass
class LocalizeResult(RunResult):
    """What every localize entry point returns.

    Attributes
    ----------
    locs : numpy structured array or None
        The localizations (Picasso's columns; ``z``, ``d_zcalib``, ``lpz`` in 3D); None when they were
        streamed to a file only (``output=`` without ``keep_locs``, :func:`localize_file`).
    info : list of dict
        The ``_locs.yaml`` documents: movie, identification, fit (with the run's counts), 3D.
    stats : LocalizeStats
        Counts and seconds per stage.
    paths : (str, str) or None
        ``(hdf5_path, yaml_path)`` written, or None for an in-memory run.
    """

    _legacy: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def hdf5_path(self) -> str | None:
        return None if self.paths is None else self.paths[0]

    @property
    def yaml_path(self) -> str | None:
        return None if self.paths is None else self.paths[1]

    def __iter__(self):
        # one release of grace for code that unpacked the old tuples (locs, stats) / (hdf5, yaml, stats)
        if self._legacy is None:
            raise TypeError("a LocalizeResult is not a tuple: use .locs, .info, .stats and .paths")
        warnings.warn("unpacking the result as a tuple is deprecated and will stop working in the next "
                      "release; use its .locs, .info, .stats and .paths", DeprecationWarning, stacklevel=2)
        return iter(self._legacy)


def _result(res: RunResult, legacy=None) -> LocalizeResult:
    return LocalizeResult(res.locs, res.info, res.stats, res.paths, legacy)


def _deprecated(old: str, new: str):
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new} (it returns a "
                  "LocalizeResult with .locs, .info, .stats, .paths)", DeprecationWarning, stacklevel=3)


def metadata_documents(movie_info: dict, p: LocalizeParameters, stats: LocalizeStats | None = None) -> list:
    """The ``_locs.yaml`` documents of a 2D run: movie info, identification, fit (with the run's counts)."""
    return run_documents(movie_info, p, stats)


def _zrun(calibration, z_options=None, calibration_path=None):
    return None if calibration is None else ZRun(calibration, z_options, calibration_path)


def _as_movie(movie):
    return movie if isinstance(movie, Movie) else ArrayMovie(movie)


def _as_calibration(calibration, calibration_path):
    """A calibration object (and its file) from an object or a path (``.yaml``: astigmatic; ``.hdf5``: spline)."""
    if calibration is None or not isinstance(calibration, (str, os.PathLike)):
        return calibration, calibration_path
    path = os.fspath(calibration)
    from .io.spline_calibration import is_spline_calibration_path

    if is_spline_calibration_path(path):
        from .io.spline_calibration import load_spline_calibration

        return load_spline_calibration(path), calibration_path or os.path.abspath(path)
    return load_zcalibration(path), calibration_path or os.path.abspath(path)


def _as_camera(camera, movie, p):
    """Per-pixel sCMOS maps from maps, a camera calibration or its file (windowed to ``movie``)."""
    from .core.camera import CameraMaps

    if camera is None or isinstance(camera, CameraMaps):
        return camera
    return camera_maps(camera, movie, p)


def _prepare(movie, p, output, keep_locs, calibration, z_options, calibration_path, camera):
    p = p or LocalizeParameters()
    movie = _as_movie(movie)
    p.validate(*(int(n) for n in movie.shape))  # a bad parameter is named before anything is set up
    calibration, calibration_path = _as_calibration(calibration, calibration_path)
    z = _zrun(calibration, z_options, calibration_path)
    dtype = run_dtype(p, z)
    if output is None:
        sink = MemorySink(dtype)
    else:
        sink = LocsWriter(output, dtype)
        if keep_locs:
            sink = TeeSink(MemorySink(dtype), sink)
    return movie, p, sink, z, _as_camera(camera, movie, p)


def localize(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None, *,
             output=None, keep_locs: bool = False, calibration=None, z_options=None, calibration_path=None,
             camera=None, chunk_frames: int | None = None, extra_fit_info: dict | None = None) -> LocalizeResult:
    """Localize a :class:`Movie` or an array ``(frames, height, width)`` (numpy, dask, a napari layer's data;
    one 2D frame too) in 2D, or in 3D with a ``calibration``.

    Parameters
    ----------
    movie : Movie or array
        For a file, use :func:`localize_file` (or pass ``open_movie(path)``).
    p : LocalizeParameters, optional
        Identification, photon conversion and fit (defaults: Picasso's).
    progress : callable(frames_done, frames_total), optional
        Called after every chunk of frames.
    cancel : CancelToken, optional
        Cancelling raises :class:`~napari_localize.core.pipeline.LocalizeCancelled` before the next chunk;
        nothing is written.
    output : path, optional
        Stream the localizations to this ``_locs.hdf5`` (and its ``.yaml``) chunk by chunk instead of keeping
        them in memory; the files appear only when the whole run succeeded (an earlier result is never
        overwritten by a failed run). ``keep_locs=True`` keeps them in memory as well.
    calibration : ZCalibration, SplinePSF or path, optional
        3D: an astigmatic calibration (``.yaml``, ours or Picasso's) or a spline PSF (``.hdf5``).
        ``z_options`` (:class:`~napari_localize.core.zpolicy.ZFitOptions`) is the z-fit policy;
        ``calibration_path`` the file recorded in the 3D document (a path given as ``calibration`` is).
    camera : CameraMaps, CameraCalibration or path, optional
        Per-pixel sCMOS maps (or the camera calibration to window to this movie, :func:`camera_maps`).
    chunk_frames : int, optional
        Frames per chunk (default: by memory).
    extra_fit_info : dict, optional
        Added to the fit document of ``_locs.yaml``.

    Returns
    -------
    LocalizeResult
        ``.locs``, ``.info``, ``.stats``, ``.paths``.
    """
    movie, p, sink, z, camera = _prepare(movie, p, output, keep_locs, calibration, z_options, calibration_path,
                                         camera)
    res = run(movie, p, sink, z, progress, cancel, chunk_frames, extra_fit_info, camera=camera)
    return _result(res, (res.locs, res.stats))


def localize_steps(movie, p: LocalizeParameters | None = None, cancel: CancelToken | None = None, *,
                   output=None, keep_locs: bool = False, calibration=None, z_options=None, calibration_path=None,
                   camera=None, chunk_frames: int | None = None, extra_fit_info: dict | None = None):
    """Generator form of :func:`localize` for GUI workers: yields ``(frames_done, frames_total)`` (first
    ``(0, total)``, then after each chunk) and returns the :class:`LocalizeResult`
    (``result = yield from localize_steps(...)``)."""
    movie, p, sink, z, camera = _prepare(movie, p, output, keep_locs, calibration, z_options, calibration_path,
                                         camera)
    res = yield from run_steps(movie, p, sink, z, cancel, chunk_frames, extra_fit_info, camera=camera)
    return _result(res)


def localize_file(path, p: LocalizeParameters | None = None, suffix: str = "", output_dir=None, progress=None,
                  cancel: CancelToken | None = None, movie_options: dict | None = None, calibration=None,
                  z_options=None, calibration_path=None, *, camera=None, chunk_frames: int | None = None,
                  extra_fit_info: dict | None = None) -> LocalizeResult:
    """Localize the movie file at ``path`` and write ``<base><suffix>_locs.hdf5`` and ``.yaml`` beside it (or in
    ``output_dir``).

    The movie is opened by :func:`~napari_localize.io.movies.open_movie` (``movie_options``: ``channel``,
    ``position``, ``info`` for a ``.raw`` without ``.yaml``, ``series``). For one channel/position of a
    multi-channel/-position movie the name gets ``_ch<k>``/``_pos<k>`` before ``suffix``, so runs of different
    channels never overwrite each other. Localizations are streamed to disk chunk by chunk (memory does not
    grow with the movie) and nothing is published unless the whole run succeeds. The other arguments are
    :func:`localize`'s; ``camera`` may be a camera calibration (or its file), windowed to this movie.

    Returns a :class:`LocalizeResult` with ``.paths`` set and ``.locs`` None.
    """
    p = p or LocalizeParameters()
    if output_dir is not None and not os.path.isdir(output_dir):
        raise OutputError(f"output folder {output_dir} does not exist")
    with open_movie(path, **(movie_options or {})) as movie:
        hdf5_path, _ = locs_paths(path, choice_suffix(movie) + suffix, output_dir)
        res = localize(movie, p, progress, cancel, output=hdf5_path, calibration=calibration,
                       z_options=z_options, calibration_path=calibration_path, camera=camera,
                       chunk_frames=chunk_frames, extra_fit_info=extra_fit_info)
    return _result(res, (res.paths[0], res.paths[1], res.stats))


def locs_dtype_for(p: LocalizeParameters, z_options=None) -> np.dtype:
    """The dtype of the table a run with ``p`` writes: 2D, or with ``z_options`` (a
    :class:`~napari_localize.core.zfit.ZFitOptions`) the 3D fields ``z``, ``d_zcalib``, ``lpz`` (+ ``z_gof``
    for the z MLE)."""
    return run_dtype(p, None if z_options is None else ZRun(None, z_options))


# ------------------------------------------------------------------------------------------------ deprecated
def localize_movie(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None,
                   camera=None):
    """Deprecated: ``localize(movie, p)``. Returns ``(locs, info, stats)``."""
    _deprecated("localize_movie", "localize(movie, p)")
    res = localize(movie, p, progress, cancel, camera=camera)
    return res.locs, res.info, res.stats


def localize_movie_3d(movie, p: LocalizeParameters, calibration, options=None, progress=None,
                      cancel: CancelToken | None = None, calibration_path=None):
    """Deprecated: ``localize(movie, p, calibration=..., z_options=...)``. Returns ``(locs, info, stats)``."""
    _deprecated("localize_movie_3d", "localize(movie, p, calibration=..., z_options=...)")
    res = localize(movie, p, progress, cancel, calibration=calibration, z_options=options,
                   calibration_path=calibration_path)
    return res.locs, res.info, res.stats


def localize_to_file(movie, p: LocalizeParameters, hdf5_path, progress=None, cancel: CancelToken | None = None,
                     calibration=None, z_options=None, calibration_path=None, extra_fit_info: dict | None = None,
                     chunk_frames: int | None = None, camera=None):
    """Deprecated: ``localize(movie, p, output=hdf5_path)``. Returns ``((hdf5_path, yaml_path), stats)``."""
    _deprecated("localize_to_file", "localize(movie, p, output=hdf5_path)")
    res = localize(movie, p, progress, cancel, output=hdf5_path, calibration=calibration, z_options=z_options,
                   calibration_path=calibration_path, camera=camera, chunk_frames=chunk_frames,
                   extra_fit_info=extra_fit_info)
    return res.paths, res.stats


def localize_to_file_steps(movie, p: LocalizeParameters, hdf5_path, cancel: CancelToken | None = None,
                           calibration=None, z_options=None, calibration_path=None,
                           extra_fit_info: dict | None = None, chunk_frames: int | None = None, camera=None):
    """Deprecated: ``localize_steps(movie, p, output=hdf5_path)``; its generator returns
    ``((hdf5_path, yaml_path), stats)``."""
    _deprecated("localize_to_file_steps", "localize_steps(movie, p, output=hdf5_path)")

    def steps():
        res = yield from localize_steps(movie, p, cancel, output=hdf5_path, calibration=calibration,
                                        z_options=z_options, calibration_path=calibration_path, camera=camera,
                                        chunk_frames=chunk_frames, extra_fit_info=extra_fit_info)
        return res.paths, res.stats

    return steps()


def camera_maps(calibration, movie, p: LocalizeParameters, origin=None):
    """The per-pixel sCMOS maps for ``movie``: ``calibration`` (a path or a
    :class:`~napari_localize.core.camera_calibration.CameraCalibration`) windowed to the movie's camera ROI
    (its metadata, or ``origin`` = sensor (row, column) of its pixel (0, 0)), with ``p.sensitivity`` where the
    calibration has no gain map. The result goes to :func:`localize_movie` / :func:`localize_to_file` as
    ``camera``; what it records in ``_locs.yaml`` is in its ``source``."""
    from .core.camera import CameraMaps, calibration_for_movie
    from .io.camera_calibration import calibration_record, load_camera_calibration

    cal = calibration if hasattr(calibration, "offset") else load_camera_calibration(calibration)
    movie = _as_movie(movie)
    window, placement = calibration_for_movie(cal, movie.shape, getattr(movie, "info", {}), origin)
    return CameraMaps.from_calibration(window, p.sensitivity, p.em_gain, calibration_record(window, placement))


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
    """Calibrate astigmatism from a bead z-stack (a movie file, :class:`Movie` or array ``(frames, height, width)``).

    The stack is localized with ``p``; with ``track_beads`` every bead is followed in a fixed box through the
    stack (:func:`~napari_localize.core.zfit.calibrate_z_beads`), else all spots are pooled per frame as
    Picasso does (:func:`~napari_localize.core.zfit.calibrate_z`). Returns the
    :class:`~napari_localize.core.zfit.ZCalibration` (its ``diagnostics`` hold the per-position tables,
    the calibration's own z precision in nm and notices about empty positions).
    """
    if isinstance(movie, (str, os.PathLike)):  # a stack file: opened here, its path recorded
        with open_movie(movie) as stack:
            return calibrate_z_stack(stack, p, step_nm, magnification_factor, frame_bounds, track_beads,
                                     path or os.path.abspath(movie), progress, cancel)
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


def _opened(movie, movie_options=None):
    """A context giving a :class:`Movie`: a path is opened (and closed after), anything else wrapped."""
    import contextlib

    if isinstance(movie, (str, os.PathLike)):
        return open_movie(movie, **(movie_options or {}))
    return contextlib.nullcontext(_as_movie(movie))


def calibrate_spline_stack(movie, p: LocalizeParameters, step_nm: float, options=None, path=None, progress=None):
    """An experimental (cubic-spline) PSF from a bead z-stack: a movie file, :class:`Movie` or array.

    ``options``: :class:`~napari_localize.core.spline_calibrate.SplineCalibrationOptions` (box, frames per step,
    frame order and bounds, 2D/3D, magnification factor). Returns the
    :class:`~napari_localize.core.spline.SplinePSF` (``diagnostics``, ``z_range``, ``is_3d``), which
    :func:`localize` takes as ``calibration`` and :func:`~napari_localize.io.spline_calibration.
    save_spline_calibration` writes. Raises ``ValueError`` saying why when no calibration can be made.
    """
    from .core.spline_calibrate import calibrate_spline

    if path is None and isinstance(movie, (str, os.PathLike)):
        path = os.path.abspath(movie)
    with _opened(movie) as stack:
        p.validate(*stack.shape)
        return calibrate_spline(stack, p, step_nm, options, path=path, progress=progress)


def _chunks(movie, max_bytes: int = 64 << 20):
    n, h, w = movie.shape
    step = max(1, max_bytes // (8 * h * w))
    for a in range(0, n, step):
        yield movie[a:min(a + step, n)]


def calibrate_camera(dark, light=(), *, progress=None, metadata: dict | None = None):
    """sCMOS per-pixel offset and variance from a dark movie, gain from light movies (one per illumination level,
    optional); each a movie file, :class:`Movie` or array, read chunk by chunk (bounded memory).

    Returns the :class:`~napari_localize.core.camera_calibration.CameraCalibration` (``offset``, ``variance``,
    ``gain``, ``metadata`` with ``Notices``), which :func:`localize` takes as ``camera`` and
    :func:`~napari_localize.io.camera_calibration.save_camera_calibration` writes (Picasso 0.11's layout).
    Raises :class:`~napari_localize.core.camera_calibration.CameraCalibrationError` saying why when the
    movies cannot make one.
    """
    import contextlib

    from .core.camera_calibration import CameraCalibrationError
    from .core.camera_calibration import calibrate_camera as _calibrate

    with contextlib.ExitStack() as stack:
        d = stack.enter_context(_opened(dark))
        lights = [stack.enter_context(_opened(m)) for m in light]
        for m in lights:
            if tuple(m.shape[1:]) != tuple(d.shape[1:]):
                raise CameraCalibrationError(
                    f"{m.path or 'a light movie'}: frames of {m.shape[1]}x{m.shape[2]} pixels, the dark movie's "
                    f"are {d.shape[1]}x{d.shape[2]}; record every movie with the same camera ROI and binning")
        return _calibrate(_chunks(d), [_chunks(m) for m in lights], dark_frames=int(d.shape[0]),
                          light_frames=[int(m.shape[0]) for m in lights], progress=progress,
                          metadata=metadata)
