"""The CUDA fit engine and the choice of engine.

The kernel runs in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, which must be set before numba is
imported, hence a subprocess) and must give the CPU engine's results and the simulator's ground truth. The
engine choice is tested in this process against what numba itself reports about the machine, so on a
machine with a GPU the same tests run the real kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from napari_localize import LocalizeParameters, localize
from napari_localize.cli import main
from napari_localize.core.device import DEVICE_ENV, DeviceError, select_device
from napari_localize.core.fit_mle import fit_mle
from napari_localize.core.simulate import SimulationParameters, simulate_movie, simulate_spots

ROOT = Path(__file__).resolve().parent.parent

SIMULATOR_SCRIPT = r"""
import json, sys
import numpy as np
from numba.core import config
from napari_localize.core import psf
from napari_localize.core.device import cuda_available, select_device
from napari_localize.core.fit_cuda import fit_spots as fit_spots_cuda
from napari_localize.core.simulate import simulate_spots
from napari_localize.core.simulate import SimulationParameters, simulate_movie
from napari_localize import LocalizeParameters, localize

out = {"cudasim": bool(config.ENABLE_CUDASIM), "available": cuda_available(),
       "select": [select_device(7, "mle"), select_device(15, "lq"), select_device(17, "mle"),
                  select_device(7, "avg"), select_device(7, "mle", "cpu")]}
sets = {}
# bright spots (ground truth kept), dim spots in a bigger box, background-only boxes, the largest box
s7, dx, dy = simulate_spots(32, 2000.0, 20.0, 1.0, 7, seed=11)
sets["b7"] = s7
sets["b9"] = np.concatenate([simulate_spots(8, 250.0, 10.0, 1.3, 9, seed=12)[0],
                             np.random.default_rng(13).poisson(10.0, (4, 9, 9)).astype(np.float32)])
sets["b15"] = simulate_spots(3, 3000.0, 5.0, 1.6, 15, seed=14)[0]
cmp = {}
for name, spots in sets.items():
    for mode in (psf.MODE_POISSON, psf.MODE_LSQ):
        g = fit_spots_cuda(spots, mode, 1e-3, 100, batch_spots=16)
        c = psf.fit_spots(spots, mode, 1e-3, 100)
        both = np.isfinite(g[1]) & np.isfinite(c[1])
        cmp[f"{name}/{mode}"] = {
            "theta": float(np.max(np.abs(g[0] - c[0]) / np.maximum(1.0, np.abs(c[0])))),
            "pos": float(np.max(np.abs(g[0][:, :2] - c[0][:, :2]))),
            "var": float(np.max(np.abs(g[1] - c[1])[both] / np.abs(c[1])[both])),
            "var_nan_same": bool(np.array_equal(np.isnan(g[1]), np.isnan(c[1]))),
            "obj": float(np.max(np.abs(g[2] - c[2]) / np.maximum(1.0, np.abs(c[2])))),
            "iterations_same": bool(np.array_equal(g[3], c[3])),
            "converged_same": bool(np.array_equal(g[4], c[4])),
            "dtypes": [str(a.dtype) for a in g], "n_converged": int(g[4].sum()), "n": len(spots),
        }
        if name == "b7":
            z = []
            for i in range(len(spots)):
                if g[4][i]:
                    v = psf.crlb(2000.0, 20.0, 1.0, 1.0, 7, 3 + dx[i], 3 + dy[i])
                    z += [(g[0][i, 0] - 3 - dx[i]) / np.sqrt(v[0]), (g[0][i, 1] - 3 - dy[i]) / np.sqrt(v[1])]
            cmp[f"{name}/{mode}"]["z"] = z
out["cmp"] = cmp
sim = SimulationParameters(n_frames=3, height=24, width=24, spots_per_frame=2, photons=2000, bg=20, seed=5)
frames, _ = simulate_movie(sim)
p = LocalizeParameters(min_net_gradient=2000, baseline=sim.baseline, sensitivity=sim.sensitivity)
res = localize(frames, p)
locs_auto, stats_auto = res.locs, res.stats
import os
os.environ["NAPARI_LOCALIZE_DEVICE"] = "cpu"
res = localize(frames, p)
locs_cpu, stats_cpu = res.locs, res.stats
out["pipeline"] = {"devices": [stats_auto.device, stats_cpu.device], "n": [len(locs_auto), len(locs_cpu)],
                   "max_dx": float(np.max(np.abs(locs_auto["x"] - locs_cpu["x"]))) if len(locs_cpu) else -1.0,
                   "fit_doc": stats_auto.as_dict()["Fit device"]}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def simulated():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    env.pop(DEVICE_ENV, None)
    run = subprocess.run([sys.executable, "-c", SIMULATOR_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [s for s in run.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_simulator_runs_the_kernel_and_auto_picks_it(simulated):
    assert simulated["cudasim"] is True
    assert simulated["available"] is True
    # box 7 and the largest box 15 go to the GPU; a bigger box, the avg method and an explicit cpu do not
    assert simulated["select"] == ["cuda", "cuda", "cpu", "cpu", "cpu"]


@pytest.mark.parametrize("name", ["b7", "b9", "b15"])
@pytest.mark.parametrize("mode", [0, 1])
def test_kernel_matches_cpu_engine(simulated, name, mode):
    c = simulated["cmp"][f"{name}/{mode}"]
    assert c["pos"] < 1e-6
    assert c["theta"] < 1e-6
    assert c["var"] < 1e-6
    assert c["var_nan_same"]
    assert c["obj"] < 1e-6
    assert c["iterations_same"]
    assert c["converged_same"]
    assert c["dtypes"] == ["float64", "float64", "float64", "int64", "bool"]
    if name == "b7":
        assert c["n_converged"] == c["n"]
    if name == "b9":
        # the four background-only boxes must not all pass as localizations; the dim spots mostly converge
        assert 6 <= c["n_converged"] <= 11


@pytest.mark.parametrize("mode", [0, 1])
def test_kernel_positions_within_crlb_of_truth(simulated, mode):
    z = np.asarray(simulated["cmp"][f"b7/{mode}"]["z"])
    assert len(z) == 64
    assert np.max(np.abs(z)) < 4.5
    # LQ is less efficient than the bound (about 1.1-1.3x at this signal), MLE reaches it
    assert np.sqrt(np.mean(z**2)) < (1.35 if mode == 0 else 1.6)


def test_pipeline_on_simulator_equals_cpu(simulated):
    p = simulated["pipeline"]
    assert p["devices"] == ["cuda", "cpu"]
    assert p["fit_doc"] == "cuda"
    assert p["n"][0] == p["n"][1] >= 5
    assert 0 <= p["max_dx"] < 1e-6


# ---------------------------------------------------------------------------------------- engine choice


def _gpu_here() -> bool:
    # what numba itself says about this machine, read independently of napari_localize.core.device
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


SIM = SimulationParameters(n_frames=20, height=40, width=40, spots_per_frame=4, photons=2000, bg=20,
                           baseline=100, sensitivity=0.5, seed=8)
PARAMS = LocalizeParameters(min_net_gradient=2000, baseline=100, sensitivity=0.5)


def test_cpu_choice_and_auto_default(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert select_device(7, "mle") == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "CUDA ")
    expected = "cuda" if _gpu_here() else None
    if expected is None:
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            select_device(7, "mle")
    else:
        assert select_device(7, "mle") == "cuda"
    monkeypatch.delenv(DEVICE_ENV)
    assert select_device(7, "lq") == ("cuda" if _gpu_here() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(DeviceError, match=DEVICE_ENV):
        select_device(7, "mle")


@pytest.mark.parametrize("method", ["mle", "lq"])
def test_auto_pipeline_equals_cpu_pipeline(monkeypatch, method):
    frames, truth = simulate_movie(SIM)
    p = PARAMS.replace(fit_method=method)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    res = localize(frames, p)
    locs_cpu, stats_cpu = res.locs, res.stats
    monkeypatch.setenv(DEVICE_ENV, "auto")
    res = localize(frames, p)
    locs_auto, stats_auto = res.locs, res.stats
    assert stats_cpu.device == "cpu"
    assert stats_auto.device == ("cuda" if _gpu_here() else "cpu")
    assert len(locs_cpu) == len(locs_auto) >= 0.95 * len(truth)
    for name in ("x", "y", "photons", "bg", "sx", "sy", "lpx"):
        np.testing.assert_allclose(locs_auto[name], locs_cpu[name], rtol=1e-6, atol=1e-6)


def test_direct_fit_device_argument():
    spots, dx, _ = simulate_spots(50, 2000.0, 20.0, 1.0, 7, seed=3)
    cpu = fit_mle(spots, device="cpu")
    with pytest.raises(DeviceError, match="'cpu' or 'cuda'"):
        fit_mle(spots, device="tpu")
    assert np.sqrt(np.mean((cpu["dx"] - dx) ** 2)) < 0.05


def test_cli_device_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    frames, _ = simulate_movie(SIM)
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, frames)
    common = [str(movie), "--baseline", "100", "--sensitivity", "0.5", "--min-net-gradient", "2000"]
    rc = main(["localize", *common, "--device", "cuda"])
    if _gpu_here():
        assert rc == 0
        docs = list(yaml.safe_load_all((tmp_path / "m_locs.yaml").read_text()))
        assert docs[-1]["Fit device"] == "cuda"
    else:
        assert rc == 2
        err = capsys.readouterr().err
        assert "CUDA" in err and "no CUDA GPU" in err and "cpu" in err
        assert not (tmp_path / "m_locs.hdf5").exists()
    rc = main(["localize", *common, "--device", "cpu", "--suffix", "_cpu"])
    assert rc == 0
    docs = list(yaml.safe_load_all((tmp_path / "m_cpu_locs.yaml").read_text()))
    assert docs[-1]["Fit device"] == "cpu"
    with h5py.File(tmp_path / "m_cpu_locs.hdf5", "r") as f:
        assert len(f["locs"]) >= 0.95 * SIM.n_frames * SIM.spots_per_frame


def test_cuda_status_agrees_with_numba_and_skips_numba_cuda_without_a_driver():
    # a fresh interpreter: what cuda_status says, whether it imported numba.cuda, then numba's own verdict
    script = ("import json, sys\n"
              "from napari_localize.core.device import _driver_library_present, cuda_status\n"
              "ok, why = cuda_status()\n"
              "imported = 'numba.cuda' in sys.modules\n"
              "from numba import cuda\n"
              "print(json.dumps({'ok': ok, 'why': why, 'imported': imported, 'driver': _driver_library_present(),\n"
              "                  'numba': bool(cuda.is_available())}))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"] == out["numba"]
    if not out["driver"]:  # no libcuda: answered without importing numba.cuda, and numba agrees
        assert not out["imported"] and "libcuda" in out["why"] and not out["numba"]
    else:
        assert out["imported"]


ZRUN_SCRIPT = r"""
import json, os
import numpy as np
from napari_localize.api import localize
from napari_localize.core.engine import cuda as engine_cuda
from napari_localize.core.engine import MODEL_ASTIG_Z
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.simulate import SimulationParameters, astigmatic_widths, simulate_frames
from napari_localize.core.zcalib import ZCalibration
from napari_localize.core.zpolicy import ZFitOptions

models = []
real = engine_cuda.fit_boxes_cuda
def counted(model, *args, **kw):  # the real kernel runs; the models it fitted are noted
    models.append(int(model))
    return real(model, *args, **kw)
engine_cuda.fit_boxes_cuda = counted

q = SimulationParameters(n_frames=3, height=32, width=32, spots_per_frame=3, photons=3000, bg=20, baseline=100,
                         z_range=(-500.0, 500.0), min_separation=7.0, margin=5, seed=4)
frames, truth = simulate_frames(q)
zs = np.linspace(-800.0, 800.0, 161)
sx, sy = astigmatic_widths(zs, q.sigma, q.astig_gamma, q.astig_depth)
cal = ZCalibration(np.polyfit(zs, sx, 6), np.polyfit(zs, sy, 6), n_frames=161, step_nm=10.0, magnification_factor=1.0)
p = LocalizeParameters(box_size=7, min_net_gradient=600, baseline=100)
out = {}
for device in ("auto", "cpu"):
    os.environ["NAPARI_LOCALIZE_DEVICE"] = device
    models.clear()
    res = localize(frames, p, calibration=cal, z_options=ZFitOptions(crowded=True))
    out[device] = {"z": res.locs["z"].tolist(), "x": res.locs["x"].tolist(), "device": res.stats.device,
                   "astig_on_cuda": models.count(MODEL_ASTIG_Z)}
print(json.dumps(out))
"""


def test_3d_z_fits_and_refits_run_on_the_cuda_engine_in_the_simulator():
    # the astigmatic z MLE of a 3D run and its crowded refits run on the run's engine (the CUDA kernel, here
    # in numba's simulator) and give the CPU engine's results
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("NAPARI_LOCALIZE_DEVICE", None)
    done = subprocess.run([sys.executable, "-c", ZRUN_SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    gpu, cpu = out["auto"], out["cpu"]
    assert gpu["device"] == "cuda" and cpu["device"] == "cpu"
    assert gpu["astig_on_cuda"] >= 2 and cpu["astig_on_cuda"] == 0  # the z MLE and at least one refit pass
    assert len(gpu["z"]) == len(cpu["z"]) >= 7
    np.testing.assert_allclose(gpu["z"], cpu["z"], atol=1e-3)
    np.testing.assert_allclose(gpu["x"], cpu["x"], atol=1e-5)
