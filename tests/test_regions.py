"""Several ROIs (clipped, padded) and frame segments (merged): the pure region logic."""

import numpy as np
import pytest

from napari_localize.core.identify import identify
from napari_localize.core.regions import (
    RegionError,
    check_rois,
    clip_rois,
    in_segments,
    merge_segments,
    padded_bbox,
    region_label,
    region_movie_info,
    roi_index,
    roi_metadata,
    segments_metadata,
    to_region_coordinates,
)
from napari_localize.core.simulate import SimulationParameters, simulate_frames


def _area(rects):
    return sum((r[2] - r[0]) * (r[3] - r[1]) for r in rects)


def test_clip_rois_disjoint_union_first_wins():
    rois = [(0, 0, 10, 10), (5, 5, 15, 15), (2, 2, 4, 4), (20, 20, 25, 30)]
    pieces = clip_rois(rois)
    mask = np.zeros((40, 40), int)
    for y0, x0, y1, x1 in pieces:
        mask[y0:y1, x0:x1] += 1
    union = np.zeros((40, 40), bool)
    for y0, x0, y1, x1 in rois:
        union[y0:y1, x0:x1] = True
    assert mask.max() == 1 and np.array_equal(mask > 0, union)  # disjoint, same union
    assert pieces[0] == (0, 0, 10, 10)  # the first ROI keeps the overlap
    assert _area(pieces) == 100 + 100 - 25 + 50
    # a sliver narrower than a box is dropped when asked
    assert clip_rois([(0, 0, 10, 10), (0, 8, 10, 20)], min_size=3) == [(0, 0, 10, 10), (0, 10, 10, 20)]
    assert clip_rois([(0, 0, 10, 10), (0, 0, 10, 11)], min_size=3) == [(0, 0, 10, 10)]


def test_roi_index_and_bad_rois():
    rois = [(0, 0, 10, 10), (0, 10, 10, 20)]
    np.testing.assert_array_equal(roi_index([5, 5, 5, 12], [3, 10, 25, 3], rois), [0, 1, -1, -1])
    with pytest.raises(RegionError, match="ROI 2"):
        check_rois([(0, 0, 5, 5), (0, 0, 50, 5)], 32, 32)
    assert check_rois([[[5, 6], [1, 2]]], 32, 32) == [(1, 2, 5, 6)]  # Picasso's corners, any order


def test_border_spots_are_kept_with_a_padded_crop():
    p = SimulationParameters(n_frames=30, height=64, width=64, spots_per_frame=10, photons=3000, bg=10,
                             baseline=100, min_separation=9, seed=3)
    frames, _ = simulate_frames(p)
    rois = clip_rois([(10, 10, 30, 40), (25, 30, 50, 60)])
    whole = identify(frames, 7, 600)
    ref = whole[roi_index(whole["y"], whole["x"], rois) >= 0]
    y0, x0, y1, x1 = padded_bbox(rois, 7, 64, 64)
    crop = identify(frames[:, y0:y1, x0:x1], 7, 600)
    crop["y"] += y0
    crop["x"] += x0
    got = crop[roi_index(crop["y"], crop["x"], rois) >= 0]
    assert len(ref) > 20
    np.testing.assert_array_equal(np.sort(got, order=["frame", "y", "x"]), np.sort(ref, order=["frame", "y", "x"]))
    # without the padding, spots near the crop border are lost or changed
    tight = identify(frames[:, 10:50, 10:60], 7, 600)
    assert len(tight) != len(ref) or not np.array_equal(tight["net_gradient"], ref["net_gradient"])


def test_merge_segments():
    assert merge_segments([(50, 60), (0, 10), (11, 20), (55, 200)], 100) == [(0, 20), (50, 99)]
    np.testing.assert_array_equal(in_segments([0, 20, 21, 49, 50, 99], [(0, 20), (50, 99)]),
                                  [True, True, False, False, True, True])
    with pytest.raises(RegionError, match="segment 1"):
        merge_segments([(10, 5)], 100)
    with pytest.raises(RegionError, match="only 100 frames"):
        merge_segments([(0, 5), (100, 120)], 100)


def test_region_naming_coordinates_and_metadata():
    assert [region_label(i) for i in range(3)] == ["ref", "ch1", "ch2"]
    locs = np.zeros(2, [("frame", "<u4"), ("x", "<f4"), ("y", "<f4")])
    locs["x"], locs["y"] = (300.5, 310.0), (20.25, 40.0)
    moved = to_region_coordinates(locs, (0, 256, 256, 512))
    np.testing.assert_allclose(moved["x"], [44.5, 54.0])
    np.testing.assert_allclose(moved["y"], [20.25, 40.0])
    info = region_movie_info({"Width": 512, "Height": 256, "Frames": 9}, (0, 256, 256, 512))
    assert info["Width"] == 256 and info["Height"] == 256 and info["Region"] == [[0, 256], [256, 512]]
    assert roi_metadata([(1, 2, 3, 4)]) == [[1, 2], [3, 4]]
    assert roi_metadata([(1, 2, 3, 4), (5, 6, 7, 8)]) == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    assert segments_metadata([(0, 9)]) == [0, 9] and segments_metadata([(0, 9), (20, 29)]) == [[0, 9], [20, 29]]
    assert roi_metadata([]) is None and segments_metadata(None) is None
