"""A scalar pupil-function PSF: defocus, Zernike aberrations and pixel integration, for simulations.

The field in the image plane (sample coordinates, nm) of a point emitter at lateral position ``r0`` and height
``z`` above the focal plane is the Fourier integral of the pupil over the spatial frequencies ``k`` (cycles/nm)
passed by the objective, ``|k| <= NA / wavelength``::

    E(r) = sum_k  A(k) exp(i 2 pi [ k.(r - r0) + z sqrt((n / wavelength)^2 - |k|^2) + W(rho, phi) / wavelength ])

``n`` is the refractive index of the immersion medium (index-matched sample: a stage step moves the focus by
the same distance, magnification factor 1), ``W`` the wavefront aberration in nm, a sum of Noll-normalised
Zernike polynomials of the normalised pupil radius ``rho = |k| wavelength / NA`` and angle ``phi``; the
coefficients are the RMS wavefront error of each term in nm. ``A`` is 1 inside the pupil (no apodisation:
a scalar model, good for the shape of a high-NA PSF, not its polarisation details). The intensity is ``|E|^2``,
normalised by Parseval so that it integrates to 1 over the whole image plane; a pixel's expected share of the
photons is the integral of the intensity over its area, done by averaging ``supersampling^2`` points per pixel.

The field is evaluated only where it is needed (a box around each spot) by two small matrix Fourier transforms,
so spot positions are exact (no FFT grid, no wrap-around) and a spot costs well under a millisecond.

Sign conventions: ``z > 0`` is an emitter above the focal plane (further into the sample). With a positive
``astigmatism`` coefficient (Zernike Z(2,2), Noll 6, ``rho^2 cos 2phi``), the PSF is narrowest in x at
``z > 0`` and narrowest in y at ``z < 0``, as in the Gaussian astigmatism model of :mod:`.simulate`
(``astig_gamma > 0``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits


def single_threaded_blas():
    """Small complex matrix products run fastest on one BLAS thread (threads thrash on a shared machine)."""
    return threadpool_limits(limits=1, user_api="blas")

#: the intensity centroid is put on the emitter within this distance (nm): a PSF's far tail holds little
#: light but, for coma, a lever; this is about the box a bead calibration averages over
CENTROID_RADIUS_NM = 1200.0

#: Noll index of each named aberration (Noll, J. Opt. Soc. Am. 66, 207 (1976))
ZERNIKE_NOLL = {
    "astigmatism": 6,  # Z(2, 2): vertical/horizontal astigmatism, x and y foci split along z
    "astigmatism_oblique": 5,  # Z(2, -2)
    "coma_x": 8,  # Z(3, 1)
    "coma_y": 7,  # Z(3, -1)
    "spherical": 11,  # Z(4, 0): primary spherical aberration
    "trefoil_x": 10,  # Z(3, 3)
    "spherical_secondary": 22,  # Z(6, 0)
}


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order ``n`` and signed azimuthal order ``m`` of the Noll index ``j`` (1 = piston)."""
    if j < 1:
        raise ValueError(f"Noll indices start at 1, got {j}")
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    k = j - n * (n + 1) // 2  # position within the order, 1-based
    # the |m| values of order n, in Noll's order: pairs for m > 0
    ms = [m for m in range(n % 2, n + 1, 2) for _ in ((0,) if m == 0 else (0, 1))]
    m = ms[k - 1]
    if m != 0:
        m = m if j % 2 == 0 else -m  # even j: cosine term (m > 0), odd j: sine term
    return n, m


def zernike(j: int, rho, phi):
    """The Noll-normalised Zernike polynomial ``Z_j`` (RMS 1 over the unit disc) at ``(rho, phi)``."""
    n, m = noll_to_nm(j)
    rho = np.asarray(rho, float)
    am = abs(m)
    radial = np.zeros_like(rho)
    for s in range((n - am) // 2 + 1):
        c = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s) * math.factorial((n + am) // 2 - s) * math.factorial((n - am) // 2 - s))
        radial = radial + c * rho ** (n - 2 * s)
    if m == 0:
        return math.sqrt(n + 1) * radial
    ang = np.cos(am * phi) if m > 0 else np.sin(am * phi)
    return math.sqrt(2 * (n + 1)) * radial * ang


@dataclass
class PupilPSF:
    """Optics of the pupil-function PSF. Lengths in nm; aberrations as RMS wavefront error in nm."""

    na: float = 1.45
    wavelength_nm: float = 680.0
    #: refractive index of the immersion medium (and the index-matched sample)
    n_immersion: float = 1.518
    #: camera pixel size projected into the sample (nm)
    pixel_nm: float = 130.0
    #: named aberrations (keys of :data:`ZERNIKE_NOLL`) or Noll indices as strings, RMS nm
    zernike_nm: dict = field(default_factory=dict)
    #: points per pixel side averaged for the pixel integral
    supersampling: int = 4
    #: pupil samples across its diameter
    pupil_samples: int = 64
    #: light farther than this from the spot (nm) is not rendered (it is lost, as outside a real field)
    render_radius_nm: float = 1600.0
    #: put the PSF's intensity centroid (within :data:`CENTROID_RADIUS_NM`) on the emitter position: the tilt
    #: odd aberrations (coma) carry at the pupil edge is removed, so the truth is where a bead calibration
    #: places the emitter
    centroid_at_emitter: bool = True

    def __post_init__(self):
        if not 0 < self.na < self.n_immersion:
            raise ValueError(f"NA must lie in (0, n_immersion = {self.n_immersion}), got {self.na}")
        if min(self.wavelength_nm, self.pixel_nm, self.render_radius_nm) <= 0:
            raise ValueError("wavelength, pixel size and render radius must be positive (nm)")
        if int(self.supersampling) < 1 or int(self.pupil_samples) < 8:
            raise ValueError("supersampling must be >= 1 and pupil_samples >= 8")
        for key in self.zernike_nm:
            self._noll(key)
        self._pupil = None
        self._offset = (0.0, 0.0)
        self._grids = {}

    @staticmethod
    def _noll(key) -> int:
        if isinstance(key, str) and key in ZERNIKE_NOLL:
            return ZERNIKE_NOLL[key]
        try:
            j = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"unknown aberration {key!r}: use a Noll index or one of "
                             f"{', '.join(ZERNIKE_NOLL)}") from None
        noll_to_nm(j)
        return j

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("_pupil", None)
        d.pop("_grids", None)
        d["zernike_nm"] = {str(k): float(v) for k, v in self.zernike_nm.items()}
        return d

    # ------------------------------------------------------------------ pupil
    def _pupil_arrays(self):
        """Frequencies (cycles/nm), aberrated pupil (complex, 0 outside) and axial frequency of the grid."""
        if self._pupil is None:
            m = int(self.pupil_samples)
            kmax = self.na / self.wavelength_nm
            dk = 2.0 * kmax / m
            k1 = (np.arange(m) + 0.5 - m / 2.0) * dk
            kx, ky = np.meshgrid(k1, k1)  # [row = ky, col = kx]
            rho = np.hypot(kx, ky) / kmax
            inside = rho <= 1.0
            phi = np.arctan2(ky, kx)
            w = np.zeros_like(rho)
            for key, value in self.zernike_nm.items():
                w += float(value) * zernike(self._noll(key), rho, phi)
            if self.centroid_at_emitter:
                # centroid shift = mean of grad_k (W / wavelength) over the pupil = boundary integral
                # (divergence theorem): (1 / (pi kmax)) * integral of W(1, t) / wavelength (cos t, sin t) dt
                t = np.linspace(0.0, 2.0 * np.pi, 1440, endpoint=False)
                wb = np.zeros_like(t)
                for key, value in self.zernike_nm.items():
                    wb += float(value) * zernike(self._noll(key), np.ones_like(t), t)
                mean = np.array([np.mean(wb * np.cos(t)), np.mean(wb * np.sin(t))]) * 2.0 / kmax
                w -= kx * mean[0] + ky * mean[1]  # W / wavelength loses the linear term k . mean / wavelength

            kn = self.n_immersion / self.wavelength_nm
            kz = np.sqrt(np.maximum(kn**2 - kx**2 - ky**2, 0.0))
            pupil = np.where(inside, np.exp(2j * np.pi * w / self.wavelength_nm), 0.0)
            energy = float(np.sum(np.abs(pupil) ** 2)) * dk * dk
            self._pupil = (k1, pupil * dk * dk, kz - kn, energy, inside)
            self._offset = (0.0, 0.0)
            if self.centroid_at_emitter and self.zernike_nm:
                # what the sampled pupil leaves, measured once in focus within CENTROID_RADIUS_NM
                size = 2 * int(math.ceil(CENTROID_RADIUS_NM / self.pixel_nm)) + 1
                img = self.pixel_fractions(size // 2, size // 2, 0.0, size, size)
                kk, mm = np.mgrid[0:size, 0:size]
                self._offset = (float((img * mm).sum() / img.sum() - size // 2),
                                float((img * kk).sum() / img.sum() - size // 2))
        return self._pupil

    def render_radius_px(self) -> int:
        return int(math.ceil(self.render_radius_nm / self.pixel_nm))

    def _grid(self, size: int):
        """``exp(i 2 pi u k)`` for the supersampled points ``u`` (nm) of ``size`` pixels, cached per size."""
        cache = self.__dict__.setdefault("_grids", {})
        if size not in cache:
            k1 = self._pupil_arrays()[0]
            s = int(self.supersampling)
            sub = (np.arange(s) + 0.5) / s - 0.5
            u = (np.arange(size)[:, None] + sub[None, :]).ravel() * self.pixel_nm
            cache[size] = np.exp(2j * np.pi * np.outer(u, k1))  # (size * s, M)
        return cache[size]

    def pixel_fractions(self, dx, dy, z, size_x: int, size_y: int):
        """Expected fraction of the photons in each pixel of a ``size_y x size_x`` patch.

        Pixel centres of the patch are at integer coordinates ``0 .. size-1``; the emitter is at ``(dx, dy)``
        in those coordinates (pixels) and at height ``z`` (nm). Returns float64 ``(size_y, size_x)``.
        """
        k1, pupil, kz, energy, _ = self._pupil_arrays()
        s = int(self.supersampling)
        dx = dx - self._offset[0]
        dy = dy - self._offset[1]
        # the emitter's position and height are phases of the pupil; the sample points are fixed
        shift_x = np.exp(-2j * np.pi * k1 * (dx * self.pixel_nm))
        shift_y = np.exp(-2j * np.pi * k1 * (dy * self.pixel_nm))
        p = pupil * np.exp(2j * np.pi * z * kz) * shift_y[:, None] * shift_x[None, :]
        field = self._grid(size_y) @ p @ self._grid(size_x).T
        inten = (field.real**2 + field.imag**2) / energy
        area = (self.pixel_nm / s) ** 2
        return inten.reshape(size_y, s, size_x, s).sum(axis=(1, 3)) * area

    def spot(self, dx, dy, z, box: int):
        """Fractions in a ``box x box`` patch for an emitter ``(dx, dy)`` pixels from its centre pixel."""
        c = box // 2
        return self.pixel_fractions(c + dx, c + dy, z, box, box)

    def render(self, image, x, y, z, photons):
        """Add spots (``x``, ``y`` in pixels of ``image``, ``z`` nm, ``photons``) to ``image`` in place."""
        h, w = image.shape
        r = self.render_radius_px()
        size = 2 * r + 1
        with single_threaded_blas():
            self._render(image, x, y, z, photons, h, w, r, size)
        return image

    def _render(self, image, x, y, z, photons, h, w, r, size):
        for xi, yi, zi, ni in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(z), np.atleast_1d(photons)):
            cx, cy = int(round(float(xi))), int(round(float(yi)))
            x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
            y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
            if x1 <= x0 or y1 <= y0:
                continue
            frac = self.pixel_fractions(float(xi) - cx + r, float(yi) - cy + r, float(zi), size, size)
            image[y0:y1, x0:x1] += float(ni) * frac[y0 - cy + r: y1 - cy + r, x0 - cx + r: x1 - cx + r]

    def stack(self, z_values, box: int, dx: float = 0.0, dy: float = 0.0):
        """Noise-free fractions ``(len(z), box, box)`` of one emitter at the heights ``z_values`` (nm)."""
        with single_threaded_blas():
            return np.stack([self.spot(dx, dy, float(z), box) for z in np.atleast_1d(z_values)])

    def gaussian_widths(self, z_values, box: int = 21):
        """Widths ``(sx, sy)`` (pixels) of the best-fitting pixel-integrated Gaussian at each height.

        For ground-truth tables (``sx``, ``sy`` columns) and for comparing with the Gaussian astigmatism
        model; they are not what any fit returns.
        """
        with single_threaded_blas():
            return gaussian_widths(self, z_values, box, 0.21 * self.wavelength_nm / self.na / self.pixel_nm)


def gaussian_widths(model, z_values, box: int, sigma0: float):
    """Least-squares Gaussian widths of ``model.spot(0, 0, z, box)`` (noise-free) at each height."""
    from scipy.optimize import least_squares

    from .simulate import expected_image

    c = box // 2
    out_x, out_y = [], []
    for z in np.atleast_1d(z_values):
        img = model.spot(0.0, 0.0, float(z), box)

        def resid(t, img=img):
            return (expected_image(box, box, [c + t[0]], [c + t[1]], [t[2]], abs(t[3]) + 1e-3,
                                   abs(t[4]) + 1e-3, 0.0) - img).ravel()

        sol = least_squares(resid, [0.0, 0.0, float(img.sum()), sigma0, sigma0],
                            x_scale=[0.1, 0.1, 0.1, 0.2, 0.2])
        out_x.append(abs(sol.x[3]) + 1e-3)
        out_y.append(abs(sol.x[4]) + 1e-3)
    return np.array(out_x), np.array(out_y)


#: an astigmatic, moderately aberrated oil objective: foci about +-300 nm apart, some spherical and coma
ASTIGMATIC_3D = {"astigmatism": 80.0, "spherical": 25.0, "coma_x": 15.0, "coma_y": -10.0}


def width_table(psf: PupilPSF, z_lo: float, z_hi: float, step: float = 25.0):
    """Gaussian-equivalent widths on a z grid, for interpolating truth widths cheaply."""
    zg = np.arange(z_lo, z_hi + step, step, dtype=float)
    sx, sy = psf.gaussian_widths(zg)
    return zg, sx, sy
