"""Zeiss .czi (czifile) and Leica .lif (liffile) movies: lazy frames, channel and position choice, metadata.

The .czi files are written with Zeiss' pylibCZIrw; no library writes .lif, so tests/lif_writer.py writes the
minimal LIF layout that liffile reads (a real LAS X file was not available here).
"""

import numpy as np
import pytest

from napari_localize.io.movies import MovieChoiceError, MovieError, is_movie_path, open_movie
from tests.lif_writer import write_lif

pytest.importorskip("czifile", reason="the optional extra napari-localize[zeiss]")
pytest.importorskip("liffile", reason="the optional extra napari-localize[leica]")


@pytest.fixture(scope="module")
def czi(tmp_path_factory):
    pyczi = pytest.importorskip("pylibCZIrw.czi", reason="pylibCZIrw writes the test file")
    path = tmp_path_factory.mktemp("czi") / "two.czi"
    rng = np.random.default_rng(0)
    data = rng.integers(90, 4000, (7, 2, 20, 24)).astype(np.uint16)
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for t in range(7):
            for c in range(2):
                w.write(data[t, c], plane={"T": t, "C": c}, scene=0)
        w.write_metadata(document_name="two", channel_names={0: "A647", 1: "Cy3"}, scale_x=0.108e-6,
                         scale_y=0.108e-6)
    return path, data


def test_czi_channels_frames_and_pixel_size(czi):
    path, data = czi
    assert is_movie_path(path)
    with pytest.raises(MovieChoiceError) as exc:
        open_movie(path)
    assert exc.value.channels == ["A647", "Cy3"]
    with open_movie(path, channel="Cy3") as movie:
        assert movie.shape == (7, 20, 24) and movie.dtype == np.uint16
        np.testing.assert_array_equal(movie[2:5], data[2:5, 1])
        np.testing.assert_array_equal(np.asarray(movie), data[:, 1])
        assert movie.info["Pixelsize"] == pytest.approx(108.0)
        assert movie.info["Channel"] == "Cy3" and movie.info["Frames"] == 7
    with pytest.raises(MovieError, match="channel 5"):
        open_movie(path, channel=5)


def test_czi_damaged_file_is_a_clear_error(tmp_path, czi):
    path, _ = czi
    bad = tmp_path / "cut.czi"
    bad.write_bytes(path.read_bytes()[:300])
    with pytest.raises(MovieError, match="cut.czi"):
        open_movie(bad, channel=0)


def test_lif_series_channels_and_frames(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3000, (5, 2, 12, 16)).astype(np.uint16)
    b = rng.integers(0, 3000, (4, 1, 12, 16)).astype(np.uint16)
    path = tmp_path / "exp.lif"
    write_lif(path, [("movie A", a), ("movie B", b)])
    with pytest.raises(MovieChoiceError) as exc:
        open_movie(path)
    assert exc.value.positions == ["movie A", "movie B"]
    with pytest.raises(MovieChoiceError) as exc:
        open_movie(path, position="movie A")
    assert exc.value.channels == ["Red", "Green"]
    with open_movie(path, position="movie A", channel=1) as movie:
        assert movie.shape == (5, 12, 16)
        np.testing.assert_array_equal(movie[1:4], a[1:4, 1])
        assert movie.info["Pixelsize"] == pytest.approx(108.0)
        assert movie.info["Series"] == "movie A"
    with open_movie(path, position=1) as movie:  # one channel: no choice needed
        np.testing.assert_array_equal(np.asarray(movie), b[:, 0])
    bad = tmp_path / "bad.lif"
    bad.write_bytes(b"\x70\x00\x00\x00garbage")
    with pytest.raises(MovieError, match="bad.lif"):
        open_movie(bad)


@pytest.mark.gui
def test_napari_opens_czi_channels_as_layers(czi, make_napari_viewer):
    path, data = czi
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-localize")
    assert [layer.name for layer in layers] == ["two.czi [channel A647]", "two.czi [channel Cy3]"]
    np.testing.assert_array_equal(np.asarray(layers[1].data[3]), data[3, 1])
