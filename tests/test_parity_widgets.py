"""napari side of issue 17: every rectangle of the ROI layer is an ROI, editable frame segments and
prefilters in the Identification panel; the widget's run gives the CLI's table."""

import os

import h5py
import numpy as np
import pytest
from conftest import run_and_wait

from napari_localize._napari._widgets import parse_segments
from napari_localize.cli import main as cli_main
from napari_localize.io.movies.write import write_movie
from tests.test_widgets import (
    MIN_NG,
    PHOTON,
    _widgets,
    movie,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.gui


def test_parse_segments():
    assert parse_segments("0-9, 20-29") == ((0, 9), (20, 29))
    assert parse_segments("  ") is None
    with pytest.raises(ValueError, match="FIRST-LAST"):
        parse_segments("0-9, 12")
    with pytest.raises(ValueError, match="before"):
        parse_segments("9-3")


def test_rectangles_segments_and_prefilters_run_like_the_cli(make_napari_viewer, tmp_path, movie, qtbot):  # noqa: F811
    frames, truth = movie
    path = os.fspath(tmp_path / "sim.ome.tif")
    write_movie(path, [frames], frames.shape, frames.dtype)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari-localize")
    w = _widgets(viewer)
    ident = w["Identification"]
    ident.session.update(**PHOTON, fit_method="lq")
    ident.roi_from_shapes.changed.emit(True)
    shapes = viewer.layers["ROI"]
    rois = [(4, 4, 30, 40), (20, 30, 60, 60), (40, 2, 62, 20)]
    for y0, x0, y1, x1 in rois:
        shapes.add_rectangles([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]])
    p = ident.session.parameters
    assert p.roi == rois[0] and p.rois == tuple(rois[1:])
    assert ident.roi_count.value.startswith("3 ROIs")
    # deleting a rectangle removes its ROI; moving one moves it
    shapes.selected_data = {2}
    shapes.remove_selected()
    assert ident.session.parameters.rois == (rois[1],)
    shapes.data = [shapes.data[0], shapes.data[1] + np.array([1.0, 0.0])]
    moved = (21, 30, 61, 60)
    assert ident.session.parameters.rois == (moved,)
    ident.segments.value = "0-9, 20-29"
    assert ident.session.parameters.frame_segments == ((0, 9), (20, 29))
    ident.temporal_median.value = 11
    assert ident.session.parameters.temporal_median == 11
    run_and_wait(qtbot, w["Localize"].run)
    assert cli_main(["localize", path, "--suffix", "_cli", "--baseline", "100", "--min-net-gradient", str(MIN_NG),
                     "--fit-method", "lq", "--roi", *map(str, rois[0]), "--roi", *map(str, moved),
                     "--frames", "0", "9", "--frames", "20", "29", "--temporal-median", "11"]) == 0
    with h5py.File(tmp_path / "sim.ome_locs.hdf5") as f:
        gui = f["locs"][...]
    with h5py.File(tmp_path / "sim.ome_cli_locs.hdf5") as f:
        cli = f["locs"][...]
    assert len(gui) > 10
    np.testing.assert_array_equal(gui, cli)
    assert set(np.unique(gui["frame"])) <= set(range(10)) | set(range(20, 30))
    # the settings of one movie are not carried into the next session
    from napari_localize._napari._state import load_saved_parameters

    saved = load_saved_parameters()
    assert saved.rois is None and saved.frame_segments is None and saved.temporal_median == 11
