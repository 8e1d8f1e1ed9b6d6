"""3D calibration from stacks with several frames per z step (Picasso 0.11's frames per step, frame order)."""

import numpy as np
import pytest
import yaml

from napari_localize.cli import main
from napari_localize.core.simulate import SimulationParameters, simulate_bead_stack
from napari_localize.core.zfit import stage_positions
from napari_localize.io.calibration import load_calibration
from napari_localize.io.movies import MovieError
from napari_localize.io.movies.write import write_movie
from napari_localize.io.movies.zsteps import StepTiledMovie, step_frames

STEP = 20.0
N_STEPS = 61


def _fov(seed):
    p = SimulationParameters(n_frames=N_STEPS, height=64, width=64, photons=20000, bg=20, baseline=100.0,
                             seed=seed)
    frames, _ = simulate_bead_stack(p, n_beads=6, step_nm=STEP, bead_z_offset_sd=10.0)
    return p, frames


def test_step_frames_orders():
    np.testing.assert_array_equal(step_frames(6, 2, "fov"), [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(step_frames(6, 2, "z"), [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(step_frames(7, 3, "fov"), [[0, 1, 2], [3, 4, 5]])  # a trailing frame unused
    with pytest.raises(MovieError, match="only 2 frames"):
        step_frames(2, 3, "fov")
    with pytest.raises(MovieError, match="frame order"):
        step_frames(6, 2, "xy")


def test_tiled_movie_places_the_frames_of_a_step_side_by_side():
    movie = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5)
    tiled = StepTiledMovie(movie, 2, "z", gap=3)
    assert tiled.shape == (3, 4, 13)
    np.testing.assert_array_equal(tiled[1][:, :5], movie[1])
    np.testing.assert_array_equal(tiled[1][:, 8:], movie[4])
    gap = tiled[1][:, 5:8]
    assert np.all(gap == gap.flat[0]) and movie[[1, 4]].min() <= gap.flat[0] <= movie[[1, 4]].max()


@pytest.mark.parametrize("order", ["fov", "z"])
def test_calibrate_z_with_two_fields_of_view_per_step(tmp_path, order):
    p, a = _fov(1)
    _, b = _fov(2)
    # fov: at each z field 1, then field 2; z: the whole scan of field 1, then of field 2
    movie = np.stack([a, b], axis=1).reshape(2 * N_STEPS, 64, 64) if order == "fov" else np.concatenate([a, b])
    path = tmp_path / "beads2.ome.tif"
    write_movie(path, [movie], movie.shape, movie.dtype, pixelsize_nm=130.0)
    common = ["--box-size", "9", "--min-net-gradient", "800", "--baseline", "100", "--step-nm", str(STEP),
              "--magnification-factor", "1.0"]
    assert main(["calibrate-z", str(path), *common, "--frames-per-step", "2", "--frame-order", order]) == 0
    cal_path = tmp_path / "beads2.ome_3d_calib.yaml"
    with open(cal_path) as fh:
        doc = yaml.safe_load(fh)
    assert doc["Frames per step"] == 2 and doc["Frame order"] == order
    assert doc["Number of frames"] == 2 * N_STEPS  # Picasso's meaning: the whole movie
    cal = load_calibration(cal_path)
    assert cal.frames_per_step == 2 and cal.frame_order == order
    z = stage_positions(N_STEPS, STEP)
    assert cal.z_range == (float(z.min()), float(z.max()))
    # the calibrated widths follow the simulated astigmatism (calibration space is centred on the focus
    # crossing; compare shapes over the inner range)
    inner = np.linspace(-400, 400, 41)
    wx, wy = cal.widths(inner)
    # where the two widths cross is focus; the simulation's widths at the same points (up to a z shift)
    tx, ty = p.widths(inner)
    shift = np.argmin(np.abs(wx - wy)) - np.argmin(np.abs(tx - ty))
    assert abs(shift) <= 2
    assert np.max(np.abs(wx - tx)) < 0.15 and np.max(np.abs(wy - ty)) < 0.15
    # the same movie without --frames-per-step is a different (wrong) stack: the option matters
    assert main(["calibrate-z", str(path), *common, "--output", str(tmp_path / "plain.yaml")]) == 0
    plain = load_calibration(tmp_path / "plain.yaml")
    assert plain.frames_per_step == 1 and plain.z_range != cal.z_range


def test_frames_per_step_errors(tmp_path, capsys):
    _, a = _fov(3)
    path = tmp_path / "s.ome.tif"
    write_movie(path, [a], a.shape, a.dtype, pixelsize_nm=130.0)
    assert main(["calibrate-z", str(path), "--step-nm", "20", "--frames-per-step", "0"]) == 2
    assert "--frames-per-step" in capsys.readouterr().err
    assert main(["calibrate-z", str(path), "--step-nm", "20", "--frames-per-step", "100"]) == 2
    assert "frames per step" in capsys.readouterr().err
    assert main(["calibrate-z", str(path), "--step-nm", "20", "--frames-per-step", "2", "--frames", "0",
                 "10"]) == 2
    assert "--frames" in capsys.readouterr().err
