"""Ground-truth SMLM movies: pixel-integrated Gaussian spots, Poisson photons, a camera model.

Each frame is drawn from its own random stream (seeded by ``(seed, frame)``), so any frame range can be
generated on its own, in any order, and always comes out the same: long benchmark movies are written chunk by
chunk without ever being held in memory.

Camera model, inverse of the photon conversion used for fitting::

    electrons = Poisson(mu)                       (mu: expected photoelectrons per pixel)
    electrons = Gamma(electrons, em_gain)         if em_gain > 1 (EM register, excess noise factor 2)
    electrons += Normal(0, read_noise)            (read noise, electrons)
    ADU = round(electrons / sensitivity + baseline), clipped to the dtype

Astigmatism (optional, ``z_range`` set): each spot gets a height z (nm, uniform in ``z_range``) and elliptical
widths from the defocus model of Huang et al., Science 319, 810 (2008)::

    sx(z) = sigma * sqrt(1 + ((z - astig_gamma) / astig_depth)^2)
    sy(z) = sigma * sqrt(1 + ((z + astig_gamma) / astig_depth)^2)

:func:`simulate_bead_stack` renders a calibration z-stack of beads with the same model.

PSF models (``psf``): ``"gaussian"`` (above), ``"pupil"`` (a scalar pupil-function PSF with Zernike aberrations,
:mod:`.pupil`, optics from ``pupil``; ``z_range`` gives the heights, in-focus without it) and ``"spline"`` (the
cubic-spline PSF of a calibration file, ``spline_calibration``: data that a spline fit models exactly). For the
pupil and spline PSFs the truth ``sx``/``sy`` are the widths of the best-fitting Gaussian at each height.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit

from .engine.pixels import add_gaussian

TRUTH_DTYPE = np.dtype(
    [("frame", "<u4"), ("x", "<f4"), ("y", "<f4"), ("photons", "<f4"), ("sx", "<f4"), ("sy", "<f4"),
     ("bg", "<f4")]
)
#: ground truth of astigmatic (3D) simulations: :data:`TRUTH_DTYPE` plus the height z (nm)
TRUTH_3D_DTYPE = np.dtype(TRUTH_DTYPE.descr + [("z", "<f4")])


@dataclass
class SimulationParameters:
    """What to simulate. Positions and widths in pixels, photons and bg in photoelectrons."""

    n_frames: int = 1000
    height: int = 128
    width: int = 128
    spots_per_frame: float = 20.0
    photons: float = 2000.0
    #: relative standard deviation of the photons per spot (log-normal); 0 for all equal
    photon_spread: float = 0.0
    bg: float = 20.0
    sigma: float = 1.0
    baseline: float = 100.0
    sensitivity: float = 1.0
    em_gain: float = 1.0
    read_noise: float = 0.0
    #: spots of one frame are at least this far apart (pixels); 0 allows overlaps
    min_separation: float = 8.0
    #: spots keep this far from the frame edge (pixels)
    margin: float = 4.0
    #: if > 0, spots blink on this many fixed binding sites (DNA-PAINT-like) instead of anywhere
    n_sites: int = 0
    #: Poisson-distributed number of spots per frame instead of exactly ``spots_per_frame``
    poisson_count: bool = False
    dtype: str = "uint16"
    seed: int = 0
    #: if set, ``(z_min, z_max)`` in nm: spots get a uniform random height and astigmatic widths
    z_range: tuple[float, float] | None = None
    #: astigmatism: the x and y foci lie at +astig_gamma and -astig_gamma (nm)
    astig_gamma: float = 400.0
    #: astigmatism: depth of focus (nm), the defocus at which a width grows by sqrt(2)
    astig_depth: float = 500.0
    #: PSF model: "gaussian" (astigmatic widths above), "pupil" (:class:`~.pupil.PupilPSF`) or "spline"
    psf: str = "gaussian"
    #: keyword arguments of :class:`~.pupil.PupilPSF` for ``psf="pupil"`` (its ``pixel_nm`` included)
    pupil: dict | None = None
    #: spline calibration file (ours or Picasso's) for ``psf="spline"``
    spline_calibration: str | None = None

    def __post_init__(self):
        if self.psf not in ("gaussian", "pupil", "spline"):
            raise ValueError(f"psf must be 'gaussian', 'pupil' or 'spline', got {self.psf!r}")
        if self.psf == "spline" and not self.spline_calibration:
            raise ValueError("psf='spline' needs spline_calibration (a spline calibration file)")

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["z_range"] is not None:
            d["z_range"] = [float(v) for v in d["z_range"]]
        return d

    def widths(self, z):
        """Astigmatic widths ``(sx, sy)`` in pixels at heights ``z`` (nm); see :func:`astigmatic_widths`."""
        return astigmatic_widths(z, self.sigma, self.astig_gamma, self.astig_depth)


def astigmatic_widths(z, sigma, gamma, depth):
    """Huang et al. (2008) defocus model: widths ``(sx, sy)`` (pixels) at heights ``z`` (nm).

    Parameters
    ----------
    z : array_like
        Heights in nm.
    sigma : float
        In-focus PSF standard deviation (pixels).
    gamma : float
        Half the distance between the x and y foci (nm); the x focus is at +gamma.
    depth : float
        Depth of focus (nm).
    """
    z = np.asarray(z, float)
    sx = sigma * np.sqrt(1.0 + ((z - gamma) / depth) ** 2)
    sy = sigma * np.sqrt(1.0 + ((z + gamma) / depth) ** 2)
    return sx, sy


@njit(cache=True, nogil=True)
def _render(image, xs, ys, photons, sx, sy):
    h, w = image.shape
    ex = np.empty(w)
    ey = np.empty(h)
    for n in range(xs.shape[0]):
        half = int(math.ceil(5.0 * max(sx[n], sy[n]))) + 1
        x0 = max(int(xs[n]) - half, 0)
        x1 = min(int(xs[n]) + half + 1, w)
        y0 = max(int(ys[n]) - half, 0)
        y1 = min(int(ys[n]) + half + 1, h)
        add_gaussian(image, xs[n], ys[n], photons[n], sx[n], sy[n], x0, x1, y0, y1, ex, ey)


def expected_image(height, width, x, y, photons, sx, sy, bg):
    """Expected photoelectrons per pixel of one frame (float64), pixel centres at integers."""
    image = np.full((height, width), float(bg))
    _render(image, np.asarray(x, float), np.asarray(y, float), np.asarray(photons, float),
            np.broadcast_to(np.asarray(sx, float), np.shape(x)).copy(),
            np.broadcast_to(np.asarray(sy, float), np.shape(x)).copy())
    return image


_PSF_CACHE: dict = {}


def psf_model(p: SimulationParameters):
    """The pupil PSF or spline model of ``p`` (cached: simulations run chunk by chunk), else ``None``."""
    if p.psf == "gaussian":
        return None
    key = (p.psf, repr(sorted((p.pupil or {}).items())), p.spline_calibration)
    if key not in _PSF_CACHE:
        if p.psf == "pupil":
            from .pupil import PupilPSF

            _PSF_CACHE[key] = PupilPSF(**(p.pupil or {}))
        else:
            from ..io.spline_calibration import load_spline_calibration

            _PSF_CACHE[key] = load_spline_calibration(p.spline_calibration)
        if len(_PSF_CACHE) > 8:
            _PSF_CACHE.pop(next(iter(_PSF_CACHE)))
    return _PSF_CACHE[key]


def _widths_of(p: SimulationParameters, model, z):
    """Truth widths ``(sx, sy)`` (pixels) of spots at heights ``z``: the model's, or a Gaussian fit's."""
    if model is None:
        if z is None:
            return np.full(0, p.sigma), np.full(0, p.sigma)
        return p.widths(z)
    table = model.__dict__.setdefault("_width_table", {})
    if not table:
        lo, hi = _model_z_span(p, model)
        zg = np.linspace(lo, hi, 33)
        table["z"] = zg
        table["sx"], table["sy"] = model.gaussian_widths(zg)
    zz = np.zeros(0) if z is None else np.asarray(z, float)
    return np.interp(zz, table["z"], table["sx"]), np.interp(zz, table["z"], table["sy"])


def _model_z_span(p, model):
    if p.psf == "spline":
        return model.z_range
    lo, hi = p.z_range if p.z_range is not None else (0.0, 0.0)
    return min(lo, -1000.0), max(hi, 1000.0)


def render_expected(p: SimulationParameters, model, x, y, z, photons, sx, sy):
    """Expected photoelectrons of one frame with ``p``'s PSF model (``model`` from :func:`psf_model`)."""
    if model is None:
        return expected_image(p.height, p.width, x, y, photons, sx, sy, p.bg)
    image = np.full((p.height, p.width), float(p.bg))
    zz = np.zeros(len(x)) if z is None else z
    model.render(image, x, y, zz, photons)
    return image


def _sites(p: SimulationParameters):
    rng = np.random.default_rng([p.seed, 2**31 - 1])
    ys = rng.uniform(p.margin, p.height - 1 - p.margin, p.n_sites)
    xs = rng.uniform(p.margin, p.width - 1 - p.margin, p.n_sites)
    return xs, ys


def _positions(p: SimulationParameters, rng, count, sites):
    xs, ys = [], []
    for _ in range(count):
        for _attempt in range(200):
            if sites is not None:
                i = rng.integers(len(sites[0]))
                x, y = sites[0][i], sites[1][i]
            else:
                x = rng.uniform(p.margin, p.width - 1 - p.margin)
                y = rng.uniform(p.margin, p.height - 1 - p.margin)
            if all((x - a) ** 2 + (y - b) ** 2 >= p.min_separation**2 for a, b in zip(xs, ys)):
                xs.append(x)
                ys.append(y)
                break
    return np.array(xs, float), np.array(ys, float)


def _truth_rows(dtype, frame, x, y, photons, sx, sy, bg, z=None):
    """Ground-truth rows of one frame."""
    t = np.zeros(len(x), dtype)
    t["frame"] = frame
    t["x"] = x
    t["y"] = y
    t["photons"] = photons
    t["sx"] = sx
    t["sy"] = sy
    t["bg"] = bg
    if z is not None:
        t["z"] = z
    return t


def simulate_frames(p: SimulationParameters, start: int = 0, stop: int | None = None, camera=None):
    """Frames ``start .. stop-1`` in camera counts and their ground truth (structured :data:`TRUTH_DTYPE`).

    ``camera``, if given, replaces the scalar camera model: ``camera(mu, rng)`` turns the expected
    photoelectrons of one frame into counts of ``p.dtype`` (e.g. the per-pixel sCMOS model of
    :mod:`napari_localize.core.simulate_scmos`).
    """
    stop = p.n_frames if stop is None else min(stop, p.n_frames)
    sites = _sites(p) if p.n_sites > 0 else None
    dtype = np.dtype(p.dtype)
    info = np.iinfo(dtype) if dtype.kind in "ui" else None
    frames = np.empty((max(stop - start, 0), p.height, p.width), dtype)
    astig = p.z_range is not None
    truth_dtype = TRUTH_3D_DTYPE if astig else TRUTH_DTYPE
    model = psf_model(p)
    truths = []
    for f in range(start, stop):
        rng = np.random.default_rng([p.seed, f])
        count = rng.poisson(p.spots_per_frame) if p.poisson_count else int(round(p.spots_per_frame))
        x, y = _positions(p, rng, count, sites)
        n = len(x)
        if p.photon_spread > 0:
            s2 = math.log(1 + p.photon_spread**2)
            photons = p.photons * rng.lognormal(-s2 / 2, math.sqrt(s2), n)
        else:
            photons = np.full(n, float(p.photons))
        z = rng.uniform(p.z_range[0], p.z_range[1], n) if astig else None
        if model is not None:
            sx, sy = _widths_of(p, model, z if astig else np.zeros(n))
        elif astig:
            sx, sy = p.widths(z)
        else:
            sx, sy = p.sigma, p.sigma
        mu = render_expected(p, model, x, y, z, photons, sx, sy)
        frames[f - start] = _camera(mu, rng, p, dtype, info) if camera is None else camera(mu, rng)
        truths.append(_truth_rows(truth_dtype, f, x, y, photons, sx, sy, p.bg, z if astig else None))
    truth = np.concatenate(truths) if truths else np.zeros(0, truth_dtype)
    return frames, truth


def _camera(mu, rng, p, dtype, info):
    """Camera counts (ADU) of one frame from its expected photoelectrons ``mu``."""
    electrons = rng.poisson(mu).astype(float)
    if p.em_gain > 1:
        positive = electrons > 0
        electrons[positive] = rng.gamma(electrons[positive], p.em_gain)
    if p.read_noise > 0:
        electrons += rng.normal(0.0, p.read_noise, electrons.shape)
    adu = electrons / p.sensitivity + p.baseline
    if info is not None:
        adu = np.clip(np.rint(adu), info.min, info.max)
    return adu.astype(dtype)


def simulate_movie(p: SimulationParameters):
    """The whole movie in memory: ``(frames, truth)``. Use :func:`simulate_frames` for long movies."""
    return simulate_frames(p, 0, p.n_frames)


def stage_positions(n_frames: int, step_nm: float) -> np.ndarray:
    """Stage height (nm) of each frame of a z-stack, Picasso's convention: ``-(f*step - (F-1)*step/2)``."""
    f = np.arange(n_frames, dtype=float)
    return -(f * step_nm - (n_frames - 1) * step_nm / 2.0)


def simulate_bead_stack(p: SimulationParameters, n_beads: int = 20, step_nm: float = 10.0,
                        bead_z_offset_sd: float = 0.0, drift_px: float = 0.0):
    """A calibration z-stack of immobile beads scanned through focus with ``p``'s PSF model.

    Frame ``f`` of ``p.n_frames`` sits at the stage height :func:`stage_positions` (nm); a bead's apparent
    height is the stage height plus its own offset (normal, sd ``bead_z_offset_sd`` nm, e.g. a tilted
    coverslip). ``drift_px`` moves every bead linearly by that many pixels in x over the stack. Beads carry
    ``p.photons`` photons on ``p.bg`` background; the camera model is that of :func:`simulate_frames`.
    ``p.z_range`` is not used.

    Returns ``(frames, truth)``: ADU frames ``(F, height, width)`` and one :data:`TRUTH_3D_DTYPE` row per bead
    and frame (``z`` is the bead's apparent height, nm).
    """
    rng = np.random.default_rng([p.seed, 2**31 - 2])
    bead_xy = _positions(p.__class__(**{**p.as_dict(), "n_sites": 0, "z_range": None}), rng, n_beads, None)
    offsets = rng.normal(0.0, bead_z_offset_sd, len(bead_xy[0])) if bead_z_offset_sd > 0 else \
        np.zeros(len(bead_xy[0]))
    z_stage = stage_positions(p.n_frames, step_nm)
    dtype = np.dtype(p.dtype)
    info = np.iinfo(dtype) if dtype.kind in "ui" else None
    frames = np.empty((p.n_frames, p.height, p.width), dtype)
    truths = []
    nb = len(bead_xy[0])
    model = psf_model(p)
    for f in range(p.n_frames):
        frng = np.random.default_rng([p.seed, f, 7])
        z = z_stage[f] + offsets
        sx, sy = p.widths(z) if model is None else _widths_of(p, model, z)
        x = bead_xy[0] + (drift_px * f / max(p.n_frames - 1, 1))
        y = bead_xy[1]
        photons = np.full(nb, float(p.photons))
        mu = render_expected(p, model, x, y, z, photons, sx, sy)
        frames[f] = _camera(mu, frng, p, dtype, info)
        truths.append(_truth_rows(TRUTH_3D_DTYPE, f, x, y, photons, sx, sy, p.bg, z))
    return frames, np.concatenate(truths)


def simulate_spots(n, photons, bg, sigma, box_size=7, offset_range=0.5, seed=0):
    """Isolated spots (photons, no camera) centred within ``offset_range`` px of the box centre.

    Returns ``(spots (n, box, box) float32, true dx (n), true dy (n))`` relative to the centre pixel.
    """
    rng = np.random.default_rng(seed)
    r = box_size // 2
    dx = rng.uniform(-offset_range, offset_range, n)
    dy = rng.uniform(-offset_range, offset_range, n)
    spots = np.empty((n, box_size, box_size), np.float32)
    for i in range(n):
        mu = expected_image(box_size, box_size, [r + dx[i]], [r + dy[i]], [photons], sigma, sigma, bg)
        spots[i] = rng.poisson(mu)
    return spots, dx, dy
