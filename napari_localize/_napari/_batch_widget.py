"""Batch dock widget: localize every movie of a folder with the session's parameters, with progress.

Runs in a napari thread worker (the viewer stays responsive), either in this process, movie after movie,
each streamed to its ``_locs.hdf5`` (:func:`~napari_localize.api.localize_steps`), or on a Dask cluster
(``local`` starts a LocalCluster, an address such as ``tcp://host:8786`` uses a running scheduler; see
:mod:`napari_localize.distributed`). A movie that fails is reported and the batch goes on; Cancel stops before
the next chunk (in this process) or the next movie (Dask): finished movies keep their files, the interrupted
one writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import napari
from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, PushButton
from napari.utils.notifications import show_error, show_info

from ..core.pipeline import CancelToken, LocalizeCancelled
from ..io.locs import locs_paths
from ..io.movies import list_movies, open_movie
from ._state import session_for
from ._worker import CancellableRun, start_localize


@dataclass
class BatchEvent:
    """Progress of a batch: movie ``index`` of ``count`` (0-based), frames done in it, and finished rows."""

    index: int
    count: int
    frames_done: int = 0
    frames_total: int = 0
    finished: list = field(default_factory=list)


@dataclass
class BatchOutcome:
    """One movie's result: the ``_locs.hdf5`` written, or why not (``error``), or ``skipped``."""

    path: str
    hdf5_path: str | None = None
    localizations: int | None = None
    error: str | None = None
    skipped: bool = False

    def line(self) -> str:
        name = os.path.basename(self.path)
        if self.skipped:
            return f"{name}: skipped (already localized)"
        if self.error is not None:
            return f"{name}: FAILED: {self.error}"
        return f"{name}: {self.localizations} localizations"


def batch_parameters(p, whole_movies: bool):
    """The session's parameters for a batch: with ``whole_movies`` the ROI and frame range are dropped."""
    return p.replace(roi=None, frame_range=None) if whole_movies else p


def batch_steps(paths, p, cancel: CancelToken, suffix: str = "", skip_existing: bool = False, z=None,
                camera_calibration=None):
    """Generator: localize ``paths`` one after the other in this process, streaming each to disk.

    ``z``: ``(calibration, z_options, calibration_path)`` for 3D (the session's Fit z), None for 2D.
    ``camera_calibration``: sCMOS maps (2D), windowed to each movie; a movie it does not fit fails alone.
    Yields :class:`BatchEvent` after every chunk; returns the list of :class:`BatchOutcome` (``None`` rows
    are never returned: every path gets one). A cancel stops before the next chunk and returns what finished.
    """
    from ..api import camera_maps, localize_steps

    calibration, z_options, calibration_path = z if z is not None else (None, None, None)
    outcomes = []
    count = len(paths)
    for index, path in enumerate(paths):
        hdf5_path, _ = locs_paths(path, suffix)
        if skip_existing and os.path.exists(hdf5_path):
            outcomes.append(BatchOutcome(path, hdf5_path, skipped=True))
            continue
        try:
            with open_movie(path) as movie:
                camera = None if camera_calibration is None else camera_maps(camera_calibration, movie, p)
                steps = localize_steps(movie, p, cancel, output=hdf5_path, calibration=calibration,
                                       z_options=z_options, calibration_path=calibration_path, camera=camera)
                while True:
                    try:
                        done, total = next(steps)
                    except StopIteration as finished:
                        written, stats = finished.value.hdf5_path, finished.value.stats
                        break
                    yield BatchEvent(index, count, done, total, outcomes)
            outcomes.append(BatchOutcome(path, written, stats.localized))
        except LocalizeCancelled:
            return outcomes
        except (ValueError, OSError) as exc:
            outcomes.append(BatchOutcome(path, error=str(exc)))
        yield BatchEvent(index + 1, count, 0, 0, outcomes)
        if cancel.cancelled:
            return outcomes
    return outcomes


def dask_batch_steps(paths, p, cancel: CancelToken, scheduler: str, suffix: str = "", skip_existing: bool = False,
                     z=None):
    """Generator: the same batch on a Dask cluster (3D with ``z``); yields a :class:`BatchEvent` as each movie
    finishes (the movies' blocks are taken as they complete, ``distributed.as_completed``)."""
    from ..distributed import iter_files_distributed

    calibration, z_options, calibration_path = z if z is not None else (None, None, None)
    outcomes = []
    todo = []
    for path in paths:
        hdf5_path, _ = locs_paths(path, suffix)
        if skip_existing and os.path.exists(hdf5_path):
            outcomes.append(BatchOutcome(path, hdf5_path, skipped=True))
        else:
            todo.append(path)
    yield BatchEvent(len(outcomes), len(paths), 0, 0, outcomes)
    try:
        for path, hdf5_path, stats, error in iter_files_distributed(
                todo, p, scheduler, suffix=suffix, calibration=calibration, z_options=z_options,
                calibration_path=calibration_path, cancel=cancel):
            outcomes.append(BatchOutcome(path, hdf5_path, stats.localized if stats is not None else None, error))
            yield BatchEvent(len(outcomes), len(paths), 0, 0, outcomes)
    except LocalizeCancelled:
        pass
    return outcomes


class BatchWidget(CancellableRun, Container):
    """Localize all movies of a folder with the parameters set in the other panels."""

    run_button_idle = ("run_button", "Localize folder")

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.folder = FileEdit(label="folder", mode="d", tooltip="every movie in this folder is localized")
        self.found = Label(label="", value="choose a folder")
        self.suffix = LineEdit(label="suffix", value="", tooltip="added to each output name: <movie><suffix>_locs.hdf5")
        self.whole_movies = CheckBox(text="whole movies (ignore ROI and frame range)", value=True)
        self.skip_existing = CheckBox(text="skip movies already localized", value=False)
        self.scheduler = LineEdit(label="Dask scheduler", value="",
                                  tooltip="empty: here, movie after movie; 'local': a Dask LocalCluster on this "
                                          "computer; tcp://host:port: a running scheduler (e.g. dask-jobqueue)")
        self.run_button = PushButton(text="Localize folder")
        self.status = Label(label="", value="ready")
        self.results = Label(label="", value="")
        self.extend([self.folder, self.found, self.suffix, self.whole_movies, self.skip_existing, self.scheduler,
                     self.run_button, self.status, self.results])
        for label in (self.found, self.status, self.results):
            label.native.setWordWrap(True)
        self.folder.changed.connect(self._on_folder)
        self.run_button.changed.connect(lambda *_: self._run_or_cancel(self.run))
        self.paths: list[str] = []
        self.outcomes: list[BatchOutcome] = []
        self.events: list[BatchEvent] = []
        self.worker = None
        self._cancel = None
        self._pbar = None

    def _on_folder(self, *_):
        folder = os.fspath(self.folder.value)
        if not os.path.isdir(folder):
            self.paths = []
            self.found.value = f"{folder}: not a folder"
            return
        self.paths = list_movies(folder)
        names = [os.path.basename(x) for x in self.paths]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        self.found.value = f"{len(names)} movies: {shown}" if names else "no movie files in this folder"

    def run(self):
        """Start the batch in a thread worker; return it (``None`` if nothing to do)."""
        if self.running:
            return None
        self._on_folder()
        if not self.paths:
            self.status.value = "not started: no movies (choose a folder with movie files)"
            return None
        p = batch_parameters(self.session.parameters, self.whole_movies.value)
        cal = getattr(self.session, "camera_calibration", None)
        if cal is not None and (self.scheduler.value.strip() or self.session.wants_3d()):
            self.status.value = ("not started: the sCMOS calibration is used by 2D runs on this machine only for "
                                 "now (clear the scheduler and Fit z, or the calibration)")
            return None
        self.outcomes = []
        self.events = []
        self._begin_run(len(self.paths), "batch")
        self.status.value = f"localizing {len(self.paths)} movies..."
        self.results.value = ""
        scheduler = self.scheduler.value.strip()
        session = self.session
        z = ((session.zcalibration, session.z_options, session.zcalibration_path) if session.wants_3d()
             else None)
        if scheduler:
            gen = dask_batch_steps(self.paths, p, self._cancel, scheduler, self.suffix.value,
                                   self.skip_existing.value, z)
        else:
            gen = batch_steps(self.paths, p, self._cancel, self.suffix.value, self.skip_existing.value, z, cal)
        self.worker = start_localize(gen, self._on_event, self._on_returned, self._on_error, self._on_finished)
        return self.worker

    def _on_event(self, event: BatchEvent):
        self.events.append(event)
        self._advance(event.index)
        current = os.path.basename(self.paths[event.index]) if event.index < len(self.paths) else ""
        frames = f", {event.frames_done} / {event.frames_total} frames" if event.frames_total else ""
        self.status.value = f"movie {min(event.index + 1, event.count)} of {event.count}: {current}{frames}"
        self.results.value = "\n".join(o.line() for o in event.finished)

    def _on_returned(self, outcomes):
        self.outcomes = list(outcomes)
        failed = sum(o.error is not None for o in self.outcomes)
        written = sum(o.hdf5_path is not None and not o.skipped for o in self.outcomes)
        cancelled = self._cancel is not None and self._cancel.cancelled and len(self.outcomes) < len(self.paths)
        self.results.value = "\n".join(o.line() for o in self.outcomes)
        summary = f"{written} localized, {failed} failed, {sum(o.skipped for o in self.outcomes)} skipped"
        self.status.value = ("cancelled: " if cancelled else "done: ") + summary
        show_info(f"napari-localize batch {self.status.value}")

    def _on_error(self, exc):
        self.status.value = f"failed: {exc}"
        show_error(f"napari-localize: batch failed: {exc}")
