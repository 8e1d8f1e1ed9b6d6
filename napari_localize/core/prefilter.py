"""Prefilters for spot identification: a rolling temporal median background and a spatial Gaussian.

Both act on the frames that identification sees, never on the frames that are fitted: the fit needs the raw
counts for the photon conversion. (The minimum net gradient must be re-tuned when a prefilter is on: the
median removes the background level and its gradients; the Gaussian lowers peak heights.)

Temporal median (``window`` N frames)
    frame ``t`` minus the per-pixel median of the N frames around ``t`` (the window is moved inwards at the
    ends of the movie so it always holds N frames, or the whole movie if shorter). Static structure
    (autofluorescent debris, out-of-focus haze, uneven illumination) is removed; a blinking molecule, on in
    few frames of the window, is not. The median is evaluated exactly at *anchor* frames every ``stride``
    frames (default N/4) and interpolated linearly between anchors; ``stride=1`` is the exact per-frame
    filter. Only the window being evaluated and two anchor medians are held in memory, whatever the movie
    length.

Gaussian (``sigma`` pixels)
    each frame convolved with a 2D Gaussian (``scipy.ndimage.gaussian_filter``, reflecting borders): merges
    the several maxima of a noisy or non-Gaussian spot into one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class PrefilterError(ValueError):
    """A prefilter setting that cannot work; the message says which and what to use."""


@dataclass(frozen=True)
class Prefilter:
    """What identification sees: ``temporal_median`` window (frames, 0 = off) and ``gaussian_sigma``
    (pixels, 0 = off)."""

    temporal_median: int = 0
    gaussian_sigma: float = 0.0
    median_stride: int | None = None

    def validate(self):
        if int(self.temporal_median) != self.temporal_median or self.temporal_median < 0:
            raise PrefilterError(f"--temporal-median must be a whole number of frames >= 0 (0: off), got "
                                 f"{self.temporal_median}")
        if self.temporal_median == 1:
            raise PrefilterError("--temporal-median 1 subtracts every frame from itself; use >= 3 frames "
                                 "(typically 50-500) or 0 to switch it off")
        if not (self.gaussian_sigma >= 0 and np.isfinite(self.gaussian_sigma)):
            raise PrefilterError(f"--gaussian-filter must be a standard deviation >= 0 pixels (0: off), got "
                                 f"{self.gaussian_sigma}")
        if self.median_stride is not None and self.median_stride < 1:
            raise PrefilterError(f"median stride must be >= 1 frame, got {self.median_stride}")
        return self

    @property
    def active(self) -> bool:
        return self.temporal_median > 0 or self.gaussian_sigma > 0

    def document(self) -> dict:
        """Keys for the identification document of ``_locs.yaml`` (Picasso 0.11's names)."""
        doc = {"Temporal Median Window": int(self.temporal_median),
               "Gaussian Filter Sigma": float(self.gaussian_sigma)}
        if self.temporal_median:
            doc["Temporal Median Stride"] = int(self.stride)
        return doc

    @property
    def stride(self) -> int:
        if self.median_stride is not None:
            return int(self.median_stride)
        return max(1, int(self.temporal_median) // 4)

    def margin(self) -> int:
        """Extra border pixels a spatial filter needs so a region's edge pixels are filtered as in the
        whole frame (4 sigma, scipy's default truncation)."""
        return int(np.ceil(4.0 * self.gaussian_sigma)) if self.gaussian_sigma > 0 else 0


def _median(frames: np.ndarray, rows: int = 32) -> np.ndarray:
    """Per-pixel median along axis 0 (float32), in stripes of rows: each stripe is laid out with time last
    (contiguous), where ``np.partition`` is several times faster than along the first axis."""
    n = frames.shape[0]
    out = np.empty(frames.shape[1:], np.float32)
    lo, hi = (n - 1) // 2, n // 2
    kth = lo if lo == hi else (lo, hi)
    for a in range(0, frames.shape[1], rows):
        part = np.ascontiguousarray(np.moveaxis(frames[:, a:a + rows], 0, -1))
        part.partition(kth, axis=-1)
        out[a:a + rows] = part[..., lo] if lo == hi else 0.5 * (part[..., lo].astype(np.float32)
                                                                  + part[..., hi].astype(np.float32))
    return out


class TemporalMedianBackground:
    """The rolling median background of a movie, evaluated lazily at anchor frames (see the module doc).

    ``movie`` is anything indexable by frame slices with ``shape`` ``(frames, height, width)``: a
    :class:`~napari_localize.io.movies.Movie`, a numpy or dask array. Thread-safe for readers of different
    frames (one lock around the anchor cache).
    """

    def __init__(self, movie, window: int, stride: int | None = None, crop=None):
        import threading

        self.movie = movie
        self.n_frames = int(movie.shape[0])
        self.window = int(min(window, self.n_frames))
        self.stride = int(stride) if stride else max(1, int(window) // 4)
        self.crop = crop  # (y0, x0, y1, x1): compute the background of this part of the frame only
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        last = self.n_frames - 1
        self.anchors = np.unique(np.r_[np.arange(0, self.n_frames, self.stride), last])

    def _window(self, centre: int) -> tuple[int, int]:
        start = int(centre) - self.window // 2
        start = min(max(start, 0), self.n_frames - self.window)
        return start, start + self.window

    def _anchor(self, k: int) -> np.ndarray:
        with self._lock:
            if k in self._cache:
                return self._cache[k]
        a, b = self._window(self.anchors[k])
        frames = np.asarray(self.movie[a:b])
        if self.crop is not None:
            y0, x0, y1, x1 = self.crop
            frames = frames[:, y0:y1, x0:x1]
        med = _median(frames)
        with self._lock:
            self._cache[k] = med
            for old in [j for j in self._cache if j < k - 1 or j > k + 2]:  # keep the neighbours only
                del self._cache[old]
        return med

    def background(self, frame: int) -> np.ndarray:
        """The background of one frame (float32): anchor medians interpolated linearly in time."""
        k = int(np.searchsorted(self.anchors, frame, side="right")) - 1
        k = min(max(k, 0), len(self.anchors) - 1)
        t0 = self.anchors[k]
        if t0 == frame or k == len(self.anchors) - 1:
            return self._anchor(k)
        t1 = self.anchors[k + 1]
        w = (frame - t0) / (t1 - t0)
        return ((1 - w) * self._anchor(k) + w * self._anchor(k + 1)).astype(np.float32)


def gaussian_filter_frames(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Each frame of ``(n, h, w)`` smoothed by a 2D Gaussian of ``sigma`` pixels (float32)."""
    from scipy.ndimage import gaussian_filter

    frames = np.asarray(frames, np.float32)
    if sigma <= 0:
        return frames
    return gaussian_filter(frames, sigma=(0, float(sigma), float(sigma)), mode="reflect").astype(np.float32)


def prefilter_frames(frames: np.ndarray, first_frame: int, prefilter: Prefilter,
                     background: TemporalMedianBackground | None = None) -> np.ndarray:
    """The frames identification sees, for raw ``frames`` starting at movie frame ``first_frame``.

    ``background`` (one per movie, reused across chunks) is required when the temporal median is on.
    """
    if not prefilter.active:
        return frames
    out = np.asarray(frames, np.float32).copy()
    if prefilter.temporal_median > 0:
        if background is None:
            raise PrefilterError("the temporal median needs the movie's TemporalMedianBackground")
        for i in range(out.shape[0]):
            out[i] -= background.background(first_frame + i)
    if prefilter.gaussian_sigma > 0:
        out = gaussian_filter_frames(out, prefilter.gaussian_sigma)
    return out


def iter_prefiltered(movie, prefilter: Prefilter, start: int = 0, stop: int | None = None,
                     chunk_frames: int = 64):
    """``(first_frame, raw_frames, filtered_frames)`` chunk by chunk: memory of one chunk plus one median
    window, whatever the movie length."""
    prefilter.validate()
    stop = int(movie.shape[0]) if stop is None else int(stop)
    background = (TemporalMedianBackground(movie, prefilter.temporal_median, prefilter.median_stride)
                  if prefilter.temporal_median > 0 else None)
    for a in range(int(start), stop, chunk_frames):
        b = min(a + chunk_frames, stop)
        raw = np.asarray(movie[a:b])
        yield a, raw, prefilter_frames(raw, a, prefilter, background)
