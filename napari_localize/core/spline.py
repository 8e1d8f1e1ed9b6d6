"""Cubic-spline PSF models: coefficients, evaluation (value and derivatives) and the model object.

An experimental PSF sampled on a voxel grid (``V[z, y, x]``, pixel-integrated: the value at a node is the
expected share of the photons in the camera pixel whose centre is there) is represented between the nodes by
a tensor-product cubic spline, stored as Babcock & Zhuang (Sci. Rep. 7, 552 (2017)) do: every grid cell (voxel
between 2x2x2 nodes) carries its own 64 coefficients of the local polynomial::

    f(x, y, z) = sum_{p,q,r=0..3}  C[iz, iy, ix, r, q, p]  tz^r ty^q tx^p      (tx = x - ix, ...)

so a value and its three derivatives cost 64 multiply-adds (Horner along x, then y, then z). The
coefficients come from interpolating cubic splines with natural end conditions along each axis (uniform
cubic B-splines whose coefficients solve the interpolation conditions, converted to per-cell power form),
applied axis by axis; the spline passes through every node. In 2D (in-focus, no z) a cell has 16
coefficients ``C[iy, ix, q, p]``.

:func:`~napari_localize.core.engine.splines.spline3d_eval` and ``spline2d_eval`` (in the engine) are numba
``register_jitable`` functions on the flat coefficient array, so CPU (``njit``) and CUDA kernels compile the
same source. Outside the grid the index is
clamped and the boundary cell's polynomial extrapolated (continuous value and derivatives, so a fit wandering
a little past the edge still sees a gradient).

Coordinates of :class:`SplinePSF` (the fitted model): an emitter at box coordinates ``(x0, y0)`` (pixels, pixel
centres at integers) and height ``z`` (nm) puts ``N * f(s)`` photons in pixel ``(row k, column m)``, with the
spline coordinate ``s = ((m - x0) o + cx, (k - y0) o + cy, (z - z_first) / z_step)``; ``(cx, cy)`` is the node
the emitter sits on (the template centre) and ``o`` (``oversampling``) the lateral nodes per camera pixel: the
value at lateral node ``j`` is the photon share of the pixel whose centre lies ``(j - cx) / o`` pixels from the
emitter, i.e. the pixel-integrated PSF sampled at sub-pixel shifts (``o = 1``: one node per pixel, Picasso's
files) and ``z_first``/``z_step`` map node index to height (``z_step`` may be
negative: Picasso's slices run from the top of the scan down). ``f`` is normalised so that ``N`` is the
number of photons the camera records within the calibration box at the reference height
(see :mod:`napari_localize.io.spline_calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# uniform cubic B-spline segment in power form: f(t) = [1 t t^2 t^3] @ _BSPLINE_M @ [c_{i-1} c_i c_{i+1} c_{i+2}]
_BSPLINE_M = np.array([[1.0, 4.0, 1.0, 0.0],
                       [-3.0, 0.0, 3.0, 0.0],
                       [3.0, -6.0, 3.0, 0.0],
                       [-1.0, 3.0, -3.0, 1.0]]) / 6.0


def interpolation_operator(n: int) -> np.ndarray:
    """Linear map from ``n`` samples on the unit grid to the power coefficients of their cubic spline.

    Returns ``(n - 1, 4, n)``: ``f(i + t) = sum_p O[i, p, :] @ data * t^p`` for ``t`` in [0, 1]. The spline is
    a uniform cubic B-spline with ``n + 2`` coefficients fixed by interpolating the ``n`` samples and zero
    second derivative at both ends (natural end conditions). ``n >= 2``; two samples give a straight line.
    """
    if n < 2:
        raise ValueError(f"a spline needs at least 2 samples along each axis, got {n}")
    a = np.zeros((n + 2, n + 2))
    rhs = np.zeros((n + 2, n))
    # interpolation: (c_{i-1} + 4 c_i + c_{i+1}) / 6 = d_i, coefficient c_j stored at index j + 1
    for i in range(n):
        a[i + 1, i: i + 3] = (1.0 / 6.0, 4.0 / 6.0, 1.0 / 6.0)
        rhs[i + 1, i] = 1.0
    # natural ends: f''(0) = c_{-1} - 2 c_0 + c_1 = 0 and f''(n - 1) = c_{n-2} - 2 c_{n-1} + c_n = 0
    a[0, 0:3] = (1.0, -2.0, 1.0)
    a[n + 1, n - 1: n + 2] = (1.0, -2.0, 1.0)
    coeffs = np.linalg.solve(a, rhs)  # (n + 2, n)
    return np.stack([_BSPLINE_M @ coeffs[i: i + 4] for i in range(n - 1)])


def spline_coefficients(volume: np.ndarray) -> np.ndarray:
    """Per-cell power coefficients of the interpolating cubic spline of a 2D ``[y, x]`` or 3D ``[z, y, x]`` grid.

    Returns float64 ``(nz-1, ny-1, nx-1, 4, 4, 4)`` indexed ``[iz, iy, ix, r, q, p]`` (powers of z, y, x), or
    ``(ny-1, nx-1, 4, 4)`` in 2D.
    """
    v = np.asarray(volume, float)
    if v.ndim == 3:
        oz, oy, ox = (interpolation_operator(n) for n in v.shape)
        return np.ascontiguousarray(np.einsum("irA,jqB,kpC,ABC->ijkrqp", oz, oy, ox, v, optimize=True))
    if v.ndim == 2:
        oy, ox = (interpolation_operator(n) for n in v.shape)
        return np.ascontiguousarray(np.einsum("jqB,kpC,BC->jkqp", oy, ox, v, optimize=True))
    raise ValueError(f"spline coefficients of a 2D or 3D grid, got {v.ndim} dimensions")


# --------------------------------------------------------------------------------------------- evaluation
# the jitted evaluation lives in the engine (numba cache rule: jitted code calls jitted code of other modules
# only inside core/engine/), so the fit and everything else evaluate the same source
from .engine.splines import eval2d_serial, eval3d_serial  # noqa: E402

#: batches of more points than this are shared over threads (the kernel is serial and nogil)
PARALLEL_ABOVE = 50000


def evaluate(coefficients: np.ndarray, sx, sy, sz=None) -> np.ndarray:
    """Value and derivatives at spline coordinates (arrays): ``(n, 4)`` = value, d/dsx, d/dsy, d/dsz."""
    c = np.ascontiguousarray(coefficients, np.float64)
    sx, sy = np.broadcast_arrays(np.asarray(sx, float), np.asarray(sy, float))
    shape = sx.shape
    flat = c.ravel()
    out = np.empty((sx.size, 4))
    if c.ndim == 6:
        sz = np.broadcast_to(np.asarray(0.0 if sz is None else sz, float), shape)
        px, py, pz = (np.ascontiguousarray(v, float).ravel() for v in (sx, sy, sz))

        def share(a, b):
            eval3d_serial(flat, c.shape[0], c.shape[1], c.shape[2], px[a:b], py[a:b], pz[a:b], out[a:b])

        from numba import config

        from ._threading import run_shares

        threads = max(1, int(config.NUMBA_NUM_THREADS))
        shares = 2 * threads if sx.size > PARALLEL_ABOVE and threads > 1 else 1
        run_shares(share, sx.size, shares, "spline", threads)  # numba compiles (or loads) it once
    elif c.ndim == 4:
        eval2d_serial(flat, c.shape[0], c.shape[1], np.ascontiguousarray(sx, float).ravel(),
                     np.ascontiguousarray(sy, float).ravel(), out)
    else:
        raise ValueError("coefficients must be (nz, ny, nx, 4, 4, 4) or (ny, nx, 4, 4)")
    return out.reshape(shape + (4,))


# --------------------------------------------------------------------------------------------- the model
@dataclass
class SplinePSF:
    """A spline PSF ready to fit or render (see the module docstring for its coordinates).

    ``coefficients`` are normalised so that ``N * f`` is in photons; ``volume`` (optional) is the grid they
    interpolate, same normalisation, ``[z, y, x]`` (3D) or ``[y, x]`` (2D).
    """

    coefficients: np.ndarray
    #: spline coordinate of the emitter (template centre) along x and y (nodes)
    cx: float
    cy: float
    #: height (nm) of node 0 and the height change per node (nm; the magnification factor applied)
    z_first: float = 0.0
    z_step: float = 1.0
    pixelsize: float = 130.0
    magnification_factor: float = 1.0
    #: the fit box the calibration was made for (odd, pixels)
    box: int = 13
    #: reference height (nm) a fit starts from when nothing better is known (the most compact slice)
    z_init: float = 0.0
    volume: np.ndarray | None = None
    #: lateral spline nodes per camera pixel (1, or 2 for our oversampled calibrations)
    oversampling: int = 1
    source: str = "napari-localize"
    path: str | None = None
    notices: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    def __post_init__(self):
        c = np.ascontiguousarray(self.coefficients, np.float64)
        if c.ndim not in (4, 6) or c.shape[-1] != 4:
            raise ValueError(f"spline coefficients must be (nz, ny, nx, 4, 4, 4) or (ny, nx, 4, 4), got {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError("spline coefficients contain NaN or infinity")
        if self.is_3d and not (np.isfinite(self.z_step) and self.z_step != 0):
            raise ValueError(f"z step between spline nodes must be non-zero, got {self.z_step}")
        if int(self.oversampling) != self.oversampling or self.oversampling < 1:
            raise ValueError(f"spline oversampling must be a positive integer, got {self.oversampling}")
        self.oversampling = int(self.oversampling)
        self.coefficients = c
        self.flat = c.ravel()

    def with_magnification(self, factor: float) -> SplinePSF:
        """A copy whose heights use the magnification factor ``factor`` (actual / stage height)."""
        import dataclasses

        if not factor > 0:
            raise ValueError(f"magnification factor must be positive, got {factor}")
        k = float(factor) / self.magnification_factor
        out = dataclasses.replace(self, z_first=self.z_first * k, z_step=self.z_step * k, z_init=self.z_init * k,
                                  magnification_factor=float(factor), meta=dict(self.meta),
                                  diagnostics=self.diagnostics)
        return out

    @property
    def is_3d(self) -> bool:
        return self.coefficients.ndim == 6

    @property
    def n_cells(self) -> tuple[int, ...]:
        """Cells along ``(z, y, x)`` (3D) or ``(y, x)``."""
        return tuple(int(s) for s in self.coefficients.shape[: 3 if self.is_3d else 2])

    @property
    def n_nodes(self) -> tuple[int, ...]:
        return tuple(n + 1 for n in self.n_cells)

    @property
    def grid_px(self) -> int:
        """Lateral extent of the spline grid in camera pixels (x; the nodes span ``grid_px - 1`` pixels)."""
        return (self.n_nodes[-1] - 1) // self.oversampling + 1

    @property
    def z_range(self) -> tuple[float, float]:
        """Calibrated heights (nm): the first and last node."""
        if not self.is_3d:
            return (0.0, 0.0)
        a = self.z_first
        b = self.z_first + self.z_step * (self.n_nodes[0] - 1)
        return (min(a, b), max(a, b))

    def z_coordinate(self, z):
        return (np.asarray(z, float) - self.z_first) / self.z_step

    def spline_coordinates(self, m, k, x0, y0, z=0.0):
        """Spline coordinates of pixel column ``m``, row ``k`` for an emitter at ``(x0, y0, z)``."""
        o = self.oversampling
        sx = (np.asarray(m, float) - x0) * o + self.cx
        sy = (np.asarray(k, float) - y0) * o + self.cy
        return sx, sy, (self.z_coordinate(z) if self.is_3d else None)

    def inside(self, sx, sy):
        nx, ny = self.n_nodes[-1], self.n_nodes[-2]
        return (sx >= -0.5) & (sx <= nx - 0.5) & (sy >= -0.5) & (sy <= ny - 0.5)

    def patch(self, x0, y0, z, size_x: int, size_y: int, derivatives: bool = False):
        """Expected share of the photons per pixel of a ``size_y x size_x`` patch (emitter at ``(x0, y0)``).

        With ``derivatives``, also d/dx0, d/dy0 (per pixel) and d/dz (per nm), each ``(size_y, size_x)``.
        Pixels farther from the emitter than the calibration box reaches get 0.
        """
        k, m = np.mgrid[0:size_y, 0:size_x]
        sx, sy, sz = self.spline_coordinates(m, k, x0, y0, z)
        out = evaluate(self.coefficients, sx, sy, None if sz is None else np.broadcast_to(sz, sx.shape))
        mask = self.inside(sx, sy)
        v = np.where(mask, out[..., 0], 0.0)
        if not derivatives:
            return v
        dx = np.where(mask, -out[..., 1] * self.oversampling, 0.0)
        dy = np.where(mask, -out[..., 2] * self.oversampling, 0.0)
        dz = np.where(mask, out[..., 3] / self.z_step, 0.0) if self.is_3d else np.zeros_like(v)
        return v, dx, dy, dz

    def spot(self, dx, dy, z, box: int):
        c = box // 2
        return self.patch(c + dx, c + dy, z, box, box)

    def render(self, image, x, y, z, photons):
        """Add spots to ``image`` in place (positions in pixels of the image, ``z`` nm)."""
        h, w = image.shape
        o = self.oversampling
        rx = int(math.ceil(max(self.cx, self.n_nodes[-1] - 1 - self.cx) / o)) + 1
        ry = int(math.ceil(max(self.cy, self.n_nodes[-2] - 1 - self.cy) / o)) + 1
        for xi, yi, zi, ni in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(z), np.atleast_1d(photons)):
            ix, iy = int(round(float(xi))), int(round(float(yi)))
            x0, x1 = max(ix - rx, 0), min(ix + rx + 1, w)
            y0, y1 = max(iy - ry, 0), min(iy + ry + 1, h)
            if x1 <= x0 or y1 <= y0:
                continue
            image[y0:y1, x0:x1] += float(ni) * self.patch(float(xi) - x0, float(yi) - y0, float(zi),
                                                           x1 - x0, y1 - y0)
        return image

    def gaussian_widths(self, z_values, box: int | None = None):
        """Widths ``(sx, sy)`` (pixels) of the best-fitting pixel-integrated Gaussian at each height."""
        from .pupil import gaussian_widths

        if box is None:
            box = self.grid_px - (1 - self.grid_px % 2)
        return gaussian_widths(self, z_values, box, 1.0)

    def pixel_grid(self) -> SplinePSF:
        """The same PSF with one node per camera pixel (every ``oversampling``-th node of ``volume``), for
        programs that read only such splines (Picasso). ``self`` when it already is one."""
        import dataclasses

        o = self.oversampling
        if o == 1:
            return self
        if self.volume is None or (self.cx % o) or (self.cy % o):
            raise ValueError("a one-node-per-pixel copy needs the template volume, centred on a pixel node")
        vol = self.volume[..., int(self.cy) % o::o, int(self.cx) % o::o]
        return dataclasses.replace(self, coefficients=spline_coefficients(vol), cx=self.cx / o, cy=self.cy / o,
                                   volume=vol, oversampling=1, meta=dict(self.meta), notices=list(self.notices),
                                   diagnostics=self.diagnostics)

    def stack(self, z_values, box: int | None = None):
        """Model images ``(len(z), box, box)`` of a centred emitter, for display (a napari layer)."""
        box = box or self.box
        return np.stack([self.spot(0.0, 0.0, float(z), box) for z in np.atleast_1d(z_values)])
