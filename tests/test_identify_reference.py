"""The fast identification kernel against a plain-numpy reference of the same rule, on simulated movies.

The reference is written straight from the definition (``core/identify.py`` docstring): a pixel is kept if it is
the first maximum, in row-major order, of the box centred on it, the box lies inside the frame (and its centre in
the ROI), and its net gradient -- computed on the frame as float32, with replicate padding, summed box pixel by box
pixel in row-major order -- is strictly above the threshold. Summing in that order in float32 makes the
reference's net gradient the same number, bit for bit, as the kernel's, so everything is compared for equality.
"""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import napari_localize.core.identify as identify_module
from napari_localize.core.identify import identify
from napari_localize.core.simulate import SimulationParameters, simulate_movie


def reference_net_gradients(frames, box):
    """Net gradient of every interior box centre, shape (n, h - 2r, w - 2r), float32."""
    f = np.asarray(frames, np.float32)
    n, h, w = f.shape
    r = box // 2
    padded = np.pad(f, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gy = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
    gx = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    ng = np.zeros((n, h - 2 * r, w - 2 * r), np.float32)
    for a in range(box):
        for b in range(box):
            if a == r and b == r:
                continue
            dy, dx = np.float32(r - a), np.float32(r - b)
            d = np.float32(np.sqrt(dy * dy + dx * dx))
            gyw = gy[:, a:a + h - 2 * r, b:b + w - 2 * r]
            gxw = gx[:, a:a + h - 2 * r, b:b + w - 2 * r]
            ng += (gyw * dy + gxw * dx) / d
    return ng


def reference_box_maxima(frames, box):
    """True where an interior pixel is the first maximum (row-major) of its box, shape (n, h - 2r, w - 2r)."""
    f = np.asarray(frames, np.float32)
    r = box // 2
    windows = sliding_window_view(f, (box, box), axis=(1, 2))
    centre = windows[..., r, r][..., None, None]
    before = np.zeros((box, box), bool)
    before[:r] = True
    before[r, :r] = True
    not_exceeded = np.all(windows <= centre, axis=(-2, -1))
    tie_before = np.any((windows == centre) & before, axis=(-2, -1))
    return not_exceeded & ~tie_before


def reference_identify(frames, box, min_ng, roi=None):
    f = np.asarray(frames, np.float32)
    if f.ndim == 2:
        f = f[None]
    n, h, w = f.shape
    r = box // 2
    ng = reference_net_gradients(f, box)
    keep = reference_box_maxima(f, box) & (ng > np.float32(min_ng))
    if roi is not None:
        y0, x0, y1, x1 = roi
        rows = np.arange(r, h - r)[:, None]
        cols = np.arange(r, w - r)[None, :]
        keep &= (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    frame, i, j = np.nonzero(keep)
    return frame, i + r, j + r, ng[frame, i, j]


def assert_same(frames, box, min_ng, roi=None, first_frame=0):
    got = identify(frames, box, min_ng, roi, first_frame)
    frame, y, x, ng = reference_identify(frames, box, min_ng, roi)
    assert len(got) == len(frame)
    np.testing.assert_array_equal(got["frame"], frame + first_frame)
    np.testing.assert_array_equal(got["y"], y)
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["net_gradient"], ng)  # bit for bit
    return got


def movie(**kw):
    defaults = dict(n_frames=12, height=64, width=80, spots_per_frame=10, poisson_count=True, seed=5)
    defaults.update(kw)
    frames, _ = simulate_movie(SimulationParameters(**defaults))
    return frames


@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64", "int16", "uint8"])
def test_same_as_reference_for_every_dtype(dtype):
    frames = movie(photons=1500, seed=1)
    if dtype == "uint8":
        frames = np.clip(frames.astype(int) - 60, 0, 255)
    frames = frames.astype(dtype)
    if dtype.startswith("float"):
        frames = frames + np.random.default_rng(0).uniform(0, 1, frames.shape).astype(dtype)  # few ties
    got = assert_same(frames, 7, 600.0)
    assert len(got) > 50
    assert_same(frames, 7, -np.inf)  # every box maximum, noise included


@pytest.mark.parametrize("box", [3, 5, 7, 9, 11])
def test_same_as_reference_for_every_box(box):
    frames = movie(spots_per_frame=25, min_separation=0.0, seed=box)  # crowded: overlapping spots
    assert len(assert_same(frames, box, 300.0)) > 20
    assert_same(frames, box, -np.inf)


def test_thresholds_at_exact_net_gradients():
    # thresholds equal to (and one float32 step around) the net gradients of real maxima: the kernel's
    # shortcut estimate must never decide differently from the exact float32 value
    frames = movie(photons=800, photon_spread=0.6, seed=9)
    _, _, _, ng = reference_identify(frames, 7, -np.inf)
    picks = np.quantile(ng, [0.5, 0.9, 0.97, 0.99, 0.999]).astype(np.float32)
    for value in picks:
        exact = ng[np.argmin(np.abs(ng - value))]
        for t in (np.nextafter(exact, np.float32(-np.inf)), exact, np.nextafter(exact, np.float32(np.inf))):
            assert_same(frames, 7, float(t))


def test_plateaus_and_flat_regions():
    # saturated spots have flat tops (ties everywhere) and the clipped background is flat too
    frames = movie(photons=6000, seed=3)
    flat_tops = np.minimum(frames, 400).astype(np.uint16)
    got = assert_same(flat_tops, 7, 100.0)
    assert len(got) > 20
    assert_same(np.maximum(frames, 125).astype(np.uint16), 7, -np.inf)
    assert len(assert_same(np.full((3, 20, 20), 7, np.uint16), 5, -np.inf)) == 0


def test_many_row_blocks_per_frame(monkeypatch):
    # small blocks: block borders cut through spots, and the threads share the blocks of one frame
    frames = movie(n_frames=3, height=150, width=170, spots_per_frame=60, seed=4)
    reference = assert_same(frames, 7, 500.0)
    monkeypatch.setattr(identify_module, "BLOCK_PIXELS", 64)
    assert identify_module.block_rows_for(170) == 8
    got = assert_same(frames, 7, 500.0)
    np.testing.assert_array_equal(got, reference)
    assert_same(frames[0], 9, -np.inf)


def test_roi_and_offsets():
    frames = movie(spots_per_frame=20, seed=6)
    for roi in [(0, 0, 64, 80), (3, 3, 61, 77), (10, 20, 40, 50), (-5, -5, 12, 100), (30, 30, 31, 31)]:
        assert_same(frames, 7, 400.0, roi=roi, first_frame=1000)
    assert len(identify(frames, 7, 400.0, roi=(70, 0, 80, 80))) == 0  # ROI below the frame


def test_nan_pixels_never_give_spots_but_do_not_hide_others():
    frames = movie(photons=3000, seed=8).astype(np.float32)
    frames[:, 10:12, 10:60] = np.nan
    frames[2, 40, 40] = np.nan
    got = assert_same(frames, 7, 500.0)
    assert len(got) > 30
    assert np.all(np.isfinite(got["net_gradient"]))


def test_non_contiguous_and_2d_input():
    frames = movie(n_frames=4, seed=2)
    view = frames[:, ::-1, :][:, :, 5:]
    assert_same(view, 7, 500.0)
    assert_same(frames[1], 7, 500.0)


def test_box_too_small_rejected():
    with pytest.raises(ValueError, match="at least 3"):
        identify(np.zeros((10, 10), np.uint16), 1, 0)


def test_float_data_far_from_zero():
    # large float32 values: differences round, the estimate's error bound must still hold
    frames = movie(photons=2500, seed=11).astype(np.float32) * np.float32(3.7) + np.float32(2.0e6)
    got = assert_same(frames, 7, 3000.0)
    assert len(got) > 30
    _, _, _, ng = reference_identify(frames, 7, -np.inf)
    for t in np.quantile(ng, [0.95, 0.99]).astype(np.float32):
        assert_same(frames, 7, float(t))
