"""Picasso interoperability: its test movie gives its stored localizations, and Picasso opens our files."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from napari_localize import LocalizeParameters
from napari_localize.api import localize_file, localize_movie
from napari_localize.io.locs import get_metadata, load_locs
from napari_localize.io.movies import open_movie


@pytest.fixture(scope="module")
def picasso_reference(data_dir):
    locs, info = load_locs(data_dir / "testdata_locs.hdf5")
    return locs[locs["frame"] < 100], info


def test_picasso_test_movie_gives_picassos_30_localizations(data_dir, picasso_reference):
    ref, ref_info = picasso_reference
    assert len(ref) == 30
    p = LocalizeParameters(box_size=get_metadata(ref_info, "Box Size"),
                           min_net_gradient=get_metadata(ref_info, "Min. Net Gradient"), fit_method="mle")
    with open_movie(data_dir / "testdata.raw") as movie:
        locs, _, _ = localize_movie(movie, p)
    assert len(locs) == 30
    locs = np.sort(locs, order=["frame", "y", "x"])
    ref = np.sort(ref, order=["frame", "y", "x"])
    np.testing.assert_array_equal(locs["frame"], ref["frame"])
    assert np.max(np.abs(locs["x"] - ref["x"])) < 0.05
    assert np.max(np.abs(locs["y"] - ref["y"])) < 0.05
    # identification is Picasso's exactly
    np.testing.assert_allclose(locs["net_gradient"], ref["net_gradient"], rtol=1e-5)


def test_old_picasso_file_is_read_with_current_names(picasso_reference):
    ref, info = picasso_reference
    assert "log_likelihood" in ref.dtype.names  # stored as 'likelihood' in that file
    assert get_metadata(info, "Max iterations") == 1000  # stored as 'Max. Iterations'
    assert get_metadata(info, "Width") == 32


@pytest.mark.parametrize("method", ["mle", "lq", "avg"])
def test_picasso_opens_our_files(tmp_path, data_dir, method):
    movie = tmp_path / "testdata.raw"
    movie.write_bytes((data_dir / "testdata.raw").read_bytes())
    (tmp_path / "testdata.yaml").write_bytes((data_dir / "testdata.yaml").read_bytes())
    hdf5_path, yaml_path, stats = localize_file(movie, LocalizeParameters(fit_method=method))
    assert stats.localized > 0
    code = (
        "import sys, json\n"
        "from picasso import io\n"
        "locs, info = io.load_locs(sys.argv[1])\n"
        "print(json.dumps({'n': len(locs), 'columns': list(locs.columns), 'x0': float(locs['x'].iloc[0]),"
        " 'width': info[0]['Width'], 'method': info[-1]['Fit method']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(hdf5_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    with h5py.File(hdf5_path) as f:
        ours = f["locs"][...]
    assert got["n"] == len(ours) == stats.localized
    assert got["columns"] == list(ours.dtype.names)
    assert got["x0"] == pytest.approx(float(ours["x"][0]))
    assert got["width"] == 32
    assert got["method"] == {"mle": "gaussmle", "lq": "gausslq", "avg": "avg"}[method]
