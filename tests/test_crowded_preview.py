"""The live preview shows a circle per fitted emitter (several per box in crowded fields), in a real viewer."""

import numpy as np
import pytest

from napari_localize.core.simulate import expected_image

pytestmark = pytest.mark.gui


def test_preview_circles_per_emitter(make_napari_viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_LOCALIZE_SYNC", "1")
    from napari_localize._napari._widgets import dock_all
    from napari_localize.io.movies import movie_info

    rng = np.random.default_rng(1)
    # frame 1: an isolated spot and a pair 2 px apart (one identified box for the pair)
    xs, ys = [10.0, 30.2, 32.2], [10.0, 30.0, 30.3]
    frames = np.stack([rng.poisson(expected_image(48, 48, xs, ys, [3000.0] * 3, 1.0, 1.0, 10.0)) + 100
                       for _ in range(3)]).astype(np.uint16)
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="movie", metadata={"movie_info": movie_info(frames.shape, frames.dtype, None),
                                                     "movie_path": None})
    w = dock_all(viewer)
    ident = w["Identification"]
    ident.session.update(baseline=100.0, min_net_gradient=2000.0)
    viewer.dims.set_current_step(0, 1)
    ident.preview.value = True
    assert ident.preview_controller.last_count == 2
    circles = viewer.layers["emitters (preview)"]
    yx = np.asarray(circles.data)
    assert len(yx) == 3
    d = np.hypot(yx[:, None, 1] - np.array(xs)[None], yx[:, None, 0] - np.array(ys)[None])
    assert (d.min(axis=0) < 0.2).all()
    assert "3 emitters fitted" in ident.count.value
    # one emitter per box: no circles
    w["Fit"].max_emitters.value = 1
    ident.preview_controller.refresh()
    assert len(viewer.layers["emitters (preview)"].data) == 0
