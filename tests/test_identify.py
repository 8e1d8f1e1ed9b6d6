"""Identification: Picasso's net gradient and box-maximum rule, with symmetric edges and ROI."""

import math

import numpy as np
import pytest

from napari_localize.core.identify import identify
from napari_localize.core.simulate import expected_image


def hand_net_gradient(img, i, j, r):
    """The net gradient written out from its definition, pixel by pixel, in plain Python."""
    img = np.asarray(img, float)
    h, w = img.shape
    total = 0.0
    for k in range(i - r, i + r + 1):
        for m in range(j - r, j + r + 1):
            if (k, m) == (i, j):
                continue
            gy = img[min(k + 1, h - 1), m] - img[max(k - 1, 0), m]
            gx = img[k, min(m + 1, w - 1)] - img[k, max(m - 1, 0)]
            d = math.hypot(i - k, j - m)
            total += gy * (i - k) / d + gx * (j - m) / d
    return total


def test_net_gradient_matches_hand_computation():
    rng = np.random.default_rng(3)
    img = rng.poisson(expected_image(21, 23, [10.3], [9.6], [5000], 1.1, 1.1, 30)).astype(np.uint16)
    ids = identify(img, 7, 0.0)
    assert len(ids) >= 1
    for row in ids:
        expected = hand_net_gradient(img, row["y"], row["x"], 3)
        assert row["net_gradient"] == pytest.approx(expected, rel=1e-5)
    brightest = ids[np.argmax(ids["net_gradient"])]
    assert (brightest["y"], brightest["x"]) == (10, 10)


def test_simple_peak_values():
    # a single bright pixel of height 100 on zero: the 8 neighbours each see a gradient of 100 pointing inwards
    img = np.zeros((11, 11), np.float32)
    img[5, 5] = 100
    ids = identify(img, 5, 0.0)
    assert len(ids) == 1
    # neighbours: 4 edge-adjacent at distance 1 (gradient 100 along the unit vector) and 4 diagonal
    # ones with gradient 0 (both neighbours used by the central difference are zero): 4 * 100
    assert ids["net_gradient"][0] == pytest.approx(400.0)
    assert hand_net_gradient(img, 5, 5, 2) == pytest.approx(400.0)


def test_threshold_is_strict():
    img = np.zeros((11, 11), np.float32)
    img[5, 5] = 100
    assert len(identify(img, 5, 399.9)) == 1
    assert len(identify(img, 5, 400.0)) == 0


def test_plateau_yields_first_pixel_in_row_major_order():
    img = np.zeros((15, 15), np.float32)
    img[6:8, 6:8] = 50  # a flat 2x2 top
    ids = identify(img, 5, 0.0)
    assert [(r["y"], r["x"]) for r in ids] == [(6, 6)]
    assert len(identify(np.full((15, 15), 7.0, np.float32), 5, -1e9)) == 0  # flat frame: no maximum


def test_spots_at_every_edge_found_without_wraparound():
    # spots centred exactly r pixels from each border, plus a bright last row and column: with Picasso's
    # wrap-around the bottom row would leak into the top spot's gradient; here each spot keeps its own value.
    h = w = 32
    r = 3
    centres = [(r, 16), (h - 1 - r, 16), (16, r), (16, w - 1 - r)]
    img = expected_image(h, w, [c[1] for c in centres], [c[0] for c in centres], [4000] * 4, 1.0, 1.0, 10)
    img = img.astype(np.float32)
    single = identify(img, 7, 500.0)
    found = {(int(a["y"]), int(a["x"])) for a in single}
    assert found == set(centres)
    img2 = img.copy()
    img2[-1, :] += 5000
    img2[:, -1] += 5000
    ng1 = {(int(a["y"]), int(a["x"])): a["net_gradient"] for a in single}
    ng2 = {(int(a["y"]), int(a["x"])): a["net_gradient"] for a in identify(img2, 7, 500.0)}
    assert ng2[(r, 16)] == pytest.approx(ng1[(r, 16)], rel=1e-5)
    assert ng2[(16, r)] == pytest.approx(ng1[(16, r)], rel=1e-5)


def test_roi_keeps_spots_centred_inside_even_near_its_border():
    img = expected_image(40, 40, [10, 30, 20], [10, 30, 21], [4000] * 3, 1.0, 1.0, 10).astype(np.float32)
    all_ids = identify(img, 7, 500.0)
    assert len(all_ids) == 3
    # the ROI edge sits one pixel from the spot at (10, 10): Picasso's crop would lose it
    ids = identify(img, 7, 500.0, roi=(9, 9, 22, 22))
    assert {(int(a["y"]), int(a["x"])) for a in ids} == {(10, 10), (21, 20)}
    assert len(identify(img, 7, 500.0, roi=(11, 11, 20, 20))) == 0


def test_frames_and_offsets():
    img = expected_image(20, 20, [10], [10], [4000], 1.0, 1.0, 10).astype(np.float32)
    stack = np.stack([img, np.zeros_like(img) + 10, img])
    ids = identify(stack, 7, 500.0, first_frame=100)
    assert list(ids["frame"]) == [100, 102]


def test_even_box_rejected():
    with pytest.raises(ValueError, match="odd"):
        identify(np.zeros((10, 10)), 6, 0)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_the_range_bound_never_rejects_a_box_maximum_that_passes(r):
    """The identification's first test rejects a box maximum ``v`` when ``s * (v - min) + rounding`` cannot
    exceed the threshold (``range_bound_factors``). It must bound the net gradient of every patch whose centre
    is the largest pixel of its box, whatever the ring holds: checked against the net gradient written out
    from its definition on seeded random patches (noise, spots, bright neighbours in the ring, plateaus),
    and it must reject flat noise maxima (or it saves nothing)."""
    from napari_localize.core.identify import range_bound_factors

    s, _ = range_bound_factors(r)
    rng = np.random.default_rng(r)
    n = 2 * r + 3
    c = r + 1
    tight = []
    for trial in range(400):
        kind = trial % 4
        patch = rng.poisson(20.0, (n, n)).astype(float)
        if kind == 1:  # a spot at the centre
            patch += expected_image(n, n, [c + rng.uniform(-0.5, 0.5)], [c + rng.uniform(-0.5, 0.5)],
                                    [rng.uniform(100, 5000)], 1.0, 1.0, 0.0)
        elif kind == 2:  # bright light in the ring only
            patch[0, :] += rng.uniform(0, 500, n)
            patch[:, -1] += rng.uniform(0, 500, n)
        elif kind == 3:  # a plateau: ties with the centre
            patch[1:-1, 1:-1] = np.minimum(patch[1:-1, 1:-1], 25.0)
        box = patch[1:-1, 1:-1]
        patch[c, c] = max(patch[c, c], box.max())  # the centre is the box maximum
        v = patch[c, c]
        ng = hand_net_gradient(patch, c, c, r)
        bound = s * (v - patch.min())
        assert ng <= bound + 1e-9 * max(1.0, abs(bound)), (trial, ng, bound)
        if kind == 0:
            tight.append(bound)
    # noise maxima (Poisson 20): the bound sits far below a spot's net gradient of thousands
    assert np.median(tight) < 50 * s
