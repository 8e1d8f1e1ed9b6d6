"""Compiling a fit kernel ahead in a second process (core/warmup.py): the run then loads it from numba's
cache instead of compiling it, and a second process that dies changes nothing but the time.

Each case runs in a fresh interpreter with its own empty numba cache folder (numba reads NUMBA_CACHE_DIR at
import), on a kernel no other part of a run compiles (the fixed-width Gaussian), so the result cannot come from
an earlier test."""

import json
import os
import subprocess
import sys
import textwrap

from napari_localize.core import warmup

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core import event
    from napari_localize.core import warmup
    from napari_localize.core.engine import MODEL_GAUSS_FIXED, NOISE_LSQ, fit_boxes

    compiled = []

    class Compiles(event.Listener):
        def on_start(self, ev):
            pass

        def on_end(self, ev):
            d = ev.data["dispatcher"]
            compiled.append(getattr(d, "__qualname__", "") or d.py_func.__qualname__)

    event.register("numba:compile", Compiles())
    pair = (MODEL_GAUSS_FIXED, NOISE_LSQ)
    out = {"cached_before": warmup.is_cached(*pair), "started": warmup.compile_ahead([pair])}
    out["started_again"] = warmup.compile_ahead([pair])
    if sys.argv[1] == "kill":
        warmup._STARTED[pair].kill()
        warmup._STARTED[pair].wait()
    warmup.wait_for(*pair)
    out["cached_after_wait"] = warmup.is_cached(*pair)
    rng = np.random.default_rng(1)
    spots = rng.poisson(20.0, (3, 7, 7)).astype(np.float32)
    r = fit_boxes(spots, MODEL_GAUSS_FIXED, NOISE_LSQ, aux=np.array([1.0, 1.0]))
    out["theta"] = r.theta.tolist()
    out["compiled_fit_kernels"] = [q for q in compiled if q.startswith("_fit_slice")]
    print(json.dumps(out))
""")


def _run(tmp_path, mode):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), NAPARI_LOCALIZE_COMPILE_AHEAD="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_compiled_ahead_is_loaded_not_compiled_again(tmp_path):
    out = _run(tmp_path, "normal")
    assert not out["cached_before"]
    assert out["started"] == [[1, 1]] and out["started_again"] == []  # one process per kernel
    assert out["cached_after_wait"]
    assert out["compiled_fit_kernels"] == []  # loaded from the cache the second process wrote
    # a later process finds it cached and starts nothing
    again = _run(tmp_path, "normal")
    assert again["cached_before"] and again["started"] == [] and again["theta"] == out["theta"]


def test_killed_second_process_only_costs_time(tmp_path):
    out = _run(tmp_path, "kill")
    assert out["started"] == [[1, 1]]
    assert out["compiled_fit_kernels"] == ["_fit_slice__model1_noise1"]  # this process compiled it itself
    reference = _run(tmp_path, "normal")  # now cached: same fits
    assert reference["cached_before"] and reference["theta"] == out["theta"]


def test_switched_off_starts_nothing(monkeypatch):
    monkeypatch.setenv("NAPARI_LOCALIZE_COMPILE_AHEAD", "0")
    assert warmup.compile_ahead([(3, 0)]) == []
    warmup.wait_for(3, 0)  # nothing started: returns at once


def test_a_2d_run_asks_for_its_fit_kernels(monkeypatch):
    from napari_localize.core import pipeline
    from napari_localize.core.engine import MODEL_GAUSS, MODEL_MULTI, NOISE_LSQ, NOISE_POISSON
    from napari_localize.core.parameters import LocalizeParameters
    from napari_localize.core.simulate import SimulationParameters, simulate_frames

    asked = []
    monkeypatch.setattr(warmup, "compile_ahead", lambda pairs: asked.append(list(pairs)) or [])
    frames, _ = simulate_frames(SimulationParameters(n_frames=2, height=32, width=32, spots_per_frame=2, seed=3))
    for method, max_emitters in (("mle", 5), ("lq", 3), ("mle", 1)):
        p = LocalizeParameters(baseline=100, min_net_gradient=500, fit_method=method, max_emitters=max_emitters)
        list(pipeline.iter_localize(frames, p))
    # the single fit's kernel, then the multi-emitter refit's (none for one emitter per box)
    assert asked == [[(MODEL_GAUSS, NOISE_POISSON)], [(MODEL_MULTI, NOISE_POISSON)],
                     [(MODEL_GAUSS, NOISE_LSQ)], [(MODEL_MULTI, NOISE_LSQ)], [(MODEL_GAUSS, NOISE_POISSON)]]
