"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
#: the test data committed with the repository (origin and licences: data/LICENSES.md)
DATA = TESTS / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def sample(*parts) -> Path:
    """A real sample file committed under ``tests/data`` (see ``tests/data/LICENSES.md``)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"sample file {path} is missing from the checkout")
    return path


@pytest.fixture(autouse=True)
def _no_user_settings(tmp_path_factory, monkeypatch):
    # keep tests away from the user's config and settings folders
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", os.fspath(home / ".config"))
    monkeypatch.setenv("NAPARI_LOCALIZE_CONFIG_DIR", os.fspath(home / "napari-localize"))
    monkeypatch.setenv("NAPARI_LOCALIZE_IGNORE_PICASSO_CONFIG", "1")
    monkeypatch.delenv("NAPARI_LOCALIZE_CAMERA_CONFIG", raising=False)


def match_truth(locs, truth, radius=1.0):
    """Index of the true spot of the same frame within ``radius`` pixels of each loc (-1 if none)."""
    idx = np.full(len(locs), -1)
    for i, loc in enumerate(locs):
        cand = np.nonzero(truth["frame"] == loc["frame"])[0]
        if len(cand):
            d = np.hypot(truth["x"][cand] - loc["x"], truth["y"][cand] - loc["y"])
            if d.min() < radius:
                idx[i] = cand[d.argmin()]
    return idx


def run_and_wait(qtbot, start, timeout=120_000):
    """Call ``start`` (a widget's bound ``run``/``calibrate``), which starts a real napari thread worker, and
    process Qt events until the widget's finish handler (connected to ``worker.finished``) has run.

    Waiting on the widget's state, not on a blocker connected after the start, cannot miss a fast run's signal.
    Returns the worker, or ``None`` when nothing was started."""
    from napari.qt.threading import WorkerBase

    widget = start.__self__
    worker = start()
    if worker is not None:
        assert isinstance(worker, WorkerBase) and widget.running
        qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    return worker


@pytest.fixture
def lockstep_workers(monkeypatch):
    """Widgets' thread workers wait after every yield until the GUI thread has handled it (every slot
    connected to ``yielded`` has run): a test that cancels on the first progress event then cancels at
    exactly that point, however fast the run. Without it a short run can finish before the queued event
    reaches the GUI, and a test of cancelling would test a race."""
    import threading

    from qtpy.QtCore import QTimer

    from napari_localize._napari import _batch_widget, _widgets, _worker, _zwidget

    real_start = _worker.start_localize

    def start_in_lockstep(gen, on_yield, on_return, on_error, on_finish):
        handled = threading.Event()
        handled.set()  # nothing yielded yet

        def stepped():
            while True:
                assert handled.wait(60), "the GUI thread did not handle a progress event within 60 s"
                try:
                    value = next(gen)
                except StopIteration as finished:
                    return finished.value
                handled.clear()
                yield value

        def on_yield_then_release(value):
            on_yield(value)
            # after the other slots of this emission (their queued calls were posted before this timer)
            QTimer.singleShot(0, handled.set)

        return real_start(stepped(), on_yield_then_release, on_return, on_error, on_finish)

    for module in (_batch_widget, _widgets, _zwidget):
        monkeypatch.setattr(module, "start_localize", start_in_lockstep)
