"""The napari-localize command: outputs, names, recorded parameters and clear errors on bad input."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_localize.cli import main
from napari_localize.core.evaluate import accuracy
from napari_localize.io.locs import load_locs


@pytest.fixture(scope="module")
def sim_movie(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim")
    movie = folder / "sim.ome.tif"
    assert main(["simulate", str(movie), "--frames", "60", "--height", "48", "--width", "64",
                 "--spots-per-frame", "5", "--baseline", "100", "--sensitivity", "0.5", "--seed", "3"]) == 0
    return movie


def fresh_copy(src, folder):
    dst = folder / src.name
    shutil.copy(src, dst)
    return dst


def test_simulate_writes_movie_and_truth(sim_movie):
    truth, info = load_locs(sim_movie.parent / "sim.ome_truth_locs.hdf5")
    assert len(truth) == 60 * 5
    assert info[0]["Frames"] == 60 and info[0]["Height"] == 48 and info[0]["Width"] == 64
    assert info[1]["Simulation"]["sensitivity"] == 0.5


def test_localize_writes_picasso_named_files_with_every_parameter(sim_movie, tmp_path):
    movie = fresh_copy(sim_movie, tmp_path)
    args = ["localize", str(movie), "--baseline", "100", "--sensitivity", "0.5", "--min-net-gradient", "1500",
            "--box-size", "9", "--fit-method", "lq", "--pixelsize", "108", "--qe", "0.8", "--suffix", "_run1"]
    assert main(args) == 0
    locs, info = load_locs(tmp_path / "sim.ome_run1_locs.hdf5")
    truth, _ = load_locs(sim_movie.parent / "sim.ome_truth_locs.hdf5")
    acc, _ = accuracy(truth, locs)
    assert acc.jaccard > 0.98
    movie_info, ident, fit = info
    assert movie_info["Width"] == 64 and movie_info["Frames"] == 60
    assert ident["Box Size"] == 9 and ident["Min. Net Gradient"] == 1500 and ident["ROI"] is None
    assert fit["Fit method"] == "gausslq" and fit["Baseline"] == 100 and fit["Sensitivity"] == 0.5
    assert fit["Gain"] == 1 and fit["Qe"] == 0.8 and fit["Pixelsize"] == 108
    assert fit["Localizations"] == len(locs)


def test_folder_and_several_files(sim_movie, tmp_path):
    a = fresh_copy(sim_movie, tmp_path)
    sub = tmp_path / "b"
    sub.mkdir()
    b = fresh_copy(sim_movie, sub)
    (tmp_path / "notes.txt").write_text("not a movie")
    out = tmp_path / "out"
    out.mkdir()
    # both movies would write out/sim.ome_locs.hdf5: refused up front (issue 11), nothing written
    assert main(["localize", str(tmp_path), str(b), "--baseline", "100", "--min-net-gradient", "1500",
                 "--output-dir", str(out)]) == 2
    assert list(out.iterdir()) == []
    # beside each movie they do not collide: a folder and a file in one run
    assert main(["localize", str(tmp_path), str(b), "--baseline", "100", "--min-net-gradient", "1500"]) == 0
    assert (tmp_path / "sim.ome_locs.hdf5").exists() and (sub / "sim.ome_locs.hdf5").exists()
    assert a.exists()


def test_roi_and_frames_recorded(sim_movie, tmp_path):
    movie = fresh_copy(sim_movie, tmp_path)
    assert main(["localize", str(movie), "--baseline", "100", "--min-net-gradient", "1500",
                 "--roi", "0", "0", "24", "32", "--frames", "5", "14"]) == 0
    locs, info = load_locs(tmp_path / "sim.ome_locs.hdf5")
    assert info[1]["ROI"] == [[0, 0], [24, 32]] and info[1]["Frame Bounds"] == [5, 14]
    assert locs["frame"].min() >= 5 and locs["frame"].max() <= 14
    assert np.all(locs["y"] < 24.5) and np.all(locs["x"] < 32.5)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "napari_localize.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box-size", "8"], "box size must be odd"),
        (["--roi", "0", "0", "100", "10"], "ROI"),
        (["--frames", "70", "80"], "frame range"),
        (["--output-dir", "/nonexistent/folder"], "no such folder"),
    ],
)
def test_bad_parameters_exit_nonzero_with_one_line(sim_movie, tmp_path, extra, message):
    movie = fresh_copy(sim_movie, tmp_path)
    out = run_cli("localize", movie, *extra)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.glob("*_locs.*"))


def write_raw(folder, name, data, yaml_text):
    path = folder / name
    data.tofile(path)
    (folder / (name[:-4] + ".yaml")).write_text(yaml_text)
    return path


@pytest.mark.parametrize(
    "frames_in_yaml, dtype_name, message",
    [
        (12, "uint16", "need"),          # yaml says more frames than the file holds (truncated file)
        (10, "complex64", "Data Type"),  # unsupported dtype
        (10, "nonsense", "Data Type"),
    ],
)
def test_bad_raw_files(tmp_path, frames_in_yaml, dtype_name, message):
    data = np.zeros((10, 16, 16), np.uint16)
    path = write_raw(tmp_path, "m.raw", data, f"Byte Order: <\nData Type: {dtype_name}\nFrames: {frames_in_yaml}\n"
                                              "Height: 16\nWidth: 16\n")
    out = run_cli("localize", path)
    assert out.returncode != 0
    assert message in out.stderr and "m.raw" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_sidecar_names_the_file_to_write(tmp_path):
    path = tmp_path / "m.raw"
    np.zeros((2, 8, 8), np.uint16).tofile(path)
    out = run_cli("localize", path)
    assert out.returncode != 0
    assert "m.yaml" in out.stderr and "Data Type" in out.stderr


def test_unknown_extension_and_missing_file(tmp_path):
    p = tmp_path / "movie.avi"
    p.write_bytes(b"\0" * 100)
    out = run_cli("localize", p)
    assert out.returncode != 0 and "movie.avi" in out.stderr
    out = run_cli("localize", tmp_path / "absent.tif")
    assert out.returncode != 0 and "no such file" in out.stderr


def test_truncated_tiff_is_an_error_not_a_short_movie(sim_movie, tmp_path):
    data = sim_movie.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = run_cli("localize", cut, "--baseline", "100", "--min-net-gradient", "1500")
    assert out.returncode != 0
    assert "cut.ome.tif" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("*_locs.*"))


def test_failed_run_keeps_the_earlier_result(sim_movie, tmp_path):
    movie = fresh_copy(sim_movie, tmp_path)
    assert main(["localize", str(movie), "--baseline", "100", "--min-net-gradient", "1500"]) == 0
    before = (tmp_path / "sim.ome_locs.hdf5").read_bytes()
    data = movie.read_bytes()
    movie.write_bytes(data[: len(data) // 2])  # the movie got damaged since
    assert main(["localize", str(movie), "--baseline", "100", "--min-net-gradient", "1500"]) != 0
    assert (tmp_path / "sim.ome_locs.hdf5").read_bytes() == before


def test_console_script_and_help():
    out = subprocess.run([sys.executable, "-m", "napari_localize.cli", "localize", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--box-size", "--min-net-gradient", "--fit-method", "--baseline", "--sensitivity", "--gain",
                 "--qe", "--pixelsize", "--roi", "--frames", "--suffix", "--output-dir"):
        assert flag in out.stdout
