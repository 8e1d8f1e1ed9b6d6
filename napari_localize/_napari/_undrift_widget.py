"""Undrift dock widget: drift correction (RCC or AIM) of a localization result, with a drift plot.

Works on any Points layer holding localizations (a Localize result, an opened ``_locs.hdf5``). The estimate
runs in a napari thread worker; when done the widget plots the drift (nm against frame), adds the corrected
localizations and their super-resolution render as layers, and, when the source is a file, writes
``<base>_undrift.hdf5`` (+ yaml) and ``<base>_drift.txt`` beside it, as ``napari-localize undrift`` does.
"""

from __future__ import annotations

import os

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info

from ..core.drift import DEFAULT_SEGMENTATION, DriftError
from ..core.render import render
from ..io.locs import get_metadata, load_locs

UNDRIFT_SUFFIX = " undrifted"


def _locs_layers(viewer):
    return [layer for layer in viewer.layers if isinstance(layer, napari.layers.Points)
            and {"frame", "x", "y"} <= set(getattr(layer.features, "columns", []))]


def layer_table(layer) -> tuple[np.ndarray, list[dict], str | None]:
    """``(locs, info, path)`` of a localization layer: the file's full table when it came from one."""
    path = layer.metadata.get("locs_path")
    if path and os.path.isfile(path):
        locs, info = load_locs(path)
        if len(locs) == len(layer.data):
            return locs, info, path
    feats = layer.features
    dtype = []
    for name in feats.columns:
        col = np.asarray(feats[name])
        if col.dtype.kind in "iufb":
            dtype.append((str(name), "<u4" if name == "frame" else col.dtype.str))
    locs = np.zeros(len(feats), dtype)
    for name, _ in dtype:
        locs[name] = np.asarray(feats[name])
    info = list(layer.metadata.get("locs_info") or [])
    if get_metadata(info, "Frames") is None and len(locs):
        info = info + [{"Frames": int(locs["frame"].max()) + 1}]
    return locs, info, path


class UndriftWidget(Container):
    """Layer, method, segmentation, Run; then the drift plot and the corrected layers."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = ComboBox(label="localizations", choices=lambda *_: _locs_layers(self.viewer),
                              nullable=True, tooltip="a Points layer of localizations")
        self.method = ComboBox(label="method", choices=[("RCC (cross-correlation)", "rcc"),
                                                        ("AIM (intersection)", "aim")], value="rcc")
        self.segmentation = SpinBox(label="frames per segment", value=DEFAULT_SEGMENTATION["rcc"], min=1,
                                    max=10**7, tooltip="temporal segment length (RCC 1000, AIM 100 by default)")
        self.run_button = PushButton(text="Undrift")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.layer, self.method, self.segmentation, self.run_button, self.status])
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.native.layout().addWidget(self.canvas)
        self.method.changed.connect(lambda m: setattr(self.segmentation, "value", DEFAULT_SEGMENTATION[m]))
        self.run_button.clicked.connect(self.run)
        self.viewer.layers.events.inserted.connect(lambda *_: self.layer.reset_choices())
        self.viewer.layers.events.removed.connect(lambda *_: self.layer.reset_choices())
        self.worker = None
        self.result = None

    def run(self):
        layer = self.layer.value
        if layer is None:
            show_error("Undrift: choose a layer of localizations first")
            return
        locs, info, path = layer_table(layer)
        method, seg = self.method.value, int(self.segmentation.value)
        from napari.qt.threading import thread_worker

        from ..postprocess import undrift_locs

        @thread_worker(ignore_errors=True, start_thread=False)  # errors go to _failed, not re-raised
        def work():
            return undrift_locs(locs, info, method, seg)

        self.status.value = f"estimating the drift of {len(locs):,} localizations ({method.upper()})..."
        self.run_button.enabled = False
        self.worker = work()
        self.worker.returned.connect(lambda out: self._finished(layer, path, out))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker.start()

    def _failed(self, exc):
        message = str(exc) if isinstance(exc, (DriftError, ValueError)) else f"{type(exc).__name__}: {exc}"
        self.status.value = f"Undrift failed: {message}"
        show_error(f"Undrift: {message}")

    def _finished(self, layer, path, out):
        corrected, info, result = out
        self.result = result
        written = ""
        if path is not None:
            from ..io.locs import save_locs
            from ..postprocess import save_drift, undrift_paths

            h5, txt = undrift_paths(path)
            info[-1]["Drift file"] = os.path.basename(txt)
            info[-1]["From file"] = os.path.basename(path)
            save_drift(txt, result.drift)
            save_locs(h5, corrected, info)
            written = f"; wrote {os.path.basename(h5)} and {os.path.basename(txt)}"
        pixelsize = float(get_metadata(info, "Pixelsize", layer.metadata.get("pixelsize", 130.0)))
        self._plot(result, pixelsize)
        name = layer.name + UNDRIFT_SUFFIX
        coords = np.column_stack([corrected["frame"].astype(float), corrected["y"], corrected["x"]])
        features = {n: np.asarray(corrected[n]) for n in corrected.dtype.names}
        meta = {"locs_info": info, "locs_path": None if path is None else undrift_paths(path)[0],
                "pixelsize": pixelsize, "drift": result.drift}
        if name in self.viewer.layers:
            self.viewer.layers[name].data = coords
            self.viewer.layers[name].features = features
            self.viewer.layers[name].metadata.update(meta)
        else:
            self.viewer.add_points(coords, name=name, features=features, metadata=meta, size=0.6,
                                   border_width=0, out_of_slice_display=False)
        height = get_metadata(info, "Height")
        width = get_metadata(info, "Width")
        if height and width and len(corrected):
            ovs = 5
            image = render(corrected, int(height), int(width), ovs, "gaussian", min_blur=0.5 / ovs)
            render_name = name + " render"
            kwargs = {"scale": (1 / ovs, 1 / ovs), "translate": (-0.5 + 0.5 / ovs, -0.5 + 0.5 / ovs)}
            if render_name in self.viewer.layers:
                self.viewer.layers[render_name].data = image
            else:
                hi = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
                self.viewer.add_image(image, name=render_name, colormap="magma", contrast_limits=(0, hi),
                                      **kwargs)
        d = result.drift * pixelsize
        self.status.value = (f"{result.method.upper()}: drift range x {np.ptp(d[:, 0]):.1f} nm, "
                             f"y {np.ptp(d[:, 1]):.1f} nm over {len(d)} frames{written}")
        show_info(self.status.value)

    def _plot(self, result, pixelsize):
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        frames = np.arange(len(result.drift))
        ax.plot(frames, result.drift[:, 0] * pixelsize, label="x", lw=1)
        ax.plot(frames, result.drift[:, 1] * pixelsize, label="y", lw=1)
        centres = (result.segment_bounds[:-1] + result.segment_bounds[1:] - 1) / 2
        ax.plot(centres, result.segment_drift[:, 0] * pixelsize, ".", ms=3, color="C0")
        ax.plot(centres, result.segment_drift[:, 1] * pixelsize, ".", ms=3, color="C1")
        ax.set_xlabel("frame")
        ax.set_ylabel("drift (nm)")
        ax.legend(loc="best", fontsize=8)
        self.canvas.draw_idle()
