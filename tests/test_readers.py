"""Movie readers against independent readings (tifffile, nd2, h5py, numpy) and generated edge cases."""

from __future__ import annotations

import gzip
import os
import shutil

import h5py
import nd2
import numpy as np
import pytest
import tifffile
import yaml

from napari_localize.io.movies import (
    MOVIE_EXTENSIONS,
    MovieChoiceError,
    MovieError,
    is_movie_path,
    list_movies,
    open_movie,
)
from tests.conftest import DATA, sample

NDTIFF = ["ndtiff3.2_11bit_1", "12_bit_pycromanager_mda", "ndtiffv3.0_test", "ndtiff3.2_monochrome",
          "labeled_positions_1"]


def _ndtiff_file(name):
    folder = sample("ndtiff", name)
    return folder, next(str(folder / n) for n in sorted(os.listdir(folder)) if n.endswith("_NDTiffStack.tif"))


def _select(ref, axes, channel, position):
    if "R" in axes:
        ref = np.take(ref, position, axis=axes.index("R"))
        axes = axes.replace("R", "")
    if "C" in axes:
        ref = np.take(ref, channel, axis=axes.index("C"))
    return ref.reshape((-1,) + ref.shape[-2:])


# -- real sample files (tests/data) ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NDTIFF)
def test_ndtiff_matches_tifffile(name):
    folder, first = _ndtiff_file(name)
    with tifffile.TiffFile(first) as tif:
        axes = tif.series[0].axes
        ref = tif.series[0].asarray()
    kw = {}
    if "C" in axes:
        kw["channel"] = 1
    if "R" in axes:
        kw["position"] = 2
    for source in (first, folder):  # the file or the dataset folder
        with open_movie(source, **kw) as movie:
            expected = _select(ref, axes, 1, 2)
            assert movie.shape == expected.shape
            np.testing.assert_array_equal(movie[:], expected)
            np.testing.assert_array_equal(movie[len(movie) - 1], expected[-1])
            assert movie.info["Frames"] == expected.shape[0]
            assert movie.info["Camera"] == "Camera"  # the DemoCamera's Core-Camera label
            assert movie.info["Micro-Manager Metadata"]["Camera-Mode"] == "Artificial Waves"
            assert movie.info["Pixelsize"] == pytest.approx(1000.0)  # PixelSize_um 1


def test_ndtiff_several_channels_need_a_choice():
    _, first = _ndtiff_file("12_bit_pycromanager_mda")
    with pytest.raises(MovieChoiceError, match="2 channels") as err:
        open_movie(first)
    assert len(err.value.channels) == 2 and "--channel" in str(err.value)
    _, first = _ndtiff_file("labeled_positions_1")
    with pytest.raises(MovieChoiceError, match=r"3 positions \(0: Pos0, 1: Pos1, 2: Pos2\)"):
        open_movie(first)
    with pytest.raises(MovieError, match="position 3 does not exist"):
        open_movie(first, position=3)


@pytest.fixture(scope="module")
def mmstack(tmp_path_factory):
    """The Micro-Manager 1.4 four-position set, un-gzipped into a temporary folder."""
    src = sample("micromanager_mmstack", "VersionCompatTest")
    out = tmp_path_factory.mktemp("mmstack")
    for name in os.listdir(src):
        if name.endswith(".gz"):
            with gzip.open(src / name) as fin, open(out / name[:-3], "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return out


def test_mmstack_positions_and_channels(mmstack):
    first = str(mmstack / "1.4compatTest_3_MMStack_1-Pos_000_000.ome.tif")
    ref = tifffile.imread(first)  # RTZCYX over all four files
    assert ref.shape == (4, 2, 2, 2, 64, 64)
    with pytest.raises(MovieChoiceError) as err:
        open_movie(first)
    assert err.value.channels == ["Cy5", "DAPI"] and len(err.value.positions) == 4
    with tifffile.TiffFile(first) as tif:
        page_mm = tif.pages[0].tags[51123].value
    for c in range(2):
        for p in range(4):
            with open_movie(first, channel=c, position=p) as movie:
                assert movie.shape == (4, 64, 64)
                np.testing.assert_array_equal(movie[:], ref[p, :, :, c].reshape(4, 64, 64))
    with open_movie(first, channel="DAPI", position=0) as movie:
        info = movie.info
    assert info["Channel"] == "DAPI"
    assert info["Micro-Manager Acquisition Comments"] == ["acqcom"]
    assert info["Micro-Manager Metadata"]["Camera-BitDepth"] == page_mm["Camera-BitDepth"] == "16"
    assert info["Pixelsize"] == pytest.approx(1000.0)
    yaml.safe_dump(info)  # goes into _locs.yaml as it is


def test_mmstack_folder_lists_the_set_once(mmstack):
    assert [os.path.basename(p) for p in list_movies(mmstack)] == ["1.4compatTest_3_MMStack_1-Pos_000_000.ome.tif"]


@pytest.mark.parametrize("name,channel", [("cluster.nd2", 1), ("example-timelapse.nd2", None)])
def test_nd2_matches_nd2_package(name, channel):
    path = sample("nd2", name)
    ref = nd2.imread(path)
    with nd2.ND2File(path) as f:
        sizes = dict(f.sizes)
    if "C" in sizes:
        ref = np.take(ref, channel, axis=list(sizes).index("C"))
    ref = ref.reshape((-1,) + ref.shape[-2:])
    movie = open_movie(path, channel=channel)
    try:
        assert movie.shape == ref.shape
        np.testing.assert_array_equal(movie[:], ref)
        np.testing.assert_array_equal(movie[5:7], ref[5:7])
    finally:
        movie.close()
    assert movie._f is None  # the file handle is released


def test_nd2_camera_metadata():
    path = sample("nd2", "example-timelapse.nd2")
    with open_movie(path) as movie:
        info = movie.info
    assert info["Camera"] == "Fusion, SN:500651"
    assert info["Micro-Manager Metadata"]["Fusion, SN:500651-Binning"] == "2x2"
    assert info["Pixelsize"] == pytest.approx(325.0)
    with pytest.raises(MovieChoiceError, match="5-FAM/pH 9.0"):
        open_movie(sample("nd2", "cluster.nd2"))


def _ims_attr(obj, name):
    return float(b"".join(obj.attrs[name].tolist()).decode())


def test_ims_minimal_file():
    path = sample("ims", "Minimal_IMS_File.ims")
    with h5py.File(path, "r") as f:
        ref = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"][:]
        img = f["DataSetInfo/Image"]
        px = (_ims_attr(img, "ExtMax0") - _ims_attr(img, "ExtMin0")) / ref.shape[2] * 1000
    with open_movie(path) as movie:
        assert movie.shape == (1, 128, 128)
        np.testing.assert_array_equal(movie[:], ref)
        assert movie.info["Height"] == 128 and movie.info["Pixelsize"] == pytest.approx(px)


def _s1(text):
    return np.array(list(str(text)), dtype="S1")


def write_ims(path, stacks, names=("red", "green"), pad=(8, 16), extent_um=(0.0, 0.0, 10.0, 5.0)):
    """A small Imaris 5.5 file; stacks[c][t] is (z, y, x), stored padded to multiples of ``pad``."""
    with h5py.File(path, "w") as f:
        f.attrs["ImarisVersion"] = _s1("5.5.0")
        level = f.create_group("DataSet/ResolutionLevel 0")
        info = f.create_group("DataSetInfo")
        z, y, x = stacks[0][0].shape
        img = info.create_group("Image")
        for k, v in zip(("ExtMin0", "ExtMin1", "ExtMax0", "ExtMax1"), extent_um):
            img.attrs[k] = _s1(v)
        for c, series in enumerate(stacks):
            info.create_group(f"Channel {c}").attrs["Name"] = _s1(names[c])
            for t, stack in enumerate(series):
                g = level.create_group(f"TimePoint {t}/Channel {c}")
                padded = np.zeros((z, -(-y // pad[0]) * pad[0], -(-x // pad[1]) * pad[1]), stack.dtype)
                padded[:, :y, :x] = stack
                padded[:, y:, :] = 9999  # chunk padding that must not be read
                padded[:, :, x:] = 9999
                g.create_dataset("Data", data=padded, compression="gzip", chunks=(1,) + padded.shape[1:])
                for k, v in (("ImageSizeX", x), ("ImageSizeY", y), ("ImageSizeZ", z)):
                    g.attrs[k] = _s1(v)


def test_ims_two_channels_non_square(tmp_path):
    rng = np.random.default_rng(1)
    stacks = [[rng.integers(0, 4000, (1, 20, 30), dtype=np.uint16) for _ in range(6)] for _ in range(2)]
    path = tmp_path / "two.ims"
    write_ims(path, stacks)
    with pytest.raises(MovieChoiceError, match="0: red, 1: green"):
        open_movie(path)
    for c in range(2):
        with open_movie(path, channel=c) as movie:
            assert movie.shape == (6, 20, 30)
            np.testing.assert_array_equal(movie[:], np.concatenate(stacks[c]))
            assert movie.info["Height"] == 20 and movie.info["Width"] == 30
            assert movie.info["Pixelsize"] == pytest.approx(np.mean([10 / 30, 5 / 20]) * 1000)
    # a bead z-stack: one time point, z-planes become frames
    zstack = [[rng.integers(0, 4000, (5, 12, 9), dtype=np.uint16)]]
    write_ims(tmp_path / "z.ims", zstack, names=("beads",))
    with open_movie(tmp_path / "z.ims") as movie:
        np.testing.assert_array_equal(movie[:], zstack[0][0])


def test_picasso_raw_matches_numpy():
    path = DATA / "testdata.raw"
    ref = np.fromfile(path, "<u2").reshape(100, 32, 32)
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie[10:20], ref[10:20])
        assert movie.info["Camera"] == "Simulation"


def test_float32_big_endian_raw(tmp_path):
    ref = np.random.default_rng(2).normal(100, 10, (7, 5, 6)).astype(">f4")
    ref.tofile(tmp_path / "m.raw")
    (tmp_path / "m.yaml").write_text("Byte Order: '>'\nData Type: float32\nFrames: 7\nHeight: 5\nWidth: 6\n")
    with open_movie(tmp_path / "m.raw") as movie:
        assert movie.dtype == np.float32 and movie.dtype.isnative
        np.testing.assert_array_equal(movie[2:5], ref[2:5].astype("=f4"))


def test_raw_wrong_dimensions_and_missing_yaml(tmp_path):
    np.zeros((4, 8, 8), "<u2").tofile(tmp_path / "m.raw")
    with pytest.raises(MovieError, match=r"m\.raw: no m\.yaml beside it.*Byte Order"):
        open_movie(tmp_path / "m.raw")
    (tmp_path / "m.yaml").write_text("Byte Order: <\nData Type: uint16\nFrames: 5\nHeight: 8\nWidth: 8\n")
    with pytest.raises(MovieError, match="512 bytes but 5 frames.*4.00 frames"):
        open_movie(tmp_path / "m.raw")


# -- generated TIFF edge cases -------------------------------------------------------------------------------
def _movie(n=12, h=20, w=24, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w)) * 3000).astype(dtype)


@pytest.mark.parametrize("name,kwargs", [
    ("plain.tiff", {"metadata": None}),
    ("zlib.tif", {"compression": "zlib", "metadata": {"axes": "TYX"}}),
    ("lzw.ome.tiff", {"compression": "lzw", "metadata": {"axes": "TYX"}}),
    ("big.tif", {"bigtiff": True, "metadata": {"axes": "TYX"}}),
    ("imagej.tif", {"imagej": True, "metadata": {"axes": "TYX"}}),
    ("bigendian.tif", {"byteorder": ">", "metadata": {"axes": "TYX"}}),
])
def test_tiff_variants(tmp_path, name, kwargs):
    ref = _movie()
    tifffile.imwrite(tmp_path / name, ref, **kwargs)
    with open_movie(tmp_path / name) as movie:
        assert movie.shape == ref.shape and movie.dtype == np.uint16
        np.testing.assert_array_equal(movie[:], ref)
        np.testing.assert_array_equal(movie[[3, 1]], ref[[3, 1]])


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, np.int32, np.float64])
def test_tiff_dtypes(tmp_path, dtype):
    ref = _movie(dtype=dtype)
    tifffile.imwrite(tmp_path / "m.ome.tif", ref, metadata={"axes": "TYX"})
    with open_movie(tmp_path / "m.ome.tif") as movie:
        assert movie.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(movie[4:9], ref[4:9])


def test_tiff_from_pillow(tmp_path):
    """A multi-page .tiff written by Pillow (no Micro-Manager, ImageJ or OME metadata)."""
    from PIL import Image

    ref = _movie(n=5)
    frames = [Image.fromarray(f) for f in ref]
    frames[0].save(tmp_path / "pil.tiff", save_all=True, append_images=frames[1:])
    with open_movie(tmp_path / "pil.tiff") as movie:
        np.testing.assert_array_equal(movie[:], ref)
        assert "Micro-Manager Metadata" not in movie.info


def test_rollover_set(tmp_path):
    """Micro-Manager 2.0 naming: the first file reads its follow-on files; a missing one is named."""
    ref = _movie(n=15)
    tifffile.imwrite(tmp_path / "acq_MMStack_Pos0.ome.tif", ref[:6], metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "acq_MMStack_Pos0_1.ome.tif", ref[6:11], metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "acq_MMStack_Pos0_2.ome.tif", ref[11:], metadata={"axes": "TYX"})
    with open_movie(tmp_path / "acq_MMStack_Pos0.ome.tif") as movie:
        assert movie.shape == (15, 20, 24)
        np.testing.assert_array_equal(movie[:], ref)
        np.testing.assert_array_equal(movie[4:13], ref[4:13])
    assert list_movies(tmp_path) == [str(tmp_path / "acq_MMStack_Pos0.ome.tif")]
    os.remove(tmp_path / "acq_MMStack_Pos0_1.ome.tif")
    with pytest.warns(UserWarning, match=r"acq_MMStack_Pos0_1\.ome\.tif is missing"):
        movie = open_movie(tmp_path / "acq_MMStack_Pos0.ome.tif")
    movie.close()


@pytest.mark.parametrize("kwargs", [{"metadata": {"axes": "TYX"}}, {"compression": "zlib", "metadata": {"axes": "TYX"}},
                                    {"metadata": None}, {"imagej": True, "metadata": {"axes": "TYX"}},
                                    {"ome": True, "metadata": {"axes": "TYX"}}])
def test_truncated_tiff_is_an_error_naming_file_and_frame(tmp_path, kwargs):
    ref = _movie(n=20)
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, ref, **kwargs)
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(MovieError, match=r"cut\.tif: the file is truncated.*frame \d+"):
        movie = open_movie(cut)
        movie[:]  # must not get here with a short movie
        movie.close()


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "m.avi").write_bytes(b"RIFF0000AVI ")
    with pytest.raises(MovieError, match=r"m\.avi: unknown movie type.*\.nd2"):
        open_movie(tmp_path / "m.avi")
    with pytest.raises(MovieError, match="no such file"):
        open_movie(tmp_path / "gone.tif")
    (tmp_path / "text.tif").write_text("not a tiff")
    with pytest.raises(MovieError, match=r"text\.tif: not a readable TIFF"):
        open_movie(tmp_path / "text.tif")


def test_list_movies_and_extensions(tmp_path):
    for name in ("a.ome.tif", "a_1.ome.tif", "b.tif", "b_1.tif", "c.raw", "d.ims", "e.nd2", "x_locs.hdf5",
                 "s_NDTiffStack.tif", "s_NDTiffStack_1.tif", "a.ome_render.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    names = [os.path.basename(p) for p in list_movies(tmp_path)]
    # b_1.tif is a separate movie (only .ome.tif and NDTiff sets have follow-on files)
    assert names == ["a.ome.tif", "b.tif", "b_1.tif", "c.raw", "d.ims", "e.nd2", "s_NDTiffStack.tif"]
    assert ".nd2" in MOVIE_EXTENSIONS and is_movie_path("X.OME.TIFF") and not is_movie_path("x.avi")


def test_cli_lists_channels(capsys):
    from napari_localize.cli import main

    _, first = _ndtiff_file("12_bit_pycromanager_mda")
    assert main(["localize", first]) == 1
    err = capsys.readouterr().err
    # NDTiff keeps the channel names per image (Axes: {"channel": ...}); they are offered by name
    assert "2 channels (0: DAPI, 1: FITC)" in err and "--channel" in err
    assert main(["localize", first, "--channel", "5"]) == 1
    assert "channel 5 does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, name", [({"imagej": True}, "ij.tif"), ({}, "stack.ome.tif"), ({}, "plain.tif")])
def test_plain_stack_is_a_movie_not_a_channel_choice(tmp_path, kwargs, name):
    # ImageJ and tifffile's OME writer label a plain 3-D stack's axis 'C' without channel names
    data = np.random.default_rng(0).integers(0, 1000, (20, 16, 24)).astype(np.uint16)
    path = tmp_path / name
    tifffile.imwrite(path, data, **kwargs)
    with open_movie(path) as movie:
        assert movie.shape == (20, 16, 24)
        np.testing.assert_array_equal(movie[:], data)
