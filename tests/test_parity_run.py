"""The run with Picasso 0.11's options: several ROIs and frame segments, regions separately, prefilters,
split movies, drift after localizing; CLI and API give the same tables."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from napari_localize import LocalizeParameters
from napari_localize.api import localize
from napari_localize.cli import main
from napari_localize.core.regions import clip_rois
from napari_localize.core.simulate import SimulationParameters, expected_image, simulate_frames
from napari_localize.io.locs import load_locs
from napari_localize.io.movies import open_movie
from napari_localize.io.movies.write import write_movie

COMMON = ["--baseline", "100", "--min-net-gradient", "600", "--fit-method", "lq"]
P = LocalizeParameters(baseline=100, min_net_gradient=600, fit_method="lq")


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    p = SimulationParameters(n_frames=60, height=48, width=64, spots_per_frame=8, photons=3000, bg=10,
                             baseline=100, min_separation=8, seed=12)
    frames, truth = simulate_frames(p)
    path = folder / "m.ome.tif"
    write_movie(path, [frames], frames.shape, frames.dtype, pixelsize_nm=108.0)
    return path, frames, truth


def _sorted(locs):
    return np.sort(locs, order=["frame", "y", "x"])


def _copy(src, folder):
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def test_several_rois_cli_equals_api_and_whole_frame(movie, tmp_path):
    src, frames, _ = movie
    path = _copy(src, tmp_path)
    rois = [(5, 5, 30, 40), (20, 30, 45, 60)]  # overlapping
    args = [a for r in rois for a in ("--roi", *map(str, r))]
    assert main(["localize", str(path), *COMMON, *args]) == 0
    cli, info = load_locs(tmp_path / "m.ome_locs.hdf5")
    with open_movie(path) as m:
        api = localize(m, P.replace(roi=rois[0], rois=(rois[1],))).locs
        whole = localize(m, P).locs
    np.testing.assert_array_equal(_sorted(cli), _sorted(api))
    pieces = clip_rois(rois)
    # the same as each clipped piece localized alone on the whole frame: borders keep their spots (the
    # crop is padded), overlaps count once
    with open_movie(path) as m:
        ref = np.concatenate([localize(m, P.replace(roi=piece)).locs for piece in pieces])
    assert len(cli) == len(ref) > 30
    np.testing.assert_array_equal(_sorted(cli), _sorted(ref))
    assert len(whole) > len(cli)
    ident = [d for d in info if "Box Size" in d][0]
    assert ident["ROI"] == [[[5, 5], [30, 40]], [[30, 30], [45, 60]], [[20, 40], [30, 60]]]


def test_frame_segments(movie, tmp_path):
    src, *_ = movie
    path = _copy(src, tmp_path)
    assert main(["localize", str(path), *COMMON, "--frames", "40", "49", "--frames", "0", "9", "--frames",
                 "5", "14"]) == 0
    cli, info = load_locs(tmp_path / "m.ome_locs.hdf5")
    f = cli["frame"]
    assert set(np.unique(f)) <= set(range(0, 15)) | set(range(40, 50))
    with open_movie(path) as m:
        whole = localize(m, P).locs
        api = localize(m, P.replace(frame_segments=((40, 49), (0, 9), (5, 14)))).locs
    keep = (whole["frame"] <= 14) | ((whole["frame"] >= 40) & (whole["frame"] <= 49))
    np.testing.assert_array_equal(_sorted(cli), _sorted(whole[keep]))
    np.testing.assert_array_equal(_sorted(cli), _sorted(api))
    ident = [d for d in info if "Box Size" in d][0]
    assert ident["Frame Bounds"] == [[0, 9], [5, 14], [40, 49]]
    assert info[-1]["Frames processed"] == 25


def test_regions_separately(movie, tmp_path):
    src, *_ = movie
    path = _copy(src, tmp_path)
    assert main(["localize", str(path), "--baseline", "100", "--roi", "0", "0", "48", "32", "--roi", "0", "32",
                 "48", "64", "--regions-separately", "--fit-method", "mle", "--fit-method", "lq",
                 "--min-net-gradient", "600", "--min-net-gradient", "700"]) == 0
    ref, ref_info = load_locs(tmp_path / "m.ome_ref_locs.hdf5")
    ch1, ch1_info = load_locs(tmp_path / "m.ome_ch1_locs.hdf5")
    assert ref_info[0]["Width"] == 32 and ref_info[0]["Region"] == [[0, 0], [48, 32]]
    assert ch1_info[0]["Width"] == 32 and ch1_info[0]["Region"] == [[0, 32], [48, 64]]
    assert "log_likelihood" in ref.dtype.names and "log_likelihood" not in ch1.dtype.names
    assert [d for d in ch1_info if "Box Size" in d][0]["Min. Net Gradient"] == 700
    assert ch1["x"].min() >= 0 and ch1["x"].max() < 32  # its own coordinates
    with open_movie(path) as m:
        whole = localize(m, P.replace(min_net_gradient=700, roi=(0, 32, 48, 64))).locs
    whole = whole[whole["x"] >= 32]  # a fit that left the region to its left is outside the region's file
    np.testing.assert_allclose(_sorted(ch1)["x"], _sorted(whole)["x"] - 32, atol=1e-4)
    # Picasso opens a region file without its yaml (the embedded /metadata)
    (tmp_path / "m.ome_ch1_locs.yaml").unlink()
    code = ("import sys, json\nfrom picasso import io\nlocs, info = io.load_locs(sys.argv[1])\n"
            "print(json.dumps({'n': len(locs), 'w': info[0]['Width']}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.ome_ch1_locs.hdf5")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"n": len(ch1), "w": 32}


def test_regions_separately_errors(movie, tmp_path, capsys):
    src, *_ = movie
    path = _copy(src, tmp_path)
    assert main(["localize", str(path), "--regions-separately"]) == 2
    assert "at least one --roi" in capsys.readouterr().err
    assert main(["localize", str(path), "--roi", "0", "0", "30", "40", "--roi", "10", "10", "40", "50",
                 "--regions-separately"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["localize", str(path), "--roi", "0", "0", "30", "32", "--roi", "0", "32", "30", "64",
                 "--regions-separately", "--fit-method", "mle", "--fit-method", "lq", "--fit-method", "avg"]) == 2
    assert "3 --fit-method values for 2 --roi" in capsys.readouterr().err
    # without --regions-separately a repeated flag's last value wins, as for any other flag
    from argparse import Namespace

    from napari_localize.cli_post import check_repeated_flags

    args = Namespace(regions_separately=False, fit_method=["mle", "lq"], min_net_gradient=[1500.0, float("nan")])
    check_repeated_flags(args)
    assert args.fit_method == ["lq"] and np.isnan(args.min_net_gradient[0]) and len(args.min_net_gradient) == 1
    assert main(["localize", str(path), "--roi", "0", "0", "30", "40", "--roi", "0", "0", "300", "40"]) != 0
    assert "ROI 2 (y0 x0 y1 x1) = 0 0 300 40 is not inside" in capsys.readouterr().err
    assert not list(tmp_path.glob("*_locs.hdf5"))


def test_temporal_median_in_the_run(tmp_path):
    p = SimulationParameters(n_frames=100, height=48, width=48, spots_per_frame=5, photons=1500, bg=10,
                             baseline=100, seed=4)
    frames, truth = simulate_frames(p)
    rng = np.random.default_rng(2)
    static = expected_image(48, 48, rng.uniform(5, 43, 8), rng.uniform(5, 43, 8), np.full(8, 2500.0), 1.3, 1.3,
                            0.0)
    movie = (frames + rng.poisson(static, frames.shape)).astype(np.uint16)
    path = tmp_path / "debris.ome.tif"
    write_movie(path, [movie], movie.shape, movie.dtype)
    common = ["--baseline", "100", "--min-net-gradient", "800", "--fit-method", "lq"]
    assert main(["localize", str(path), *common]) == 0
    raw, _ = load_locs(tmp_path / "debris.ome_locs.hdf5")
    assert main(["localize", str(path), *common, "--temporal-median", "31", "--suffix", "_tm"]) == 0
    med, info = load_locs(tmp_path / "debris.ome_tm_locs.hdf5")
    ident = [d for d in info if "Box Size" in d][0]
    assert ident["Temporal Median Window"] == 31 and ident["Gaussian Filter Sigma"] == 0.0

    def jac(locs):
        from tests.test_prefilter import jaccard

        ids = np.zeros(len(locs), [("frame", "<i8"), ("x", "<f8"), ("y", "<f8")])
        for n in ("frame", "x", "y"):
            ids[n] = locs[n]
        # 3 px: the debris' light still pulls the fits of spots that overlap it (fitting is on the raw movie)
        return jaccard(ids, truth, radius=3.0)

    assert jac(raw) < 0.6 and jac(med) > 0.95  # measured 0.43 -> 0.98
    # fitting used the raw movie: the photons of the molecules are the simulated ones, not background-cut
    idx = np.argsort(med["photons"])[len(med) // 2]
    assert 0.7 * 1500 < med["photons"][idx] < 1.5 * 1500


def test_concat_equals_the_whole_movie(movie, tmp_path):
    src, frames, _ = movie
    for k, (a, b) in enumerate([(0, 25), (25, 50), (50, 60)]):
        tifffile.imwrite(tmp_path / f"run_{k + 1}.tif", frames[a:b], photometric="minisblack")
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, frames, photometric="minisblack")
    assert main(["localize", str(tmp_path / "run_1.tif"), str(tmp_path / "run_2.tif"),
                 str(tmp_path / "run_3.tif"), "--concat", *COMMON]) == 0
    joined, info = load_locs(tmp_path / "run_1_locs.hdf5")
    assert main(["localize", str(whole), *COMMON]) == 0
    ref, _ = load_locs(tmp_path / "whole_locs.hdf5")
    np.testing.assert_array_equal(_sorted(joined), _sorted(ref))
    assert info[0]["Frames"] == 60 and len(info[0]["Concatenated files"]) == 3


def test_drift_after_localize(tmp_path, capsys):
    # DNA-PAINT sites (the same positions blink again and again): what drift correction measures drift from;
    # random positions carry no drift signal at all
    sp = SimulationParameters(n_frames=60, height=48, width=64, spots_per_frame=8, photons=3000, bg=10,
                              baseline=100, n_sites=40, seed=12)
    frames, _ = simulate_frames(sp)
    path = tmp_path / "m.ome.tif"
    write_movie(path, [frames], frames.shape, frames.dtype, pixelsize_nm=108.0)
    src = path
    assert main(["localize", str(path), *COMMON, "--drift", "20"]) == 0
    out = tmp_path / "m.ome_locs_undrift.hdf5"
    assert out.exists() and (tmp_path / "m.ome_locs_drift.txt").exists()
    _, info = load_locs(out)
    assert info[-1]["Segmentation"] == 20
    # a drift that cannot be measured is reported and the localizations stay
    path2 = tmp_path / "n.ome.tif"
    path2.write_bytes(src.read_bytes())
    assert main(["localize", str(path2), *COMMON, "--drift", "100000"]) == 0
    assert "drift correction skipped" in capsys.readouterr().err
    assert (tmp_path / "n.ome_locs.hdf5").exists() and not (tmp_path / "n.ome_locs_undrift.hdf5").exists()
    with h5py.File(tmp_path / "n.ome_locs.hdf5") as f:
        assert "metadata" in f
    with open(tmp_path / "n.ome_locs.yaml") as fh:
        assert list(yaml.safe_load_all(fh))
