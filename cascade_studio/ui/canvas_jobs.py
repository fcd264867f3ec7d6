"""Work the window hands to the thread pool around canvas jobs, so the GUI thread never waits on the disk or
on torch: writing the canvas's image and mask as a job's input files, decoding a finished result to become a
candidate, and computing the canny edge layer exactly as the engine does.

Each task reports through a `TaskSignals` object owned by the window or the canvas (queued into the GUI thread); a
ticket lets the owner drop answers it no longer wants. `DecodeImage` also opens files onto the canvas.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, QRunnable, Signal

from ..core.gallery import HIDDEN_DIR
from ..core.metadata import save_png_atomic
from ..state.document import read_image

INPUTS_DIR = "inputs"


def inputs_folder(output_dir: str | Path) -> Path:
    """Where the window keeps the canvas images and masks that requests refer to."""
    return Path(output_dir).expanduser() / HIDDEN_DIR / INPUTS_DIR


def input_path(folder: Path, kind: str) -> Path:
    """A new, unique file name for one input (`kind`: source, mask, control)."""
    return folder / f"{uuid.uuid4().hex[:16]}-{kind}.png"


class TaskSignals(QObject):
    saved = Signal(int, str)  # ticket, error message ("" when every file was written)
    decoded = Signal(int, object, str)  # ticket, (H, W, 3) uint8 array or None, error message
    edges = Signal(int, object, str)  # ticket, (H, W) uint8 edge map at the canvas size or None, error message


class SaveInputs(QRunnable):
    """Write arrays as PNGs (atomically): `files` maps a path to an (H, W, 3) RGB or (H, W) mask array."""

    def __init__(self, ticket: int, files: dict[Path, np.ndarray], signals: TaskSignals):
        super().__init__()
        self.ticket, self.files, self.signals = ticket, files, signals

    def run(self) -> None:
        error = ""
        try:
            for path, array in self.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                save_png_atomic(path, Image.fromarray(array, "RGB" if array.ndim == 3 else "L"), {})
        except (OSError, ValueError) as exc:
            error = f"Cannot write the canvas for this job: {exc}"
        with contextlib.suppress(RuntimeError):  # the window was closed meanwhile
            self.signals.saved.emit(self.ticket, error)


class DecodeImage(QRunnable):
    def __init__(self, ticket: int, path: str, signals: TaskSignals):
        super().__init__()
        self.ticket, self.path, self.signals = ticket, path, signals

    def run(self) -> None:
        try:
            pixels, error = read_image(self.path), ""
        except (OSError, ValueError) as exc:
            pixels, error = None, f"Cannot read {self.path}: {exc}"
        with contextlib.suppress(RuntimeError):
            self.signals.decoded.emit(self.ticket, pixels, error)


class CannyEdges(QRunnable):
    """The edges the canny ControlNet will see for `pixels` generated at `size`: the engine's own procedure
    (`pipeline.control`: resize to the EfficientNet input size, the reference CannyFilter), shown at the
    canvas size. Imports torch and cv2 here, on a pool thread."""

    def __init__(self, ticket: int, pixels: np.ndarray, size: tuple[int, int], signals: TaskSignals):
        super().__init__()
        self.ticket, self.pixels, self.size, self.signals = ticket, pixels, size, signals

    def run(self) -> None:
        try:
            edges, error = canny_layer(self.pixels, *self.size), ""
        except Exception as exc:  # noqa: BLE001 - cv2 missing, out of memory: say so, keep the window alive
            edges, error = None, f"Cannot compute the edges: {exc}"
        with contextlib.suppress(RuntimeError):
            self.signals.edges.emit(self.ticket, edges, error)


def canny_layer(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) uint8 edges of an (H, W, 3) uint8 picture as a `width` × `height` canny job computes them."""
    import torch
    import torch.nn.functional as F

    from ..core.geometry import effnet_input_size
    from ..pipeline.control import canny_edges, resize_image

    h, w = pixels.shape[:2]
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    ew, eh = effnet_input_size(width, height)
    edges = canny_edges(resize_image(image, ew, eh))
    shown = F.interpolate(edges, size=(h, w), mode="bilinear")
    return shown[0, 0].clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
