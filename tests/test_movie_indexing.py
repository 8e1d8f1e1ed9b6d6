"""Property tests: ``Movie[key]`` of every reader equals numpy's ``array[key]`` (shape, dtype, values, and the
same IndexError), for random shapes, dtypes and keys; ``to_dask()`` and the npe2 reader show the same pixels.

The reference array is the data as written (not read back by the code under test).
"""

from __future__ import annotations

import os
import shutil

import h5py
import hypothesis.extra.numpy as npst
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_localize.io.movies import ArrayMovie, open_movie, write_raw_info

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
DTYPES = ["uint8", "uint16", ">u2", "int16", "float32", ">f4", "float64"]


def keys(shape):
    """Basic indices (ints, slices with any step, Ellipsis, None), integer arrays, boolean masks, lists, and
    out-of-range integers."""
    n = shape[0]
    return st.one_of(
        npst.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True),
        npst.integer_array_indices(shape, result_shape=npst.array_shapes(min_dims=1, max_dims=2, max_side=4)),
        npst.arrays(bool, (n,)),
        st.tuples(npst.arrays(bool, (n,)), st.slices(shape[1])),
        st.lists(st.integers(-n, n - 1), max_size=5),
        st.tuples(st.lists(st.integers(-n, n - 1), min_size=1, max_size=3), st.integers(-shape[1], shape[1] - 1)),
        st.integers(-2 * n - 2, 2 * n + 2),
    )


def assert_same(movie, ref, key):
    try:
        expected = ref[key]
    except IndexError:
        with pytest.raises(IndexError):
            movie[key]
        return
    got = movie[key]
    got = np.asarray(got)
    assert got.shape == expected.shape, (key, got.shape, expected.shape)
    assert got.dtype == expected.dtype.newbyteorder("="), (got.dtype, expected.dtype)
    np.testing.assert_array_equal(got, expected)


def movie_data(draw, max_frames=9, max_side=13, min_frames=1, min_side=3):
    shape = draw(st.tuples(st.integers(min_frames, max_frames), st.integers(min_side, max_side),
                           st.integers(min_side, max_side)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = (rng.random(shape) * 200).astype(dtype)
    return data


def write(kind, folder, data) -> str:
    if kind == "raw":
        path = os.path.join(folder, "m.raw")
        data.tofile(path)
        write_raw_info(path, ">" if data.dtype.byteorder == ">" else "<", data.dtype.newbyteorder("=").name,
                       *data.shape)
    elif kind == "ims":
        path = os.path.join(folder, "m.ims")
        _write_ims(path, data)
    else:
        path = os.path.join(folder, "m.ome.tif" if kind == "ome" else "m.tif")
        opts = {"ome": True, "metadata": {"axes": "TYX"}} if kind == "ome" else {}
        opts["photometric"] = "minisblack"  # a width of 3 or 4 is not RGB(A)
        if kind == "tiff-zlib":
            opts["compression"] = "zlib"
        if data.shape[0] == 1 and kind != "ome":
            opts["metadata"] = {"axes": "YX"}
            tifffile.imwrite(path, data[0], **opts)
        else:
            tifffile.imwrite(path, data, **opts)
    return path


def _chars(text):
    return np.array(list(text), dtype="S1")


def _write_ims(path, data):
    """An Imaris 5.5 file: one time point per frame, z = 1, data padded to a chunk-like size."""
    n, h, w = data.shape
    with h5py.File(path, "w") as f:
        for k, v in (("ImarisDataSet", "ImarisDataSet"), ("ImarisVersion", "5.5.0")):
            f.attrs[k] = _chars(v)
        for t in range(n):
            g = f.create_group(f"DataSet/ResolutionLevel 0/TimePoint {t}/Channel 0")
            padded = np.zeros((1, h + 3, w + 2), data.dtype)
            padded[0, :h, :w] = data[t]
            g.create_dataset("Data", data=padded)
            for k, v in (("ImageSizeX", w), ("ImageSizeY", h), ("ImageSizeZ", 1)):
                g.attrs[k] = _chars(str(v))


@pytest.mark.parametrize("kind", ["tiff", "tiff-zlib", "ome", "raw", "ims", "array"])
@SETTINGS
@given(data=st.data())
def test_indexing_matches_numpy(kind, data, tmp_path_factory):
    arr = movie_data(data.draw)
    if kind == "ims" and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    folder = str(tmp_path_factory.mktemp(kind))
    if kind == "array":
        movie = ArrayMovie(arr)
    else:
        movie = open_movie(write(kind, folder, arr))
    with movie:
        assert movie.shape == arr.shape
        for _ in range(8):
            assert_same(movie, arr, data.draw(keys(arr.shape)))
        np.testing.assert_array_equal(movie.to_dask().compute(), arr)
        np.testing.assert_array_equal(np.asarray(movie), arr)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("rel", ["nd2/example-timelapse.nd2", "ndtiff/ndtiff3.2_monochrome",
                                 "ims/Minimal_IMS_File.ims"])
@SETTINGS
@given(data=st.data())
def test_real_files_index_like_numpy(rel, data):
    path = os.path.join(DATA, rel)
    with open_movie(path) as movie:
        ref = np.stack([movie._read(i, i + 1)[0] for i in range(movie.shape[0])])  # frame by frame, the slow way
        for _ in range(10):
            assert_same(movie, ref, data.draw(keys(ref.shape)))


def test_taller_than_wide_layer_shows_the_right_pixels(tmp_path):
    """The issue's case: a (20, 64, 48) TIFF through the npe2 reader hook gives a (20, 64, 48) layer of those
    pixels (it gave (20, 48, 48))."""
    from napari_localize._napari._reader import napari_get_reader

    frames = np.arange(20 * 64 * 48, dtype=np.uint16).reshape(20, 64, 48)
    tifffile.imwrite(tmp_path / "tall.tif", frames)
    layers = napari_get_reader(str(tmp_path / "tall.tif"))(str(tmp_path / "tall.tif"))
    layer_data = layers[0][0]
    assert layer_data.shape == (20, 64, 48)
    np.testing.assert_array_equal(np.asarray(layer_data), frames)
    np.testing.assert_array_equal(np.asarray(layer_data[3:7, 10:60, 5:40]), frames[3:7, 10:60, 5:40])
