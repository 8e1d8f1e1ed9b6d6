"""Super-resolution rendering, checked against numpy's histogram and the Gaussian's moments."""

import numpy as np
import pytest

from napari_localize.core.locs import locs_dtype
from napari_localize.core.render import render


def _locs(x, y, lpx=0.1, lpy=0.1):
    locs = np.zeros(len(x), locs_dtype("lq"))
    locs["x"], locs["y"], locs["lpx"], locs["lpy"] = x, y, lpx, lpy
    return locs


@pytest.mark.parametrize("oversampling", [1, 4, 7])
def test_histogram_matches_numpy_histogram2d(oversampling):
    rng = np.random.default_rng(1)
    height, width = 20, 30
    x = rng.uniform(-0.5, width - 0.5, 5000)
    y = rng.uniform(-0.5, height - 0.5, 5000)
    image = render(_locs(x, y), height, width, oversampling, "histogram")
    # camera pixel i spans [i - 0.5, i + 0.5): super-resolution edges every 1/oversampling from -0.5
    y_edges = np.arange(height * oversampling + 1) / oversampling - 0.5
    x_edges = np.arange(width * oversampling + 1) / oversampling - 0.5
    expected, _, _ = np.histogram2d(y, x, bins=(y_edges, x_edges))
    assert image.shape == (height * oversampling, width * oversampling)
    np.testing.assert_array_equal(image, expected)


def test_histogram_drops_outside_and_nan():
    image = render(_locs([-0.6, 3.0, np.nan, 10.6], [1.0, 1.0, 1.0, 1.0]), 4, 10, 2, "histogram")
    assert image.sum() == 1
    # x = 3.0, y = 1.0 -> super-resolution pixel (y, x) = ((1 + 0.5) * 2, (3 + 0.5) * 2) = (3, 7)
    assert image[3, 7] == 1


def test_gaussian_integral_centre_and_width():
    x, y, lpx, lpy, ovs = 15.3, 9.8, 0.4, 0.7, 10
    image = render(_locs([x], [y], lpx, lpy), 20, 30, ovs, "gaussian").astype(float)
    assert image.sum() == pytest.approx(1.0, abs=1e-4)
    rows, cols = np.indices(image.shape)
    # centre of super-resolution pixel k in camera pixels: (k + 0.5) / ovs - 0.5
    yc = (rows + 0.5) / ovs - 0.5
    xc = (cols + 0.5) / ovs - 0.5
    mean_x, mean_y = (image * xc).sum(), (image * yc).sum()
    assert mean_x == pytest.approx(x, abs=1e-3)
    assert mean_y == pytest.approx(y, abs=1e-3)
    # pixel integration adds (1/ovs)^2 / 12 to the variance
    var_x = (image * (xc - mean_x) ** 2).sum()
    var_y = (image * (yc - mean_y) ** 2).sum()
    assert var_x == pytest.approx(lpx**2 + 1 / (12 * ovs**2), rel=0.03)
    assert var_y == pytest.approx(lpy**2 + 1 / (12 * ovs**2), rel=0.03)


def test_gaussian_min_blur_floor():
    ovs = 10
    sharp = render(_locs([5.0], [5.0], 0.001, 0.001), 10, 10, ovs, "gaussian", min_blur=0.3)
    rows, cols = np.indices(sharp.shape)
    xc = (cols + 0.5) / ovs - 0.5
    var_x = (sharp * (xc - 5.0) ** 2).sum() / sharp.sum()
    assert var_x == pytest.approx(0.3**2 + 1 / (12 * ovs**2), rel=0.03)


def test_roi_offsets_the_field():
    image = render(_locs([12.0], [7.0]), 20, 30, 2, "histogram", roi=(5, 10, 9, 16))
    assert image.shape == (8, 12)
    # (y, x) = (7, 12) is (2, 2) camera pixels into the ROI -> super-resolution pixel (5, 5)
    assert image[5, 5] == 1 and image.sum() == 1


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="render method"):
        render(_locs([1.0], [1.0]), 4, 4, 2, "splat")
    with pytest.raises(ValueError, match="oversampling"):
        render(_locs([1.0], [1.0]), 4, 4, 0, "histogram")
    with pytest.raises(ValueError, match="empty render field"):
        render(_locs([1.0], [1.0]), 4, 4, 2, "histogram", roi=(2, 2, 2, 3))
