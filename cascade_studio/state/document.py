"""The canvas document: an RGB image, an 8-bit mask, candidates, and one undo stack for every change.

Threading: a `Document` lives in the GUI thread and is only touched there. Jobs get copies
(`image_array()`, `mask_array()`), so a worker never sees the arrays change under it.

Pixel coordinates: (x, y) with (0, 0) the top-left pixel; rectangles are `QRect`s or (x, y, w, h) tuples.
The mask is (H, W) uint8, 255 = masked (repaint), 0 = keep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from PySide6.QtCore import QObject, QRect, QSettings, Signal
from PySide6.QtGui import QColor, QUndoCommand, QUndoStack

from cascade_studio.core import mask as masks
from cascade_studio.core.metadata import save_png_atomic

TILE = 128  # stroke backups are kept per tile, so a stroke copies only what it touches


def _qrect(rect: masks.Rect | None) -> QRect:
    return QRect() if rect is None else QRect(*rect)


class _MaskRegion(QUndoCommand):
    """The mask bytes of one rectangle before and after an edit (a stroke, a fill, invert, grow...)."""

    def __init__(
        self, doc: Document, rect: masks.Rect, before: np.ndarray, after: np.ndarray, text: str, applied: bool = False
    ):
        super().__init__(text)
        self.doc, self.rect, self.before, self.after = doc, rect, before, after
        self._skip_redo = applied  # a stroke is already in the mask when its command is pushed

    def redo(self) -> None:
        if self._skip_redo:
            self._skip_redo = False
            return
        self.doc._write_mask(self.rect, self.after)

    def undo(self) -> None:
        self.doc._write_mask(self.rect, self.before)


class _CanvasChange(QUndoCommand):
    """A whole new image and mask (extend the canvas, replace the image, accept a candidate)."""

    def __init__(self, doc: Document, image: np.ndarray, mask: np.ndarray, text: str):
        super().__init__(text)
        self.doc = doc
        self.old = (doc._image, doc._mask)
        self.new = (image, mask)

    def redo(self) -> None:
        self.doc._replace(*self.new)

    def undo(self) -> None:
        self.doc._replace(*self.old)


class Document(QObject):
    """Image + mask + candidates with undo. Signals: `image_changed` (the image or its size changed; the mask
    was replaced too), `mask_changed(QRect)` (the pixels of that rectangle changed), `candidates_changed`,
    `path_changed(str)`."""

    image_changed = Signal()
    mask_changed = Signal(QRect)
    candidates_changed = Signal()
    path_changed = Signal(str)
    extended = Signal(object)  # masks.Extension: the canvas was just extended (after image_changed)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self.undo_stack.setUndoLimit(100)  # strokes are small; a canvas change holds two whole images
        self._image = np.zeros((0, 0, 3), dtype=np.uint8)
        self._mask = np.zeros((0, 0), dtype=np.uint8)
        self._path = ""
        self._stroke: dict[tuple[int, int], np.ndarray] | None = None
        self._stroke_rect: masks.Rect | None = None
        self._stroke_text = ""
        self._candidates: list[np.ndarray] = []
        self._candidate_index = -1

    # --- reading -----------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self._image.shape[1]

    @property
    def height(self) -> int:
        return self._image.shape[0]

    def is_empty(self) -> bool:
        return self._image.size == 0

    def path(self) -> str:
        return self._path

    def image_array(self) -> np.ndarray:
        """A copy of the image, (H, W, 3) uint8 RGB."""
        return self._image.copy()

    def mask_array(self) -> np.ndarray:
        """A copy of the mask, (H, W) uint8, 255 = masked (repaint)."""
        return self._mask.copy()

    def image_view(self) -> np.ndarray:
        """The live image array, read-only (for drawing; copy it before keeping it)."""
        view = self._image.view()
        view.flags.writeable = False
        return view

    def mask_view(self) -> np.ndarray:
        """The live mask array, read-only (for drawing; copy it before keeping it)."""
        view = self._mask.view()
        view.flags.writeable = False
        return view

    def has_mask(self) -> bool:
        return bool(self._mask.any())

    # --- whole-canvas changes (undoable) -----------------------------------------------------------------
    def set_image(
        self, pixels: np.ndarray, *, keep_mask: bool = False, text: str = "Replace image", path: str | None = None
    ) -> None:
        """Replace the image (undoable). The mask is kept when asked and the size is unchanged, else cleared."""
        image = _as_rgb(pixels)
        h, w = image.shape[:2]
        keep = keep_mask and self._mask.shape == (h, w)
        mask = self._mask.copy() if keep else np.zeros((h, w), dtype=np.uint8)
        self._finish_stroke_if_any()
        self.clear_candidates()
        self.undo_stack.push(_CanvasChange(self, image, mask, text))
        if path is not None:
            self._set_path(path)

    def open(self, path: str | Path) -> None:
        """Load an image file (EXIF orientation applied) as the new canvas; raises OSError/ValueError. Decodes on
        the calling thread: the window decodes on its thread pool (`CanvasWidget.open_path`) and calls
        `set_image`."""
        self.set_image(read_image(path), text=f"Open {Path(path).name}", path=str(path))

    def extend(self, left: int, top: int, right: int, bottom: int, *, snap: bool = True) -> masks.Extension:
        """Outpainting: grow the canvas per side (each growing axis snapped up to the 128 px grid). The new
        area becomes masked; the old mask is kept. One undo step. Returns the extension actually applied."""
        ext = masks.outpaint_geometry(self.width, self.height, left, top, right, bottom, grid=128 if snap else 1)
        if (ext.width, ext.height) == (self.width, self.height):
            return ext
        image, mask = masks.extend(self._image, self._mask, ext)
        self._finish_stroke_if_any()
        self.clear_candidates()
        self.undo_stack.push(_CanvasChange(self, image, mask, "Extend canvas"))
        self.extended.emit(ext)
        return ext

    # --- mask edits (undoable) ---------------------------------------------------------------------------
    def set_mask(self, mask: np.ndarray, text: str = "Set mask") -> None:
        mask = np.asarray(mask, dtype=np.uint8)
        if mask.shape != self._mask.shape:
            raise ValueError(f"mask {mask.shape} does not match the canvas {self._mask.shape}")
        self._push_mask_edit(mask, text)

    def invert_mask(self) -> None:
        self._push_mask_edit(masks.invert(self._mask), "Invert mask")

    def clear_mask(self) -> None:
        self._push_mask_edit(np.zeros_like(self._mask), "Clear mask")

    def grow_mask(self, pixels: int) -> None:
        """Grow (> 0) or shrink (< 0) the mask by a disc of |pixels| px."""
        self._push_mask_edit(masks.grow(self._mask, pixels), "Grow mask" if pixels >= 0 else "Shrink mask")

    def shrink_mask(self, pixels: int) -> None:
        self.grow_mask(-pixels)

    def feather_mask(self, radius: float) -> None:
        self._push_mask_edit(masks.feather(self._mask, radius), "Feather mask")

    def fill_rect(self, rect: QRect | masks.Rect, erase: bool = False) -> None:
        r = (rect.x(), rect.y(), rect.width(), rect.height()) if isinstance(rect, QRect) else rect
        after, box = masks.fill_rect(self._mask, r, 0 if erase else 255)
        self._push_region(box, after, "Erase rectangle" if erase else "Fill rectangle")

    def fill_polygon(self, points: Sequence[tuple[float, float]], erase: bool = False) -> None:
        after, box = masks.fill_polygon(self._mask, points, 0 if erase else 255)
        self._push_region(box, after, "Erase lasso" if erase else "Fill lasso")

    # --- strokes: many dabs, one undo step ---------------------------------------------------------------
    def begin_stroke(self, text: str = "Brush stroke") -> None:
        self._finish_stroke_if_any()
        self._stroke = {}
        self._stroke_rect = None
        self._stroke_text = text

    def stamp(self, dabs: Iterable[tuple[np.ndarray, int, int, float]], erase: bool = False) -> QRect:
        """Stamp dabs `(dab, centre_x, centre_y, amount)` into the mask within the current stroke; emits
        `mask_changed` once for the rectangle they touched and returns it."""
        if self._stroke is None:
            self.begin_stroke()
        assert self._stroke is not None
        touched: masks.Rect | None = None
        h, w = self._mask.shape
        for dab, cx, cy, amount in dabs:
            half = dab.shape[0] // 2
            box = masks.clip_rect((cx - half, cy - half, dab.shape[1], dab.shape[0]), w, h)
            if box is None:
                continue
            self._backup(box)
            masks.stamp(self._mask, dab, cx, cy, amount, erase)
            touched = masks.union_rect(touched, box)
        if touched is None:
            return QRect()
        self._stroke_rect = masks.union_rect(self._stroke_rect, touched)
        rect = _qrect(touched)
        self.mask_changed.emit(rect)
        return rect

    def end_stroke(self) -> None:
        """Close the stroke: one undo command holding only the changed rectangle's bytes before and after."""
        tiles, rect, text = self._stroke, self._stroke_rect, self._stroke_text
        self._stroke, self._stroke_rect = None, None
        if not tiles or rect is None:
            return
        x, y, w, h = rect
        after = self._mask[y : y + h, x : x + w].copy()
        before = after.copy()
        for (tx, ty), saved in tiles.items():
            sx0, sy0 = max(tx, x), max(ty, y)
            sx1, sy1 = min(tx + saved.shape[1], x + w), min(ty + saved.shape[0], y + h)
            if sx1 > sx0 and sy1 > sy0:
                before[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = saved[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        box = masks.changed_box(before, after)
        if box is None:
            return
        bx, by, bw, bh = box
        region = (x + bx, y + by, bw, bh)
        self.undo_stack.push(
            _MaskRegion(
                self,
                region,
                before[by : by + bh, bx : bx + bw].copy(),
                after[by : by + bh, bx : bx + bw].copy(),
                text,
                applied=True,
            )
        )

    def is_stroking(self) -> bool:
        return self._stroke is not None

    # --- candidates: results shown on the canvas until accepted or discarded ------------------------------
    def add_candidate(self, pixels: np.ndarray, *, band: int | None = None) -> int:
        """Add a generated result (same size as the canvas) as a candidate and show it; returns its index.

        With `band` the result is first composited over the current image through the current mask with a
        transition band of that many px (pixels outside mask + band stay exactly as they are)."""
        result = _as_rgb(pixels)
        if result.shape != self._image.shape:
            raise ValueError(f"candidate {result.shape} does not match the canvas {self._image.shape}")
        if band is not None:
            result = masks.composite(self._image, result, self._mask, band)
        self._candidates.append(result)
        self._candidate_index = len(self._candidates) - 1
        self.candidates_changed.emit()
        return self._candidate_index

    def candidate_count(self) -> int:
        return len(self._candidates)

    def candidate_index(self) -> int:
        """The candidate shown now, -1 for none."""
        return self._candidate_index

    def current_candidate(self) -> np.ndarray | None:
        return self._candidates[self._candidate_index] if self._candidates else None

    def show_candidate(self, index: int) -> None:
        if self._candidates:
            self._candidate_index = index % len(self._candidates)
            self.candidates_changed.emit()

    def next_candidate(self) -> None:
        self.show_candidate(self._candidate_index + 1)

    def previous_candidate(self) -> None:
        self.show_candidate(self._candidate_index - 1)

    def accept_candidate(self) -> None:
        """Make the shown candidate the image (one undo step; the mask stays) and drop all candidates."""
        chosen = self.current_candidate()
        if chosen is None:
            return
        self.clear_candidates()
        self._finish_stroke_if_any()
        self.undo_stack.push(_CanvasChange(self, chosen, self._mask.copy(), "Accept candidate"))

    def discard_candidate(self) -> None:
        if not self._candidates:
            return
        del self._candidates[self._candidate_index]
        self._candidate_index = min(self._candidate_index, len(self._candidates) - 1)
        self.candidates_changed.emit()

    def clear_candidates(self) -> None:
        if self._candidates:
            self._candidates.clear()
            self._candidate_index = -1
            self.candidates_changed.emit()

    # --- files ---------------------------------------------------------------------------------------------
    def save_image(self, path: str | Path) -> Path:
        written = save_png_atomic(path, Image.fromarray(self._image, "RGB"), {})
        self._set_path(str(written))
        return written

    def save_mask(self, path: str | Path) -> Path:
        return save_png_atomic(path, Image.fromarray(self._mask, "L"), {})

    # --- internals -----------------------------------------------------------------------------------------
    def _set_path(self, path: str) -> None:
        if path != self._path:
            self._path = path
            self.path_changed.emit(path)

    def _finish_stroke_if_any(self) -> None:
        if self._stroke is not None:
            self.end_stroke()

    def _backup(self, box: masks.Rect) -> None:
        assert self._stroke is not None
        x, y, w, h = box
        for ty in range(y // TILE * TILE, y + h, TILE):
            for tx in range(x // TILE * TILE, x + w, TILE):
                if (tx, ty) not in self._stroke:
                    self._stroke[(tx, ty)] = self._mask[ty : ty + TILE, tx : tx + TILE].copy()

    def _push_mask_edit(self, after: np.ndarray, text: str) -> None:
        self._finish_stroke_if_any()
        box = masks.changed_box(self._mask, after)
        if box is not None:
            self._push_region(box, after, text)

    def _push_region(self, box: masks.Rect, after: np.ndarray, text: str) -> None:
        self._finish_stroke_if_any()
        x, y, w, h = box
        if w <= 0 or h <= 0:
            return
        before = self._mask[y : y + h, x : x + w].copy()
        new = after[y : y + h, x : x + w].copy()
        if np.array_equal(before, new):
            return
        self.undo_stack.push(_MaskRegion(self, box, before, new, text))

    def _write_mask(self, rect: masks.Rect, values: np.ndarray) -> None:
        x, y, w, h = rect
        self._mask[y : y + h, x : x + w] = values
        self.mask_changed.emit(QRect(x, y, w, h))

    def _replace(self, image: np.ndarray, mask: np.ndarray) -> None:
        # Commands keep their arrays; the document works on its own copy of the mask (strokes write in place).
        self._image = image
        self._mask = mask.copy()
        self.image_changed.emit()
        self.mask_changed.emit(QRect(0, 0, self.width, self.height))


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 4) uint8 array, got {array.dtype} {array.shape}")
    rgb = np.ascontiguousarray(array[:, :, :3])
    if rgb is array or rgb.base is array:
        rgb = rgb.copy()
    rgb.flags.writeable = False  # shared with undo commands: never edited in place
    return rgb


class BrushSettings(QObject):
    """The canvas tool settings, remembered in a QSettings (group "canvas") whenever one changes.

    Signal `settings_changed(str)` names the setting that changed."""

    settings_changed = Signal(str)

    DEFAULTS = {
        "tool": "brush",  # brush | eraser | rectangle | lasso | frame
        "size": 64.0,  # px (diameter)
        "hardness": 0.7,  # 0 = soft falloff from the centre, 1 = hard edge
        "opacity": 1.0,  # the strongest mask value a dab lays down
        "pressure_size": True,
        "pressure_opacity": False,
        "shape_erase": False,  # rectangle / lasso erase instead of fill
        "mask_color": "#ff3366",
        "mask_opacity": 0.5,
    }
    MIN_SIZE, MAX_SIZE = 1.0, 2000.0

    def __init__(self, settings: QSettings | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._settings = settings
        self._values = dict(self.DEFAULTS)
        if settings is not None:
            for key, default in self.DEFAULTS.items():
                raw = settings.value(f"canvas/{key}", None)
                if raw is not None:
                    with contextlib.suppress(TypeError, ValueError):  # a hand-edited value: keep the default
                        self._values[key] = _coerce(raw, default)
        self._values["size"] = self._clamp_size(self._values["size"])

    def get(self, key: str):
        return self._values[key]

    def set(self, key: str, value) -> None:
        value = _coerce(value, self.DEFAULTS[key])
        if key == "size":
            value = self._clamp_size(value)
        elif key in ("hardness", "opacity", "mask_opacity"):
            value = min(1.0, max(0.0, value))
        elif key == "mask_color" and not QColor(value).isValid():
            return
        if self._values[key] == value:
            return
        self._values[key] = value
        if self._settings is not None:
            self._settings.setValue(f"canvas/{key}", value)
        self.settings_changed.emit(key)

    def _clamp_size(self, value: float) -> float:
        return min(self.MAX_SIZE, max(self.MIN_SIZE, float(value)))

    # convenience properties for the common ones
    tool = property(lambda self: self._values["tool"], lambda self, v: self.set("tool", v))
    size = property(lambda self: self._values["size"], lambda self, v: self.set("size", v))
    hardness = property(lambda self: self._values["hardness"], lambda self, v: self.set("hardness", v))
    opacity = property(lambda self: self._values["opacity"], lambda self, v: self.set("opacity", v))


def _coerce(raw, default):
    # QSettings' INI backend hands everything back as strings.
    if isinstance(default, bool):
        if isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return bool(raw)
    if isinstance(default, float):
        return float(raw)
    return str(raw)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array with its EXIF orientation applied; raises OSError/ValueError
    (PIL's decompression-bomb error included)."""
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB")).copy()
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from None
