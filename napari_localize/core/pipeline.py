"""The streaming localization pipeline: identify -> cut -> convert -> fit, chunk by chunk.

Frames are read in chunks (a background thread reads the next chunk while the current one is processed), so
memory is bounded by the chunk size, not the movie length. The Python API, the CLI and the napari widgets all
call :func:`iter_localize` or :func:`localize` with one :class:`LocalizeParameters`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .camera import adu_to_photons
from .device import select_device
from .fit_avg import fit_avg
from .fit_lq import fit_lq
from .fit_mle import fit_mle
from .identify import identify
from .inputs import as_movie_input
from .locs import ellipticity, locs_dtype, sane
from .parameters import LocalizeParameters
from .spots import cut_spots

#: pixels per chunk; 8 Mpx is 512 frames of 128x128 and keeps a chunk well under a second
CHUNK_PIXELS = 8 * 1024 * 1024
#: chunks processed at once by :func:`iter_localize` (each on its own thread; results stay in chunk order)
PIPELINE_DEPTH = 2


class LocalizeCancelled(Exception):
    """The run was cancelled by the user; nothing was written."""


class CancelToken:
    """Thread-safe flag a caller sets to stop a running localization between chunks."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self):
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self):
        if self._event.is_set():
            raise LocalizeCancelled("localization cancelled")


@dataclass
class LocalizeStats:
    """Counts and timings of one run (seconds, wall clock)."""

    frames: int = 0
    identified: int = 0
    not_converged: int = 0
    not_sane: int = 0
    localized: int = 0
    #: fit engine that ran, "cpu" or "cuda" (set at the start of the run)
    device: str = ""
    seconds: dict = field(default_factory=lambda: {"read": 0.0, "identify": 0.0, "fit": 0.0, "write": 0.0})

    def merge(self, other: LocalizeStats):
        """Add the counts and timings of ``other`` (a block of the same run, e.g. a Dask task)."""
        for key in ("frames", "identified", "not_converged", "not_sane", "localized"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.device = self.device or other.device
        for key, value in other.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value

    def as_dict(self) -> dict:
        return {
            "Frames processed": int(self.frames),
            "Spots identified": int(self.identified),
            "Fits not converged (dropped)": int(self.not_converged),
            "Fits failing the sanity filter (dropped)": int(self.not_sane),
            "Localizations": int(self.localized),
            "Fit device": self.device or "cpu",
        }


@dataclass
class Chunk:
    """One processed chunk: ``locs`` for frames ``[start, stop)``, and those ``frames`` (ADU)."""

    start: int
    stop: int
    locs: np.ndarray
    frames: np.ndarray | None = None


def fit_spots_by_method(spots_photons, p: LocalizeParameters, device: str | None = None, variance=None):
    """Fit photon spots with ``p.fit_method`` on ``device`` ("cpu", "cuda"; None: chosen automatically).

    ``variance``: per-pixel readout-variance boxes (photons², sCMOS); the MLE then uses the sCMOS likelihood.
    """
    em = p.em_gain > 1
    if device is None:
        device = select_device(p.box_size, p.fit_method)
    if p.fit_method == "mle":
        return fit_mle(spots_photons, p.convergence, p.max_iterations, em, device, variance)
    if p.fit_method == "lq":
        return fit_lq(spots_photons, p.convergence, p.max_iterations, em, device, variance)
    return fit_avg(spots_photons, em)


def identify_in_regions(frames, p: LocalizeParameters, first_frame: int = 0):
    """Identification with ``p``'s ROIs: one ROI on the whole frame; several (clipped, disjoint) on their
    bounding box grown by ``box // 2 + 1`` pixels (and a prefilter's reach), so spots at ROI borders are found
    exactly as in the whole frame, each once. ``frames`` are what identification sees (raw or prefiltered)."""
    from .regions import padded_bbox, roi_index

    rois = p.region_list()
    if rois is None or len(rois) == 1:
        return identify(frames, p.box_size, p.min_net_gradient, rois[0] if rois else None, first_frame)
    n, height, width = frames.shape
    y0, x0, y1, x1 = padded_bbox(rois, p.box_size, height, width, p.prefilter().margin())
    ids = identify(frames[:, y0:y1, x0:x1], p.box_size, p.min_net_gradient, None, first_frame)
    ids["y"] += y0
    ids["x"] += x0
    return ids[roi_index(ids["y"], ids["x"], rois) >= 0]


def identify_chunk(frames, p: LocalizeParameters, first_frame: int = 0, camera=None, identify_frames=None):
    """The spots of a chunk of camera counts: ``p``'s identification in its ROIs on ``identify_frames`` (the
    prefiltered frames) or ``frames``; with per-pixel sCMOS ``camera`` maps offset/gain-corrected and
    variance-aware (:mod:`~napari_localize.core.identify_scmos`), several ROIs keeping the spots whose pixel
    lies in one."""
    if camera is None:
        return identify_in_regions(frames if identify_frames is None else np.asarray(identify_frames), p,
                                   first_frame)
    from .identify_scmos import identify_scmos
    from .regions import roi_index

    rois = p.region_list()
    ids = identify_scmos(frames, p.box_size, p.min_net_gradient, camera.offset, camera.sensitivity,
                         camera.variance, camera.em_gain, rois[0] if rois and len(rois) == 1 else None,
                         first_frame)
    if rois and len(rois) > 1:
        ids = ids[roi_index(ids["y"], ids["x"], rois) >= 0]
    return ids


def localize_frames(frames, p: LocalizeParameters, first_frame: int = 0, stats: LocalizeStats | None = None,
                    camera=None, identify_frames=None):
    """Localize spots in an in-memory stack ``(n, height, width)`` of camera counts (ADU).

    ``camera``: per-pixel :class:`~napari_localize.core.camera.CameraMaps` of these frames (sCMOS); they replace
    ``p.baseline`` and ``p.sensitivity``, identification becomes variance-aware
    (:mod:`~napari_localize.core.identify_scmos`) and the fit uses the per-pixel readout variance.

    Returns the structured localization array (Picasso fields for ``p.fit_method``), frame numbers offset by
    ``first_frame``. Fits that did not converge and rows failing Picasso's sanity filter are dropped and
    counted in ``stats``. ``identify_frames`` (same shape) are what identification sees when a prefilter is
    on; the fit always uses ``frames``.
    """
    stats = stats if stats is not None else LocalizeStats()
    if not stats.device:
        stats.device = select_device(p.box_size, p.fit_method)
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    n, height, width = frames.shape
    t0 = time.perf_counter()
    ids = identify_chunk(frames, p, first_frame, camera, identify_frames)
    t1 = time.perf_counter()
    spots = cut_spots(frames, ids["frame"] - first_frame, ids["y"], ids["x"], p.box_size)
    if camera is None:
        photons, variance = adu_to_photons(spots, p.baseline, p.sensitivity, p.em_gain), None
    else:
        photons, variance = camera.boxes_to_photons(spots, ids["y"], ids["x"])
    fit = fit_spots_by_method(photons, p, stats.device, variance)
    t2 = time.perf_counter()
    stats.seconds["identify"] += t1 - t0
    stats.seconds["fit"] += t2 - t1
    stats.frames += n
    stats.identified += len(ids)

    # the crowded-fields refit: with sCMOS maps the joint fits use the per-pixel conversion and readout variance;
    # with an identification prefilter the residual is searched where the prefilter's static light is removed
    if p.max_emitters > 1 and p.fit_method in ("mle", "lq"):
        fit, ids = _fit_crowded(frames, ids, fit, p, first_frame, stats.device, camera, identify_frames,
                                 photons)
        stats.seconds["fit"] += time.perf_counter() - t2
    locs = np.zeros(len(ids), locs_dtype(p.fit_method, p.max_emitters))
    locs["frame"] = ids["frame"]
    locs["x"] = ids["x"] + fit["dx"]
    locs["y"] = ids["y"] + fit["dy"]
    locs["net_gradient"] = ids["net_gradient"]
    if "n_emitters" in locs.dtype.names:
        locs["n_emitters"] = fit["n_emitters"] if "n_emitters" in fit else 1
        locs["llr"] = fit["llr"] if "llr" in fit else 0.0
    for name in ("photons", "sx", "sy", "bg", "lpx", "lpy"):
        locs[name] = fit[name]
    locs["ellipticity"] = ellipticity(fit["sx"], fit["sy"])
    if p.fit_method == "mle":
        for name in ("log_likelihood", "iterations", "photons_unc", "bg_unc", "sx_unc", "sy_unc"):
            locs[name] = fit[name]
    converged = np.asarray(fit["converged"], bool)
    good_sanity = sane(locs, width, height)
    stats.not_converged += int((~converged).sum())
    stats.not_sane += int((converged & ~good_sanity).sum())
    locs = locs[converged & good_sanity]
    stats.localized += len(locs)
    return locs


def fit_noise(p: LocalizeParameters, camera=None) -> int:
    """The engine noise model of a 2D run's fits, single and crowded: Poisson or least squares; with sCMOS maps
    the sCMOS likelihood or least squares weighted per pixel."""
    from .engine import NOISE_LSQ, NOISE_POISSON, NOISE_SCMOS, NOISE_WLSQ

    if camera is not None:
        return NOISE_SCMOS if p.fit_method == "mle" else NOISE_WLSQ
    return NOISE_POISSON if p.fit_method == "mle" else NOISE_LSQ


def _fit_crowded(frames, ids, fit, p: LocalizeParameters, first_frame: int, device: str = "cpu", camera=None,
                 identify_frames=None, spots=None):
    """Refine the single-emitter fits of a chunk for crowding (:func:`~napari_localize.core.crowded.fit_crowded`).

    ``camera``: per-pixel sCMOS maps (the refit converts and weighs every pixel with them); ``identify_frames``:
    what identification saw (a prefilter): the light it removed is static light for the residual search;
    ``spots``: the photon boxes the single fit saw (the screening reads them rather than the frames).
    Returns per-emitter fit columns and an identification-like table (frame, integer x, y of the emitter's
    pixel, net gradient) with one row per emitter.
    """
    from .crowded import CrowdedOptions, refine_crowded
    from .fit_lq import mortensen_precision
    from .identify import IDENTIFICATION_DTYPE

    local = ids.copy()
    local["frame"] -= first_frame
    mle = p.fit_method == "mle"
    if camera is None:
        baseline, factor, variance = p.baseline, p.sensitivity / p.em_gain, None
    else:
        baseline, factor, variance = camera.offset, camera.sensitivity / np.float32(camera.em_gain), camera.variance
    noise = fit_noise(p, camera)
    static = None
    if identify_frames is not None and p.prefilter().temporal_median > 0:
        static = _static_light(frames, identify_frames, p, factor)
    active, out, keys = refine_crowded(frames, local, fit, p, CrowdedOptions(max_emitters=p.max_emitters), noise,
                                       baseline, factor, device if device in ("cpu", "cuda") else "cpu", variance,
                                       static, spots)
    if out is None:  # no box needed more than its single fit
        return fit, ids
    em = p.em_gain > 1
    if mle and em:
        for name in ("lpx", "lpy", "photons_unc", "bg_unc", "sx_unc", "sy_unc"):
            out[name] = out[name] * np.sqrt(2.0)
    new_ids = np.zeros(len(out["x"]), IDENTIFICATION_DTYPE)
    new_ids["frame"] = out["frame"] + first_frame
    with np.errstate(invalid="ignore"):
        new_ids["x"] = np.nan_to_num(np.rint(out["x"])).astype(np.int64)
        new_ids["y"] = np.nan_to_num(np.rint(out["y"])).astype(np.int64)
    new_ids["net_gradient"] = out["net_gradient"]
    if not mle:
        noise_bg = out["bg"]
        if camera is not None:  # the box's mean readout variance is background variance (as fit_lq)
            h, w = frames.shape[-2:]
            r = p.box_size // 2
            cy = np.clip(new_ids["y"], r, h - r - 1)
            cx = np.clip(new_ids["x"], r, w - r - 1)
            noise_bg = noise_bg + camera.cut("variance", cy, cx, p.box_size).reshape(len(cy), -1).mean(axis=1)
        out["lpx"] = mortensen_precision(out["photons"], noise_bg, out["sx"], out["sy"], em)
        out["lpy"] = mortensen_precision(out["photons"], noise_bg, out["sy"], out["sx"], em)
    added = out["added"]
    if added.any():
        # an emitter found in the residual is scored like an identified one: the net gradient at its pixel
        from .identify import net_gradient_at

        h, w = frames.shape[-2:]
        r = p.box_size // 2
        for i in np.flatnonzero(added):
            # the box around the pixel must lie inside the frame (identified spots do): net_gradient_at reads
            # every pixel of it unchecked
            y = min(max(int(new_ids["y"][i]), r), h - 1 - r) if h > 2 * r else min(max(int(new_ids["y"][i]), 0), h - 1)
            x = min(max(int(new_ids["x"][i]), r), w - 1 - r) if w > 2 * r else min(max(int(new_ids["x"][i]), 0), w - 1)
            f = int(out["frame"][i])
            if identify_frames is not None:  # what identification saw
                seen = np.asarray(identify_frames[f], np.float32)
            elif camera is not None:  # the sCMOS identification's image
                from .identify_scmos import identification_image

                seen = identification_image(frames[f], camera.offset, camera.sensitivity, camera.variance,
                                            camera.em_gain)
            else:
                seen = np.asarray(frames[f], np.float32)
            new_ids["net_gradient"][i] = net_gradient_at(seen, y, x, r)
    out["dx"], out["dy"] = out["x"] - new_ids["x"], out["y"] - new_ids["y"]
    # the refined emitters and the boxes that kept their single fit, in frame, box, emitter order
    rest = np.flatnonzero(~active)
    n_rest = len(rest)
    n_out = len(new_ids)
    rest_keys = (np.zeros(n_rest, np.int64), ids["x"][rest], ids["y"][rest], ids["frame"][rest] - first_frame)
    slots = _merge_slots(keys, rest_keys, frames.shape)
    total = n_out + n_rest
    if slots is None:  # not a sorted merge: sort all rows
        order = np.lexsort([np.concatenate([a, b]) for a, b in zip(keys, rest_keys, strict=True)])
        inv = np.empty(total, np.int64)
        inv[order] = np.arange(total)
        out_at, rest_at = inv[:n_out], inv[n_out:]
    else:
        out_at, rest_at = slots

    # each refined box gave one row, in its place (no emitter added): the kept rows stay where they are
    in_place = total == len(ids) and np.array_equal(out_at, np.flatnonzero(active))

    def merge(a, whole):
        """The merged column of refined rows ``a`` and the column ``whole`` of every box."""
        if in_place:
            m = np.array(whole, a.dtype)
        else:
            m = np.empty(total, a.dtype)
            m[rest_at] = whole[rest]
        m[out_at] = a
        return m

    merged = {}
    for name, v in fit.items():
        if np.ndim(v) and len(v) == len(ids) and name in out:
            merged[name] = merge(np.asarray(out[name]), np.asarray(v))
    merged["n_emitters"] = merge(out["n_emitters"], np.ones(len(ids), out["n_emitters"].dtype))
    merged["llr"] = merge(np.asarray(out["llr"], float), np.zeros(len(ids)))
    return merged, merge(new_ids, ids)


def _merge_slots(keys, rest_keys, shape):
    """Where the refined rows (sort keys ``keys``: emitter, x, y, frame; sorted) and the kept rows
    (``rest_keys``) go in the merged frame, box, emitter order (refined rows first among equal keys, as a
    stable sort of both lists would put them); None unless the kept rows are sorted and the keys fit one
    integer."""
    n_frames, h, w = (int(v) for v in shape[-3:])
    both = [np.concatenate([a, b]) for a, b in zip(keys, rest_keys, strict=True)]
    e, x, y, f = (np.asarray(v, np.int64) for v in both)
    if len(e) and not ((e >= 0).all() and (e < 8).all() and (x >= 0).all() and (x < w).all() and (y >= 0).all()
                       and (y < h).all() and (f >= 0).all() and n_frames * h * w * 8 < 2**62):
        return None
    key = ((f * h + y) * w + x) * 8 + e
    n_out = len(keys[0])
    k_out, k_rest = key[:n_out], key[n_out:]
    if np.any(np.diff(k_rest) < 0) or np.any(np.diff(k_out) < 0):
        return None
    out_at = np.searchsorted(k_rest, k_out, side="left") + np.arange(n_out)
    is_out = np.zeros(n_out + len(k_rest), bool)
    is_out[out_at] = True
    return out_at, np.flatnonzero(~is_out)


def _static_light(frames, identify_frames, p: LocalizeParameters, factor):
    """The light an identification prefilter took away as static (photons): ``frames - identify_frames``, with
    the Gaussian (linear, so it commutes with the median's subtraction) applied to ``frames`` first when it is
    on: it smooths rather than removes, so only the median's static background remains."""
    from .prefilter import gaussian_filter_frames

    pf = p.prefilter()
    raw = np.asarray(frames, np.float32)
    if pf.gaussian_sigma > 0:
        raw = gaussian_filter_frames(raw, pf.gaussian_sigma)
    static = raw - np.asarray(identify_frames, np.float32)
    static *= np.asarray(factor, np.float32)
    return static


def _prefiltered(frames, first_frame, prefilter, background):
    """What identification sees: the prefiltered frames; with a cropped background (several ROIs) only the
    crop is background-corrected, and the frame outside it is never searched."""
    from .prefilter import prefilter_frames

    if background is None or background.crop is None:
        return prefilter_frames(frames, first_frame, prefilter, background)
    y0, x0, y1, x1 = background.crop
    out = np.zeros(frames.shape, np.float32)
    out[:, y0:y1, x0:x1] = prefilter_frames(frames[:, y0:y1, x0:x1], first_frame, prefilter, background)
    return out


def chunk_frames_for(height: int, width: int) -> int:
    return max(1, CHUNK_PIXELS // max(1, height * width))


def iter_localize(movie, p: LocalizeParameters, cancel: CancelToken | None = None,
                  chunk_frames: int | None = None, stats: LocalizeStats | None = None, camera=None,
                  localize_fn=None):
    """Localize a movie chunk by chunk, yielding a :class:`Chunk` after each.

    ``movie`` is anything of shape ``(frames, height, width)`` whose slices along the first axis give arrays
    (a :class:`~napari_localize.io.movies.Movie`, a numpy array or memmap, a dask array). Cancelling the
    token raises :class:`LocalizeCancelled` before the next chunk (within one chunk's time).
    ``localize_fn(frames, p, first_frame, stats, camera, identify_frames)`` replaces :func:`localize_frames`
    (the spline PSF run).
    """
    movie = as_movie_input(movie)
    n_frames, height, width = (int(s) for s in movie.shape[-3:])
    p.validate(n_frames, height, width)
    if camera is not None and tuple(camera.shape) != (height, width):
        raise ValueError(f"the camera maps are {camera.shape[0]}x{camera.shape[1]} pixels but the movie's frames "
                         f"are {height}x{width}")
    if camera is not None and p.prefilter().active:
        raise ValueError("the identification prefilters (--temporal-median, --gaussian-filter) do not work with "
                         "per-pixel sCMOS maps yet: use one or the other")
    stats = stats if stats is not None else LocalizeStats()
    if not stats.device:
        # the engine is chosen (and a missing GPU reported) before the first frame is read
        stats.device = select_device(p.box_size, p.fit_method)
    if localize_fn is None and stats.device == "cpu" and p.fit_method in ("mle", "lq"):
        # the kernels not in numba's cache yet compile in other processes while this one identifies the first
        # chunk (see core/warmup.py): one process compiles the single fit's kernel, needed first, then the
        # crowded refit's joint fit, needed last; a second, niced, the crowded screening's kernels for this
        # movie's dtype. A third process for the joint fit would cost its own start (~0.9 s of CPU) on two
        # cores that are already full: the first run took 10.6-11.9 s with it, 9.3-9.8 s without. Deciding
        # what to compile runs on a thread while the first chunk is read and identified
        from .engine import MODEL_GAUSS, MODEL_MULTI
        from .warmup import crowded_job, start_compile_ahead

        noise = fit_noise(p, camera)
        crowded = p.max_emitters > 1
        groups = [([(MODEL_GAUSS, noise)] + ([(MODEL_MULTI, noise)] if crowded else []), 0)]
        if crowded:
            groups.append(([crowded_job(movie.dtype)], 1))
        start_compile_ahead(groups)
    step = chunk_frames or chunk_frames_for(height, width)
    bounds = [(a, min(a + step, stop)) for start, stop in p.frame_spans(n_frames)
              for a in range(start, stop, step)]
    prefilter = p.prefilter()
    background = None
    if prefilter.temporal_median:
        from .prefilter import TemporalMedianBackground
        from .regions import padded_bbox

        rois = p.region_list()
        crop = padded_bbox(rois, p.box_size, height, width, prefilter.margin()) if rois and len(rois) > 1 \
            else None
        background = TemporalMedianBackground(movie, prefilter.temporal_median, prefilter.median_stride, crop)

    def process(a, b):
        # one chunk, start to end, on a pipeline thread: while it is identified and fitted, the next chunk is
        # read and processed on the other thread (reading, the serial parts of identification and the
        # Python around the fits overlap the numba kernels of the other chunk); its own stats are merged in
        # chunk order by the caller
        own = LocalizeStats(device=stats.device)
        t = time.perf_counter()
        frames = np.asarray(movie[a:b])
        own.seconds["read"] += time.perf_counter() - t
        ident = None
        if prefilter.active:
            t = time.perf_counter()
            ident = _prefiltered(frames, a, prefilter, background)
            own.seconds["identify"] += time.perf_counter() - t
        if localize_fn is not None:  # another model's chunk fit (the spline PSF, core.spline_fit)
            locs = localize_fn(frames, p, a, own, camera, ident)
        else:
            locs = localize_frames(frames, p, a, own, camera, ident)
        return frames, locs, own

    with ThreadPoolExecutor(max_workers=PIPELINE_DEPTH, thread_name_prefix="napari-localize-chunk") as pool:
        pending = deque()
        try:
            for i, (a, b) in enumerate(bounds):
                while len(pending) < PIPELINE_DEPTH and i + len(pending) < len(bounds):
                    if cancel is not None and cancel.cancelled:
                        break
                    pending.append(pool.submit(process, *bounds[i + len(pending)]))
                if cancel is not None and cancel.cancelled:
                    raise LocalizeCancelled("localization cancelled")
                frames, locs, own = pending.popleft().result()
                stats.merge(own)
                yield Chunk(a, b, locs, frames)
                del frames, locs
            if cancel is not None:
                cancel.raise_if_cancelled()
        finally:
            for f in pending:  # cancelled, failed or closed early: no chunk is started after this
                f.cancel()
            if localize_fn is None:
                from .warmup import join_checks

                join_checks()  # a short run may end before its compile-ahead check has


def localize(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None,
             chunk_frames: int | None = None, camera=None):
    """Localize a whole movie; return ``(locs, stats)``.

    ``progress(frames_done, frames_total)`` is called after every chunk.
    """
    p = p or LocalizeParameters()
    movie = as_movie_input(movie)
    stats = LocalizeStats()
    n_frames = int(movie.shape[-3])
    p.validate(n_frames, int(movie.shape[-2]), int(movie.shape[-1]))
    start, stop = p.frame_span(n_frames)
    parts = []
    for chunk in iter_localize(movie, p, cancel, chunk_frames, stats, camera):
        parts.append(chunk.locs)
        if progress is not None:
            progress(chunk.stop - start, stop - start)
    locs = np.concatenate(parts) if parts else np.zeros(0, locs_dtype(p.fit_method, p.max_emitters))
    return locs, stats
