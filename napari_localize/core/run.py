"""The run: one pipeline from a movie to a sink, 2D or 3D; the API, the CLI, the widgets and Dask call it.

movie -> (per chunk) identify -> cut boxes -> photons -> 2D fit (:mod:`.pipeline`) -> z (:mod:`.zpolicy`, the
astigmatic model of the engine) -> sink; after the last chunk the whole-run z outlier filter, the stats and
the ``_locs.yaml`` documents (:func:`run_documents`), then the sink commits.

Sinks have ``append(locs)``, ``rows``, ``keep_where(predicate)`` and ``commit(info)``: :class:`MemorySink`
(arrays), :class:`napari_localize.io.locs.LocsWriter` (a streamed HDF5 file published atomically at commit),
:class:`TeeSink` (both: the viewer shows the result and the file is written) and, for Dask, the client
appends each block's table to a file sink (:func:`finish_run` is the shared tail).

Result convention: :func:`run_steps` returns a :class:`RunResult` (``.locs``, ``.info``, ``.stats``,
``.paths``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from .locs import locs_dtype
from .parameters import LocalizeParameters, fit_document, identify_document
from .pipeline import LocalizeStats, iter_localize


def generated_by() -> str:
    from .. import __version__

    return f"napari-localize v{__version__}"


@dataclass
class ZRun:
    """What a 3D run needs: the calibration, the z-fit policy (:class:`~.zpolicy.ZFitOptions`) and the
    calibration's file (for the 3D document)."""

    calibration: object
    options: object = None
    calibration_path: str | None = None

    def __post_init__(self):
        from .zpolicy import ZFitOptions

        self.options = self.options or ZFitOptions()
        self.options.validate()

    @property
    def spline(self) -> bool:
        """The calibration is an experimental (cubic-spline) PSF: the spots are fitted with it directly."""
        from .spline import SplinePSF

        return isinstance(self.calibration, SplinePSF)

    def localize_fn(self):
        """The chunk localizer of a spline run (None for the astigmatic Gaussian run)."""
        if not self.spline:
            return None
        from .spline_fit import localize_frames_spline

        psf, opts = self.calibration, self.options

        def fn(frames, p, first_frame, stats, camera=None, identify_frames=None):
            return localize_frames_spline(frames, p, psf, first_frame, stats, neighbours=opts.neighbours,
                                          max_gof=opts.max_gof, camera=camera, identify_frames=identify_frames)

        return fn


@dataclass
class RunResult:
    """The outcome of a run: ``locs`` (None for a file-only sink), ``info`` (the ``_locs.yaml`` documents),
    ``stats`` (:class:`LocalizeStats`) and ``paths`` (``(hdf5, yaml)`` written, or None)."""

    locs: np.ndarray | None
    info: list
    stats: LocalizeStats
    paths: tuple | None = None


class MemorySink:
    """Keeps the run's table in memory; ``commit`` returns None (nothing written), ``.locs`` the table."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._parts = []
        self.locs = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def rows(self) -> int:
        return int(sum(len(a) for a in self._parts))

    def append(self, locs):
        self._parts.append(np.asarray(locs))

    def table(self) -> np.ndarray:
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.zeros(0, self.dtype)]
        return self._parts[0]

    def keep_where(self, predicate):
        t = self.table()
        self._parts = [t[predicate(t)]]

    def commit(self, info):
        self.locs = self.table()
        return None


class TeeSink:
    """Appends to a :class:`MemorySink` and a file sink at once; ``commit`` returns the file's paths."""

    def __init__(self, memory: MemorySink, file_sink):
        self.memory = memory
        self.file = file_sink

    def __enter__(self):
        self.file.__enter__()
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    @property
    def rows(self) -> int:
        return self.memory.rows

    @property
    def locs(self):
        return self.memory.locs

    def append(self, locs):
        self.memory.append(locs)
        self.file.append(locs)

    def keep_where(self, predicate):
        self.memory.keep_where(predicate)
        self.file.keep_where(predicate)

    def commit(self, info):
        self.memory.commit(info)
        return self.file.commit(info)


def run_dtype(p: LocalizeParameters, z: ZRun | None = None) -> np.dtype:
    """The table a run writes: 2D fields of ``p.fit_method`` (+ ``z, d_zcalib, lpz`` and, for the z MLE,
    ``z_gof`` in 3D)."""
    dtype = locs_dtype(p.fit_method, 1 if z is not None else p.max_emitters)
    if z is not None and z.spline:
        from .spline_fit import spline_locs_dtype

        return spline_locs_dtype(p.fit_method, z.calibration.is_3d)
    if z is not None:
        from .zpolicy import with_z_fields

        dtype = with_z_fields(np.zeros(0, dtype), gof=z.options.method == "mle").dtype
    return dtype


def run_documents(movie_info: dict, p: LocalizeParameters, stats: LocalizeStats | None = None,
                  z: ZRun | None = None, extra_fit_info: dict | None = None) -> list:
    """All ``_locs.yaml`` documents of a run: movie, identification, fit (+ counts, ``extra_fit_info``), 3D."""
    who = generated_by()
    fit = fit_document(p, who)
    if stats is not None:
        fit.update(stats.as_dict())
    if extra_fit_info:
        fit.update(extra_fit_info)
    if z is not None and p.max_emitters > 1:  # 3D: the residual search, not the 2D joint fit (core.crowded_z)
        from .crowded_z import CrowdedZOptions

        fit.pop("Multi-emitter fit", None)
        if z_crowded(p, z):
            fit.update(CrowdedZOptions().as_document(p.max_emitters))
        else:
            fit["Max emitters per box"] = 1
    info = [dict(movie_info), identify_document(p, who), fit]
    if z is not None and z.spline:
        from .spline_fit import spline_z_document

        info.append(spline_z_document(z.calibration, z.options, who, z.calibration_path))
    elif z is not None:
        from .zpolicy import z_document

        info.append(z_document(z.calibration, z.options, who, z.calibration_path))
    return info


def z_filter_limit(d_sum_sq: float, rows: int, factor: float) -> float:
    """Picasso's z outlier rule over a whole run: keep ``d_zcalib <= factor * RMS(d_zcalib)``."""
    return factor * float(np.sqrt(d_sum_sq / rows)) if rows else np.inf


def fit_z_chunk(frames, locs, p: LocalizeParameters, z: ZRun, first_frame: int = 0, camera=None,
                device: str = "cpu"):
    """z for the 2D ``locs`` of ``frames`` (ADU, movie frames ``first_frame ..``) without the whole-run filter.
    ``camera``: per-pixel sCMOS maps; the z MLE's boxes are then converted pixel by pixel and fitted with the
    sCMOS likelihood. ``device``: the run's fit engine (the z MLE runs on the GPU where its box allows)."""
    from .device import fit_device
    from .locs import sane
    from .zpolicy import fit_z, photon_boxes

    options = dataclasses.replace(z.options, filter=0.0)
    frames = np.asarray(frames)
    spots = variance = None
    box = options.z_box(p.box_size)
    if options.method == "mle" and len(locs):
        spots, variance = photon_boxes(frames, locs, first_frame, box, p, camera)
    out, _ = fit_z(locs, z.calibration, p.pixelsize, p.fit_method, options, spots, frames.shape[-2:],
                   p.convergence, p.max_iterations, fit_device(device, box), variance)
    return out[sane(out, frames.shape[-1], frames.shape[-2])]


def z_crowded(p: LocalizeParameters, z: ZRun) -> bool:
    """Whether a 3D run with ``p`` searches the residual of its fits for more emitters (:mod:`.crowded_z`):
    ``p.max_emitters > 1`` and ``z.options.crowded`` (None: the spline PSF yes, the astigmatic polynomial no;
    ``docs/algorithms.md``, crowded fields in 3D)."""
    if p.max_emitters <= 1 or p.fit_method not in ("mle", "lq") or not (z.spline or z.options.method == "mle"):
        return False
    crowded = getattr(z.options, "crowded", None)
    return bool(z.spline if crowded is None else crowded)


def crowded_z_fn(z: ZRun):
    """The chunk localizer of a 3D run with the residual search (:func:`.crowded_z.localize_frames_z_crowded`)."""
    from .crowded_z import localize_frames_z_crowded

    def fn(frames, p, first_frame, stats, camera=None, identify_frames=None):
        return localize_frames_z_crowded(frames, p, z, first_frame, stats, camera, identify_frames)

    return fn


def finish_run(sink, movie_info: dict, p: LocalizeParameters, stats: LocalizeStats, z: ZRun | None = None,
               d_sum_sq: float = 0.0, extra_fit_info: dict | None = None) -> RunResult:
    """The tail of every run: the whole-run z outlier filter, the counts, the documents, the commit."""
    if z is not None and z.options.filter > 0 and sink.rows:
        t = time.perf_counter()
        limit = z_filter_limit(d_sum_sq, sink.rows, z.options.filter)
        sink.keep_where(lambda rows: rows["d_zcalib"] <= limit)
        stats.seconds["write"] += time.perf_counter() - t
    stats.localized = sink.rows
    info = run_documents(movie_info, p, stats, z, extra_fit_info)
    t = time.perf_counter()
    paths = sink.commit(info)
    stats.seconds["write"] += time.perf_counter() - t
    return RunResult(getattr(sink, "locs", None), info, stats, paths)


def run_steps(movie, p: LocalizeParameters, sink, z: ZRun | None = None, cancel=None,
              chunk_frames: int | None = None, extra_fit_info: dict | None = None,
              stats: LocalizeStats | None = None, camera=None):
    """Generator: the run of ``movie`` into ``sink`` (entered here); yields ``(frames_done, frames_total)``
    (first ``(0, total)``, then after each chunk) and returns a :class:`RunResult`.

    ``movie``: a :class:`~napari_localize.io.movies.Movie` or anything with ``.shape``, slicing along frames
    and ``.info`` (an array has no info: pass an ``ArrayMovie``). Cancelling ``cancel`` raises
    :class:`~napari_localize.core.pipeline.LocalizeCancelled` before the next chunk; the sink is then left
    uncommitted (a file sink removes its temporary file).

    ``camera``: per-pixel sCMOS :class:`~napari_localize.core.camera.CameraMaps` of the movie (they replace
    ``p.baseline``/``p.sensitivity``; identification and fit use the variance map); its ``source`` is recorded
    in the fit document.
    """
    if camera is not None and camera.source:
        extra_fit_info = {**(extra_fit_info or {}), **camera.source}
    fit_p = p
    localize_fn = z.localize_fn() if z is not None else None
    crowded_z = False
    if z is not None and p.max_emitters > 1:
        # 3D fits one emitter per box, with the neighbours' light: the 2D multi-emitter model has one pair of
        # widths per box, which an astigmatic PSF is not (it split defocused spots into false pairs); spots
        # identification missed are found in the residual of the 3D fits (core.crowded_z)
        fit_p = p.replace(max_emitters=1)
        crowded_z = z_crowded(p, z)
        if crowded_z:
            localize_fn = crowded_z_fn(z)
        else:
            p = fit_p
    stats = stats if stats is not None else LocalizeStats()
    n_frames = int(movie.shape[-3])
    p.validate(n_frames, int(movie.shape[-2]), int(movie.shape[-1]))
    start, stop = p.frame_span(n_frames)
    total = stop - start
    yield 0, total
    d_sum_sq = 0.0
    with sink:
        for chunk in iter_localize(movie, fit_p, cancel, chunk_frames, stats, camera, localize_fn):
            locs = chunk.locs
            if z is not None and not z.spline and not crowded_z:
                t = time.perf_counter()
                locs = fit_z_chunk(chunk.frames, locs, fit_p, z, chunk.start, camera, stats.device)
                stats.seconds["fit"] += time.perf_counter() - t
            if z is not None and not z.spline:
                d_sum_sq += float(np.sum(np.asarray(locs["d_zcalib"], float) ** 2))
            done = chunk.stop - start
            chunk = None  # let the chunk's frames go before the next chunk is fitted
            t = time.perf_counter()
            sink.append(locs)
            stats.seconds["write"] += time.perf_counter() - t
            yield done, total
        if cancel is not None:
            cancel.raise_if_cancelled()
        return finish_run(sink, movie.info, p, stats, z, d_sum_sq, extra_fit_info)


def run(movie, p: LocalizeParameters, sink, z: ZRun | None = None, progress=None, cancel=None,
        chunk_frames: int | None = None, extra_fit_info: dict | None = None, camera=None) -> RunResult:
    """:func:`run_steps` driven to the end; ``progress(frames_done, frames_total)`` after each chunk."""
    steps = run_steps(movie, p, sink, z, cancel, chunk_frames, extra_fit_info, camera=camera)
    while True:
        try:
            done, total = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None and done > 0:
            progress(done, total)
