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

import numpy as np

from napari_localize.core import warmup

#: in a child script: ``compiled``, the qualified names of the functions numba compiles in that process
LISTENER = """compiled = []


class Compiles(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        d = ev.data["dispatcher"]
        compiled.append(getattr(d, "__qualname__", "") or d.py_func.__qualname__)


event.register("numba:compile", Compiles())"""

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core import event
    from napari_localize.core import warmup
    from napari_localize.core.engine import MODEL_GAUSS_FIXED, NOISE_LSQ, fit_boxes

    {listener}
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
""").replace("{listener}", LISTENER)


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
    monkeypatch.setattr(warmup, "compile_ahead", lambda jobs, nice=0: asked.append((list(jobs), nice)) or [])
    frames, _ = simulate_frames(SimulationParameters(n_frames=2, height=32, width=32, spots_per_frame=2, seed=3))
    frames = frames.astype(np.uint16)
    for method, max_emitters in (("mle", 5), ("lq", 3), ("mle", 1)):
        p = LocalizeParameters(baseline=100, min_net_gradient=500, fit_method=method, max_emitters=max_emitters)
        list(pipeline.iter_localize(frames, p))
    # one process for the single fit's kernel, then the multi-emitter refit's (needed last; none for one
    # emitter per box), and one at a lower priority for the crowded screening's kernels of this movie's dtype
    crowded = ("crowded", "uint16")
    assert [jobs for jobs, _ in asked] == [
        [(MODEL_GAUSS, NOISE_POISSON), (MODEL_MULTI, NOISE_POISSON)], [crowded],
        [(MODEL_GAUSS, NOISE_LSQ), (MODEL_MULTI, NOISE_LSQ)], [crowded], [(MODEL_GAUSS, NOISE_POISSON)]]
    nice = [n for _, n in asked]
    assert nice == [0, 1, 0, 1, 0]


CROWDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core import event
    from napari_localize.core import crowded, warmup
    from napari_localize.core.parameters import LocalizeParameters
    from napari_localize.core.pipeline import localize
    from napari_localize.core.simulate import SimulationParameters, simulate_frames

    {listener}
    job = warmup.crowded_job(np.uint16)
    out = {"cached_before": warmup._is_cached(job), "started": warmup.compile_ahead([job], nice=1)}
    warmup.wait_for_crowded(np.uint16)
    out["cached_after_wait"] = crowded.kernels_cached(np.uint16)
    # a crowded movie (pairs closer than a box): the screening, the cut and the residual search all run
    sim = SimulationParameters(n_frames=3, height=40, width=40, spots_per_frame=14, photons=3000, bg=10,
                               baseline=100, min_separation=2, margin=5, seed=4)
    frames, _ = simulate_frames(sim)
    p = LocalizeParameters(baseline=100, min_net_gradient=800, fit_method="lq", max_emitters=3)
    locs, _ = localize(np.asarray(frames, np.uint16), p)
    out["rows"] = len(locs)
    out["emitters_per_box"] = int(np.max(locs["n_emitters"]))
    out["compiled"] = [q for q in compiled if q in ("_screen_kernel", "_group_boxes_kernel",
                                                    "_residual_peaks_kernel", "_box_residual", "_cut_box")]
    print(json.dumps(out))
""").replace("{listener}", LISTENER)


def test_crowded_kernels_compiled_ahead_are_loaded_not_compiled_again(tmp_path):
    # compile_kernels' synthetic chunk must give the screening, cutting and residual kernels exactly the types
    # a real run passes: otherwise the run compiles its own specialisation and the second process was waste
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), NAPARI_LOCALIZE_COMPILE_AHEAD="1")
    done = subprocess.run([sys.executable, "-c", CROWDED_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["cached_before"] and out["started"] == [["crowded", "uint16"]]
    assert out["cached_after_wait"]
    assert out["emitters_per_box"] >= 2  # the refit did run its joint fits
    assert out["compiled"] == []
