"""The fit engine: every PSF model x noise model, CPU vs the CUDA kernel, accuracy vs truth, cache keys.

The CUDA kernel runs in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is
imported, hence a subprocess); it must give the CPU driver's fits to 1e-9 px with the same iterations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_localize.core import engine
from napari_localize.core.engine import (
    MODEL_ASTIG_Z,
    MODEL_GAUSS,
    MODEL_GAUSS_FIXED,
    NOISE_LSQ,
    NOISE_POISSON,
    NOISE_SCMOS,
    NOISE_WLSQ,
    astig_aux,
    default_bounds,
    fit_boxes,
)
from napari_localize.core.simulate import astigmatic_widths

ROOT = Path(__file__).resolve().parent.parent
BOX = 9
R = BOX // 2


def _spots(n, photons, bg, sx, sy, seed, variance=None):
    """Boxes of pixel-integrated Gaussians at random sub-pixel offsets: Poisson, plus Gaussian readout noise of
    per-pixel ``variance`` (photons^2) if given. Returns (boxes, true x, true y)."""
    from napari_localize.core.engine.pixels import add_gaussian

    rng = np.random.default_rng(seed)
    x = R + rng.uniform(-0.5, 0.5, n)
    y = R + rng.uniform(-0.5, 0.5, n)
    sx = np.broadcast_to(sx, n)
    sy = np.broadcast_to(sy, n)
    mu = np.full((n, BOX, BOX), float(bg))
    ex, ey = np.empty(BOX), np.empty(BOX)
    for i in range(n):
        add_gaussian(mu[i], x[i], y[i], photons, sx[i], sy[i], 0, BOX, 0, BOX, ex, ey)
    data = rng.poisson(mu).astype(np.float64)
    if variance is not None:
        data += rng.normal(0.0, np.sqrt(variance))
    return data.astype(np.float32), x, y


def _calibration():
    z = np.linspace(-600, 600, 61)
    wx, wy = astigmatic_widths(z, 1.2, 300.0, 400.0)
    return np.polyfit(z, wx, 6), np.polyfit(z, wy, 6)


def _astig_spots(n, photons, bg, seed, cx, cy):
    rng = np.random.default_rng(seed)
    z = rng.uniform(-400, 400, n)
    wx, wy = np.polyval(cx, z), np.polyval(cy, z)
    data = np.empty((n, BOX, BOX), np.float32)
    xs = np.empty(n)
    ys = np.empty(n)
    for i in range(n):
        d, x, y = _spots(1, photons, bg, wx[i], wy[i], seed * 1000 + i)
        data[i], xs[i], ys[i] = d[0], x[0], y[0]
    return data, xs, ys, z


SIMULATOR_SCRIPT = r"""
import json
import numpy as np
from numba.core import config
import test_engine as T
from napari_localize.core.engine import *

out = {"cudasim": bool(config.ENABLE_CUDASIM)}
cx, cy = T._calibration()
aux_z = astig_aux(cx, cy)
g, gx, gy = T._spots(6, 1500.0, 15.0, 1.2, 1.2, 1)
bgonly = np.random.default_rng(2).poisson(10.0, (2, T.BOX, T.BOX)).astype(np.float32)
boxes = np.concatenate([g, bgonly])
var = np.random.default_rng(3).uniform(0.5, 60.0, boxes.shape)
zs, zx, zy, zt = T._astig_spots(6, 3000.0, 10.0, 4, cx, cy)
theta_z = np.column_stack([zx, zy, np.full(6, 3000.0), np.full(6, 10.0), zt + 60.0])
other = np.random.default_rng(5).uniform(0.0, 3.0, zs.shape)
zb = default_bounds(MODEL_ASTIG_Z, T.BOX, (-700.0, 700.0))
cases = {
    "gauss/poisson": dict(spots=boxes, model=MODEL_GAUSS, noise=NOISE_POISSON),
    "gauss/lsq": dict(spots=boxes, model=MODEL_GAUSS, noise=NOISE_LSQ),
    "gauss/wlsq": dict(spots=boxes, model=MODEL_GAUSS, noise=NOISE_WLSQ),
    "gauss/scmos": dict(spots=boxes, model=MODEL_GAUSS, noise=NOISE_SCMOS, variance=var),
    "fixed/poisson": dict(spots=boxes, model=MODEL_GAUSS_FIXED, noise=NOISE_POISSON, aux=[1.2, 1.2]),
    "fixed/scmos": dict(spots=boxes, model=MODEL_GAUSS_FIXED, noise=NOISE_SCMOS, aux=[1.2, 1.2], variance=var),
    "astig/poisson": dict(spots=zs, model=MODEL_ASTIG_Z, noise=NOISE_POISSON, aux=aux_z, theta0=theta_z,
                          bounds=zb, other=other, gof=True),
    "astig/scmos": dict(spots=zs, model=MODEL_ASTIG_Z, noise=NOISE_SCMOS, aux=aux_z, theta0=theta_z,
                        bounds=zb, variance=var[:6], gof=True),
}
res = {}
for name, kw in cases.items():
    c = fit_boxes(device="cpu", **kw)
    g = fit_boxes(device="cuda", batch_boxes=4, **kw)
    finite = np.isfinite(c.crlb) & np.isfinite(g.crlb)
    res[name] = {
        "pos": float(np.max(np.abs(g.theta[:, :2] - c.theta[:, :2])[c.converged])),
        "theta": float(np.max(np.abs(g.theta - c.theta)[c.converged] / np.maximum(1.0, np.abs(c.theta[c.converged])))),
        "crlb": float(np.max(np.abs(g.crlb - c.crlb)[finite] / np.maximum(1e-12, np.abs(c.crlb[finite])))),
        "iterations_same": bool(np.array_equal(g.iterations, c.iterations)),
        "converged_same": bool(np.array_equal(g.converged, c.converged)),
        "gof_same": bool(np.allclose(g.gof, c.gof, rtol=1e-9, atol=1e-9, equal_nan=True)),
        "n_converged": int(c.converged.sum()),
    }
out["cases"] = res
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def simulated():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    run = subprocess.run([sys.executable, "-c", SIMULATOR_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [s for s in run.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


CASES = ["gauss/poisson", "gauss/lsq", "gauss/wlsq", "gauss/scmos", "fixed/poisson", "fixed/scmos",
         "astig/poisson", "astig/scmos"]


@pytest.mark.parametrize("name", CASES)
def test_cuda_kernel_equals_cpu_driver_for_every_model_and_noise(simulated, name):
    assert simulated["cudasim"] is True
    c = simulated["cases"][name]
    assert c["n_converged"] >= 5  # the spot boxes converge (the background-only boxes may not)
    assert c["pos"] < 1e-9
    assert c["theta"] < 1e-9
    assert c["crlb"] < 1e-9
    assert c["iterations_same"]
    assert c["converged_same"]
    assert c["gof_same"]


def _z_scores(res, x, y):
    ok = res.converged
    return np.concatenate([(res.theta[ok, 0] - x[ok]) / np.sqrt(res.crlb[ok, 0]),
                           (res.theta[ok, 1] - y[ok]) / np.sqrt(res.crlb[ok, 1])])


def test_fixed_widths_reach_their_crlb_and_it_is_below_the_free_fit():
    spots, x, y = _spots(400, 1000.0, 10.0, 1.3, 1.3, 7)
    free = fit_boxes(spots, MODEL_GAUSS, NOISE_POISSON)
    fixed = fit_boxes(spots, MODEL_GAUSS_FIXED, NOISE_POISSON, aux=[1.3, 1.3])
    assert fixed.theta.shape == (400, 4) and fixed.converged.mean() > 0.98
    z = _z_scores(fixed, x - 0, y - 0)
    assert abs(np.sqrt(np.mean(z**2)) - 1.0) < 0.12
    assert free.converged.mean() > 0.98
    # at the same parameters, knowing the width can only add information
    from napari_localize.core.engine import curvature

    th = [R + 0.2, R - 0.1, 1000.0, 10.0, 1.3, 1.3]
    v_free = np.diag(np.linalg.inv(curvature(th, BOX, MODEL_GAUSS)))
    v_fixed = np.diag(np.linalg.inv(curvature(th[:4], BOX, MODEL_GAUSS_FIXED, aux=[1.3, 1.3])))
    assert np.all(v_fixed[:2] < v_free[:2])
    assert np.all(v_fixed[:2] > 0.5 * v_free[:2])


def test_scmos_noise_model_is_efficient_where_poisson_is_not():
    rng = np.random.default_rng(11)
    var = np.where(rng.random((600, BOX, BOX)) < 0.15, 400.0, 1.0)  # hot pixels: readout variance 400 e^2
    spots, x, y = _spots(600, 800.0, 5.0, 1.2, 1.2, 12, variance=var)
    scmos = fit_boxes(spots, MODEL_GAUSS, NOISE_SCMOS, variance=var)
    poisson = fit_boxes(spots, MODEL_GAUSS, NOISE_POISSON)
    ok = scmos.converged & poisson.converged
    err_s = np.hypot(scmos.theta[ok, 0] - x[ok], scmos.theta[ok, 1] - y[ok])
    err_p = np.hypot(poisson.theta[ok, 0] - x[ok], poisson.theta[ok, 1] - y[ok])
    assert np.sqrt(np.mean(err_s**2)) < 0.9 * np.sqrt(np.mean(err_p**2))
    # the sCMOS fit reaches its own bound (Huang et al. 2013)
    z = _z_scores(scmos, x, y)
    assert np.sqrt(np.mean(z[np.isfinite(z)] ** 2)) < 1.25
    with pytest.raises(ValueError, match="variance"):
        fit_boxes(spots, MODEL_GAUSS, NOISE_SCMOS)


def test_weighted_least_squares_fits_positions():
    spots, x, y = _spots(300, 2000.0, 20.0, 1.0, 1.0, 21)
    w = fit_boxes(spots, MODEL_GAUSS, NOISE_WLSQ)
    assert w.converged.mean() > 0.98
    rms = np.sqrt(np.mean((w.theta[w.converged, 0] - x[w.converged]) ** 2))
    p = fit_boxes(spots, MODEL_GAUSS, NOISE_POISSON)
    assert rms < 1.3 * np.sqrt(np.mean(p.crlb[p.converged, 0]))


def test_astigmatic_model_recovers_z_and_respects_max_iterations():
    cx, cy = _calibration()
    spots, x, y, z = _astig_spots(200, 3000.0, 10.0, 31, cx, cy)
    theta0 = np.column_stack([np.full(200, R), np.full(200, R), np.full(200, 2500.0), np.full(200, 8.0),
                              z + np.random.default_rng(1).normal(0, 60, 200)])
    bounds = default_bounds(MODEL_ASTIG_Z, BOX, (-700.0, 700.0))
    res = fit_boxes(spots, MODEL_ASTIG_Z, NOISE_POISSON, theta0=theta0, aux=astig_aux(cx, cy), bounds=bounds,
                    gof=True)
    ok = res.converged
    assert ok.mean() > 0.95
    zz = (res.theta[ok, 4] - z[ok]) / np.sqrt(res.crlb[ok, 4])
    assert np.sqrt(np.mean(zz**2)) < 1.3
    assert abs(np.median(res.gof[ok])) < 0.5  # the box holds just the model
    short = fit_boxes(spots, MODEL_ASTIG_Z, NOISE_POISSON, theta0=theta0, aux=astig_aux(cx, cy), bounds=bounds,
                      max_iterations=2)
    assert short.iterations.max() <= 2


def test_bad_arguments_are_clear():
    spots, _, _ = _spots(3, 1000.0, 10.0, 1.2, 1.2, 1)
    with pytest.raises(ValueError, match="PSF model"):
        fit_boxes(spots, model=9)
    with pytest.raises(ValueError, match="noise model"):
        fit_boxes(spots, noise=9)
    with pytest.raises(ValueError, match="aux"):
        fit_boxes(spots, MODEL_GAUSS_FIXED)
    with pytest.raises(ValueError, match="square"):
        fit_boxes(spots[:, :, :5])
    with pytest.raises(ValueError, match="other light"):
        fit_boxes(spots, other=np.zeros((2, BOX, BOX)))


def test_engine_edit_changes_every_cache_stamp(tmp_path, monkeypatch):
    from napari_localize.core.engine import _cache
    from napari_localize.core.engine.cpu import kernel
    from napari_localize.core.engine.models import MODEL_GAUSS as _GAUSS
    from napari_localize.core.engine.noise import NOISE_POISSON as _POISSON
    from napari_localize.core.zmodel import _neighbour_light

    fit_boxes_cpu = kernel(_GAUSS, _POISSON)  # a per-(model, noise) kernel (a specialised twin)

    assert _cache.EngineAwareLocator in __import__("numba.core.caching", fromlist=["x"]).CacheImpl._locator_classes
    copy = tmp_path / "engine"
    shutil.copytree(Path(engine.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "ENGINE_DIR", copy)
    stamps = []
    for fn in (fit_boxes_cpu, _neighbour_light):  # a driver, and a kernel of another module using the engine
        loc = _cache.EngineAwareLocator.from_function(fn.py_func, fn.py_func.__code__.co_filename)
        assert loc is not None
        stamps.append(loc.get_source_stamp())
    with open(copy / "models.py", "a") as f:
        f.write("\n# an edit\n")
    for fn, before in zip((fit_boxes_cpu, _neighbour_light), stamps):
        loc = _cache.EngineAwareLocator.from_function(fn.py_func, fn.py_func.__code__.co_filename)
        assert loc.get_source_stamp() != before
    # functions of other packages keep numba's own locator
    assert _cache.EngineAwareLocator.from_function(np.polyval, np.__file__) is None


def test_a_kernel_numba_cannot_cache_still_runs_with_a_warning(tmp_path, monkeypatch):
    """numba warns (and compiles without caching) a function it cannot cache, naming its file from the
    locator's private ``_py_file``: the engine-aware locator must pass that through, not crash the run."""
    import importlib.util
    import warnings

    from numba.core.errors import NumbaWarning

    from napari_localize.core.engine import _cache

    src = tmp_path / "uncachable_kernel.py"
    src.write_text(
        "import ctypes, ctypes.util\n"
        "from numba import njit\n"
        "libm = ctypes.CDLL(ctypes.util.find_library('m'))\n"
        "c_cos = libm.cos\n"
        "c_cos.argtypes = (ctypes.c_double,)\n"
        "c_cos.restype = ctypes.c_double\n"
        "@njit(cache=True)\n"
        "def f(x):\n"
        "    return c_cos(x)  # a ctypes function: a dynamic global, which numba cannot cache\n"
    )
    monkeypatch.setattr(_cache, "PACKAGE_DIR", tmp_path)  # as if the file were part of this package
    spec = importlib.util.spec_from_file_location("uncachable_kernel", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(_cache.EngineAwareLocator.from_function(module.f.py_func, str(src)), _cache.EngineAwareLocator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert module.f(0.5) == pytest.approx(np.cos(0.5))
    assert any(issubclass(w.category, NumbaWarning) and "Cannot cache" in str(w.message) for w in caught)
    assert any(w.filename == str(src) for w in caught)


@pytest.mark.parametrize("noise", ["poisson", "lsq", "wlsq", "scmos"])
@pytest.mark.parametrize("model", ["gauss", "astig_z"])
def test_normal_equations_equal_the_per_pixel_sums(model, noise):
    """The engine's gradient and curvature of the Gaussian models (built from 1D profile sums, contracted to z
    for the astigmatic model) against ``sum_p r_p J_p`` and ``sum_p w_p J_p J_p^T`` summed here pixel by pixel
    from the model's own Jacobian rows, with noisy data, other light and a variance box."""
    from napari_localize.core.engine import lm
    from napari_localize.core.engine import models as M
    from napari_localize.core.engine import noise as Z

    mod = {"gauss": M.MODEL_GAUSS, "astig_z": M.MODEL_ASTIG_Z}[model]
    nz = {"poisson": Z.NOISE_POISSON, "lsq": Z.NOISE_LSQ, "wlsq": Z.NOISE_WLSQ, "scmos": Z.NOISE_SCMOS}[noise]
    box, P = 7, 49
    rng = np.random.default_rng(11)
    if mod == M.MODEL_ASTIG_Z:
        aux = M.astig_aux([2e-7, 1e-4, 1.3], [2e-7, -1e-4, 1.3])  # widths (px) against z (nm)
        theta = np.zeros(M.MAX_PARAMS)
        theta[:5] = (3.2, 2.7, 1800.0, 12.0, 150.0)
    else:
        aux = np.zeros(1)
        theta = np.zeros(M.MAX_PARAMS)
        theta[:6] = (3.2, 2.7, 1800.0, 12.0, 1.1, 0.9)
    n = M.n_params(mod, aux)
    data = rng.poisson(40.0, (1, P)).astype(np.float32)
    var = rng.uniform(0.5, 20.0, (1, P)) if nz in (Z.NOISE_WLSQ, Z.NOISE_SCMOS) else np.zeros((0, P))
    other = rng.uniform(0.0, 30.0, (1, P))
    scratch = np.zeros((M.SCRATCH_ROWS, box))
    assert M.prepare(mod, theta, box, aux, scratch)
    jrow = np.zeros(M.MAX_PARAMS)
    g_ref = np.zeros(n)
    F_ref = np.zeros((n, n))
    for k in range(box):
        for m in range(box):
            p = k * box + m
            mu = M.pixel(mod, theta, k, m, aux, scratch, jrow, True) + other[0, p]
            r, w = Z.gradient_weights(nz, data[0, p], mu, var[0, p] if len(var) else 0.0)
            g_ref += r * jrow[:n]
            F_ref += w * np.outer(jrow[:n], jrow[:n])
    g = np.zeros(M.MAX_PARAMS)
    F = np.zeros((M.MAX_PARAMS, M.MAX_PARAMS))
    lm.normal_equations(mod, nz, data, var, other, 0, box, aux, theta, scratch, jrow, g, F, n)
    np.testing.assert_allclose(g[:n], g_ref, rtol=1e-10, atol=1e-10 * np.abs(g_ref).max())
    np.testing.assert_allclose(F[:n, :n], F_ref, rtol=1e-10, atol=1e-12 * np.abs(F_ref).max())


def test_inverse_diagonal_is_the_diagonal_of_the_inverse():
    from napari_localize.core.engine import lm
    from napari_localize.core.engine.models import MAX_PARAMS

    rng = np.random.default_rng(3)
    for n in range(1, MAX_PARAMS + 1):
        M = rng.normal(size=(n, n)) * np.exp(rng.uniform(-3, 3, n))  # badly scaled, as a Fisher matrix is
        F = np.zeros((MAX_PARAMS, MAX_PARAMS))
        F[:n, :n] = M @ M.T + 1e-3 * np.eye(n)
        L = np.zeros_like(F)
        e, col, out = np.zeros(MAX_PARAMS), np.zeros(MAX_PARAMS), np.zeros((2, MAX_PARAMS))
        lm.inverse_diagonal(F, L, e, col, n, out, 1)
        np.testing.assert_allclose(out[1, :n], np.diag(np.linalg.inv(F[:n, :n])), rtol=1e-9)
        assert not out[0].any()  # only row i written
    F = np.zeros((MAX_PARAMS, MAX_PARAMS))
    F[:3, :3] = [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]]  # singular
    out = np.zeros((1, MAX_PARAMS))
    lm.inverse_diagonal(F, np.zeros_like(F), np.zeros(MAX_PARAMS), np.zeros(MAX_PARAMS), 3, out, 0)
    assert np.isnan(out[0, :3]).all()


@pytest.mark.parametrize("noise", [NOISE_POISSON, NOISE_LSQ])
def test_fits_without_the_bound_are_the_same_fits(noise):
    # crlb=False skips the curvature at the optimum (least squares with Mortensen's precision needs none)
    rng = np.random.default_rng(4)
    spots = rng.poisson(20.0, (300, BOX, BOX)).astype(np.float32)
    spots[:, 2:5, 2:5] += rng.poisson(150.0, (300, 3, 3)).astype(np.float32)
    a = fit_boxes(spots, MODEL_GAUSS, noise)
    b = fit_boxes(spots, MODEL_GAUSS, noise, crlb=False)
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    np.testing.assert_array_equal(a.converged, b.converged)
    np.testing.assert_array_equal(a.objective, b.objective)
    assert np.isfinite(a.crlb[a.converged]).all()
    assert b.crlb.shape == a.crlb.shape and np.isnan(b.crlb).all()
