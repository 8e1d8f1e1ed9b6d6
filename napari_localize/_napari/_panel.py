"""One dock for the whole workflow: movie + identification (preview, ROI) -> camera -> fit -> 3D -> run -> results.

The settings sections scroll (so the dock fits a 1366x768 laptop as well as 1920x1080); the run section
(Localize / Cancel, progress bar, status, files) stays pinned below them, always on screen. The folder batch is
the second tab. Every section is the same dock widget that is also available on its own in the Plugins menu,
all bound to the viewer's one :class:`~._state.LocalizeSession`.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

#: (title, attribute) of the scrolling settings sections, in workflow order
SECTIONS = (
    ("1  Movie and identification", "identify"),
    ("2  Camera (photon conversion)", "photon"),
    ("3  Fit", "fit"),
    ("4  3D (astigmatism)", "z"),
)
PANEL_TITLE = "napari-localize"
#: the dock's width: the longest labels (units included) and fields side by side
PANEL_WIDTH = 430


def _group(title: str, widget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(widget.native)
    return box


class LocalizePanel(QWidget):
    """The whole workflow in one dock widget (npe2 widget contribution ``napari-localize.panel``).

    Attributes ``identify``, ``photon``, ``fit``, ``z``, ``localize`` and ``batch`` are the section widgets;
    :attr:`widgets` has them by their stand-alone dock titles.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        from ._batch_widget import BatchWidget
        from ._widgets import FitWidget, IdentifyWidget, LocalizeWidget, PhotonWidget, warm_up_kernels
        from ._zwidget import ZWidget

        self.viewer = napari_viewer
        self.identify = IdentifyWidget(napari_viewer)
        self.photon = PhotonWidget(napari_viewer)
        self.fit = FitWidget(napari_viewer)
        self.z = ZWidget(napari_viewer)
        self.localize = LocalizeWidget(napari_viewer)
        self.batch = BatchWidget(napari_viewer)
        self.widgets = {"Identification": self.identify, "Photon conversion": self.photon, "Fit": self.fit,
                        "Localize": self.localize, ZWidget.title: self.z, "Batch (folder)": self.batch}

        sections = QWidget()
        column = QVBoxLayout(sections)
        column.setContentsMargins(2, 2, 2, 2)
        for title, name in SECTIONS:
            column.addWidget(_group(title, getattr(self, name)))
        column.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setWidget(sections)

        localize_tab = QWidget()
        tab_layout = QVBoxLayout(localize_tab)
        tab_layout.setContentsMargins(0, 0, 0, 0)
        tab_layout.addWidget(self.scroll, 1)
        self.run_section = _group("5  Run and results", self.localize)
        # never squeezed below its content (wrapped status lines included): the settings above scroll instead
        self.run_section.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        tab_layout.addWidget(self.run_section, 0)

        batch_scroll = QScrollArea()
        batch_scroll.setWidgetResizable(True)
        batch_scroll.setFrameShape(QFrame.NoFrame)
        batch_scroll.setWidget(self.batch.native)

        self.tabs = QTabWidget()
        self.tabs.addTab(localize_tab, "Localize a movie")
        self.tabs.addTab(batch_scroll, "Batch (folder)")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(PANEL_WIDTH)
        # a dock taller than the screen would push the Run button off it: the sections scroll instead
        self.setMinimumHeight(0)
        sections.setMinimumWidth(PANEL_WIDTH - 30)
        # compile the numba kernels while the user opens a movie and tunes the parameters
        self.warmup_thread = warm_up_kernels()

    def show_section(self, name: str):
        """Scroll the settings so that section ``name`` (an attribute, e.g. ``"z"``) is on screen."""
        self.tabs.setCurrentIndex(0)
        self.scroll.ensureWidgetVisible(getattr(self, name).native)


def dock_panel(viewer) -> LocalizePanel:
    """Dock the one panel on the right of ``viewer`` and reset the view to the layers."""
    panel = LocalizePanel(viewer)
    viewer.window.add_dock_widget(panel, name=PANEL_TITLE, area="right", tabify=False)
    viewer.reset_view()  # the dock narrowed the canvas: fit the layers again
    return panel
