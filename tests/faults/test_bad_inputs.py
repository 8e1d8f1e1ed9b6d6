"""Malformed sidecars and configs, odd files, nonsense numbers and Python API inputs: each gives one clear line
(or a project error) naming the file or value and the fix; no traceback, no hang, no output, nothing overwritten."""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import pytest
import tifffile
import yaml
from faultkit import BASE_ARGS, DATA, assert_clean_failure, assert_unchanged, cli, snapshot

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz"))
from harness import ALIAS_BOMB  # noqa: E402


@pytest.fixture
def raw_movie(tmp_path):
    for name in ("testdata.raw", "testdata.yaml"):
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path / "testdata.raw"


def _edit_sidecar(raw, key, value_text):
    path = raw.with_suffix(".yaml")
    lines = [f"{key}: {value_text}" if ln.startswith(key + ":") else ln for ln in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("key,value,needle", [
    ("Frames", "null", "Frames"), ("Frames", "[1, 2]", "Frames"), ("Frames", ".inf", "Frames"),
    ("Frames", "-3", "Frames"), ("Height", "2.5", "Height"), ("Width", "'x'", "Width"),
    ("Data Type", "'>u2'", "byte order"), ("Data Type", "complex64", "unsupported Data Type"),
    ("Data Type", "[1]", "unknown Data Type"), ("Byte Order", "null", "Byte Order"),
])
def test_malformed_raw_sidecar(raw_movie, key, value, needle):
    _edit_sidecar(raw_movie, key, value)
    before = snapshot(raw_movie.parent)
    proc = cli(["localize", raw_movie, *BASE_ARGS])
    assert_clean_failure(proc, "testdata", needle, code=1)
    assert_unchanged(raw_movie.parent, before)


def test_alias_bomb_in_sidecar_is_refused_quickly(raw_movie):
    path = raw_movie.with_suffix(".yaml")
    path.write_text(path.read_text() + ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600
    t = time.monotonic()
    proc = cli(["localize", raw_movie, *BASE_ARGS], timeout=120)
    assert time.monotonic() - t < 100
    assert_clean_failure(proc, "testdata.yaml", "alias")


def test_fifo_named_like_a_movie_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    proc = cli(["localize", fifo, *BASE_ARGS], timeout=120)
    assert_clean_failure(proc, "pipe.tif", "not a regular file")


def test_float16_and_big_endian_tiffs_localize(small_movie, tmp_path):
    from napari_localize.io.movies import open_movie

    with open_movie(small_movie) as m:
        frames = np.asarray(m)
    for name, data in (("half.tif", frames.astype(np.float16)), ("big.tif", frames.astype(">u2"))):
        tifffile.imwrite(tmp_path / name, data)
        proc = cli(["localize", tmp_path / name, *BASE_ARGS])
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr


def test_tiff_claiming_a_huge_frame(tmp_path):
    path = tmp_path / "huge.tif"
    # a valid header whose single strip claims 200000 x 200000 pixels (80 GB); the file itself is 4 kB
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(shape=(200000, 200000), dtype=np.uint16, contiguous=True, rowsperstrip=200000)
    with open(path, "r+b") as fh:
        fh.truncate(4096)
    proc = cli(["localize", path, *BASE_ARGS])
    assert_clean_failure(proc, "huge.tif")


def test_zcalib_with_absurd_values(small_movie, tmp_path):
    good = {"X Coefficients": [0.0, 0, 0, 0, 0, 0.001, 2.0], "Y Coefficients": [0.0, 0, 0, 0, 0, -0.001, 2.0],
            "Number of frames": 1e15, "Step size in nm": 10, "Magnification factor": 0.79, "Frame bounds": None}
    for name, change, needle in (("frames", {}, "number of frames"),
                                 ("constant", {"Number of frames": 50, "X Coefficients": [2.0],
                                               "Y Coefficients": [2.0]}, "X Coefficients"),
                                 ("flat", {"Number of frames": 50, "X Coefficients": [0.0, 2.0],
                                           "Y Coefficients": [0.0, 2.0]}, "cannot tell heights"),
                                 ("negative", {"Number of frames": 50, "X Coefficients": [0.0, -1.0],
                                               "Y Coefficients": [0.001, -1.0]}, "not positive")):
        cal = tmp_path / f"{name}.yaml"
        cal.write_text(yaml.safe_dump({**good, **change}))
        proc = cli(["localize", small_movie, *BASE_ARGS, "--zcalib", cal, "--output-dir", tmp_path])
        assert_clean_failure(proc, f"{name}.yaml", needle, code=2)
    assert not list(tmp_path.glob("*_locs.*"))


def test_camera_config_with_nan_baseline(small_movie, tmp_path):
    cfg = tmp_path / "cams.yaml"
    cfg.write_text("Cameras:\n  Cam:\n    Baseline: .nan\n    Sensitivity: 1.0\n    Gain: [1]\n"
                   "    Pixelsize: 130\n")
    proc = cli(["localize", small_movie, "--camera-config", cfg, "--camera", "Cam", "--output-dir", tmp_path])
    assert_clean_failure(proc, "cams.yaml", "Baseline", "finite", code=2)


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + bytes(100), None, "group", "scalar"])
def test_load_locs_on_malformed_files(tmp_path, content):
    import h5py

    from napari_localize.core.errors import LocalizeError
    from napari_localize.io.locs import load_locs

    path = tmp_path / "x_locs.hdf5"
    (tmp_path / "x_locs.yaml").write_text("Frames: 1\n")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with h5py.File(path, "w") as f:
            if content == "group":
                f.create_group("locs")
            elif content == "scalar":
                f["locs"] = 3.0
            else:
                f["other"] = [1]
    with pytest.raises(LocalizeError, match="x_locs.hdf5"):
        load_locs(path)


def test_too_long_movie_name_fails_before_the_run(small_movie, tmp_path):
    name = "m" * (251 - len(".ome.tif")) + ".ome.tif"
    movie = tmp_path / name
    shutil.copy(small_movie, movie)
    t = time.monotonic()
    proc = cli(["localize", movie, *BASE_ARGS])
    assert_clean_failure(proc, "too long", "shorter --suffix")
    assert time.monotonic() - t < 120
    assert not list(tmp_path.glob("*_locs*"))


def test_workers_must_be_positive(small_movie):
    for value in ("-1", "0"):
        proc = cli(["localize", small_movie, "--scheduler", "local", "--workers", value], timeout=120)
        assert_clean_failure(proc, "--workers", ">= 1", code=2)


@pytest.mark.parametrize("scheduler", [None, "local"])
def test_batch_goes_on_after_a_broken_movie(small_movie, tmp_path, scheduler):
    """A truncated movie and a non-TIFF named .tif in a folder: the good movie is localized, each failure is
    one line, and the exit status says something failed."""
    shutil.copy(small_movie, tmp_path / "a_good.ome.tif")
    data = small_movie.read_bytes()
    (tmp_path / "b_cut.ome.tif").write_bytes(data[: len(data) // 3])
    (tmp_path / "c_text.tif").write_text("hello")
    (tmp_path / "d_bad.ims").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    args = ["localize", tmp_path, *BASE_ARGS] + (["--scheduler", scheduler, "--workers", "1"] if scheduler else [])
    proc = cli(args, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("napari-localize: error:")]
    assert len(errors) == 3 and any("b_cut" in e for e in errors) and any("c_text" in e for e in errors)
    assert (tmp_path / "a_good.ome_locs.hdf5").exists()
    assert not (tmp_path / "b_cut.ome_locs.hdf5").exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--baseline", "inf", "finite"), ("--baseline", "nan", "finite"), ("--min-net-gradient", "nan", ">= 0"),
    ("--min-net-gradient", "inf", ">= 0"), ("--min-net-gradient", "-5", ">= 0"), ("--sensitivity", "inf", "> 0"),
    ("--sensitivity", "0", "> 0"), ("--gain", "inf", ">= 1"), ("--gain", "0.5", ">= 1"),
    ("--pixelsize", "inf", "> 0"), ("--pixelsize", "-130", "> 0"), ("--convergence", "inf", "> 0"),
    ("--qe", "2", "(0, 1]"), ("--box-size", "6", "odd"),
])
def test_nonsense_numbers_are_refused(movie_with_result, flag, value, needle):
    folder = movie_with_result.parent
    before = snapshot(folder)
    proc = cli(["localize", movie_with_result, *BASE_ARGS, flag, value])  # the last value given wins
    assert_clean_failure(proc, needle, value if value not in ("inf", "nan") else "", code=2)
    assert_unchanged(folder, before)


def test_debug_prints_the_trace(tmp_path):
    (tmp_path / "text.tif").write_text("hello")
    quiet = cli(["localize", tmp_path / "text.tif"])
    loud = cli(["--debug", "localize", tmp_path / "text.tif"])
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert quiet.returncode == loud.returncode == 1


# ------------------------------------------------------------------------------------------------ Python API
def _frames(n=6):
    from napari_localize.core.simulate import SimulationParameters, simulate_frames

    frames, _ = simulate_frames(SimulationParameters(n_frames=n, height=32, width=32, spots_per_frame=3,
                                                     seed=1), 0, n)
    return frames


P = dict(baseline=100, min_net_gradient=1500)


def test_api_accepts_every_meaningful_input():
    import dask.array as da

    from napari_localize import LocalizeParameters, localize

    frames = _frames()
    ref = localize(frames, LocalizeParameters(**P)).locs
    assert len(ref) > 0
    one = localize(frames[2], LocalizeParameters(**P)).locs  # one 2D frame
    np.testing.assert_array_equal(one[["x", "y", "photons"]], ref[ref["frame"] == 2][["x", "y", "photons"]])
    for data in (frames.tolist(), frames.astype(">u2"), frames.astype(np.float32), frames.astype(np.float64),
                 frames.astype(np.int32), da.from_array(frames, chunks=(2, 32, 32))):
        got = localize(data, LocalizeParameters(**P)).locs
        np.testing.assert_allclose(got["x"], ref["x"], atol=1e-4)
    half = localize(frames.astype(np.float16), LocalizeParameters(**P)).locs
    assert abs(len(half) - len(ref)) <= 1  # float16 rounding of counts near 100..400 is below 0.25 ADU
    box = localize(frames, LocalizeParameters(**P, box_size=7.0)).locs
    np.testing.assert_array_equal(box, ref)


@pytest.mark.parametrize("data,needle", [
    (np.zeros((2, 3, 32, 32)), "data\\[:, 0\\]"), (np.zeros((4, 4), complex), "real numbers"),
    ("movie.tif", "localize_file"), (np.zeros((0, 32, 32)), "empty"), (5, "number"),
    ([[1, 2], [3]], "rectangular"), ({"a": 1}, "cannot localize a dict"),
])
def test_api_rejects_the_rest_with_movie_error(data, needle):
    from napari_localize import LocalizeParameters, MovieError, localize

    with pytest.raises(MovieError, match=needle):
        localize(data, LocalizeParameters(**P))


@pytest.mark.parametrize("change,needle", [
    ({"baseline": "100"}, "baseline must be a number"), ({"box_size": 7.5}, "box size"),
    ({"min_net_gradient": float("nan")}, "minimum net gradient"), ({"em_gain": float("inf")}, "EM gain"),
    ({"roi": (0, 0, 10)}, "ROI must be 4"), ({"frame_range": (1.5, 3)}, "frame range"),
    ({"max_iterations": 0}, "max iterations"),
])
def test_api_parameter_errors(change, needle):
    from napari_localize import LocalizeParameters, ParameterError, localize

    with pytest.raises(ParameterError, match=needle):
        localize(_frames(2), LocalizeParameters(**{**P, **change}))
