#!/usr/bin/env python
"""Open the bundled sample in napari, segment it with the Segment widget, save a screenshot.

Run under a display (e.g. ``xvfb-run -a .venv/bin/python scripts/napari_screenshot.py``);
writes docs/napari_segment.png for the README.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from qtpy.QtWidgets import QApplication

    import napari
    from cellcut.napari_plugin.io import mesospim_sample
    from cellcut.napari_plugin.widgets import SegmentWidget

    viewer = napari.Viewer(show=True)
    [(data, meta, _)] = mesospim_sample()
    viewer.add_image(data, **meta)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="cellcut: Segment", area="right")
    widget.image.value = meta["name"]
    widget.start()
    t0 = time.time()
    while widget.result is None and time.time() - t0 < 300:
        QApplication.processEvents()
        time.sleep(0.05)
    if widget.result is None:
        sys.exit("segmentation did not finish")
    viewer.dims.set_point(0, data.shape[0] // 2)
    for _ in range(20):
        QApplication.processEvents()
    out = ROOT / "docs" / "napari_segment.png"
    viewer.screenshot(str(out), canvas_only=False)
    print(f"written: {out} ({widget.result.n_cells} cells)")
    viewer.close()


if __name__ == "__main__":
    main()
