"""Screenshots of the canvas for the docs: paint a mask, inpaint, accept; extend the canvas, outpaint.

Drives the real window on the demo weights (their images are noise: the point is the workflow) and writes
docs/canvas-inpaint.png and docs/canvas-outpaint.png, each two window captures stacked (before Generate,
then the candidate on the canvas), 1200 px wide and quantized. Run it under a virtual display:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/canvas_screenshots.py
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs"
WIDTH = 1200


def landscape(path: Path, width: int = 640, height: int = 448) -> Path:
    """A simple picture to paint on: sky, sun, hills, a lake."""
    ys = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([70, 120, 200]) * (1 - ys) + np.array([250, 200, 150]) * ys).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy(), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((440, 60, 520, 140), fill=(255, 230, 150))
    draw.polygon([(0, 300), (150, 190), (300, 280), (460, 170), (640, 290), (640, 448), (0, 448)], fill=(60, 110, 70))
    draw.polygon([(0, 360), (200, 300), (420, 350), (640, 320), (640, 448), (0, 448)], fill=(40, 85, 55))
    draw.rectangle((0, 390, 640, 448), fill=(60, 100, 150))
    image.filter(ImageFilter.GaussianBlur(1.2)).save(path)
    return path


def main() -> int:
    from PySide6.QtCore import QEvent, QPoint, QPointF, QSettings, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from cascade_studio.app import create_application
    from cascade_studio.state.settings import Settings
    from cascade_studio.ui.main_window import MainWindow

    app = create_application([])
    work = Path(tempfile.mkdtemp(prefix="cascade-shots-"))
    settings = Settings(QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat),
                        models_dir_default=work / "models", output_dir_default=work / "out")  # fmt: skip
    window = MainWindow(settings, demo=True)
    window.resize(1600, 1000)
    window.show()

    def wait(condition, timeout: float = 300.0) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError("the window did not get there in time")
            app.processEvents()
            time.sleep(0.01)

    def settle(seconds: float = 0.4) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    def grab() -> Image.Image:
        QApplication.sendEvent(window.canvas.view, QEvent(QEvent.Type.Leave))  # no brush outline in the picture
        settle()
        image = window.grab().toImage()
        path = work / f"grab-{time.monotonic_ns()}.png"
        image.save(str(path))
        return Image.open(path).convert("RGB")

    def stroke(points) -> None:
        view = window.canvas.view
        viewport = view.viewport()

        def vp(x, y):
            exact = view.viewportTransform().map(QPointF(x + 0.5, y + 0.5))
            return QPoint(math.floor(exact.x()), math.floor(exact.y()))

        QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, vp(*points[0]))
        for a, b in zip(points, points[1:], strict=False):
            for t in np.linspace(0, 1, 8)[1:]:
                QTest.mouseMove(viewport, vp(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t))
        QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, vp(*points[-1]))

    wait(lambda: window.service is not None, 30)
    doc, session = window.canvas.document, window.session
    window.send_to_canvas(str(landscape(work / "landscape.png")))
    wait(lambda: doc.path().endswith("landscape.png"), 10)  # decoded on the thread pool
    settle()
    session.prompt = "a red hot-air balloon above the hills, evening light"
    session.negative = "blurry"
    session.steps_c, session.steps_b = 6, 3
    session.set_size(640, 512)
    session.seed_policy, session.seed = "fixed", 42
    session.mode = "inpaint"
    session.mask_grow = 4
    session.context = "mask"
    canvas = window.canvas
    canvas.brush.set("tool", "brush")
    canvas.brush.set("size", 70)
    canvas.brush.set("hardness", 0.8)
    stroke([(250, 120), (275, 100), (305, 115), (310, 160), (285, 200), (260, 175), (250, 140)])
    stroke([(270, 140), (290, 150)])
    window.prompt_panel.show_mask_check.setChecked(True)  # the effective mask and the context box
    painted = grab()
    window.prompt_panel.show_mask_check.setChecked(False)

    window.generate()
    wait(lambda: doc.candidate_count() >= 1)
    session.seed = 43
    window.generate()  # a second candidate to step through
    wait(lambda: doc.candidate_count() >= 2)
    doc.previous_candidate()
    wait(lambda: window.queue_panel.model.running_job() < 0, 60)
    candidate = grab()
    stack(painted, candidate, DOCS / "canvas-inpaint.png")

    doc.accept_candidate()
    doc.clear_mask()  # only the new area is generated
    session.mode = "outpaint"
    session.outpaint = (0, 0, 320, 0)
    window.prompt_panel.extend_button.click()
    extended = grab()
    window.generate()
    wait(lambda: doc.candidate_count() >= 1)
    wait(lambda: window.queue_panel.model.running_job() < 0, 60)
    outpainted = grab()
    stack(extended, outpainted, DOCS / "canvas-outpaint.png")

    window.close()
    QApplication.processEvents()
    return 0


def stack(top: Image.Image, bottom: Image.Image, path: Path) -> None:
    """Two captures one above the other, WIDTH px wide, with a thin divider; quantized PNG."""
    scale = WIDTH / top.width
    a = top.resize((WIDTH, round(top.height * scale)), Image.Resampling.LANCZOS)
    b = bottom.resize((WIDTH, round(bottom.height * scale)), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (WIDTH, a.height + b.height + 6), (51, 204, 255))
    out.paste(a, (0, 0))
    out.paste(b, (0, a.height + 6))
    out.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB, {out.width}×{out.height}")


if __name__ == "__main__":
    sys.exit(main())
