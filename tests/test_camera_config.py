"""Camera config files: Picasso's schema read, checked and found (io/camera_config.py)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from napari_localize.core.camera import CameraConfigError
from napari_localize.io.camera_config import (
    ENV_CONFIG,
    USER_CONFIG_NAME,
    config_candidates,
    discover_camera_config,
    find_camera_config,
    load_camera_config,
    picasso_config_path,
    user_config_dir,
)


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)


@pytest.fixture
def seed(data_dir):
    return data_dir / "camera_config_seed.yaml"


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_seed_config_is_read_with_nested_sensitivity(seed):
    config = load_camera_config(seed)
    # priority camera first, the others in natural order
    assert config.camera_names() == ["Andor sCMOS Camera", "Andor iXon EMCCD", "HamamatsuHam_DCAM", "Simulation"]
    zyla = config["Andor sCMOS Camera"]
    assert zyla.categories == ("PixelReadoutRate", "Sensitivity/DynamicRange")
    assert zyla.baseline == 100.0 and zyla.pixelsize == 108.0
    assert zyla.sensitivity["540 MHz - fastest readout"]["16-bit (low noise & high well capacity)"] == 0.46
    # integer wavelengths in YAML become the strings a metadata value or a menu item would be
    assert zyla.qe == {"525": 0.8, "595": 0.82, "700": 0.7}
    assert zyla.channel_device == ("TIFilterBlock1-Label", {"1-GFP": "525", "2-Cy3": "595", "4-Cy5": "700"})
    # relative calibration paths are relative to the config's folder
    assert zyla.z_calibrations["595"] == str(seed.parent / "calibrations" / "zyla_595_3d_calib.yaml")
    emccd = config["Andor iXon EMCCD"]
    assert emccd.categories == ("Output_Amplifier", "ReadoutMode", "Pre-Amp-Gain")
    assert emccd.sensitivity["Electron Multiplying"]["17.000 MHz"]["Gain 1"] == 15.9
    assert emccd.gain_property == "Gain" and emccd.em_switch is None
    assert config["HamamatsuHam_DCAM"].sensitivity == 0.47
    assert config["Simulation"].baseline == 0.0  # 0 is a value, not "missing" (Picasso bug 12)


def test_em_switch_and_yaml_boolean_key(tmp_path):
    path = write(tmp_path, """
        Cameras:
          iXon:
            Sensitivity: 4.0
            Gain Property Name: Gain
            EM Switch Property:
              Name: Output_Amplifier
              True: Electron Multiplying
    """)
    assert load_camera_config(path)["iXon"].em_switch == ("Output_Amplifier", "Electron Multiplying")


BAD = [
    ("Cameras:\n  Zyla:\n    Baseline: 100\n", ["'Zyla'", "missing key 'Sensitivity'"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: {A: {x: 1.0}}\n    Sensitivity Categories: [Rate, Mode, Depth]\n",
     ["'Zyla'", "'Sensitivity'['A']['x']", "more levels"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: {A: {x: 1.0}}\n    Sensitivity Categories: [Rate]\n",
     ["'Zyla'", "'Sensitivity'['A']", "deeper than 'Sensitivity Categories'"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: 0.5\n    Sensitivity Categories: [Rate]\n",
     ["'Zyla'", "'Sensitivity'", "more levels"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: {A: 1.0}\n", ["'Zyla'", "'Sensitivity Categories' is missing"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: {A: fast}\n    Sensitivity Categories: [Rate]\n",
     ["'Zyla'", "'Sensitivity'['A']", "must be a number"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: 0.5\n    Baseline: high\n", ["'Zyla'", "'Baseline'", "number"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: -1\n", ["'Zyla'", "'Sensitivity'", "> 0"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: 1\n    EM Switch Property: {Name: Amp}\n",
     ["'Zyla'", "'EM Switch Property'", "'True'"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: 1\n    Channel Device: {Name: Filter}\n",
     ["'Zyla'", "'Channel Device'", "Emission Wavelengths"]),
    ("CameraPriority: [iXon]\nCameras:\n  Zyla:\n    Sensitivity: 1\n", ["'CameraPriority'", "'iXon'"]),
    ("Cameras:\n  Zyla:\n    Sensitivity: 1\nz-calibrations:\n  iXon: {600: a.yaml}\n",
     ["'z-calibrations'", "'iXon'"]),
    ("Cameras:\n  Zyla: 12\n", ["'Zyla'", "mapping"]),
    ("Cameras: {}\n", ["needs 'Cameras'"]),
    ("- just\n- a list\n", ["'Cameras'"]),
    ("Cameras:\n  Zyla: [unclosed\n", ["not valid YAML"]),
]


@pytest.mark.parametrize(("text", "words"), BAD)
def test_bad_configs_name_the_file_camera_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(CameraConfigError) as err:
        load_camera_config(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert "Traceback" not in message and "KeyError" not in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CameraConfigError, match="no such file"):
        find_camera_config(tmp_path / "nope.yaml")
    with pytest.raises(CameraConfigError, match="cannot be read"):
        load_camera_config(tmp_path)  # a folder


def test_user_config_dir_follows_env_and_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_LOCALIZE_CONFIG_DIR", str(tmp_path / "mine"))
    assert user_config_dir() == tmp_path / "mine"
    monkeypatch.delenv("NAPARI_LOCALIZE_CONFIG_DIR")
    folder = user_config_dir()
    assert folder.name == "napari-localize"
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        assert user_config_dir() == tmp_path / "xdg" / "napari-localize"


def test_discovery_order(monkeypatch, tmp_path, seed):
    user = user_config_dir()  # the conftest points it into a fresh temporary folder
    assert find_camera_config() in (None, picasso_config_path())
    user.mkdir(parents=True)
    user_file = write(user, "Cameras:\n  UserCam: {Sensitivity: 2}\n", USER_CONFIG_NAME)
    assert find_camera_config() == user_file
    assert list(discover_camera_config().cameras) == ["UserCam"]
    env_file = write(tmp_path, "Cameras:\n  EnvCam: {Sensitivity: 3}\n", "env.yaml")
    monkeypatch.setenv(ENV_CONFIG, str(env_file))
    assert find_camera_config() == env_file
    assert find_camera_config(seed) == seed
    origins = [origin for _, origin in config_candidates(seed)]
    assert origins[:3] == ["given", f"${ENV_CONFIG}", "user config folder"]
    # a variable naming a missing file is an error, not silently skipped
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "gone.yaml"))
    with pytest.raises(CameraConfigError, match=ENV_CONFIG):
        find_camera_config()


def test_picasso_config_found_without_importing_the_package(monkeypatch, tmp_path):
    package = tmp_path / "site" / "picasso_lookalike"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert picasso_config_path("picasso_lookalike") is None  # no config.yaml yet
    write(package, "Cameras:\n  Zyla: {Sensitivity: 0.46}\n")
    assert picasso_config_path("picasso_lookalike") == package / "config.yaml"
    assert "picasso_lookalike" not in sys.modules
    assert picasso_config_path("no_such_package_here") is None
