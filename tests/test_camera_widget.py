"""The camera widget driven like a user would, on a real Qt widget (run under xvfb-run)."""

from __future__ import annotations

import pytest
from conftest import DATA

from napari_localize.io.camera_config import ENV_CONFIG, USER_CONFIG_NAME, user_config_dir

pytestmark = pytest.mark.gui

SEED = DATA / "camera_config_seed.yaml"
ZYLA = "Andor sCMOS Camera"
IXON = "Andor iXon EMCCD"


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)


@pytest.fixture
def widget(qtbot):
    from napari_localize._napari._camera_widget import CameraWidget

    w = CameraWidget(config=SEED)
    qtbot.addWidget(w.native)
    w.show()
    emitted = []
    w.changed.connect(emitted.append)
    w.emitted = emitted
    return w


def combos(w):
    return list(w._categories)


def test_starts_on_the_priority_camera(widget):
    assert list(widget._camera.choices) == [ZYLA, IXON, "HamamatsuHam_DCAM", "Simulation"]
    assert [c.label for c in combos(widget)] == ["PixelReadoutRate", "Sensitivity/DynamicRange"]
    assert widget.values()["camera"] == ZYLA
    assert widget.values()["baseline"] == 100.0


def test_cascade_refills_the_next_menu_and_sets_the_sensitivity(widget):
    widget._camera.value = IXON
    amp, readout, preamp = combos(widget)
    assert [c.label for c in (amp, readout, preamp)] == ["Output_Amplifier", "ReadoutMode", "Pre-Amp-Gain"]
    amp.value = "Electron Multiplying"
    assert list(readout.choices) == ["10.000 MHz", "17.000 MHz"]
    readout.value = "17.000 MHz"
    preamp.value = "Gain 1"
    assert widget.values()["sensitivity"] == pytest.approx(15.9)
    preamp.value = "Gain 3"
    assert widget.values()["sensitivity"] == pytest.approx(4.2)
    amp.value = "Conventional"
    assert list(readout.choices) == ["3.000 MHz"]
    assert readout.value == "3.000 MHz" and preamp.value == "Gain 3"
    assert widget.values()["sensitivity"] == pytest.approx(1.0)
    last = widget.emitted[-1]
    assert last == {"baseline": 200.0, "sensitivity": pytest.approx(1.0), "em_gain": 1.0, "qe": 0.9,
                    "pixelsize": 160.0, "camera": IXON}


def test_fields_stay_editable_and_emit(widget):
    widget._sensitivity.value = 0.5
    widget._em_gain.value = 100
    assert widget.emitted[-1]["sensitivity"] == pytest.approx(0.5)
    assert widget.emitted[-1]["em_gain"] == 100.0
    assert widget.values()["camera"] == ZYLA


def test_wavelength_sets_the_quantum_efficiency(widget):
    assert widget._wavelength.visible
    widget._wavelength.value = "700"
    assert widget.values()["qe"] == pytest.approx(0.7)
    widget._camera.value = "Simulation"
    assert not widget._wavelength.visible and not widget._categories.visible
    assert (widget.values()["baseline"], widget.values()["sensitivity"]) == (0.0, 1.0)


def test_match_movie_selects_everything_and_shows_notices(widget):
    info = {"Camera": IXON, "Micro-Manager Metadata": {
        f"{IXON}-Gain": "300", f"{IXON}-Output_Amplifier": "Electron Multiplying",
        f"{IXON}-ReadoutMode": "10.000 MHz", f"{IXON}-Pre-Amp-Gain": "Gain 2"}}
    n = len(widget.emitted)
    widget.match_movie(info)
    assert len(widget.emitted) == n + 1  # one signal for the whole match
    assert widget._camera.value == IXON
    assert [c.value for c in combos(widget)] == ["Electron Multiplying", "10.000 MHz", "Gain 2"]
    assert widget.emitted[-1] == {"baseline": 200.0, "sensitivity": pytest.approx(8.3), "em_gain": 300.0,
                                  "qe": 0.9, "pixelsize": 160.0, "camera": IXON}
    assert widget.notices == [] and not widget._notice.visible
    widget.match_movie({"Camera": "Prime95B"})
    assert widget._camera.value == ZYLA
    assert "'Prime95B' is not in the camera config" in widget._notice.value and widget._notice.visible


def test_file_picker_loads_another_config_and_reports_bad_ones(widget, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("Cameras:\n  LabCam: {Baseline: 400, Sensitivity: 2.2}\n")
    widget._config_file.value = str(other)
    assert list(widget._camera.choices) == ["LabCam"]
    assert widget.values() == {"baseline": 400.0, "sensitivity": pytest.approx(2.2), "em_gain": 1.0, "qe": 1.0,
                               "pixelsize": 130.0, "camera": "LabCam"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("Cameras:\n  LabCam: {Baseline: 400}\n")
    widget._config_file.value = str(bad)
    assert "'LabCam'" in widget._notice.value and "'Sensitivity'" in widget._notice.value
    assert list(widget._camera.choices) == ["LabCam"]  # the previous config stays


def test_discovers_the_user_config_and_works_without_one(qtbot):
    from napari_localize._napari._camera_widget import CameraWidget

    bare = CameraWidget(discover=False)
    qtbot.addWidget(bare.native)
    bare.match_movie({"Pixelsize": 95.0})
    assert bare.values() == {"baseline": 0.0, "sensitivity": 1.0, "em_gain": 1.0, "qe": 1.0, "pixelsize": 95.0,
                             "camera": None}
    assert "no camera config" in bare._notice.value
    folder = user_config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / USER_CONFIG_NAME).write_text(SEED.read_text())
    found = CameraWidget()
    qtbot.addWidget(found.native)
    assert found.values()["camera"] == ZYLA
