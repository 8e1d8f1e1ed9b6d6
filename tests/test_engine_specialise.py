"""The CPU kernels' compile-time specialisation (core/engine/specialise.py): what it folds, what it must not."""

from __future__ import annotations

import dis

import numpy as np
from numba import njit

from napari_localize.core.engine import (
    MODEL_ASTIG_Z,
    MODEL_GAUSS,
    MODEL_MULTI,
    NOISE_LSQ,
    NOISE_POISSON,
    cpu,
    fit_boxes,
    lm,
    models,
)
from napari_localize.core.engine.models import n_params, pixel
from napari_localize.core.engine.specialise import specialised


def _probe(model, noise, aux):
    # calls a switch-taking engine function once with the switch and once with another model's constant
    return n_params(MODEL_MULTI, aux) * 100 + n_params(model, aux)


_probe.__module__ = models.__name__  # treat it as an engine function


def _globals_used(fn):
    return {i.argval for i in dis.get_instructions(fn) if i.opname == "LOAD_GLOBAL"}


def test_other_models_branches_are_gone():
    gauss = specialised(models.pixel, MODEL_GAUSS, NOISE_POISSON)
    multi = specialised(models.pixel, MODEL_MULTI, NOISE_POISSON)
    assert "_pixel_multi" not in _globals_used(gauss) and "_spline_pixel" not in _globals_used(gauss)
    assert "_pixel_multi" in _globals_used(multi) and "_pixel_multi" in _globals_used(models.pixel)
    # the twin keeps the original's file and parameters, and a name that carries the model
    assert gauss.__code__.co_filename == models.pixel.__code__.co_filename
    assert gauss.__code__.co_varnames[:8] == models.pixel.__code__.co_varnames[:8]
    assert gauss.__qualname__ == "pixel__model0"
    # per-pair twins are made once
    assert specialised(models.pixel, MODEL_GAUSS, NOISE_LSQ) is gauss  # pixel takes no noise switch
    assert specialised(lm.fit_box, MODEL_GAUSS, NOISE_LSQ) is not specialised(lm.fit_box, MODEL_GAUSS,
                                                                               NOISE_POISSON)


def test_a_call_with_another_models_constant_keeps_the_generic_function():
    twin = specialised(_probe, MODEL_GAUSS, NOISE_POISSON, jit=njit)
    aux = np.array([2.0])
    assert twin.py_func.__globals__["n_params"] is n_params  # not the Gaussian twin: one call passes MODEL_MULTI
    assert twin(MODEL_GAUSS, NOISE_POISSON, aux) == 9 * 100 + 6
    assert njit(_probe)(MODEL_GAUSS, NOISE_POISSON, aux) == 9 * 100 + 6


def test_callees_of_a_twin_are_twins():
    fb = specialised(lm.fit_box, MODEL_ASTIG_Z, NOISE_POISSON)
    ns = fb.__globals__
    assert ns["objective"].__qualname__ == "objective__model2_noise0"
    assert ns["prepare"].__qualname__ == "prepare__model2"
    assert ns["cholesky_solve"] is lm.cholesky_solve  # no switch, not per pixel: shared
    assert specialised(lm.objective, MODEL_ASTIG_Z, NOISE_POISSON).__globals__["expected"] is not lm.expected
    assert pixel is models.pixel  # the generic functions stay as they were (CUDA compiles them)


def test_each_pair_has_its_own_cache_entry():
    names = {cpu.kernel(m, n)._cache._cache_file._index_name
             for m in (MODEL_GAUSS, MODEL_MULTI) for n in (NOISE_POISSON, NOISE_LSQ)}
    assert len(names) == 4


def test_threaded_slices_equal_one_thread():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:7, 0:7]
    n = 3000
    x0 = 3 + rng.uniform(-0.5, 0.5, n)
    mu = 20 + 1500 * np.exp(-((xx[None] - x0[:, None, None]) ** 2 + (yy[None] - 3) ** 2) / 2.4)
    spots = rng.poisson(mu).astype(np.float32)
    one = fit_boxes(spots[:1], MODEL_GAUSS, NOISE_POISSON)  # noqa: F841 (compiles the kernel on one thread)
    res = {}
    for threads in (1, 3):
        out = [np.zeros((n, 6)), np.empty((n, 6)), np.empty(n), np.zeros(n, np.int64), np.zeros(n, np.bool_),
               np.full(n, np.nan)]
        lo, hi = models.default_bounds(MODEL_GAUSS, 7)
        lo, hi = np.resize(lo, models.MAX_PARAMS), np.resize(hi, models.MAX_PARAMS)
        cpu.fit_boxes_cpu(MODEL_GAUSS, NOISE_POISSON, spots.reshape(n, 49), np.zeros((0, 49)), np.zeros((0, 49)),
                          7, np.zeros(1), lo, hi, True, 1e-3, 100, False, *out, threads=threads)
        res[threads] = out
    for a, b in zip(res[1], res[3]):
        np.testing.assert_array_equal(a, b)
    assert res[1][4].mean() > 0.99


def test_without_source_the_generic_function_is_used(monkeypatch):
    from napari_localize.core.engine import specialise

    def no_source(fn):
        raise OSError("no source")

    monkeypatch.setattr(specialise.inspect, "getsource", no_source)
    monkeypatch.setattr(specialise, "_TWINS", {})
    monkeypatch.setattr(specialise, "_REACHES", {})
    assert specialised(models.valid, MODEL_ASTIG_Z, NOISE_POISSON) is models.valid
    assert specialised(lm.cholesky_solve, MODEL_ASTIG_Z, NOISE_POISSON) is lm.cholesky_solve
    k = specialised(cpu._fit_slice, MODEL_ASTIG_Z, NOISE_POISSON, jit=njit)
    assert k.py_func is cpu._fit_slice
