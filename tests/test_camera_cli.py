"""``napari-localize localize --camera-config/--camera``: the matched values are used and recorded."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from conftest import DATA

from napari_localize.cli import main
from napari_localize.core.simulate import SimulationParameters, simulate_frames
from napari_localize.io.camera_config import ENV_CONFIG

SEED = DATA / "camera_config_seed.yaml"
IXON = "Andor iXon EMCCD"
# Electron Multiplying / 17.000 MHz / Gain 3 in the seed config
SIM = {"baseline": 200.0, "sensitivity": 4.2, "em_gain": 50.0}


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)


@pytest.fixture(scope="module")
def emccd_movie(tmp_path_factory):
    """A .raw movie of an EMCCD whose .yaml carries Micro-Manager metadata, and its ground truth."""
    folder = tmp_path_factory.mktemp("emccd")
    p = SimulationParameters(n_frames=12, height=32, width=32, spots_per_frame=2, photons=3000, bg=10,
                             seed=3, **SIM)
    frames, truth = simulate_frames(p)
    path = folder / "emccd.raw"
    frames.astype("<u2").tofile(path)
    info = {"Byte Order": "<", "Data Type": "uint16", "Frames": p.n_frames, "Height": p.height, "Width": p.width,
            "Camera": IXON,
            "Micro-Manager Metadata": {"Camera": IXON, f"{IXON}-Gain": "50",
                                       f"{IXON}-Output_Amplifier": "Electron Multiplying",
                                       f"{IXON}-ReadoutMode": "17.000 MHz", f"{IXON}-Pre-Amp-Gain": "Gain 3"}}
    (folder / "emccd.yaml").write_text(yaml.safe_dump(info))
    return path, truth


def run(args, capsys):
    rc = main(["localize", *map(str, args), "--min-net-gradient", "300"])
    return rc, capsys.readouterr()


def fit_doc(movie):
    docs = list(yaml.safe_load_all(movie.with_name(movie.stem + "_locs.yaml").read_text()))
    return docs[-1]


def photons(movie):
    with h5py.File(movie.with_name(movie.stem + "_locs.hdf5"), "r") as f:
        return f["locs"]["photons"]


def test_config_match_sets_and_records_the_camera(emccd_movie, capsys):
    movie, truth = emccd_movie
    rc, out = run([movie, "--camera-config", SEED, "--fit-method", "lq"], capsys)
    assert rc == 0, out.err
    doc = fit_doc(movie)
    assert doc["Camera"] == IXON
    assert (doc["Baseline"], doc["Sensitivity"], doc["Gain"], doc["Qe"], doc["Pixelsize"]) == (
        200.0, 4.2, 50.0, 0.9, 160.0)
    assert doc["Camera config"] == str(SEED)
    assert doc["Sensitivity categories"] == {"Output_Amplifier": "Electron Multiplying",
                                             "ReadoutMode": "17.000 MHz", "Pre-Amp-Gain": "Gain 3"}
    assert "Notices" not in doc
    # the matched conversion gives the simulated photon counts back
    ratio = np.median(photons(movie)) / np.median(truth["photons"])
    assert 0.85 < ratio < 1.15, ratio


def test_explicit_flags_win_over_the_config(emccd_movie, capsys):
    movie, _ = emccd_movie
    rc, out = run([movie, "--camera-config", SEED, "--sensitivity", "2.5", "--gain", "10", "--pixelsize", "100",
                   "--fit-method", "avg"], capsys)
    assert rc == 0, out.err
    doc = fit_doc(movie)
    assert (doc["Camera"], doc["Baseline"], doc["Sensitivity"], doc["Gain"], doc["Pixelsize"]) == (
        IXON, 200.0, 2.5, 10.0, 100.0)


def test_camera_flag_and_notices(emccd_movie, capsys):
    movie, _ = emccd_movie
    rc, out = run([movie, "--camera-config", SEED, "--camera", "HamamatsuHam_DCAM", "--fit-method", "avg"], capsys)
    assert rc == 0, out.err
    doc = fit_doc(movie)
    assert (doc["Camera"], doc["Baseline"], doc["Sensitivity"], doc["Gain"], doc["Qe"]) == (
        "HamamatsuHam_DCAM", 100.0, 0.47, 1.0, 0.73)


def test_config_from_the_user_folder_and_notice_for_unknown_camera(tmp_path, capsys):
    from napari_localize.io.camera_config import USER_CONFIG_NAME, user_config_dir

    folder = user_config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / USER_CONFIG_NAME).write_text(SEED.read_text())
    rng = np.random.default_rng(0)
    movie = tmp_path / "plain.raw"
    rng.poisson(120, (3, 16, 16)).astype("<u2").tofile(movie)
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(
        {"Byte Order": "<", "Data Type": "uint16", "Frames": 3, "Height": 16, "Width": 16, "Camera": "Prime95B"}))
    rc, out = run([movie, "--fit-method", "avg"], capsys)
    assert rc == 0, out.err
    assert "'Prime95B' is not in the camera config" in out.err
    doc = fit_doc(movie)
    assert doc["Camera"] == "Andor sCMOS Camera"  # the priority camera
    assert doc["Notices"] and "Prime95B" in doc["Notices"][0]


def test_no_config_uses_defaults(emccd_movie, capsys):
    movie, _ = emccd_movie
    rc, out = run([movie, "--fit-method", "avg"], capsys)
    assert rc == 0, out.err
    doc = fit_doc(movie)
    assert (doc["Camera"], doc["Baseline"], doc["Sensitivity"], doc["Gain"], doc["Pixelsize"]) == (
        "None", 0.0, 1.0, 1.0, 130.0)
    assert "Camera config" not in doc


def test_bad_config_and_unknown_camera_fail_cleanly(tmp_path, capsys):
    rng = np.random.default_rng(0)
    movie = tmp_path / "m.raw"
    rng.poisson(120, (2, 16, 16)).astype("<u2").tofile(movie)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(
        {"Byte Order": "<", "Data Type": "uint16", "Frames": 2, "Height": 16, "Width": 16}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("Cameras:\n  Zyla:\n    Baseline: 100\n")
    rc, out = run([movie, "--camera-config", bad], capsys)
    assert rc == 2
    assert "'Zyla'" in out.err and "'Sensitivity'" in out.err and "Traceback" not in out.err
    rc, out = run([movie, "--camera-config", SEED, "--camera", "Prime95B"], capsys)
    assert rc == 2 and "'Prime95B' is not in the camera config" in out.err
    rc, out = run([movie, "--camera", "Simulation"], capsys)
    assert rc == 2 and "no camera config found" in out.err
    assert not list(tmp_path.glob("*_locs.*"))  # nothing written


def test_a_dask_batch_records_the_camera_match_as_a_serial_run(emccd_movie, tmp_path, capsys):
    """--scheduler (a real LocalCluster): the matched camera values are used and the fit document records the
    config and its categories exactly as the serial run's does."""
    import shutil

    src, _ = emccd_movie
    movie = tmp_path / src.name
    shutil.copy(src, movie)
    shutil.copy(src.with_suffix(".yaml"), movie.with_suffix(".yaml"))
    common = [movie, "--camera-config", SEED, "--fit-method", "lq", "--min-net-gradient", "300"]
    assert main(["localize", *map(str, common), "--suffix", "_serial"]) == 0
    assert main(["localize", *map(str, common), "--suffix", "_dask", "--scheduler", "local", "--workers", "1"]) == 0
    capsys.readouterr()
    serial, dask = (list(yaml.safe_load_all(movie.with_name(f"{movie.stem}_{s}_locs.yaml").read_text()))[-1]
                    for s in ("serial", "dask"))
    assert dask["Camera config"] == str(SEED)
    for key in ("Camera", "Baseline", "Sensitivity", "Gain", "Camera config", "Sensitivity categories"):
        assert dask[key] == serial[key], key
    with h5py.File(movie.with_name(f"{movie.stem}_serial_locs.hdf5"), "r") as a, \
            h5py.File(movie.with_name(f"{movie.stem}_dask_locs.hdf5"), "r") as b:
        np.testing.assert_array_equal(a["locs"][...], b["locs"][...])
