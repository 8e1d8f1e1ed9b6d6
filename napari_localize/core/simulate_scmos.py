"""A simulated sCMOS camera: per-pixel offset, gain and readout-noise maps, dark, flat and blinking movies.

Camera model of one pixel ``i`` (Huang et al., Nat. Methods 10, 653 (2013))::

    ADU_i = round(g_i * Poisson(mu_i) + o_i + Normal(0, var_i)),   clipped to the dtype

* offset ``o_i``: normal around ``offset`` ADU (sd ``offset_sd``), plus a column pattern (sd ``column_sd``);
* gain ``g_i``: ``gain`` ADU/e- times a normal factor of relative sd ``gain_spread`` (photo-response
  non-uniformity and per-pixel amplifiers);
* variance ``var_i``: log-normal around ``(read_noise * gain)²`` ADU² (log-sd ``variance_log_sd``, a heavy right
  tail), and a fraction ``hot_fraction`` of hot pixels with variances log-uniform in ``hot_variance`` ADU².

The maps depend only on the model (its ``seed`` and chip size), so a cropped acquisition (``origin``) sees
exactly the pixels of the full chip under it. Frames draw their noise from their own random streams, so any
frame range is reproducible on its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .simulate import SimulationParameters, simulate_frames


@dataclass
class SCMOSModel:
    """A simulated sCMOS chip. Offsets in ADU, gain in ADU per photoelectron, read noise in e- rms."""

    chip_height: int = 256
    chip_width: int = 256
    offset: float = 100.0
    offset_sd: float = 2.0
    column_sd: float = 1.0
    gain: float = 2.0
    gain_spread: float = 0.05
    read_noise: float = 1.6
    variance_log_sd: float = 0.35
    hot_fraction: float = 0.02
    hot_variance: tuple[float, float] = (200.0, 4000.0)
    seed: int = 7
    dtype: str = "uint16"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hot_variance"] = [float(v) for v in self.hot_variance]
        return d

    def maps(self):
        """Full-chip ``(offset ADU, variance ADU², gain ADU/e-, hot mask)``, float64 and bool."""
        rng = np.random.default_rng([self.seed, 2**32 - 5])
        shape = (self.chip_height, self.chip_width)
        offset = self.offset + rng.normal(0.0, self.offset_sd, shape) + rng.normal(0.0, self.column_sd,
                                                                                      (1, shape[1]))
        gain = self.gain * np.clip(1.0 + rng.normal(0.0, self.gain_spread, shape), 0.5, 1.5)
        variance = (self.read_noise * self.gain) ** 2 * rng.lognormal(0.0, self.variance_log_sd, shape)
        hot = rng.random(shape) < self.hot_fraction
        lo, hi = (math.log(v) for v in self.hot_variance)
        variance[hot] = np.exp(rng.uniform(lo, hi, int(hot.sum())))
        return offset, variance, gain, hot

    def window(self, origin=(0, 0), shape=None):
        """The maps under a movie of ``shape`` (height, width) whose pixel (0, 0) is sensor pixel ``origin``."""
        offset, variance, gain, hot = self.maps()
        y, x = (int(v) for v in origin)
        h, w = shape if shape is not None else (self.chip_height - y, self.chip_width - x)
        if y < 0 or x < 0 or y + h > self.chip_height or x + w > self.chip_width:
            raise ValueError(f"a {h}x{w} window at row {y}, column {x} does not fit the "
                             f"{self.chip_height}x{self.chip_width} chip")
        sl = (slice(y, y + h), slice(x, x + w))
        return offset[sl], variance[sl], gain[sl], hot[sl]


class SCMOSCamera:
    """Counts of the chip window ``origin``/``shape``: ``camera(mu, rng)`` for :func:`simulate_frames`."""

    def __init__(self, model: SCMOSModel, origin=(0, 0), shape=None):
        self.model = model
        self.origin = tuple(int(v) for v in origin)
        self.offset, self.variance, self.gain, self.hot = model.window(origin, shape)
        self.sd = np.sqrt(self.variance)
        self.dtype = np.dtype(model.dtype)

    @property
    def shape(self):
        return self.offset.shape

    def __call__(self, mu, rng):
        mu = np.broadcast_to(np.asarray(mu, float), self.shape)
        adu = self.gain * rng.poisson(mu) + self.offset + self.sd * rng.standard_normal(self.shape)
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            adu = np.clip(np.rint(adu), info.min, info.max)
        return adu.astype(self.dtype)

    def frames(self, n_frames, mu=0.0, seed=0, start=0, stop=None):
        """Frames ``start .. stop-1`` of a movie of uniform or fixed expected photoelectrons ``mu`` per pixel."""
        stop = n_frames if stop is None else min(stop, n_frames)
        out = np.empty((max(stop - start, 0),) + self.shape, self.dtype)
        for f in range(start, stop):
            out[f - start] = self(mu, np.random.default_rng([seed, f, 11]))
        return out


def flat_field(shape, photons: float, falloff: float = 0.2):
    """Quasi-uniform illumination (photoelectrons per pixel): ``photons`` at the centre, a smooth Gaussian
    fall-off to ``(1 - falloff) * photons`` at the corners, as a real flat field has."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - (h - 1) / 2) / max(h / 2, 1)) ** 2 + ((xx - (w - 1) / 2) / max(w / 2, 1)) ** 2
    return photons * (1.0 - falloff * r2 / 2.0)


def simulate_scmos_movie(p: SimulationParameters, model: SCMOSModel, origin=(0, 0), start=0, stop=None):
    """Blinking frames of ``p`` (its scalar camera parameters unused) read by the sCMOS chip window at
    ``origin`` of size ``(p.height, p.width)``: ``(frames, truth)`` as :func:`simulate_frames`."""
    camera = SCMOSCamera(model, origin, (p.height, p.width))
    return simulate_frames(p, start, stop, camera=camera)
