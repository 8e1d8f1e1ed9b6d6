"""Write docs/screenshot.png: the napari-localize panel at 1920x1080 with a movie, preview, ROI and a result.

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_screenshot.py
"""

import os
import sys

from napari_localize._napari._demo import screenshot_scene

if __name__ == "__main__":
    import napari

    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "screenshot.png")
    viewer, _ = screenshot_scene(napari.Viewer(title="napari-localize"))
    viewer.screenshot(out, canvas_only=False)
    print(out)
    viewer.close()
