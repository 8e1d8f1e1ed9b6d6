"""Per-pixel sCMOS camera calibration: offset, readout variance and gain maps (Huang et al. 2013).

Every pixel of an sCMOS sensor has its own offset ``o`` (ADU), readout-noise variance ``var`` (ADU²) and
amplification gain ``g`` (ADU per photoelectron). A pixel that collects ``u`` photoelectrons on average reads

    mean = g * u + o,            variance = g² * u + var

so a *dark* movie (``u = 0``) gives ``o`` and ``var`` as each pixel's temporal mean and variance, and movies
at a few quasi-uniform illumination levels ``k`` give points ``(mean_k - o, variance_k - var)`` on a line
through the origin whose slope is ``g`` (the photon-transfer curve; Huang et al., Nat. Methods 10, 653 (2013),
Supplementary Note §2).

Plain numpy; no file formats. The moments are accumulated chunk by chunk in float64 (pairwise merge of
Chan, Golub & LeVeque), so a movie of any length is calibrated in bounded memory and without the
cancellation of the textbook ``E[x²] - E[x]²``. Files: :mod:`napari_localize.io.camera_calibration`.

Units: offset ADU, variance ADU², gain ADU/e- (the reciprocal of Picasso's scalar *sensitivity*, e-/ADU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: fewer dark frames are refused: the variance of one pixel is then known to worse than
#: sqrt(2 / (M - 1)) = 14 % (its standard error), which is no better than the scalar read noise it replaces
MIN_DARK_FRAMES = 100
#: fewer dark frames are accepted with a notice (variance known to about 4.5 % per pixel at 1000)
RECOMMENDED_DARK_FRAMES = 1000
#: fewer frames per light level are refused (variance of the level known to worse than 33 %)
MIN_LIGHT_FRAMES = 20
#: a pixel is "hot" when its readout variance exceeds this multiple of the chip median; the same definition
#: as the ``Hot pixels`` entry of Picasso 0.11's calibration metadata, so the two numbers compare
HOT_PIXEL_FACTOR = 10.0
#: the model name Picasso 0.11 writes in a calibration's metadata
MODEL_NAME = "scmos-noise"


class CameraCalibrationError(ValueError):
    """A calibration that cannot be made or used; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------ moments
class PixelMoments:
    """Streamed per-pixel temporal mean and variance of a stack of frames (float64).

    ``add`` takes chunks of frames ``(n, height, width)`` (or single frames); memory is three float64 maps
    plus one chunk, whatever the number of frames.
    """

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        self.count = 0
        self.mean = np.zeros(self.shape, np.float64)
        self._m2 = np.zeros(self.shape, np.float64)

    def add(self, frames) -> None:
        chunk = np.array(frames, dtype=np.float64)  # a copy: centred in place below
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.shape[1:] != self.shape:
            raise CameraCalibrationError(
                f"a frame of {chunk.shape[1]}x{chunk.shape[2]} pixels in a movie of "
                f"{self.shape[0]}x{self.shape[1]}")
        n = chunk.shape[0]
        if n == 0:
            return
        mean_c = chunk.mean(axis=0)
        chunk -= mean_c
        m2_c = np.einsum("ijk,ijk->jk", chunk, chunk)
        total = self.count + n
        delta = mean_c - self.mean
        self._m2 += m2_c + delta * delta * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Unbiased (``ddof=1``) temporal variance per pixel; NaN below two frames."""
        if self.count < 2:
            return np.full(self.shape, np.nan)
        return self._m2 / (self.count - 1)


def moments_of(chunks, shape=None, progress=None) -> PixelMoments:
    """Accumulate an iterable of frame chunks; ``progress(frames_done)`` is called after each chunk."""
    acc = None
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if acc is None:
            acc = PixelMoments(shape if shape is not None else chunk.shape[-2:])
        acc.add(chunk)
        if progress is not None:
            progress(acc.count)
    if acc is None:
        if shape is None:
            raise CameraCalibrationError("the movie has no frames")
        acc = PixelMoments(shape)
    return acc


# ------------------------------------------------------------------------------------------------ the calibration
@dataclass
class CameraCalibration:
    """The maps of one camera (one readout mode), in camera units.

    Attributes
    ----------
    offset : float32 array (height, width)
        Dark mean per pixel, ADU.
    variance : float32 array (height, width)
        Readout-noise variance per pixel, ADU².
    gain : float32 array (height, width) or None
        Amplification gain, ADU per photoelectron; ``None`` when no light movies were measured (the
        scalar sensitivity of the run applies then).
    metadata : dict
        JSON-serialisable description (Picasso 0.11's keys plus ours); see :func:`summary`.
    origin : (int, int)
        Sensor row and column of ``offset[0, 0]``: ``(0, 0)`` for a full-chip calibration.
    """

    offset: np.ndarray
    variance: np.ndarray
    gain: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    origin: tuple[int, int] = (0, 0)

    def __post_init__(self):
        self.offset = np.ascontiguousarray(self.offset, np.float32)
        self.variance = np.ascontiguousarray(self.variance, np.float32)
        if self.gain is not None:
            self.gain = np.ascontiguousarray(self.gain, np.float32)
        check_maps(self.offset, self.variance, self.gain)
        self.origin = (int(self.origin[0]), int(self.origin[1]))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.offset.shape)

    @property
    def has_gain(self) -> bool:
        return self.gain is not None

    def crop(self, y0: int, x0: int, height: int, width: int) -> CameraCalibration:
        """The maps of rows ``y0 .. y0+height-1`` and columns ``x0 .. x0+width-1`` of these maps.

        Raises :class:`CameraCalibrationError` when the window does not lie inside the maps.
        """
        h, w = self.shape
        if y0 < 0 or x0 < 0 or y0 + height > h or x0 + width > w:
            raise CameraCalibrationError(
                f"a {height}x{width} movie at sensor row {y0 + self.origin[0]}, column {x0 + self.origin[1]} "
                f"does not lie inside the {h}x{w} calibration (which starts at sensor row {self.origin[0]}, "
                f"column {self.origin[1]}); record a calibration that covers the movie's camera ROI")
        sl = (slice(y0, y0 + height), slice(x0, x0 + width))
        return CameraCalibration(
            self.offset[sl], self.variance[sl], None if self.gain is None else self.gain[sl],
            dict(self.metadata), (self.origin[0] + y0, self.origin[1] + x0))

    def sensitivity(self, scalar_sensitivity: float) -> np.ndarray | float:
        """Electrons per ADU per pixel: ``1 / gain``, or the scalar when the calibration has no gain map."""
        if self.gain is None:
            return float(scalar_sensitivity)
        return (1.0 / self.gain).astype(np.float32)

    def variance_electrons(self, scalar_sensitivity: float, em_gain: float = 1.0) -> np.ndarray:
        """Readout variance in photoelectrons² (Huang's ``var / g²``), float32."""
        s = self.sensitivity(scalar_sensitivity)
        return (self.variance * (np.asarray(s, np.float32) / np.float32(em_gain)) ** 2).astype(np.float32)


def check_maps(offset, variance, gain=None) -> None:
    """Raise :class:`CameraCalibrationError` unless the maps are 2D, of one shape, finite, variance > 0."""
    if offset.ndim != 2:
        raise CameraCalibrationError(f"the offset map must be 2D, got shape {offset.shape}")
    for name, m in (("variance", variance), ("gain", gain)):
        if m is not None and m.shape != offset.shape:
            raise CameraCalibrationError(
                f"the {name} map is {m.shape[0]}x{m.shape[1]} but the offset map is "
                f"{offset.shape[0]}x{offset.shape[1]}")
    for name, m in (("offset", offset), ("variance", variance), ("gain", gain)):
        if m is not None and not np.all(np.isfinite(m)):
            raise CameraCalibrationError(f"the {name} map holds {int((~np.isfinite(m)).sum())} non-finite values")
    if np.any(variance <= 0):
        raise CameraCalibrationError(
            f"{int((variance <= 0).sum())} pixels have a variance <= 0: a pixel whose readout never changes "
            "(dark movie recorded at the wrong bit depth, or a constant test pattern?)")
    if gain is not None and np.any(gain <= 0):
        raise CameraCalibrationError(f"{int((gain <= 0).sum())} pixels have a gain <= 0")


def hot_pixel_threshold(variance, factor: float = HOT_PIXEL_FACTOR) -> float:
    """Variance (ADU²) above which a pixel counts as hot: ``factor`` x the chip median."""
    return factor * float(np.median(variance))


def summary(offset, variance, gain=None) -> dict:
    """Headline numbers stored with the maps, under Picasso 0.11's keys (same definitions)."""
    threshold = hot_pixel_threshold(variance)
    out = {
        "Offset median (ADU)": float(np.median(offset)),
        "Offset min (ADU)": float(np.min(offset)),
        "Offset max (ADU)": float(np.max(offset)),
        "Variance median (ADU^2)": float(np.median(variance)),
        "Variance min (ADU^2)": float(np.min(variance)),
        "Variance max (ADU^2)": float(np.max(variance)),
        "Variance 99.9 percentile (ADU^2)": float(np.percentile(variance, 99.9)),
        "Hot pixel threshold (ADU^2)": threshold,
        "Hot pixels": int(np.sum(variance > threshold)),
    }
    if gain is not None:
        out.update({"Gain median (ADU/e-)": float(np.median(gain)), "Gain min (ADU/e-)": float(np.min(gain)),
                    "Gain max (ADU/e-)": float(np.max(gain))})
    return out


# ------------------------------------------------------------------------------------------------ gain
def gain_from_photon_transfer(offset, variance, level_means, level_variances, level_frames):
    """Per-pixel gain (ADU/e-) as the weighted least-squares slope through the origin of the
    photon-transfer points ``(mean_k - offset, variance_k - variance)``.

    Each level's point is weighted by the inverse variance of its variance estimate,
    ``(n_k - 1) / (2 variance_k²)``, so a short or very bright level counts for what it is worth.
    Pixels whose slope is not defined (no signal at any level) or not positive take the median gain of
    the others; their number is returned.

    Returns
    -------
    gain : float64 array, n_fallback : int
    """
    b = np.stack([m - offset for m in level_means])
    a = np.stack([v - variance for v in level_variances])
    w = np.stack([(n - 1) / (2.0 * np.maximum(v, 1e-12) ** 2) for v, n in zip(level_variances, level_frames)])
    num = (w * a * b).sum(axis=0)
    den = (w * b * b).sum(axis=0)
    ok = den > 0
    gain = np.zeros_like(den)
    np.divide(num, den, out=gain, where=ok)
    ok &= gain > 0
    if not ok.any():
        raise CameraCalibrationError(
            "no pixel responds to the light movies: record them at several different, non-zero illumination "
            "levels with the camera settings of the dark movie")
    n_fallback = int((~ok).sum())
    gain[~ok] = float(np.median(gain[ok]))
    return gain, n_fallback


# ------------------------------------------------------------------------------------------------ calibrate
def check_dark_frames(n_frames: int) -> str | None:
    """Refuse too short a dark movie (raises); a notice (str) when it is usable but short; else ``None``."""
    if n_frames < MIN_DARK_FRAMES:
        raise CameraCalibrationError(
            f"the dark movie has {n_frames} frames; a calibration needs at least {MIN_DARK_FRAMES}: with M frames "
            f"each pixel's variance is known only to sqrt(2/(M-1)) = "
            f"{100 * math.sqrt(2 / max(n_frames - 1, 1)):.0f} % here. Record 1000 or more dark frames "
            "(lens capped, same exposure, readout mode and ROI as the measurements)")
    if n_frames < RECOMMENDED_DARK_FRAMES:
        return (f"only {n_frames} dark frames: each pixel's variance is known to about "
                f"{100 * math.sqrt(2 / (n_frames - 1)):.0f} %; {RECOMMENDED_DARK_FRAMES}+ frames give 4.5 % or better")
    return None


def calibrate_camera(dark_chunks, light_chunk_sets=(), *, dark_frames: int | None = None,
                     light_frames=(), progress=None, metadata: dict | None = None) -> CameraCalibration:
    """Offset and variance from a dark movie, gain from light movies (optional).

    Parameters
    ----------
    dark_chunks : iterable of arrays (n, height, width)
        The dark movie, chunk by chunk (ADU).
    light_chunk_sets : sequence of iterables of arrays
        One chunk iterable per illumination level (ADU), same camera settings and size as the dark movie.
    dark_frames, light_frames : int, sequence of int, optional
        Frame counts known in advance: a too-short movie is refused before it is read.
    progress : callable(stage: str, frames_done: int), optional
    metadata : dict, optional
        Added to the calibration's metadata (e.g. file names).

    Returns
    -------
    CameraCalibration
        With ``metadata["Notices"]`` listing what is usable but weak (short movies, one light level,
        fallback pixels).
    """
    notices = []
    if dark_frames is not None:
        notice = check_dark_frames(dark_frames)
    for i, n in enumerate(light_frames):
        if n < MIN_LIGHT_FRAMES:
            raise CameraCalibrationError(
                f"light movie {i + 1} has {n} frames; each level needs at least {MIN_LIGHT_FRAMES} (its "
                "variance enters the gain as the slope of the photon-transfer curve)")
    dark = moments_of(dark_chunks, progress=None if progress is None else (lambda n: progress("dark", n)))
    notice = check_dark_frames(dark.count)
    if notice:
        notices.append(notice)
    offset, variance = dark.mean, dark.variance
    if np.any(variance <= 0):
        raise CameraCalibrationError(
            f"{int((variance <= 0).sum())} pixels of the dark movie never change: not camera readout noise "
            "(a constant test pattern, or a movie already averaged or background-subtracted?)")
    meta = {"model": MODEL_NAME, "Height": int(offset.shape[0]), "Width": int(offset.shape[1]),
            "Frames": int(dark.count), "Gain levels": 0, "Gain frames": 0, "Gain fallback pixels": 0}
    gain = None
    sets = list(light_chunk_sets)
    if sets:
        means, variances, counts = [], [], []
        signal, excess = [], []
        for i, chunks in enumerate(sets):
            m = moments_of(chunks, offset.shape,
                           None if progress is None else (lambda n, i=i: progress(f"light {i + 1}", n)))
            if m.count < MIN_LIGHT_FRAMES:
                raise CameraCalibrationError(
                    f"light movie {i + 1} has {m.count} frames; each level needs at least {MIN_LIGHT_FRAMES}")
            means.append(m.mean)
            variances.append(m.variance)
            counts.append(m.count)
            signal.append(float(np.median(m.mean - offset)))
            excess.append(float(np.median(m.variance - variance)))
        noise = math.sqrt(float(np.median(variance)))
        dim = [i + 1 for i, v in enumerate(signal) if v < noise]
        if dim:
            raise CameraCalibrationError(
                f"light movie {', '.join(map(str, dim))} is no brighter than the dark movie (median signal "
                f"{', '.join(f'{signal[i - 1]:.2f}' for i in dim)} ADU above the offset, less than the "
                f"{noise:.2f} ADU read noise); record the light movies with light on the sensor, at several levels")
        if len(sets) < 2:
            notices.append("one light level: the gain cannot be told from a bad variance estimate; "
                           "record 3 or more levels spanning about 20-200 photons per pixel")
        gain, n_fallback = gain_from_photon_transfer(offset, variance, means, variances, counts)
        if n_fallback:
            notices.append(f"{n_fallback} pixels did not respond to light and took the median gain")
        meta.update({"Gain levels": len(sets), "Gain frames": int(sum(counts)), "Gain fallback pixels": n_fallback,
                     "Level median signal (ADU)": signal, "Level median variance (ADU^2)": excess,
                     "Level frames": [int(c) for c in counts]})
    meta.update(summary(offset, variance, gain))
    if notices:
        meta["Notices"] = notices
    meta.update(metadata or {})
    return CameraCalibration(offset, variance, gain, meta)


# ------------------------------------------------------------------------------------------------ validate
def validate_calibration(cal: CameraCalibration, dark_chunks, progress=None, tolerance: float = 0.1) -> dict:
    """Check a calibration against a fresh dark movie (Huang et al. 2013, Supplementary Note §5).

    If the camera still behaves as calibrated, ``sum_k (x_k - offset)² / variance`` of each pixel over ``K``
    test frames follows a chi-square law with ``K`` degrees of freedom, so the per-pixel p-values are uniform
    and their mean is 0.5; a warmer (noisier) or cooler sensor moves it towards 0 or 1. Also reported: the
    median offset shift (ADU) and the median ratio of fresh to calibrated variance, which say *what* moved.

    Returns
    -------
    dict
        ``Frames``, ``Pixels``, ``Mean p-value``, ``Fraction p < 0.05``, ``Fraction p > 0.95``,
        ``Offset shift median (ADU)``, ``Variance ratio median``, ``Valid`` (mean p within ``tolerance``
        of 0.5), ``Reason``.
    """
    from scipy.stats import chi2

    offset = cal.offset.astype(np.float64)
    variance = cal.variance.astype(np.float64)
    stat = np.zeros_like(offset)
    fresh = PixelMoments(offset.shape)
    for chunk in dark_chunks:
        chunk = np.asarray(chunk, np.float64)
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.shape[1:] != offset.shape:
            raise CameraCalibrationError(
                f"the test movie is {chunk.shape[1]}x{chunk.shape[2]} but the calibration is "
                f"{offset.shape[0]}x{offset.shape[1]}: record it with the calibration's camera ROI and binning")
        fresh.add(chunk)
        stat += (((chunk - offset) ** 2) / variance).sum(axis=0)
        if progress is not None:
            progress(fresh.count)
    k = fresh.count
    if k < 2:
        raise CameraCalibrationError(f"the test movie has {k} frames; validation needs 100 or more")
    p = chi2.sf(stat, k).ravel()
    mean_p = float(p.mean())
    shift = float(np.median(fresh.mean - offset))
    ratio = float(np.median(fresh.variance / variance))
    valid = abs(mean_p - 0.5) <= tolerance
    if valid:
        reason = "the calibration describes this camera"
    else:
        reason = (f"the camera is {'noisier' if mean_p < 0.5 else 'quieter'} than calibrated "
                  f"(fresh/calibrated variance {ratio:.2f}, offset shift {shift:+.2f} ADU): sensor temperature, "
                  "readout mode or bit depth changed; recalibrate")
    return {"Frames": int(k), "Pixels": int(p.size), "Mean p-value": mean_p,
            "Fraction p < 0.05": float((p < 0.05).mean()), "Fraction p > 0.95": float((p > 0.95).mean()),
            "Offset shift median (ADU)": shift, "Variance ratio median": ratio, "Valid": bool(valid),
            "Reason": reason}
