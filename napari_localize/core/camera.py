"""Camera counts to photons, and the camera described by a lab's config matched to a movie's metadata.

The config schema is Picasso's ``config.yaml`` (see ``picasso_reference.md`` §9). Reading and checking the
file lives in :mod:`napari_localize.io.camera_config`; this module holds the checked, normalized form
(:class:`CameraConfig`) and the matching, in plain Python.

Normalization done by the loader, relied on here: every mapping key of ``Sensitivity``,
``Quantum Efficiency``, ``Emission Wavelengths`` and ``z-calibrations`` is a string (metadata values are
strings, so matching is a string comparison), every leaf is a float, and the nesting depth of
``Sensitivity`` equals the number of ``Sensitivity Categories``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: used when neither an explicit value nor the config gives one (Picasso's CLI defaults)
DEFAULT_PHOTON_PARAMETERS = {"baseline": 0.0, "sensitivity": 1.0, "em_gain": 1.0, "qe": 1.0, "pixelsize": 130.0}


def adu_to_photons(adu, baseline, sensitivity, em_gain):
    """``photons = (ADU - baseline) * sensitivity / em_gain``.

    Parameters
    ----------
    adu : array
        Camera counts.
    baseline : float
        Camera offset (ADU).
    sensitivity : float
        Electrons per ADU.
    em_gain : float
        EM gain (1 without electron multiplication).

    Quantum efficiency is deliberately not applied: as in Picasso since 0.6, "photons" are photoelectrons,
    which is what sets the localization precision.
    """
    out = np.asarray(adu, dtype=np.float32) - np.float32(baseline)
    out *= np.float32(sensitivity / em_gain)
    return out


class CameraConfigError(ValueError):
    """A camera config that cannot be used; the message names the file, the camera and the key."""


@dataclass
class CameraSpec:
    """One camera of the config, checked and normalized.

    Attributes
    ----------
    name : str
        The key under ``Cameras``; equals the movie's camera name (Micro-Manager core camera label, ND2
        camera name) for automatic selection.
    sensitivity : float or dict
        Electrons per ADU, or a mapping nested ``len(categories)`` deep whose leaves are e-/ADU.
    categories : tuple of str
        Metadata property names, one per nesting level of ``sensitivity``, read as ``"<name>-<category>"``.
    baseline : float or None
        Camera offset, ADU.
    default_gain : float or None
        EM gain used when the metadata gives none.
    gain_property : str or None
        Metadata property holding the EM gain, read as ``"<name>-<gain_property>"``.
    em_switch : tuple (str, str) or None
        ``(property, value meaning the EM amplifier is on)``; when set, the EM gain is applied only if
        ``"<name>-<property>"`` equals that value.
    qe : float or dict or None
        Quantum efficiency, or a mapping emission wavelength (nm, as a string) to quantum efficiency.
    pixelsize : float or None
        Pixel size in the sample plane, nm.
    channel_device : tuple (str, dict) or None
        ``(full metadata key, {filter label: wavelength string})``; the key is *not* camera-prefixed.
    z_calibrations : dict
        Emission wavelength (nm, as a string) to the path of a 3D calibration YAML.
    camera_calibrations : dict
        Emission wavelength (nm, as a string) to the path of an sCMOS calibration (``_scmos_calib.hdf5``);
        the key ``"*"`` serves every wavelength (the config's ``camera-calibrations``).
    """

    name: str
    sensitivity: float | dict
    categories: tuple[str, ...] = ()
    baseline: float | None = None
    default_gain: float | None = None
    gain_property: str | None = None
    em_switch: tuple[str, str] | None = None
    qe: float | dict | None = None
    pixelsize: float | None = None
    channel_device: tuple[str, dict] | None = None
    z_calibrations: dict = field(default_factory=dict)
    camera_calibrations: dict = field(default_factory=dict)

    @property
    def wavelengths(self) -> list[str]:
        """The emission wavelengths (nm, strings) the config knows for this camera, sorted."""
        names = set(self.qe) if isinstance(self.qe, dict) else set()
        names |= set(self.z_calibrations)
        names |= {k for k in self.camera_calibrations if k != "*"}
        if self.channel_device is not None:
            names |= set(self.channel_device[1].values())
        return sorted(names, key=natural_key)


@dataclass
class CameraConfig:
    """A lab's cameras: ``cameras`` by name, ``priority`` (names shown first), ``source`` (file path)."""

    cameras: dict[str, CameraSpec]
    priority: list[str] = field(default_factory=list)
    source: str | None = None

    def camera_names(self) -> list[str]:
        """Names in dropdown order: the priority list first, then the others sorted."""
        rest = sorted((n for n in self.cameras if n not in self.priority), key=natural_key)
        return [n for n in self.priority if n in self.cameras] + rest

    def __getitem__(self, name: str) -> CameraSpec:
        try:
            return self.cameras[name]
        except KeyError:
            raise CameraConfigError(
                f"camera {name!r} is not in the camera config {self.source or ''}; "
                f"it has: {', '.join(self.camera_names())}"
            ) from None


@dataclass
class CameraMatch:
    """What a config gives for one movie.

    ``None`` means "the config does not say": the caller keeps its own value or the default.
    ``selections`` holds the chosen value of each sensitivity category, ``notices`` says in words
    whatever did not match and what was used instead.
    """

    camera: str | None = None
    baseline: float | None = None
    sensitivity: float | None = None
    em_gain: float | None = None
    qe: float | None = None
    pixelsize: float | None = None
    selections: dict[str, str] = field(default_factory=dict)
    wavelength: str | None = None
    z_calibration: str | None = None
    camera_calibration: str | None = None
    notices: list[str] = field(default_factory=list)

    def values(self) -> dict:
        """``baseline, sensitivity, em_gain, qe, pixelsize`` with the defaults filled in, plus ``camera``."""
        out = {k: (v if getattr(self, k) is None else float(getattr(self, k)))
               for k, v in DEFAULT_PHOTON_PARAMETERS.items()}
        out["camera"] = self.camera
        return out


# ------------------------------------------------------------------------------------------------ helpers
def natural_key(text) -> list:
    """Sort key that orders ``"9 MHz" < "10 MHz"`` and ``"488" < "561"``."""
    return [(0, float(p), "") if p and p[0].isdigit() else (1, 0.0, p.lower())
            for p in re.split(r"(\d+(?:\.\d+)?)", str(text)) if p]


def metadata_value(value):
    """A metadata value as a string; Micro-Manager 2.0's ``{"PropVal": v, ...}`` gives ``v``."""
    if isinstance(value, dict) and "PropVal" in value:
        value = value["PropVal"]
    return None if value is None else str(value).strip()


def movie_camera_name(info: dict) -> str | None:
    """The camera named by a movie's metadata: ``Camera``, else Micro-Manager's ``Core-Camera``."""
    name = metadata_value(info.get("Camera"))
    if name and name != "None":
        return name
    mm = info.get("Micro-Manager Metadata") or {}
    for key in ("Camera", "Core-Camera"):
        name = metadata_value(mm.get(key)) if isinstance(mm, dict) else None
        if name and name != "None":
            return name
    return None


def sensitivity_choices(spec: CameraSpec, selections) -> list[str]:
    """The sorted choices of category ``len(selections)`` under the earlier ``selections``."""
    node = spec.sensitivity
    for level, value in enumerate(selections):
        if not isinstance(node, dict):
            raise CameraConfigError(f"camera {spec.name!r}: 'Sensitivity' is not nested {level + 1} deep")
        if value not in node:
            raise CameraConfigError(
                f"camera {spec.name!r}: 'Sensitivity' has no entry {value!r} for category "
                f"{spec.categories[level]!r} (choices: {', '.join(sorted(node, key=natural_key))})"
            )
        node = node[value]
    return sorted(node, key=natural_key) if isinstance(node, dict) else []


def sensitivity_value(spec: CameraSpec, selections) -> float:
    """The sensitivity (e-/ADU) at the leaf reached by one selection per category."""
    node = spec.sensitivity
    if not isinstance(node, dict):
        return float(node)
    if len(selections) != len(spec.categories):
        raise CameraConfigError(
            f"camera {spec.name!r}: the sensitivity needs one value for each of "
            f"{', '.join(spec.categories)}, got {len(selections)}"
        )
    sensitivity_choices(spec, list(selections))  # raises, naming the entry that does not exist
    for value in selections:
        node = node[value]
    return float(node)


def _find_choice(value: str, choices: list[str]) -> str | None:
    if value in choices:
        return value
    folded = {c.strip().casefold(): c for c in choices}
    return folded.get(value.strip().casefold())


# ------------------------------------------------------------------------------------------------ matching
def select_camera(config: CameraConfig, info: dict | None = None, camera: str | None = None):
    """The camera to use and a notice (or ``None``) saying why it was chosen when not by name."""
    if camera is not None:
        config[camera]  # raises with the list of cameras
        return camera, None
    names = config.camera_names()
    wanted = movie_camera_name(info or {})
    if wanted is not None:
        found = _find_choice(wanted, names)
        if found is not None:
            return found, None
    first = names[0]
    if len(names) == 1:
        if wanted is None:
            return first, None
        return first, f"the movie's camera {wanted!r} is not in the camera config; using its only camera {first!r}"
    why = ("the movie's metadata names no camera" if wanted is None
           else f"the movie's camera {wanted!r} is not in the camera config")
    return first, f"{why}; using {first!r}, the first of {', '.join(names)}"


def _float_or_none(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def match_camera(config: CameraConfig, info: dict | None = None, camera: str | None = None,
                 selections: dict | None = None, wavelength: str | None = None) -> CameraMatch:
    """Match a movie's metadata against the config, step by step as Picasso's Localize does.

    Parameters
    ----------
    config : CameraConfig
        The lab's cameras.
    info : dict, optional
        Movie info: ``Camera`` (camera name), ``Micro-Manager Metadata`` (flat dict keyed
        ``"<camera>-<property>"`` and device labels), ``Pixelsize`` (nm).
    camera : str, optional
        Use this camera instead of the one named by the metadata.
    selections : dict, optional
        ``{category: value}`` chosen by the user; they win over the metadata.
    wavelength : str, optional
        Emission wavelength (nm) chosen by the user; wins over the ``Channel Device`` metadata.

    Returns
    -------
    CameraMatch
        Baseline (ADU), sensitivity (e-/ADU), EM gain, QE, pixel size (nm), the category selections,
        the wavelength and its z calibration path, and notices for everything that fell back.

    Notes
    -----
    Unlike Picasso, the EM gain read through ``Gain Property Name`` is applied even when no
    ``EM Switch Property`` is configured, a missing or unknown metadata value falls back to the first
    choice with a notice instead of raising, and a Micro-Manager file whose ``Camera`` entry is empty is
    matched by its ``Core-Camera`` label.
    """
    info = info or {}
    mm = info.get("Micro-Manager Metadata") or {}
    if not isinstance(mm, dict):
        mm = {}
    name, notice = select_camera(config, info, camera)
    spec = config[name]
    m = CameraMatch(camera=name, baseline=spec.baseline, qe=spec.qe if not isinstance(spec.qe, dict) else None)
    if notice:
        m.notices.append(notice)

    def mm_get(key):
        return metadata_value(mm.get(key)) if key in mm else None

    # EM gain
    m.em_gain = spec.default_gain if spec.default_gain is not None else 1.0
    if spec.gain_property is not None:
        key = f"{name}-{spec.gain_property}"
        text = mm_get(key)
        gain = _float_or_none(text)
        if text is None:
            if mm:
                m.notices.append(f"camera {name!r}: the metadata has no {key!r}; EM gain {m.em_gain:g}")
        elif gain is None:
            m.notices.append(f"camera {name!r}: {key} = {text!r} is not a number; EM gain {m.em_gain:g}")
        elif spec.em_switch is not None and mm_get(f"{name}-{spec.em_switch[0]}") != spec.em_switch[1]:
            state = mm_get(f"{name}-{spec.em_switch[0]}")
            m.em_gain = 1.0
            m.notices.append(f"camera {name!r}: {name}-{spec.em_switch[0]} is {state!r}, not "
                             f"{spec.em_switch[1]!r}: EM amplifier off, EM gain 1 (metadata says {gain:g})")
        elif gain < 1:
            m.em_gain = 1.0
            m.notices.append(f"camera {name!r}: {key} = {text!r} means no EM gain; using 1")
        else:
            m.em_gain = gain

    # sensitivity, one category after the other
    chosen = []
    for category in spec.categories:
        choices = sensitivity_choices(spec, chosen)
        value = (selections or {}).get(category)
        key = f"{name}-{category}"
        if value is None and key in mm:
            value = mm_get(key)
            found = _find_choice(value or "", choices)
            if found is None:
                m.notices.append(f"camera {name!r}: {key} = {value!r} is not under 'Sensitivity' "
                                 f"(choices: {', '.join(choices)}); using {choices[0]!r}")
            value = found
        elif value is None and mm:
            m.notices.append(f"camera {name!r}: the metadata has no {key!r}; using {choices[0]!r}")
        elif value is not None and value not in choices:
            raise CameraConfigError(f"camera {name!r}: {value!r} is not a choice of {category!r} "
                                    f"under {', '.join(chosen) or 'Sensitivity'} ({', '.join(choices)})")
        chosen.append(value if value is not None else choices[0])
        m.selections[category] = chosen[-1]
    m.sensitivity = sensitivity_value(spec, chosen)

    # emission wavelength: QE and z calibration
    if wavelength is None and spec.channel_device is not None:
        device, labels = spec.channel_device
        label = mm_get(device)
        if label is not None and label in labels:
            wavelength = labels[label]
        elif mm:
            m.notices.append(f"camera {name!r}: channel device {device!r} is "
                             f"{'missing' if label is None else repr(label)} in the metadata, "
                             f"not one of {', '.join(labels)}; emission wavelength not known")
    if wavelength is None and spec.wavelengths:
        wavelength = spec.wavelengths[0]
    m.wavelength = None if wavelength is None else str(wavelength)
    if isinstance(spec.qe, dict):
        m.qe = spec.qe.get(m.wavelength)
    m.z_calibration = spec.z_calibrations.get(m.wavelength)
    m.camera_calibration = spec.camera_calibrations.get(m.wavelength, spec.camera_calibrations.get("*"))
    if spec.camera_calibrations and m.camera_calibration is None:
        m.notices.append(f"camera {name!r}: 'camera-calibrations' has no sCMOS calibration for emission "
                         f"wavelength {m.wavelength!r} ({', '.join(spec.camera_calibrations)}); scalar photon "
                         "conversion")

    # pixel size: the config describes the lab's optics; else the movie's own calibration
    movie_px = _float_or_none(info.get("Pixelsize"))
    movie_px = movie_px if movie_px is not None and movie_px > 0 else None
    m.pixelsize = spec.pixelsize if spec.pixelsize is not None else movie_px
    if spec.pixelsize is not None and movie_px is not None and abs(movie_px - spec.pixelsize) > 1e-6:
        m.notices.append(f"camera {name!r}: pixel size {spec.pixelsize:g} nm from the config, "
                         f"the movie says {movie_px:g} nm")
    return m


# ------------------------------------------------------------------------------------------------ sCMOS maps
def adu_to_photons_per_pixel(adu, offset, sensitivity, em_gain=1.0):
    """Per-pixel :func:`adu_to_photons`: ``(ADU - offset) * sensitivity / em_gain``, float32.

    ``offset`` (ADU) and ``sensitivity`` (e-/ADU, i.e. ``1 / gain`` of an sCMOS calibration) are maps that
    broadcast against ``adu`` (a frame, a stack, or cut boxes), or scalars.
    """
    out = np.asarray(adu, dtype=np.float32) - np.asarray(offset, dtype=np.float32)
    out *= np.asarray(sensitivity, dtype=np.float32) / np.float32(em_gain)
    return out


def readout_variance_photons(variance, sensitivity, em_gain=1.0):
    """Readout variance in photoelectrons² from ADU²: ``variance * (sensitivity / em_gain)²`` (Huang's var/g²)."""
    s = np.asarray(sensitivity, dtype=np.float32) / np.float32(em_gain)
    return (np.asarray(variance, dtype=np.float32) * s * s).astype(np.float32)


def _roi_numbers(value):
    """``[x, y, width, height]`` from Micro-Manager's ``"x-y-w-h"`` string or a list; ``None`` otherwise."""
    value = metadata_value(value) if isinstance(value, dict) else value
    if isinstance(value, str):
        parts = re.findall(r"\d+", value)
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        return None
    try:
        numbers = [int(float(p)) for p in parts]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == 4 and min(numbers) >= 0 else None


def movie_sensor_origin(info: dict) -> tuple[int, int] | None:
    """Sensor row and column of a movie's pixel (0, 0), from its metadata; ``None`` if it does not say.

    Read, in this order: ``Sensor origin`` ([row, column], written by napari-localize), the Micro-Manager
    per-image ``ROI`` (``"x-y-width-height"``) or summary ``ROI`` ([x, y, width, height]) and the ``Camera ROI``
    entry of a ``.raw`` movie's YAML ([x, y, width, height]).
    """
    info = info or {}
    origin = info.get("Sensor origin")
    if isinstance(origin, (list, tuple)) and len(origin) == 2:
        try:
            return int(origin[0]), int(origin[1])
        except (TypeError, ValueError):
            pass
    mm = info.get("Micro-Manager Metadata") or {}
    candidates = [mm.get("ROI") if isinstance(mm, dict) else None, info.get("Camera ROI")]
    summary = mm.get("Summary") if isinstance(mm, dict) else None
    if isinstance(summary, dict):
        candidates.append(summary.get("ROI"))
    for value in candidates:
        roi = _roi_numbers(value)
        if roi is not None:
            return roi[1], roi[0]
    if isinstance(mm, dict) and "ROI-X-start" in mm and "ROI-Y-start" in mm:
        try:
            return int(float(metadata_value(mm["ROI-Y-start"]))), int(float(metadata_value(mm["ROI-X-start"])))
        except (TypeError, ValueError):
            pass
    return None


def calibration_for_movie(calibration, movie_shape, info: dict | None = None, origin=None):
    """The part of an sCMOS calibration under a movie's pixels.

    Parameters
    ----------
    calibration : :class:`~napari_localize.core.camera_calibration.CameraCalibration`
        Full-chip (or larger-ROI) maps; ``calibration.origin`` is the sensor position of its pixel (0, 0).
    movie_shape : (height, width) or (frames, height, width)
    info : dict, optional
        Movie metadata; its camera ROI (:func:`movie_sensor_origin`) places a cropped movie on the chip.
    origin : (row, column), optional
        Sensor position of the movie's pixel (0, 0), explicitly (CLI ``--camera-calibration-offset Y X``);
        wins over the metadata.

    Returns
    -------
    (CameraCalibration of the movie's size, str describing how it was placed)

    Raises
    ------
    CameraCalibrationError
        When the sizes differ and nothing says where the movie lies, or the movie lies outside the maps.
    """
    from .camera_calibration import CameraCalibrationError

    h, w = (int(s) for s in tuple(movie_shape)[-2:])
    ch, cw = calibration.shape
    how = "explicit offset"
    if origin is None:
        origin = movie_sensor_origin(info or {})
        how = "the movie's camera ROI metadata"
        if origin is not None and (ch, cw) == (h, w) and tuple(origin) != tuple(calibration.origin):
            # same size: a metadata ROI the calibration does not record (e.g. both full-chip) is no shift
            if tuple(calibration.origin) == (0, 0) and calibration.metadata.get("Sensor origin") is None:
                origin = None
    if origin is None:
        if (ch, cw) == (h, w):
            return calibration, "same size as the movie"
        if h > ch or w > cw:
            raise CameraCalibrationError(
                f"the movie ({h}x{w} pixels) does not lie inside the {ch}x{cw} camera calibration: it was "
                "recorded with a larger camera ROI (or other binning) than the calibration; record a calibration "
                "that covers it")
        raise CameraCalibrationError(
            f"the camera calibration is {ch}x{cw} pixels but the movie is {h}x{w}, and the movie's metadata "
            "does not say where its camera ROI lies on the sensor; give its top-left sensor pixel with "
            "--camera-calibration-offset Y X (API: camera_calibration_offset=(y, x)), or use a calibration "
            "recorded with the movie's ROI")
    y, x = int(origin[0]) - calibration.origin[0], int(origin[1]) - calibration.origin[1]
    if (y, x) == (0, 0) and (ch, cw) == (h, w):
        return calibration, f"same size as the movie ({how})"
    return calibration.crop(y, x, h, w), f"rows {y}..{y + h - 1}, columns {x}..{x + w - 1} of the maps ({how})"


@dataclass
class CameraMaps:
    """The per-pixel camera of one movie, ready for a run: what replaces ``baseline`` and ``sensitivity``.

    Attributes
    ----------
    offset : float32 (height, width)
        ADU; replaces the scalar baseline.
    sensitivity : float32 (height, width)
        e-/ADU: ``1 / gain`` of the calibration, or the scalar sensitivity everywhere when it has no gain map.
    variance : float32 (height, width)
        Readout variance in photoelectrons² (Huang's ``var / g²``), the sCMOS noise model's per-pixel term.
    em_gain : float
    source : dict
        What ``_locs.yaml`` records about the calibration (:func:`napari_localize.io.camera_calibration.
        calibration_record`), filled by the caller.
    """

    offset: np.ndarray
    sensitivity: np.ndarray
    variance: np.ndarray
    em_gain: float = 1.0
    source: dict = field(default_factory=dict)

    @classmethod
    def from_calibration(cls, calibration, scalar_sensitivity: float, em_gain: float = 1.0, source=None):
        """Maps of a calibration already windowed to the movie (:func:`calibration_for_movie`)."""
        sens = np.broadcast_to(np.asarray(calibration.sensitivity(scalar_sensitivity), np.float32),
                               calibration.shape)
        return cls(np.ascontiguousarray(calibration.offset, np.float32), np.ascontiguousarray(sens),
                   readout_variance_photons(calibration.variance, sens, em_gain), float(em_gain), dict(source or {}))

    @property
    def shape(self):
        return self.offset.shape

    @property
    def median_sensitivity(self) -> float:
        return float(np.median(self.sensitivity))

    def cut(self, name: str, y, x, box_size: int) -> np.ndarray:
        """``(n, box, box)`` float32 windows of map ``name`` centred on rows ``y``, columns ``x``."""
        from .spots import cut_spots

        y = np.asarray(y, np.int64)
        return cut_spots(getattr(self, name)[None], np.zeros(len(y), np.int64), y, x, box_size)

    def boxes_to_photons(self, spots, y, x):
        """Cut spots (ADU) at centres ``y``, ``x`` in photoelectrons, and their readout-variance boxes (e-²)."""
        box = int(np.shape(spots)[-1])
        photons = adu_to_photons_per_pixel(spots, self.cut("offset", y, x, box), self.cut("sensitivity", y, x, box),
                                           self.em_gain)
        return photons, self.cut("variance", y, x, box)
