"""Brush latency on the canvas: milliseconds per pointer event on a 4096×4096 image (target under 4 ms).

    .venv/bin/python benchmarks/brush.py                       # Qt's offscreen platform
    xvfb-run -a .venv/bin/python benchmarks/brush.py           # an X server (xcb platform)
    .venv/bin/python benchmarks/brush.py --image-size 2048 --sizes 64 --zooms fit --events 200

Each event is a synthetic mouse event sent to the canvas viewport, timed from the send until the event loop
has processed everything it caused: dab stamping into the mask, the overlay's re-colouring of the dirty
rectangle, and the repaint of the dirty viewport region (`processEvents` delivers the posted update request).
Strokes are wavy lines across the image, `--step` viewport pixels between events. For each brush size and zoom
("fit" = the whole image in a 1600×1000 viewport, "1" = 100 %) it prints the median, p95 and max per move
event, and the press and release costs (the release builds the stroke's undo command).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, table  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=4096)
    parser.add_argument("--sizes", default="16,64,256", help="brush diameters in image px")
    parser.add_argument("--zooms", default="fit,1", help='"fit" and/or zoom factors')
    parser.add_argument("--events", type=int, default=300, help="move events per stroke")
    parser.add_argument("--step", type=float, default=6.0, help="viewport px between events")
    parser.add_argument("--hardness", type=float, default=0.5)
    args = parser.parse_args(argv)

    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import numpy as np
    from PySide6.QtCore import QEvent, QPointF, QRectF, QSettings, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    from cascade_studio.ui.canvas import CanvasWidget

    app = QApplication.instance() or QApplication([])
    settings = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "cascade-studio-bench", "brush")
    settings.clear()
    canvas = CanvasWidget(settings)
    canvas.resize(1600, 1000 + canvas.toolbar.sizeHint().height())
    n = args.image_size
    yy, xx = np.mgrid[0:n, 0:n]
    image = np.stack([(xx * 255 // n), (yy * 255 // n), ((xx ^ yy) & 255)], axis=-1).astype(np.uint8)
    canvas.document.set_image(image)
    canvas.show()
    for _ in range(5):
        app.processEvents()
    view, viewport = canvas.view, canvas.view.viewport()
    canvas.brush.set("hardness", args.hardness)
    canvas.brush.set("opacity", 1.0)

    def send(kind, pos: QPointF, button, buttons) -> float:
        event = QMouseEvent(
            kind, pos, view.mapToGlobal(pos.toPoint()).toPointF(), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        start = time.perf_counter()
        QApplication.sendEvent(viewport, event)
        app.processEvents()
        return (time.perf_counter() - start) * 1000

    left, no = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    rows = []
    platform = QApplication.platformName()
    for zoom in args.zooms.split(","):
        for size in (float(s) for s in args.sizes.split(",")):
            canvas.document.clear_mask()
            canvas.document.undo_stack.clear()
            if zoom == "fit":
                view.fit()
            else:
                view.actual_size()
                view.zoom_by(float(zoom))
                view.centerOn(n / 2, n / 2)
            canvas.brush.set("size", size)
            for _ in range(3):  # drain the repaints the reset caused, so they are not timed
                app.processEvents()
            # a wavy stroke over the part of the image that is on screen, back and forth
            visible = view.mapFromScene(QRectF(0, 0, n, n)).boundingRect().intersected(viewport.rect())
            x0, w = visible.left() + 20, visible.width() - 40
            mid, amp = visible.center().y(), visible.height() / 3
            points = []
            for i in range(args.events + 1):
                travel = (i * args.step) % (2 * w)
                x = x0 + (travel if travel < w else 2 * w - travel)
                points.append(QPointF(x, mid + amp * math.sin(i * args.step / 150)))
            press = send(QEvent.Type.MouseButtonPress, points[0], left, left)
            moves = [send(QEvent.Type.MouseMove, p, no, left) for p in points[1:]]
            release = send(QEvent.Type.MouseButtonRelease, points[-1], left, no)
            assert canvas.document.undo_stack.count() == 1 and canvas.document.has_mask()
            rows.append(
                [
                    f"{size:.0f} px @ {zoom if zoom == 'fit' else zoom + '×'} ({view.zoom():.3f})",
                    f"{statistics.median(moves):.2f}",
                    f"{percentile(moves, 0.95):.2f}",
                    f"{max(moves):.2f}",
                    f"{press:.2f}",
                    f"{release:.2f}",
                ]
            )
    print(f"Brush latency, {n}×{n} canvas, {platform} platform, {cpu_model()}, {args.events} move events/stroke,")
    print(f"{args.step:g} viewport px apart, hardness {args.hardness:g}; milliseconds per event (target < 4 ms)\n")
    print(table(["brush", "median", "p95", "max", "press", "release"], rows))
    canvas.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
