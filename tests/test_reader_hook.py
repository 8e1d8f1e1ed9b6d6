"""The npe2 reader hook and the raw-info dialog, in a real napari viewer."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import tifffile
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_localize._napari._reader import napari_get_reader
from tests.conftest import DATA, sample

pytestmark = pytest.mark.gui


def test_declines_without_raising(tmp_path):
    (tmp_path / "fake.tif").write_text("not a tiff")
    (tmp_path / "fake.nd2").write_bytes(b"\x00" * 20)
    for path in (tmp_path / "fake.tif", tmp_path / "fake.nd2", tmp_path / "gone.tif", tmp_path / "x.avi",
                 tmp_path, 42, [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]):
        assert napari_get_reader(os.fspath(path) if isinstance(path, os.PathLike) else path) is None


def test_ndtiff_channels_become_layers():
    folder = sample("ndtiff", "12_bit_pycromanager_mda")
    reader = napari_get_reader(str(folder))
    assert reader is not None
    layers = reader(str(folder))
    first = str(folder / "12_bit_pycromanager_mda_NDTiffStack.tif")
    ref = tifffile.imread(first)  # T, C, Y, X
    assert len(layers) == 2
    for c, (data, kwargs, kind) in enumerate(layers):
        assert kind == "image" and type(data).__module__.startswith("dask")
        np.testing.assert_array_equal(np.asarray(data), ref[:, c])
        lo, hi = kwargs["contrast_limits"]
        assert ref[:, c].min() <= lo < hi <= ref[:, c].max()
        assert kwargs["metadata"]["movie_info"]["Frames"] == 4
        assert kwargs["metadata"]["movie_channel"] == c


def test_ims_reader():
    path = str(sample("ims", "Minimal_IMS_File.ims"))
    layers = napari_get_reader(path)(path)
    with h5py.File(path, "r") as f:
        ref = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"][:]
    np.testing.assert_array_equal(np.asarray(layers[0][0]), ref)


def test_locs_reader():
    import h5py

    path = str(DATA / "testdata_locs.hdf5")
    with h5py.File(path, "r") as f:
        locs = f["locs"][:]
    coords, kwargs, kind = napari_get_reader(path)(path)[0]
    assert kind == "points" and coords.shape == (len(locs), 3)
    np.testing.assert_array_equal(coords[:, 0], locs["frame"])
    np.testing.assert_array_equal(coords[:, 1], locs["y"])
    assert set(locs.dtype.names) <= set(kwargs["features"])


def test_raw_without_yaml_asks_in_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ref = np.arange(3 * 4 * 5, dtype=">u2").reshape(3, 4, 5)
    raw = tmp_path / "movie.raw"
    ref.tofile(raw)

    def fill():
        from napari_localize._napari._raw_dialog import RawInfoDialog

        dialog = next(w for w in QApplication.topLevelWidgets() if isinstance(w, RawInfoDialog) and w.isVisible())
        dialog.byte_order.setCurrentIndex(1)
        dialog.data_type.setCurrentText("uint16")
        dialog.frames.setValue(3)
        dialog.height.setValue(4)
        dialog.width.setValue(5)
        dialog.accept()

    QTimer.singleShot(200, fill)
    layers = viewer.open(str(raw), plugin="napari-localize")
    assert len(layers) == 1
    np.testing.assert_array_equal(np.asarray(layers[0].data), ref.astype("u2"))
    text = (tmp_path / "movie.yaml").read_text()  # "save info" was checked
    assert "Frames: 3" in text and "Byte Order: '>'" in text
