"""The public API: one return convention (LocalizeResult; calibration objects), the deprecated tuple names still
working with a DeprecationWarning, and docs/api.md's examples executed as written."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import napari_localize as nl
from napari_localize import api
from napari_localize.core.simulate import SimulationParameters, simulate_frames

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
P = nl.LocalizeParameters(box_size=7, min_net_gradient=2000, baseline=100, sensitivity=1.0)


@pytest.fixture(scope="module")
def movie():
    sim = SimulationParameters(n_frames=24, height=48, width=48, spots_per_frame=5, photons=3000, bg=20,
                               baseline=100, seed=4)
    return simulate_frames(sim)


def test_docs_api_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_api"}
    for k, code in enumerate(blocks):
        try:
            exec(compile(code, f"{DOC}:block{k + 1}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"docs/api.md code block {k + 1} failed: {type(exc).__name__}: {exc}") from exc
    assert (tmp_path / "sim_locs.hdf5").exists() and (tmp_path / "movie.ome_locs.hdf5").exists()


def test_every_public_name_is_documented():
    text = DOC.read_text()
    for name in ("localize", "localize_file", "localize_steps", "calibrate_z_stack", "calibrate_spline_stack",
                 "calibrate_camera", "open_movie", "load_locs", "LocalizeResult", "Movie"):
        assert f"{name}" in text and name in nl.__all__, name


def test_localize_returns_one_result_in_memory_and_to_a_file(movie, tmp_path):
    frames, truth = movie
    mem = nl.localize(frames, P)
    assert isinstance(mem, nl.LocalizeResult) and mem.paths is None and mem.hdf5_path is None
    assert len(mem.locs) == mem.stats.localized > 0
    assert mem.info[0]["Frames"] == 24 and len(mem.info) == 3  # movie, identification, fit
    # against the simulator: every found spot is near a true one of its frame
    for f in range(3):
        t, g = truth[truth["frame"] == f], mem.locs[mem.locs["frame"] == f]
        d = np.hypot(g["x"][:, None] - t["x"][None], g["y"][:, None] - t["y"][None]).min(axis=1)
        assert len(g) and d.max() < 0.3
    out = nl.localize(frames, P, output=tmp_path / "a_locs.hdf5")
    assert out.locs is None and out.paths == (str(tmp_path / "a_locs.hdf5"), str(tmp_path / "a_locs.yaml"))
    both = nl.localize(frames, P, output=tmp_path / "b_locs.hdf5", keep_locs=True)
    on_disk, info = nl.load_locs(both.hdf5_path)
    np.testing.assert_array_equal(on_disk[["frame", "x", "y"]], mem.locs[["frame", "x", "y"]])
    np.testing.assert_array_equal(both.locs, mem.locs)
    assert info[0]["Frames"] == 24


def test_localize_steps_yields_progress_and_returns_the_result(movie, tmp_path):
    frames, _ = movie
    steps = nl.localize_steps(frames, P, output=tmp_path / "s_locs.hdf5", chunk_frames=8)
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as done:
            result = done.value
            break
    assert seen == [(0, 24), (8, 24), (16, 24), (24, 24)]
    assert isinstance(result, nl.LocalizeResult) and result.stats.localized == len(nl.load_locs(
        result.hdf5_path)[0])
    with pytest.raises(TypeError, match="not a tuple: use .locs"):
        tuple(result)  # no legacy tuple for a new name


def test_localize_file_result_and_its_deprecated_unpacking(movie, tmp_path):
    import tifffile

    frames, _ = movie
    tifffile.imwrite(tmp_path / "m.tif", frames)
    result = nl.localize_file(tmp_path / "m.tif", P, suffix="_x")
    assert result.hdf5_path == str(tmp_path / "m_x_locs.hdf5") and result.locs is None
    with pytest.warns(DeprecationWarning, match="unpacking the result as a tuple is deprecated"):
        h5, yml, stats = result
    assert (h5, yml) == result.paths and stats is result.stats


def test_deprecated_tuple_names_warn_and_agree_with_localize(movie, tmp_path):
    frames, _ = movie
    new = nl.localize(frames, P)
    with pytest.warns(DeprecationWarning, match=r"localize_movie is deprecated.*use localize\(movie, p\)"):
        locs, info, stats = api.localize_movie(frames, P)
    np.testing.assert_array_equal(locs, new.locs)
    assert info[0] == new.info[0] and len(info) == len(new.info) and stats.localized == new.stats.localized
    with pytest.warns(DeprecationWarning, match="localize_to_file is deprecated"):
        (h5, _), stats = api.localize_to_file(frames, P, tmp_path / "t_locs.hdf5")
    np.testing.assert_array_equal(nl.load_locs(h5)[0], new.locs)
    with pytest.warns(DeprecationWarning, match="localize_to_file_steps is deprecated"):
        steps = api.localize_to_file_steps(frames, P, tmp_path / "u_locs.hdf5")
    try:
        while True:
            next(steps)
    except StopIteration as done:
        (h5, yml), stats = done.value
    assert h5.endswith("u_locs.hdf5") and stats.localized == len(new.locs)
    with pytest.warns(DeprecationWarning, match="unpacking"):
        locs2, stats2 = nl.localize(frames, P)
    np.testing.assert_array_equal(locs2, new.locs)


def test_internal_callers_use_the_new_api_only():
    root = Path(api.__file__).parent
    old = re.compile(r"\b(localize_movie|localize_movie_3d|localize_to_file|localize_to_file_steps)\(")
    users = []
    for path in list(root.rglob("*.py")) + list((root.parent / "benchmarks").glob("*.py")):
        if path.name == "api.py":
            continue
        if old.search(path.read_text()):
            users.append(str(path.relative_to(root.parent)))
    assert users == []


def test_calibration_and_camera_given_as_files(movie, tmp_path):
    from napari_localize.core.simulate import simulate_bead_stack
    from napari_localize.io.calibration import save_calibration
    from napari_localize.io.camera_calibration import save_camera_calibration

    sim = SimulationParameters(n_frames=41, height=48, width=48, photons=20000, bg=20, baseline=100, seed=1)
    stack, _ = simulate_bead_stack(sim, n_beads=5, step_nm=30.0, bead_z_offset_sd=10.0)
    import tifffile

    tifffile.imwrite(tmp_path / "beads.tif", stack)
    p3 = nl.LocalizeParameters(box_size=9, min_net_gradient=800, baseline=100)
    cal = nl.calibrate_z_stack(tmp_path / "beads.tif", p3, 30.0, 1.0)  # a file: opened and recorded
    assert cal.z_range[0] < 0 < cal.z_range[1]
    save_calibration(tmp_path / "cal.yaml", cal)
    frames, _ = movie
    by_file = nl.localize(frames, p3, calibration=tmp_path / "cal.yaml")
    by_object = nl.localize(frames, p3, calibration=cal)
    np.testing.assert_array_equal(by_file.locs, by_object.locs)
    assert "z" in by_file.locs.dtype.names
    assert str(tmp_path / "cal.yaml") in str(by_file.info[-1])  # the file named in the 3D document

    rng = np.random.default_rng(3)
    dark = (100 + rng.normal(0, 2, (120, 48, 48))).round().astype(np.uint16)
    tifffile.imwrite(tmp_path / "dark.tif", dark)
    camera = nl.calibrate_camera(tmp_path / "dark.tif")
    np.testing.assert_allclose(camera.offset, dark.mean(axis=0), atol=1e-3)
    save_camera_calibration(tmp_path / "cam.hdf5", camera)
    a = nl.localize(frames, P, camera=tmp_path / "cam.hdf5")
    b = nl.localize(frames, P, camera=camera)
    np.testing.assert_array_equal(a.locs, b.locs)
    with pytest.raises(Exception, match="same camera ROI"):
        nl.calibrate_camera(dark, [dark[:, :10]])


def test_top_level_names_resolve_and_warnings_stay_quiet_for_new_names(movie):
    frames, _ = movie
    for name in nl.__all__:
        assert getattr(nl, name) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        result = nl.localize(frames, P)
        assert result.locs is not None
