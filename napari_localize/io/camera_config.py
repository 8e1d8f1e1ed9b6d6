"""Find, read and check a camera config (Picasso's ``config.yaml`` schema, ``picasso_reference.md`` §9).

Where a config is looked for, first found wins:

1. an explicit path (the widget's file picker, the CLI's ``--camera-config``);
2. the file named by the environment variable ``NAPARI_LOCALIZE_CAMERA_CONFIG``;
3. ``camera_config.yaml`` in the user's config folder (:func:`user_config_dir`);
4. ``config.yaml`` of an installed Picasso (found without importing Picasso).

A broken file raises :class:`CameraConfigError` naming the file, the camera and the key.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
from pathlib import Path

import yaml

from ..core.camera import CameraConfig, CameraConfigError, CameraSpec
from . import safe_yaml

__all__ = [
    "CameraConfigError", "ENV_CONFIG", "ENV_CONFIG_DIR", "USER_CONFIG_NAME", "config_candidates",
    "find_camera_config", "load_camera_config", "parse_camera_config", "picasso_config_path",
    "discover_camera_config", "user_config_dir",
]

ENV_CONFIG = "NAPARI_LOCALIZE_CAMERA_CONFIG"
ENV_CONFIG_DIR = "NAPARI_LOCALIZE_CONFIG_DIR"
USER_CONFIG_NAME = "camera_config.yaml"
APP_NAME = "napari-localize"


# ------------------------------------------------------------------------------------------------ discovery
def user_config_dir() -> Path:
    """The user's napari-localize config folder: camera configs and the panel's saved parameters live here.

    ``$NAPARI_LOCALIZE_CONFIG_DIR`` if set; else the platform's user config folder from :mod:`platformdirs`:
    ``$XDG_CONFIG_HOME/napari-localize`` (default ``~/.config``) on Linux,
    ``~/Library/Application Support/napari-localize`` on macOS, ``%APPDATA%\\napari-localize`` on Windows.
    """
    if os.environ.get(ENV_CONFIG_DIR):
        return Path(os.environ[ENV_CONFIG_DIR])
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False, roaming=True))


def picasso_config_path(package: str = "picasso") -> Path | None:
    """``config.yaml`` beside the installed Picasso package's ``__init__.py``, if both exist.

    The package is located with :func:`importlib.util.find_spec`, which does not import it.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        path = Path(folder) / "config.yaml"
        if path.is_file():
            return path
    return None


def config_candidates(explicit=None) -> list[tuple[Path, str]]:
    """Every place a config is looked for, in order, as ``(path, where it comes from)``."""
    out = []
    if explicit:
        out.append((Path(explicit), "given"))
    if os.environ.get(ENV_CONFIG):
        out.append((Path(os.environ[ENV_CONFIG]), f"${ENV_CONFIG}"))
    out.append((user_config_dir() / USER_CONFIG_NAME, "user config folder"))
    # NAPARI_LOCALIZE_IGNORE_PICASSO_CONFIG=1 keeps a Picasso installation's cameras out (tests, clean runs)
    picasso = None if os.environ.get("NAPARI_LOCALIZE_IGNORE_PICASSO_CONFIG") else picasso_config_path()
    if picasso is not None:
        out.append((picasso, "Picasso installation"))
    return out


def find_camera_config(explicit=None) -> Path | None:
    """The config file to use, or ``None`` if there is none.

    An explicit path or the environment variable must name an existing file (else an error says so);
    the user folder and Picasso are used only when the file is there.
    """
    for path, origin in config_candidates(explicit):
        if path.is_file():
            return path
        if origin in ("given", f"${ENV_CONFIG}"):
            raise CameraConfigError(f"camera config {path} ({origin}): no such file")
    return None


def discover_camera_config(explicit=None) -> CameraConfig | None:
    """Find and load the camera config (see the module docstring); ``None`` when there is none."""
    path = find_camera_config(explicit)
    return None if path is None else load_camera_config(path)


# ------------------------------------------------------------------------------------------------ loading
def load_camera_config(path) -> CameraConfig:
    """Read and check a camera config file.

    Relative z-calibration paths are taken relative to the config's folder.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CameraConfigError(f"camera config {path}: cannot be read ({exc})") from None
    try:
        data = safe_yaml.load(io.StringIO(text))
    except yaml.YAMLError as exc:
        raise CameraConfigError(f"camera config {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return parse_camera_config(data, source=os.path.abspath(path))


def parse_camera_config(data, source: str | None = None) -> CameraConfig:
    """Check a parsed config (Picasso's schema) and return its normalized form.

    Raises
    ------
    CameraConfigError
        Naming the file, the camera and the key that is missing or wrong.
    """
    where = f"camera config {source}" if source else "camera config"

    def fail(msg):
        raise CameraConfigError(f"{where}: {msg}")

    if not isinstance(data, dict):
        fail("must be a mapping with the key 'Cameras'")
    cameras = data.get("Cameras")
    if not isinstance(cameras, dict) or not cameras:
        fail("needs 'Cameras', a mapping of camera names to their settings")
    folder = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    zcal = data.get("z-calibrations") or {}
    if not isinstance(zcal, dict):
        fail("'z-calibrations' must map camera names to {wavelength: calibration path}")
    for name in zcal:
        if str(name) not in {str(c) for c in cameras}:
            fail(f"'z-calibrations' names camera {name!r}, which is not under 'Cameras'")
    ccal = data.get("camera-calibrations") or {}
    if not isinstance(ccal, dict):
        fail("'camera-calibrations' must map camera names to a calibration path or {wavelength: path}")
    for name in ccal:
        if str(name) not in {str(c) for c in cameras}:
            fail(f"'camera-calibrations' names camera {name!r}, which is not under 'Cameras'")
    specs = {}
    for name, entry in cameras.items():
        name = str(name)
        specs[name] = _camera_spec(name, entry, zcal.get(name), folder, fail)
        specs[name].camera_calibrations = _camera_calibrations(name, ccal.get(name), folder, fail)
    priority = data.get("CameraPriority") or []
    if isinstance(priority, str):
        priority = [priority]
    if not isinstance(priority, list):
        fail("'CameraPriority' must be a list of camera names")
    priority = [str(p) for p in priority]
    for p in priority:
        if p not in specs:
            fail(f"'CameraPriority' names camera {p!r}, which is not under 'Cameras' ({', '.join(specs)})")
    return CameraConfig(cameras=specs, priority=priority, source=source)


def _camera_calibrations(name, entry, folder, fail) -> dict:
    """``camera-calibrations`` of one camera (Picasso 0.11): one sCMOS calibration path for every wavelength
    (stored under ``"*"``), or a mapping emission wavelength (nm) to path; relative paths from the config."""
    if entry is None:
        return {}

    def path(value):
        if not isinstance(value, str) or not value.strip():
            fail(f"'camera-calibrations'[{name!r}] must be a path to a _scmos_calib.hdf5, got {value!r}")
        return os.path.normpath(os.path.join(folder, os.path.expanduser(value)))

    if isinstance(entry, dict):
        return {_key(k): path(v) for k, v in entry.items()}
    return {"*": path(entry)}


def _number(value, what, fail, positive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        fail(f"{what} must be a number, got {value!r}")
    try:
        out = float(value)
    except ValueError:
        fail(f"{what} must be a number, got {value!r}")
    if not math.isfinite(out):
        fail(f"{what} must be a finite number, got {value!r}")
    if positive and not out > 0:
        fail(f"{what} must be > 0, got {value!r}")
    return out


def _key(value) -> str:
    """A mapping key as the string a metadata value would be (``488.0`` -> ``"488"``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _sensitivity_tree(node, categories, level, path, what, fail):
    here = f"{what}: 'Sensitivity'" + "".join(f"[{p!r}]" for p in path)
    if level == len(categories):
        if isinstance(node, dict):
            fail(f"{here} is nested deeper than 'Sensitivity Categories' ({len(categories)} "
                 f"level{'s' if len(categories) != 1 else ''}: {', '.join(categories) or 'none'})")
        return _number(node, here, fail)
    if not isinstance(node, dict) or not node:
        fail(f"{here} should be a mapping for category {categories[level]!r}, but is {node!r}: "
             f"'Sensitivity Categories' lists more levels than 'Sensitivity' has")
    return {_key(k): _sensitivity_tree(v, categories, level + 1, path + [_key(k)], what, fail)
            for k, v in node.items()}


def _camera_spec(name, entry, zcal, folder, fail) -> CameraSpec:
    what = f"camera {name!r}"
    if not isinstance(entry, dict):
        fail(f"{what}: its settings must be a mapping (Baseline, Sensitivity, ...), got {entry!r}")
    if "Sensitivity" not in entry:
        fail(f"{what}: missing key 'Sensitivity' (electrons per count, a number or a mapping nested "
             f"by 'Sensitivity Categories')")
    categories = entry.get("Sensitivity Categories") or []
    if isinstance(categories, str):
        categories = [categories]
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        fail(f"{what}: 'Sensitivity Categories' must be a list of metadata property names")
    if isinstance(entry["Sensitivity"], dict) and not categories:
        fail(f"{what}: 'Sensitivity' is a mapping but 'Sensitivity Categories' is missing; list the "
             f"metadata property of each level")
    sensitivity = _sensitivity_tree(entry["Sensitivity"], categories, 0, [], what, fail)
    spec = CameraSpec(name=name, sensitivity=sensitivity, categories=tuple(categories))
    if entry.get("Baseline") is not None:
        spec.baseline = _number(entry["Baseline"], f"{what}: 'Baseline'", fail, positive=False)
    if entry.get("DefaultGain") is not None:
        spec.default_gain = _number(entry["DefaultGain"], f"{what}: 'DefaultGain'", fail)
    if entry.get("Pixelsize") is not None:
        spec.pixelsize = _number(entry["Pixelsize"], f"{what}: 'Pixelsize'", fail)
    if entry.get("Gain Property Name") is not None:
        if not isinstance(entry["Gain Property Name"], str):
            fail(f"{what}: 'Gain Property Name' must be a metadata property name")
        spec.gain_property = entry["Gain Property Name"]
    switch = entry.get("EM Switch Property")
    if switch is not None:
        on = switch.get(True, switch.get("True")) if isinstance(switch, dict) else None
        if not isinstance(switch, dict) or not isinstance(switch.get("Name"), str) or on is None:
            fail(f"{what}: 'EM Switch Property' needs 'Name' (metadata property) and 'True' (its value when "
                 f"the EM amplifier is on)")
        spec.em_switch = (switch["Name"], _key(on))
    qe = entry.get("Quantum Efficiency")
    if isinstance(qe, dict):
        spec.qe = {_key(k): _number(v, f"{what}: 'Quantum Efficiency'[{k!r}]", fail) for k, v in qe.items()}
    elif qe is not None:
        spec.qe = _number(qe, f"{what}: 'Quantum Efficiency'", fail)
    device = entry.get("Channel Device")
    if device is not None:
        labels = device.get("Emission Wavelengths") if isinstance(device, dict) else None
        if not isinstance(device, dict) or not isinstance(device.get("Name"), str) or not isinstance(labels, dict):
            fail(f"{what}: 'Channel Device' needs 'Name' (a metadata key such as TIFilterBlock1-Label) and "
                 f"'Emission Wavelengths' ({{filter label: wavelength in nm}})")
        spec.channel_device = (device["Name"], {_key(k): _key(v) for k, v in labels.items()})
    if zcal is not None:
        if not isinstance(zcal, dict):
            fail(f"'z-calibrations'[{name!r}] must map wavelengths (nm) to calibration paths")
        spec.z_calibrations = {
            _key(k): os.path.normpath(os.path.join(folder, os.path.expanduser(str(v)))) for k, v in zcal.items()
        }
    return spec

