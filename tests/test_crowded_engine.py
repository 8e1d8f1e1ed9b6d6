"""The engine's multi-emitter model: CPU driver against the CUDA kernel (numba's CUDA simulator), and its CRLB.

The simulator must be enabled before numba is imported, hence a subprocess (as in ``test_engine.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_localize.core.engine import (
    MODEL_GAUSS,
    MODEL_GAUSS_FIXED,
    MODEL_MULTI,
    NOISE_LSQ,
    NOISE_POISSON,
    NOISE_SCMOS,
    NOISE_WLSQ,
    curvature,
    fit_boxes,
)
from napari_localize.core.simulate import expected_image

ROOT = Path(__file__).resolve().parent.parent


def _pairs(n, seed, box=7):
    """Boxes holding two spots 1.5-2.5 px apart and a neighbour's light from outside; a start near the truth."""
    rng = np.random.default_rng(seed)
    boxes = np.empty((n, box, box), np.float32)
    other = np.empty((n, box, box))
    theta0 = np.empty((n, 9))
    truth = np.empty((n, 4))
    for i in range(n):
        d = rng.uniform(1.5, 2.5)
        a = rng.uniform(0, np.pi)
        c = 3 + rng.uniform(-0.3, 0.3, 2)
        xs = [c[0] - 0.5 * d * np.cos(a), c[0] + 0.5 * d * np.cos(a)]
        ys = [c[1] - 0.5 * d * np.sin(a), c[1] + 0.5 * d * np.sin(a)]
        other[i] = expected_image(box, box, [8.0], [rng.uniform(1, 5)], [2000.0], 1.0, 1.0, 0.0)
        boxes[i] = rng.poisson(expected_image(box, box, xs, ys, [2000.0, 1500.0], 1.0, 1.0, 20.0) + other[i])
        theta0[i] = [xs[0] + 0.2, ys[0] - 0.1, 1800, 18, 1.1, 0.9, xs[1] - 0.2, ys[1] + 0.1, 1700]
        truth[i] = [xs[0], ys[0], xs[1], ys[1]]
    return boxes, other, theta0, truth


SCRIPT = r"""
import json, sys
import numpy as np
from numba.core import config
import test_crowded_engine as T
from napari_localize.core.engine import fit_boxes, MODEL_MULTI, NOISE_POISSON, NOISE_LSQ

boxes, other, theta0, _ = T._pairs(6, 1)
out = {"cudasim": bool(config.ENABLE_CUDASIM)}
for name, noise in (("poisson", NOISE_POISSON), ("lsq", NOISE_LSQ)):
    kw = dict(spots=boxes, model=MODEL_MULTI, noise=noise, theta0=theta0, aux=[2.0], other=other)
    c = fit_boxes(device="cpu", **kw)
    g = fit_boxes(device="cuda", batch_boxes=4, **kw)
    out[name] = {"theta": float(np.max(np.abs(g.theta - c.theta) / np.maximum(1.0, np.abs(c.theta)))),
                 "crlb": float(np.nanmax(np.abs(g.crlb - c.crlb) / np.abs(c.crlb))),
                 "iterations_same": bool(np.array_equal(g.iterations, c.iterations)),
                 "converged_same": bool(np.array_equal(g.converged, c.converged)),
                 "n_converged": int(c.converged.sum())}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def simulated():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [s for s in run.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("noise", ["poisson", "lsq"])
def test_cuda_kernel_equals_cpu_for_the_multi_emitter_model(simulated, noise):
    assert simulated["cudasim"] is True
    c = simulated[noise]
    assert c["n_converged"] >= 5
    assert c["theta"] < 1e-9 and c["crlb"] < 1e-9
    assert c["iterations_same"] and c["converged_same"]


def test_one_emitter_is_the_single_gaussian_model():
    boxes, other, theta0, _ = _pairs(40, 2)
    a = fit_boxes(boxes, MODEL_GAUSS, NOISE_POISSON, theta0=theta0[:, :6])
    b = fit_boxes(boxes, MODEL_MULTI, NOISE_POISSON, theta0=theta0[:, :6], aux=[1.0])
    # the same model: equal to rounding (the sums run in another order), the same iterations
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12)
    np.testing.assert_allclose(a.crlb, b.crlb, rtol=1e-9)
    np.testing.assert_array_equal(a.iterations, b.iterations)


@pytest.mark.parametrize("with_other", [False, True])
def test_separable_least_squares_equals_the_per_pixel_accumulation(with_other):
    # unweighted least squares of one Gaussian builds J^T J from 1D sums (lm._separable_normal_equations);
    # the one-emitter MULTI model accumulates it pixel by pixel: the same fit to rounding
    boxes, other, theta0, _ = _pairs(60, 4)
    oth = other if with_other else None
    a = fit_boxes(boxes, MODEL_GAUSS, NOISE_LSQ, theta0=theta0[:, :6], other=oth)
    b = fit_boxes(boxes, MODEL_MULTI, NOISE_LSQ, theta0=theta0[:, :6], aux=[1.0], other=oth)
    assert a.converged.mean() > 0.9
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.crlb, b.crlb, rtol=1e-8)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    # fixed widths: the 4 x 4 block of the free-width curvature at the same widths
    th = np.array([3.3, 2.6, 1500.0, 15.0, 1.1, 0.9])
    f_fixed = curvature(th[:4], 7, MODEL_GAUSS_FIXED, NOISE_LSQ, aux=[1.1, 0.9], compiled=False)
    f_multi = curvature(th, 7, MODEL_MULTI, NOISE_LSQ, aux=[1.0], compiled=False)
    np.testing.assert_allclose(f_fixed[:4, :4], f_multi[:4, :4], rtol=1e-12, atol=1e-12 * np.abs(f_multi).max())


@pytest.mark.parametrize("noise", [NOISE_POISSON, NOISE_WLSQ, NOISE_SCMOS])
@pytest.mark.parametrize("with_other", [False, True])
def test_weighted_separable_normal_equations_equal_the_per_pixel_accumulation(noise, with_other):
    # a free-width Gaussian under a per-pixel weight (likelihoods, weighted least squares) builds F from row
    # sums of the x profiles' products (lm._weighted_separable_normal_equations); the one-emitter MULTI model
    # accumulates w J J^T pixel by pixel: the same fit to rounding, with other light and sCMOS variance boxes
    boxes, other, theta0, _ = _pairs(60, 5)
    oth = other if with_other else None
    rng = np.random.default_rng(6)
    var = rng.uniform(0.5, 30.0, boxes.shape) if noise != NOISE_POISSON else None
    a = fit_boxes(boxes, MODEL_GAUSS, noise, theta0=theta0[:, :6], other=oth, variance=var)
    b = fit_boxes(boxes, MODEL_MULTI, noise, theta0=theta0[:, :6], aux=[1.0], other=oth, variance=var)
    assert a.converged.mean() > 0.9
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.crlb, b.crlb, rtol=1e-8)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    # and the curvature itself, entry by entry, at a point away from the optimum
    th = np.array([3.3, 2.6, 1500.0, 15.0, 1.1, 0.9])
    v0 = None if var is None else var[0]
    o0 = None if oth is None else oth[0]
    f_gauss = curvature(th, 7, MODEL_GAUSS, noise, other=o0, variance=v0, compiled=False)
    f_multi = curvature(th, 7, MODEL_MULTI, noise, aux=[1.0], other=o0, variance=v0, compiled=False)
    np.testing.assert_allclose(f_gauss, f_multi, rtol=1e-12, atol=1e-12 * np.abs(f_multi).max())


def test_joint_fit_of_a_pair_is_unbiased_at_its_joint_crlb():
    boxes, other, theta0, truth = _pairs(600, 3)
    r = fit_boxes(boxes, MODEL_MULTI, NOISE_POISSON, theta0=theta0, aux=[2.0], other=other)
    ok = r.converged
    assert ok.mean() > 0.97
    z = np.concatenate([(r.theta[ok, 0] - truth[ok, 0]) / np.sqrt(r.crlb[ok, 0]),
                        (r.theta[ok, 6] - truth[ok, 2]) / np.sqrt(r.crlb[ok, 6])])
    assert abs(np.mean(z)) < 0.1
    assert 0.9 < np.std(z) < 1.1
    # the joint bound is the inverse of the joint Fisher matrix, wider than an isolated spot's
    F = curvature(r.theta[0], 7, MODEL_MULTI, NOISE_POISSON, aux=[2.0], other=other[0])
    assert F.shape == (9, 9)
    np.testing.assert_allclose(np.diag(np.linalg.inv(F)), r.crlb[0], rtol=1e-6)
    iso = np.linalg.inv(curvature(r.theta[0, :6], 7, MODEL_GAUSS, NOISE_POISSON, other=other[0]))[0, 0]
    assert r.crlb[0, 0] > iso


def test_bad_emitter_counts_are_clear():
    boxes, other, theta0, _ = _pairs(2, 4)
    for k in (0, 6):
        with pytest.raises(ValueError, match="multi-emitter"):
            fit_boxes(boxes, MODEL_MULTI, NOISE_POISSON, theta0=theta0, aux=[float(k)])
