"""Several TIFF files read as one movie (--concat): order, frame access, bad combinations."""

import numpy as np
import pytest
import tifffile

from napari_localize.io.movies import MovieError
from napari_localize.io.movies.concat import concat_paths, open_concat


def _write(path, frames):
    tifffile.imwrite(path, frames, photometric="minisblack")
    return path


def test_natural_order_and_frames(tmp_path):
    parts = {n: np.full((3 if n != 10 else 2, 8, 9), n, np.uint16) for n in (1, 2, 10)}
    for n, a in parts.items():
        _write(tmp_path / f"run_{n}.tif", a)
    (tmp_path / "run_1_locs.hdf5").write_bytes(b"")  # our outputs and other files are not movies
    _write(tmp_path / "run_2_render.tif", np.zeros((1, 8, 9), np.uint16))
    files = concat_paths([tmp_path])
    assert [p.rsplit("/", 1)[1] for p in files] == ["run_1.tif", "run_2.tif", "run_10.tif"]
    with open_concat([tmp_path]) as movie:
        assert movie.shape == (8, 8, 9)
        expected = np.concatenate([parts[1], parts[2], parts[10]])
        np.testing.assert_array_equal(movie[0:8], expected)
        np.testing.assert_array_equal(movie[2:7], expected[2:7])  # across file boundaries
        np.testing.assert_array_equal(movie[7], expected[7])
        assert movie.info["Frames"] == 8
        assert [d["Frames"] for d in movie.info["Concatenated files"]] == [3, 3, 2]
        assert movie.path.endswith("run_1.tif")


def test_mismatched_files_are_refused(tmp_path):
    a = _write(tmp_path / "a_1.tif", np.zeros((2, 8, 9), np.uint16))
    b = _write(tmp_path / "a_2.tif", np.zeros((2, 8, 10), np.uint16))
    with pytest.raises(MovieError, match="cannot be concatenated"):
        open_concat([a, b])
    c = _write(tmp_path / "a_3.tif", np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(MovieError, match="pixel type"):
        open_concat([a, c])
    (tmp_path / "x.raw").write_bytes(b"1")
    with pytest.raises(MovieError, match="TIFF"):
        concat_paths([tmp_path / "a_1.tif", tmp_path / "x.raw"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MovieError, match="no TIFF"):
        concat_paths([tmp_path / "empty"])
