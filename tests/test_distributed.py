"""Batches on a real Dask cluster (LocalCluster on loopback) give the same files as one-by-one runs."""

import subprocess
import sys

import numpy as np

from napari_localize import LocalizeParameters
from napari_localize.api import localize_file
from napari_localize.core.simulate import SimulationParameters, simulate_frames
from napari_localize.distributed import localize_files_distributed
from napari_localize.io.locs import load_locs
from napari_localize.io.movies.write import write_movie


def test_local_cluster_equals_serial(tmp_path):
    paths = []
    for seed in (1, 2):
        sim = SimulationParameters(n_frames=50, height=40, width=48, spots_per_frame=4, baseline=100, seed=seed)
        frames, _ = simulate_frames(sim)
        path = tmp_path / f"m{seed}.ome.tif"
        write_movie(path, [frames], frames.shape, frames.dtype)
        paths.append(path)
    p = LocalizeParameters(min_net_gradient=1500, baseline=100, frame_range=(3, 47))
    serial = {}
    for path in paths:
        h5 = localize_file(path, p, suffix="_serial").hdf5_path
        serial[path] = load_locs(h5)
    missing = tmp_path / "absent.ome.tif"
    results = localize_files_distributed(paths + [missing], p, "local", workers=2, suffix="_dask",
                                         frames_per_task=16)
    assert [r[0] for r in results] == paths + [missing]
    assert results[2][1] is None and "absent.ome.tif" in results[2][3]
    for path, h5, stats, error in results[:2]:
        assert error is None
        locs, info = load_locs(h5)
        ref_locs, ref_info = serial[path]
        assert len(locs) > 100
        np.testing.assert_array_equal(locs, ref_locs)
        assert info[1] == ref_info[1]
        assert stats.frames == 45


def test_cli_scheduler_local(tmp_path):
    from napari_localize.cli import main

    movie = tmp_path / "c.ome.tif"
    assert main(["simulate", str(movie), "--frames", "30", "--height", "40", "--width", "40",
                 "--spots-per-frame", "3"]) == 0
    assert main(["localize", str(movie), "--baseline", "100", "--min-net-gradient", "1500", "--suffix", "_a"]) == 0
    assert main(["localize", str(movie), "--baseline", "100", "--min-net-gradient", "1500", "--suffix", "_b",
                 "--scheduler", "local", "--workers", "1"]) == 0
    a, _ = load_locs(tmp_path / "c.ome_a_locs.hdf5")
    b, _ = load_locs(tmp_path / "c.ome_b_locs.hdf5")
    np.testing.assert_array_equal(a, b)


def test_cli_scheduler_local_with_an_scmos_calibration(tmp_path, capsys):
    """--camera-calibration on a Dask cluster: the workers convert, identify and fit with the movie's per-pixel
    maps (sent once per movie) and write what the serial run writes; a movie the maps do not fit fails alone."""
    from napari_localize.cli import main
    from napari_localize.core.camera_calibration import CameraCalibration
    from napari_localize.core.simulate_scmos import SCMOSModel, simulate_scmos_movie
    from napari_localize.io.camera_calibration import save_camera_calibration

    model = SCMOSModel(chip_height=48, chip_width=56, hot_fraction=0.03, seed=5)
    offset, variance, gain, _ = model.maps()
    chip = tmp_path / "chip_scmos_calib.hdf5"
    save_camera_calibration(chip, CameraCalibration(offset, variance, gain, {"Frames": 0, "model": "scmos-noise"}))
    sim = SimulationParameters(n_frames=60, height=48, width=56, spots_per_frame=5, photons=1500, bg=10.0, seed=3,
                               min_separation=9, margin=5)
    frames, _ = simulate_scmos_movie(sim, model)
    movie = tmp_path / "s.ome.tif"
    write_movie(movie, [frames], frames.shape, frames.dtype)
    small = tmp_path / "small.ome.tif"  # a 40x40 movie without ROI metadata: the 48x56 maps do not fit it
    write_movie(small, [frames[:, :40, :40]], (60, 40, 40), frames.dtype)
    common = ["--min-net-gradient", "2000", "--camera-calibration", str(chip)]
    assert main(["localize", str(movie), *common, "--suffix", "_serial"]) == 0
    assert main(["localize", str(movie), str(small), *common, "--suffix", "_dask", "--scheduler", "local",
                 "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "small.ome.tif" in err and "1 of 2 movies failed" in err
    a, info_a = load_locs(tmp_path / "s.ome_serial_locs.hdf5")
    b, info_b = load_locs(tmp_path / "s.ome_dask_locs.hdf5")
    assert len(a) > 200
    np.testing.assert_array_equal(a, b)
    assert any("chip_scmos_calib" in str(v) for doc in info_b for v in doc.values())
    assert not (tmp_path / "small.ome_dask_locs.hdf5").exists()


def test_the_core_imports_numpy_ma_before_any_worker_thread():
    """numba's typeof of an array imports ``numpy.ma`` on first use (numpy 2 loads it lazily, and neither numpy
    nor numba imports it). Done for the first time on a Dask worker's thread while another thread parsed source,
    CPython 3.11 raised "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905) and a
    batch lost a movie: importing the core imports it, on the importing thread."""
    core = "import sys, napari_localize.core; print('numpy.ma' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", core], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
