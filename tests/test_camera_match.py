"""Matching a movie's metadata to the camera config (core/camera.py).

Metadata dicts are built the way Picasso's readers build them (picasso_reference.md §7, §9): Micro-Manager 1.4
flat strings, Micro-Manager 2.0 ``{"PropVal": ...}`` values, the ND2 emulation, and the real per-plane
metadata of a Micro-Manager 1.4 file read with tifffile. Expected values are the numbers written in the
configs by hand.
"""

from __future__ import annotations

import gzip
import shutil
import textwrap

import nd2
import pytest
import tifffile
from conftest import DATA, sample

from napari_localize.core.camera import (
    CameraConfigError,
    match_camera,
    movie_camera_name,
    sensitivity_choices,
    sensitivity_value,
)
from napari_localize.io.camera_config import load_camera_config

ZYLA = "Andor sCMOS Camera"
IXON = "Andor iXon EMCCD"


@pytest.fixture(scope="module")
def seed():
    return load_camera_config(DATA / "camera_config_seed.yaml")


def config_from(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_camera_config(path)


def mm14(camera, **props):
    """Micro-Manager 1.4 style: flat string values; ``Camera`` is the core camera label."""
    mm = {"Camera": camera, "Core-Camera": camera}
    mm.update({f"{camera}-{k.replace('_dash_', '-')}": v for k, v in props.items()})
    return {"Camera": camera, "Micro-Manager Metadata": mm}


ZYLA_CASES = [
    ("540 MHz - fastest readout", "16-bit (low noise & high well capacity)", 0.46),
    ("540 MHz - fastest readout", "12-bit (low noise)", 0.28),
    ("200 MHz - lowest noise", "12-bit (high well capacity)", 7.4),
]


@pytest.mark.parametrize(("rate", "mode", "expected"), ZYLA_CASES)
def test_zyla_mm14_metadata_selects_nested_sensitivity(seed, rate, mode, expected):
    info = mm14(ZYLA, PixelReadoutRate=rate)
    info["Micro-Manager Metadata"][f"{ZYLA}-Sensitivity/DynamicRange"] = mode
    info["Micro-Manager Metadata"]["TIFilterBlock1-Label"] = "2-Cy3"
    m = match_camera(seed, info)
    assert m.camera == ZYLA
    assert m.selections == {"PixelReadoutRate": rate, "Sensitivity/DynamicRange": mode}
    assert m.sensitivity == expected
    assert (m.baseline, m.em_gain, m.pixelsize) == (100.0, 1.0, 108.0)
    assert m.wavelength == "595" and m.qe == 0.82  # from the filter block label
    assert m.z_calibration.endswith("zyla_595_3d_calib.yaml")
    assert m.notices == []


def test_mm20_propval_metadata(seed):
    """MM 2.0 stores ``{"PropVal": value, "PropType": ...}``; both the raw and the flattened form match."""
    raw = {
        "Camera": {"PropVal": ZYLA, "PropType": "String"},
        f"{ZYLA}-PixelReadoutRate": {"PropVal": "200 MHz - lowest noise", "PropType": "String"},
        f"{ZYLA}-Sensitivity/DynamicRange": {"PropVal": "12-bit (low noise)", "PropType": "String"},
        "TIFilterBlock1-Label": {"PropVal": "4-Cy5", "PropType": "String"},
    }
    flat = {k: v["PropVal"] for k, v in raw.items()}
    for mm, camera in ((raw, raw["Camera"]), (flat, ZYLA)):
        m = match_camera(seed, {"Camera": camera, "Micro-Manager Metadata": mm})
        assert (m.camera, m.sensitivity, m.wavelength, m.qe) == (ZYLA, 0.27, "700", 0.7)
        assert m.notices == []


def test_emccd_reads_and_applies_em_gain_without_a_switch(seed):
    info = mm14(IXON, Gain="300", Output_Amplifier="Electron Multiplying", ReadoutMode="17.000 MHz",
                Pre_dash_Amp_dash_Gain="Gain 2")
    m = match_camera(seed, info)
    assert m.camera == IXON
    assert m.selections == {"Output_Amplifier": "Electron Multiplying", "ReadoutMode": "17.000 MHz",
                            "Pre-Amp-Gain": "Gain 2"}
    assert (m.sensitivity, m.em_gain, m.baseline, m.qe) == (8.1, 300.0, 200.0, 0.9)
    assert m.notices == []


def test_emccd_with_em_switch(tmp_path):
    config = config_from(tmp_path, """
        Cameras:
          iXon:
            Baseline: 200
            Gain Property Name: Gain
            EM Switch Property: {Name: Output_Amplifier, True: Electron Multiplying}
            Sensitivity Categories: [Output_Amplifier]
            Sensitivity: {Electron Multiplying: 15.9, Conventional: 3.7}
          Other: {Sensitivity: 1}
    """)
    on = match_camera(config, mm14("iXon", Gain="250", Output_Amplifier="Electron Multiplying"))
    assert (on.em_gain, on.sensitivity, on.notices) == (250.0, 15.9, [])
    off = match_camera(config, mm14("iXon", Gain="250", Output_Amplifier="Conventional"))
    assert (off.em_gain, off.sensitivity) == (1.0, 3.7)
    assert len(off.notices) == 1 and "EM amplifier off" in off.notices[0]


def test_unknown_metadata_value_falls_back_with_a_notice(seed):
    info = mm14(IXON, Gain="0", Output_Amplifier="Electron Multiplying", ReadoutMode="30.000 MHz",
                Pre_dash_Amp_dash_Gain="Gain 3")
    m = match_camera(seed, info)
    # 30 MHz is not in the mapping: the first readout mode (natural order: 10 before 17 MHz) is used
    assert m.selections["ReadoutMode"] == "10.000 MHz"
    assert m.sensitivity == 4.3  # Electron Multiplying / 10.000 MHz / Gain 3
    assert m.em_gain == 1.0
    text = "\n".join(m.notices)
    assert f"{IXON}-ReadoutMode = '30.000 MHz'" in text and "using '10.000 MHz'" in text
    assert f"{IXON}-Gain = '0'" in text


def test_missing_category_key_falls_back_with_a_notice(seed):
    m = match_camera(seed, mm14(ZYLA, PixelReadoutRate="540 MHz - fastest readout"))
    assert m.selections["Sensitivity/DynamicRange"] == "12-bit (high well capacity)"  # first in order
    assert m.sensitivity == 7.5
    assert any(f"no '{ZYLA}-Sensitivity/DynamicRange'" in n for n in m.notices)
    assert any("TIFilterBlock1-Label" in n for n in m.notices)  # channel device absent: said, not raised


def test_several_cameras_none_named(seed):
    m = match_camera(seed, {"Frames": 10})
    assert m.camera == ZYLA  # the priority camera
    assert "names no camera" in m.notices[0]
    m = match_camera(seed, mm14("Prime95B", Gain="1"))
    assert m.camera == ZYLA and "'Prime95B' is not in the camera config" in m.notices[0]


def test_first_sorted_camera_without_priority(tmp_path):
    config = config_from(tmp_path, "Cameras:\n  Zeta: {Sensitivity: 2}\n  Alpha: {Sensitivity: 3}\n")
    m = match_camera(config, {})
    assert (m.camera, m.sensitivity) == ("Alpha", 3.0)


def test_one_camera_is_always_selected(tmp_path):
    config = config_from(tmp_path, "Cameras:\n  OnlyCam: {Sensitivity: 2.5, Baseline: 90}\n")
    m = match_camera(config, {})
    assert (m.camera, m.sensitivity, m.baseline, m.notices) == ("OnlyCam", 2.5, 90.0, [])
    m = match_camera(config, mm14("SomethingElse"))
    assert m.camera == "OnlyCam" and "only camera" in m.notices[0]


def test_explicit_camera_and_selections(seed):
    m = match_camera(seed, {}, camera="HamamatsuHam_DCAM")
    values = m.values()
    assert values == {"baseline": 100.0, "sensitivity": 0.47, "em_gain": 1.0, "qe": 0.73, "pixelsize": 130.0,
                      "camera": "HamamatsuHam_DCAM"}
    m = match_camera(seed, mm14(ZYLA, PixelReadoutRate="540 MHz - fastest readout"),
                     selections={"Sensitivity/DynamicRange": "12-bit (low noise)"})
    assert m.sensitivity == 0.28
    with pytest.raises(CameraConfigError, match="'Prime95B' is not in the camera config"):
        match_camera(seed, {}, camera="Prime95B")


def test_cascade_helpers(seed):
    spec = seed[IXON]
    assert sensitivity_choices(spec, []) == ["Conventional", "Electron Multiplying"]
    assert sensitivity_choices(spec, ["Electron Multiplying"]) == ["10.000 MHz", "17.000 MHz"]
    assert sensitivity_choices(spec, ["Conventional", "3.000 MHz"]) == ["Gain 1", "Gain 2", "Gain 3"]
    assert sensitivity_value(spec, ["Conventional", "3.000 MHz", "Gain 2"]) == 1.9
    with pytest.raises(CameraConfigError, match="no entry '5 MHz' for category 'ReadoutMode'"):
        sensitivity_value(spec, ["Conventional", "5 MHz", "Gain 2"])


def test_pixel_size_config_then_movie(seed):
    info = mm14("HamamatsuHam_DCAM")
    info["Pixelsize"] = 65.0
    assert match_camera(seed, info).pixelsize == 65.0  # no Pixelsize in the config: the movie's
    info = mm14(ZYLA)
    info["Pixelsize"] = 65.0
    m = match_camera(seed, info)
    assert m.pixelsize == 108.0 and any("108 nm from the config, the movie says 65 nm" in n for n in m.notices)


def test_nd2_style_metadata(tmp_path):
    """The ND2 emulation: ``Camera`` from the description, readout rate and mode + conversion gain."""
    camera = "Andor Zyla VSC-01223"
    config = config_from(tmp_path, f"""
        Cameras:
          {camera}:
            Baseline: 100
            Sensitivity Categories: [PixelReadoutRate, Sensitivity/DynamicRange]
            Sensitivity:
              540 MHz: {{"16-bit Gain 4": 0.46, "12-bit Gain 1": 7.5}}
              270 MHz: {{"16-bit Gain 4": 0.44}}
            Channel Device:
              Name: Filter
              Emission Wavelengths: {{"3 (Cy5)": 670}}
            Quantum Efficiency: {{670: 0.75}}
          Simulation: {{Sensitivity: 1}}
    """)
    info = {"Camera": camera, "Micro-Manager Metadata": {
        f"{camera}-PixelReadoutRate": "540 MHz",
        f"{camera}-Sensitivity/DynamicRange": "16-bit" + " " + "Gain 4",
        "Filter": "3 (Cy5)",
    }}
    m = match_camera(config, info)
    assert (m.camera, m.sensitivity, m.baseline, m.wavelength, m.qe) == (camera, 0.46, 100.0, "670", 0.75)
    assert m.notices == []


def test_real_nd2_camera_name(tmp_path):
    """The camera name of a real ND2 file (read with nd2 directly) selects its camera."""
    path = sample("nd2", "example-timelapse.nd2")
    with nd2.ND2File(path) as f:
        description = f.text_info["description"]
    camera = next(line.split(":", 1)[1].strip() for line in description.splitlines()
                  if line.startswith("Camera Name:"))
    assert camera.startswith("Fusion")  # a Hamamatsu ORCA-Fusion
    config = config_from(tmp_path, f"""
        Cameras:
          "{camera}": {{Baseline: 100, Sensitivity: 0.24}}
          Simulation: {{Sensitivity: 1}}
    """)
    m = match_camera(config, {"Camera": camera, "Micro-Manager Metadata": {}})
    assert (m.camera, m.sensitivity, m.baseline, m.notices) == (camera, 0.24, 100.0, [])


@pytest.fixture(scope="module")
def mm14_plane_metadata(tmp_path_factory):
    src = sample("micromanager_mmstack", "VersionCompatTest",
                        "1.4compatTest_3_MMStack_1-Pos_000_000.ome.tif.gz")
    out = tmp_path_factory.mktemp("mm14") / src.name[:-3]
    with gzip.open(src, "rb") as fin, open(out, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    with tifffile.TiffFile(out) as tif:
        return dict(tif.pages[0].tags[51123].value)


def test_real_micromanager_14_metadata(tmp_path, mm14_plane_metadata):
    """Micro-Manager 1.4 DemoCamera: ``Camera`` is empty, ``Core-Camera`` names the label ``Camera``."""
    md = mm14_plane_metadata
    assert md["Camera"] == "" and md["Core-Camera"] == "Camera"
    config = config_from(tmp_path, """
        CameraPriority: [Andor sCMOS Camera]
        Cameras:
          Andor sCMOS Camera: {Sensitivity: 0.46, Baseline: 100}
          Camera:
            Baseline: 0
            Gain Property Name: Gain
            Sensitivity Categories: [Mode, PixelType]
            Sensitivity:
              Artificial Waves: {16bit: 0.5, 8bit: 2.0}
              Noise: {16bit: 0.25, 8bit: 1.0}
            Channel Device:
              Name: Emission-Label
              Emission Wavelengths: {Chroma-HQ610: 610, Chroma-HQ700: 700}
            Quantum Efficiency: {610: 0.9, 700: 0.8}
    """)
    info = {"Camera": md["Camera"], "Micro-Manager Metadata": md}  # as Picasso's TIFF reader builds it
    assert movie_camera_name(info) == "Camera"
    m = match_camera(config, info)
    assert m.camera == "Camera"
    assert m.selections == {"Mode": "Artificial Waves", "PixelType": "16bit"}
    assert (m.sensitivity, m.baseline) == (0.5, 0.0)
    assert (m.wavelength, m.qe) == ("700", 0.8)
    # the DemoCamera's "Gain" is "0": no EM gain, said in a notice
    assert m.em_gain == 1.0 and m.notices == ["camera 'Camera': Camera-Gain = '0' means no EM gain; using 1"]
