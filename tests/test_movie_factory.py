"""One factory for every movie: the reader is chosen by name AND file signature, the ABC's contract holds, and
the npe2 reader hook claims exactly the movies the CLI opens.

Expected reader classes are written out per sample here (not derived from the detection under test); pixels
are compared with independent readings (tifffile, nd2, h5py, numpy).
"""

from __future__ import annotations

import gzip
import os
import shutil
import warnings

import h5py
import nd2
import numpy as np
import pytest
import tifffile

from napari_localize.io.movies import (
    ArrayMovie,
    Movie,
    MovieChoiceError,
    MovieError,
    MovieFormatWarning,
    RawMovie,
    TiffMovie,
    detect_movie,
    movie_kind,
    open_movie,
    write_raw_info,
)
from napari_localize.io.movies.ims import ImsMovie
from napari_localize.io.movies.nd2 import Nd2Movie
from tests.conftest import DATA, sample

NDTIFF = ["ndtiff3.2_11bit_1", "12_bit_pycromanager_mda", "ndtiffv3.0_test", "ndtiff3.2_monochrome",
          "labeled_positions_1"]


def _open_first_choice(path, **options):
    """The movie at ``path``; for a file with several channels/positions, channel 0 at position 0."""
    try:
        return open_movie(path, **options)
    except MovieChoiceError as choice:
        return open_movie(path, channel=0 if choice.channels else None,
                          position=0 if choice.positions else None, **options)


# ------------------------------------------------------------------------------------------------ the ABC
def test_movie_is_an_abstract_base_every_reader_completes():
    from napari_localize.io.movies.concat import ConcatMovie
    from napari_localize.io.movies.czi import CziMovie
    from napari_localize.io.movies.lif import LifMovie
    from napari_localize.io.movies.zsteps import StepTiledMovie

    with pytest.raises(TypeError, match="abstract"):
        Movie()
    assert Movie.__abstractmethods__ == {"_read", "close"}
    for cls in (TiffMovie, RawMovie, ImsMovie, Nd2Movie, CziMovie, LifMovie, ArrayMovie, ConcatMovie,
                StepTiledMovie):
        assert issubclass(cls, Movie) and not cls.__abstractmethods__, cls

    class NoClose(Movie):
        def _read(self, start, stop):
            return np.zeros((stop - start, 2, 2))

    with pytest.raises(TypeError, match="close"):
        NoClose()


def test_validate_checks_the_data_attributes_a_reader_sets():
    class Half(Movie):
        path = "half.bin"

        def __init__(self):
            self.shape = (3, 4)
            self.dtype = np.uint16
            self.info = {}

        def _read(self, start, stop):
            return np.zeros((stop - start, 4), np.uint16)

        def close(self):
            pass

    with pytest.raises(MovieError, match=r"half\.bin: Half gave shape \(3, 4\)"):
        Half().validate()
    half = Half()
    half.shape, half.dtype = (3, 4, 1), None
    with pytest.raises(MovieError, match="gave no numeric pixel type"):
        half.validate()
    movie = ArrayMovie(np.zeros((3, 4, 5), np.uint16))
    assert movie.validate() is movie
    movie.info["Frames"] = 7
    with pytest.raises(MovieError, match="says Frames 7 but the movie has 3"):
        movie.validate()


# ------------------------------------------------------------------------------------------------ samples
SAMPLES = [
    (("ims", "Minimal_IMS_File.ims"), ImsMovie),
    (("nd2", "example-timelapse.nd2"), Nd2Movie),
    (("nd2", "cluster.nd2"), Nd2Movie),
    (("testdata.raw",), RawMovie),
] + [((("ndtiff", name)), TiffMovie) for name in NDTIFF] \
  + [(("ndtiff", name, "NDTiff.index"), TiffMovie) for name in NDTIFF]


@pytest.mark.parametrize("parts,cls", SAMPLES, ids=lambda v: "/".join(v) if isinstance(v, tuple) else "")
def test_each_sample_opens_with_its_reader(parts, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MovieFormatWarning)  # every sample is named for what it is
        with _open_first_choice(sample(*parts)) as movie:
            assert type(movie) is cls
            assert movie.validate() is movie
            assert movie[0].shape == movie.shape[1:]


def test_ndtiff_stack_file_and_folder_and_index_are_one_movie():
    folder = sample("ndtiff", "ndtiff3.2_monochrome")
    ref = tifffile.imread(folder / "NDTiff3.2_monochrome_NDTiffStack.tif").reshape(-1, 64, 64)
    for path in (folder, folder / "NDTiff.index", folder / "NDTiff3.2_monochrome_NDTiffStack.tif"):
        with open_movie(path) as movie:
            assert type(movie) is TiffMovie
            np.testing.assert_array_equal(movie[:], ref)


def test_mmstack_sample_opens_as_tiff(tmp_path):
    src = DATA / "micromanager_mmstack" / "VersionCompatTest"
    for name in os.listdir(src):
        if name.endswith(".ome.tif.gz"):
            with gzip.open(src / name) as fin, open(tmp_path / name[:-3], "wb") as fout:
                shutil.copyfileobj(fin, fout)
    first = tmp_path / "1.4compatTest_3_MMStack_1-Pos_000_000.ome.tif"
    with _open_first_choice(first) as movie:
        assert type(movie) is TiffMovie
    # the gzip file itself is refused with what to do
    with pytest.raises(MovieError, match="gzip-compressed file: decompress it first"):
        open_movie(src / "1.4compatTest_3_MMStack_1-Pos_000_000.ome.tif.gz")


# ------------------------------------------------------------------------------------------------ mis-named files
def _tiff(tmp_path, name="movie.tif", **kwargs):
    data = np.random.default_rng(3).integers(90, 4000, (6, 12, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / name, data, **kwargs)
    return tmp_path / name, data


@pytest.mark.parametrize("sidecar", [False, True])
def test_tiff_renamed_raw_is_read_as_tiff(tmp_path, sidecar):
    path, data = _tiff(tmp_path)
    renamed = tmp_path / "movie.raw"
    os.rename(path, renamed)
    if sidecar:  # even a sidecar describing it cannot make the TIFF header pixels
        write_raw_info(renamed, "<", np.uint16, *data.shape)
    with pytest.warns(MovieFormatWarning, match=r"movie\.raw: a TIFF file by its first bytes \(its name says raw"):
        movie = open_movie(renamed)
    with movie:
        assert type(movie) is TiffMovie
        np.testing.assert_array_equal(movie[:], data)


def test_bigtiff_under_any_movie_name_is_read_as_tiff(tmp_path):
    path, data = _tiff(tmp_path, "big.tif", bigtiff=True)
    assert path.read_bytes()[:4] == b"II+\x00"
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie[:], data)
    os.rename(path, tmp_path / "big.nd2")
    with pytest.warns(MovieFormatWarning, match="a TIFF file by its first bytes"), \
            open_movie(tmp_path / "big.nd2") as movie:
        assert type(movie) is TiffMovie
        np.testing.assert_array_equal(movie[:], data)


def test_nd2_renamed_tif_is_read_as_nd2(tmp_path):
    src = sample("nd2", "example-timelapse.nd2")
    renamed = tmp_path / "timelapse.tif"
    shutil.copy(src, renamed)
    ref = nd2.imread(src)
    with pytest.warns(MovieFormatWarning, match=r"timelapse\.tif: a Nikon ND2 file by its first bytes"):
        movie = open_movie(renamed)
    with movie:
        assert type(movie) is Nd2Movie
        np.testing.assert_array_equal(movie[:], ref)


def test_ims_renamed_nd2_is_read_as_imaris(tmp_path):
    src = sample("ims", "Minimal_IMS_File.ims")
    shutil.copy(src, tmp_path / "x.nd2")
    with h5py.File(src, "r") as f:
        ref = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"][:]
    with pytest.warns(MovieFormatWarning, match="an Imaris"), open_movie(tmp_path / "x.nd2") as movie:
        assert type(movie) is ImsMovie
        np.testing.assert_array_equal(np.asarray(movie)[0], ref[0])


@pytest.mark.parametrize("content,name,needle", [
    ("raw", "frames.tif", r"frames\.tif: not a readable TIFF file: it is no known movie format \(its first "
                          r"bytes are e7 00 f1 00"),
    ("locs", "table.tif", r"table\.tif: an HDF5 file without an Imaris 'DataSet', not a movie"),
    ("locs", "table.ims", r"table\.ims: "),
    ("text", "notes.nd2", r"notes\.nd2: not a readable Nikon file: it is a text file \(it starts 'hello"),
    ("gzip", "m.tif", "gzip-compressed"),
    ("empty", "m.czi", r"m\.czi: not a readable Zeiss file: it is an empty file"),
    ("zeros", "m.lif", "all zero bytes"),
    ("text", "m.dat", r"m\.dat: unknown movie type \(a text file"),
])
def test_misnamed_non_movies_are_refused_saying_what_they_look_like(tmp_path, content, name, needle):
    path = tmp_path / name
    if content == "raw":
        shutil.copy(sample("testdata.raw"), path)
    elif content == "locs":
        shutil.copy(sample("testdata_locs.hdf5"), path)
    elif content == "gzip":
        path.write_bytes(gzip.compress(b"II*\x00" + bytes(100)))
    else:
        path.write_bytes({"text": b"hello world\n", "empty": b"", "zeros": bytes(64)}[content])
    with pytest.raises(MovieError, match=needle):
        open_movie(path)
    assert movie_kind(path) is None  # the reader hook's question: never raises


def test_detect_movie_says_how_it_decided(tmp_path):
    kind = detect_movie(sample("testdata.raw"))
    assert (kind.format, kind.by, kind.mismatch) == ("raw", "name", None)
    kind = detect_movie(sample("ndtiff", "ndtiff3.2_11bit_1"))
    assert kind.format == "tiff" and kind.path.endswith("ndtiff3.2_11bit_NDTiffStack.tif")
    assert movie_kind(tmp_path / "gone.tif") is None and movie_kind(tmp_path) is None


def test_czi_and_lif_by_signature_under_other_names(tmp_path):
    pytest.importorskip("czifile")
    pytest.importorskip("liffile")
    from napari_localize.io.movies.lif import LifMovie
    from tests.lif_writer import write_lif

    data = np.random.default_rng(1).integers(90, 4000, (5, 1, 16, 20)).astype(np.uint16)
    write_lif(tmp_path / "a.lif", [("s1", data)])
    assert movie_kind(tmp_path / "a.lif").format == "lif"
    shutil.copy(tmp_path / "a.lif", tmp_path / "a.tif")
    with pytest.warns(MovieFormatWarning, match="a Leica LIF file by its first bytes"), \
            open_movie(tmp_path / "a.tif") as movie:
        assert type(movie) is LifMovie
        np.testing.assert_array_equal(movie[:], data[:, 0])
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    from napari_localize.io.movies.czi import CziMovie

    with pyczi.create_czi(str(tmp_path / "b.czi"), exist_ok=True) as w:
        for t in range(3):
            w.write(data[t, 0], plane={"T": t, "C": 0}, scene=0)
    shutil.copy(tmp_path / "b.czi", tmp_path / "b.raw")
    with pytest.warns(MovieFormatWarning, match="a Zeiss CZI file by its first bytes"), \
            open_movie(tmp_path / "b.raw") as movie:
        assert type(movie) is CziMovie
        np.testing.assert_array_equal(movie[:], data[:3, 0])


# ------------------------------------------------------------------------------------------------ one detection
def _every_path_in_tests_data():
    out = []
    for root, _dirs, files in os.walk(DATA):
        out.append(root)
        out.extend(os.path.join(root, n) for n in files)
    return sorted(out)


def test_npe2_reader_and_cli_agree_on_every_file_in_tests_data():
    from napari_localize._napari._reader import napari_get_reader, read_movie
    from napari_localize.cli import _movie_files

    claimed = []
    for path in _every_path_in_tests_data():
        hook = napari_get_reader(path)
        try:
            movie = _open_first_choice(path)
        except MovieError:
            movie = None
        if movie is None:  # the CLI cannot localize it: the hook must not offer it as a movie
            assert hook is not read_movie, path
            continue
        claimed.append(path)
        with movie:
            assert hook is read_movie, path
            if os.path.isfile(path) and not path.endswith("NDTiff.index"):
                assert _movie_files([path]) == [path]  # the CLI takes it by name or signature
            layers = hook(path)
            assert layers, path
            np.testing.assert_array_equal(np.asarray(layers[0][0]), movie[:])  # the same pixels
    assert len(claimed) >= 15  # ims, 2 nd2, raw, 5 NDTiff folders + stacks + indexes


def test_npe2_reader_claims_a_misnamed_movie_by_its_signature(tmp_path):
    from napari_localize._napari._reader import napari_get_reader, read_movie

    shutil.copy(sample("nd2", "example-timelapse.nd2"), tmp_path / "t.tif")
    (tmp_path / "f.tif").write_bytes(sample("testdata.raw").read_bytes())
    assert napari_get_reader(str(tmp_path / "t.tif")) is read_movie
    assert napari_get_reader(str(tmp_path / "f.tif")) is None
