"""The prompt panel's LoRA list: one row per Stage C LoRA of `SessionModel.loras`, and an "Add LoRA…" menu.

The model is the source of truth: a row's weight or remove button sets `session.loras`, and `loras_changed`
redraws the rows (only when names or order changed: a weight change just updates its spin box, so the one
being typed in keeps its focus). The menu lists `<models dir>/lora/*.safetensors` each time it opens; a LoRA
whose file is not found is shown flagged. Nothing here imports torch (listing is `core.paths`).
<lora:name:weight> tags in the prompt still work: they are not moved into the list, only mentioned under it.
A row whose file names trigger words or training tags (`core.lora_info`, read on the thread pool) gets an "Aa"
menu that adds them to the prompt. A row is flagged, as a missing file is, when the file's keys are not a Stable
Cascade LoRA's or its width says it was made for the other Stage C than the Model box's (`LoraInfo.problem`,
`LoraInfo.variant`): Generate would stop on it with an error.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from PySide6.QtCore import QMetaObject, QObject, QRunnable, Qt, QThreadPool, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QPainter
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.lora_info import LoraInfo, read_lora_info
from ..core.paths import LORA_SUFFIX, find_lora_file, list_loras, lora_candidates, lora_folder
from ..core.request import (
    LORA_TAG_FORMS,
    MAX_LORA_WEIGHT,
    MAX_LORAS,
    LoraUse,
    split_lora_tags,
    unread_lora_tags,
)
from ..state.session import SessionModel

WEIGHT_STEP = 0.05
HINT_COLOUR = "#9aa0a6"


def lora_label(name: str) -> str:
    """What a row shows: the file stem of a path, the name itself otherwise."""
    path = Path(name)
    return path.stem if path.suffix.lower() == LORA_SUFFIX or path.is_absolute() else name


class _ElidedLabel(QLabel):
    """A one-line label that ends in "…" when it is narrower than its text (`text()` stays whole)."""

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideMiddle, rect.width())
        align = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        self.style().drawItemText(painter, rect, align, self.palette(), self.isEnabled(), text, self.foregroundRole())


class _InfoSignals(QObject):
    read = Signal(str, object, object)  # path, its (mtime_ns, size), LoraInfo or the error's text


class _ReadInfo(QRunnable):
    """Read one LoRA file's header on the thread pool (`core.lora_info.read_lora_info`)."""

    def __init__(self, path: Path, stamp: tuple[int, int], signals: _InfoSignals):
        super().__init__()
        self.path, self.stamp, self.signals = path, stamp, signals

    def run(self) -> None:
        try:
            info: LoraInfo | str = read_lora_info(self.path)
        except (OSError, ValueError) as exc:
            info = str(exc)
        with contextlib.suppress(RuntimeError):  # the list was closed during the read
            self.signals.read.emit(str(self.path), self.stamp, info)


def _weight_spin(value: float, tip: str, name: str) -> QDoubleSpinBox:
    """A LoRA weight box: ±MAX_LORA_WEIGHT in steps of WEIGHT_STEP, committed on Return or focus-out."""
    spin = QDoubleSpinBox()
    spin.setRange(-MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)
    spin.setSingleStep(WEIGHT_STEP)
    spin.setDecimals(2)
    spin.setKeyboardTracking(False)
    spin.setValue(value)
    spin.setToolTip(tip)
    spin.setAccessibleName(name)
    return spin


class LoraRow(QWidget):
    """One LoRA: [warning] name, [words], weight, remove; under it, for a file with a text-encoder part (or a use
    that sets its weight), "text encoder" and that part's weight, under the weight. Signals carry nothing but the
    value or word: the list knows the row's index.

    The text-encoder weight follows the weight until it is set apart, and setting it back to the weight joins them
    again (A1111's and ComfyUI's default is one strength for both)."""

    weight_edited = Signal(float)
    text_weight_edited = Signal(float)
    remove_requested = Signal()
    word_chosen = Signal(str)  # a trigger word or tag (or several, comma-separated) to add to the prompt

    def __init__(self, use: LoraUse, parent: QWidget | None = None):
        super().__init__(parent)
        name = self.name = use.name
        self.icon = QLabel()
        size = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
        self.icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning).pixmap(size))
        self.icon.setFixedWidth(size)
        self.label = _ElidedLabel(lora_label(name))
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # long names elide
        self.label.setMinimumWidth(40)
        self.weight_spin = _weight_spin(
            use.weight,
            f"Strength of {lora_label(name)}: 1 as trained, 0 off, negative inverts it",
            f"{lora_label(name)} weight",
        )
        self.text_spin = _weight_spin(
            use.text,
            f"Strength of {lora_label(name)}'s text-encoder part (how the prompt is read).\n"
            "Follows the weight until you change it; set it to the weight to join them again.",
            f"{lora_label(name)} text encoder weight",
        )
        self.text_label = QLabel("text encoder")
        self.text_label.setToolTip(self.text_spin.toolTip())
        self.text_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.text_label.setStyleSheet(f"color: {HINT_COLOUR};")
        self.text_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # no wider a row
        self.has_text_part = False
        self.text_weight = use.text_weight
        self.remove_button = QToolButton(text="✕")
        self.remove_button.setToolTip(f"Remove {lora_label(name)} from the list")
        self.remove_button.setAccessibleName(f"Remove LoRA {lora_label(name)}")
        self.words_button = QToolButton(text="Aa")
        self.words_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.words_button.setAccessibleName(f"Trigger words of {lora_label(name)}")
        self.words_menu = QMenu(self.words_button)
        self.words_menu.setToolTipsVisible(True)
        self.words_button.setMenu(self.words_menu)
        self.words_button.hide()
        self.weight_spin.valueChanged.connect(self.weight_edited)
        self.text_spin.valueChanged.connect(self.text_weight_edited)
        self.remove_button.clicked.connect(self.remove_requested)

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setVerticalSpacing(2)
        grid.addWidget(self.icon, 0, 0)
        grid.addWidget(self.label, 0, 1)
        grid.addWidget(self.words_button, 0, 2)
        grid.addWidget(self.weight_spin, 0, 3)
        grid.addWidget(self.remove_button, 0, 4)
        grid.addWidget(self.text_label, 1, 0, 1, 3)
        grid.addWidget(self.text_spin, 1, 3)
        grid.setColumnStretch(1, 1)
        self._show_text_spin()
        self.missing = False
        self.warning: str | None = None
        self.set_found(None, [])

    def set_found(self, path: Path | None, looked: list[Path]) -> None:
        self.path = path
        self.missing = path is None and bool(looked)
        self._flag(self.missing)
        if self.missing:
            where = ", ".join(str(p) for p in looked)
            tip = f"{self.name}: not found in {where}. Generate will stop with an error until it is there."
        else:
            tip = str(path) if path is not None else self.name
        self._path_tip = tip
        self.label.setToolTip(tip)
        self.icon.setToolTip(tip)
        self.setAccessibleName(f"LoRA {lora_label(self.name)}" + (" (file not found)" if self.missing else ""))
        if path is None:
            self.set_info(None)

    def _flag(self, flagged: bool) -> None:
        """The warning icon and a red name: the file is missing, or a job would refuse it."""
        self.icon.setVisible(flagged)
        self.label.setStyleSheet("color: #ff6b6b;" if flagged else "")

    def set_info(self, info: LoraInfo | str | None, variant: str | None = None) -> None:
        """What the file says about itself (or why it could not be read): in the name's tooltip, and the "Aa"
        menu of its trigger words and training tags. The row is flagged when the file cannot be read, its keys are
        not a Stable Cascade LoRA's, or it was made for the other Stage C than ``variant`` (the Model box's)."""
        lines = [self._path_tip]
        warning = None
        if isinstance(info, str):
            warning = f"Could not read its header: {info}.\nGenerate will stop with an error."
        elif info is not None:
            if info.title and info.title != lora_label(self.name):
                lines.insert(0, info.title)
            if info.trigger_words:
                lines.append("Trigger words: " + ", ".join(info.trigger_words))
            if info.tags:
                lines.append("Training tags, most frequent first: " + ", ".join(info.tags))
            if info.problem:
                warning = f"Not usable: {info.problem}.\nGenerate will stop with an error."
            elif other := info.made_for_other(variant):
                warning = (
                    f"Made for Stage C {other} ({info.width} wide), but the Model box is set to {variant}:\n"
                    f"Generate will stop with an error. Choose {other.capitalize()} or remove this LoRA."
                )
            else:
                if info.changes:
                    lines.append("Changes: " + ", ".join(info.changes))
                if info.variant:
                    lines.append(f"Made for Stage C {info.variant} ({info.width} wide)")
        if warning:
            lines.append(warning)
            self.setAccessibleName(f"LoRA {lora_label(self.name)} (will stop Generate: see its tooltip)")
        self.warning = warning
        self._flag(self.missing or warning is not None)
        self.label.setToolTip("\n".join(lines))
        self.has_text_part = isinstance(info, LoraInfo) and "text encoder" in info.changes
        self._show_text_spin()
        self.words_menu.clear()
        words = info.words if isinstance(info, LoraInfo) else ()
        self.words_button.setVisible(bool(words))
        if not words:
            return
        self.words_button.setToolTip(
            f"Add {lora_label(self.name)}'s trigger words or training tags to the prompt:\n" + ", ".join(words)
        )
        triggers = info.trigger_words
        if len(triggers) > 1:
            every = self.words_menu.addAction("All trigger words")
            every.triggered.connect(lambda: self.word_chosen.emit(", ".join(triggers)))
        for heading, group in (("Trigger words", triggers), ("Training tags", words[len(triggers) :])):
            if group:
                self.words_menu.addSection(heading)
            for word in group:
                action = self.words_menu.addAction(word)
                action.setToolTip(f"Add “{word}” to the prompt")
                action.triggered.connect(lambda _=False, w=word: self.word_chosen.emit(w))

    def set_use(self, use: LoraUse) -> None:
        """Show ``use``'s weights (without signalling an edit)."""
        for spin, value in ((self.weight_spin, use.weight), (self.text_spin, use.text)):
            if spin.value() != round(value, spin.decimals()):
                spin.blockSignals(True)
                spin.setValue(value)
                spin.blockSignals(False)
        self.text_weight = use.text_weight
        self._show_text_spin()

    @property
    def shows_text_weight(self) -> bool:
        return self.has_text_part or self.text_weight is not None

    def _show_text_spin(self) -> None:
        self.text_spin.setVisible(self.shows_text_weight)
        self.text_label.setVisible(self.shows_text_weight)


class LoraList(QWidget):
    """Rows for `session.loras`, then the "Add LoRA…" button; takes one button's height when empty."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._session: SessionModel | None = None
        self._connections: list[QMetaObject.Connection] = []
        self._models_dir: Path | None = None
        self.rows: list[LoraRow] = []
        # What each file says about itself, by path: (its (mtime_ns, size) when read, LoraInfo or error text).
        self._infos: dict[str, tuple[tuple[int, int], LoraInfo | str]] = {}
        self._reading: set[tuple[str, tuple[int, int]]] = set()
        self._menu_actions: dict[str, QAction] = {}  # the Add menu's file entries by path, while it is built
        self._info_signals = _InfoSignals(self)
        self._info_signals.read.connect(self._info_read)

        self.rows_box = QVBoxLayout()
        self.rows_box.setContentsMargins(0, 0, 0, 0)
        self.rows_box.setSpacing(2)
        self.menu = QMenu(self)
        self.menu.setToolTipsVisible(True)
        self.menu.aboutToShow.connect(self.refresh_menu)
        self.add_button = QPushButton("Add LoRA…")
        self.add_button.setMenu(self.menu)
        self.add_button.setToolTip(
            "Add a Stage C LoRA from the models folder's lora/ folder. Prompt tags such as <lora:name:0.8> work "
            "too; they add to this list."
        )
        self.add_button.setAccessibleName("Add LoRA")
        self.tags_hint = QLabel(wordWrap=True)
        self.tags_hint.setStyleSheet(f"color: {HINT_COLOUR};")
        self.tags_hint.setToolTip("<lora:…> tags in the prompt add these LoRAs; edit them in the prompt")
        self.tags_hint.hide()
        # Tags in no form we read (in the warning colour: they add no LoRA), shown as typed, never as markup.
        self.unread_hint = QLabel(objectName="note", wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.unread_hint.setToolTip(f"Tags read: {LORA_TAG_FORMS}")
        self.unread_hint.hide()

        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addLayout(self.rows_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addStretch()
        column.addLayout(buttons)
        column.addWidget(self.tags_hint)
        column.addWidget(self.unread_hint)

    # -- the folder and the model ----------------------------------------------------------------------

    @property
    def models_dir(self) -> Path | None:
        return self._models_dir

    def set_models_dir(self, models_dir: str | Path | None) -> None:
        self._models_dir = Path(models_dir).expanduser() if models_dir else None
        self.refresh_found()

    @property
    def session(self) -> SessionModel | None:
        return self._session

    @session.setter
    def session(self, session: SessionModel) -> None:
        for connection in self._connections:
            QObject.disconnect(connection)
        self._connections.clear()
        self._session = session
        self._connections.append(session.loras_changed.connect(self._show_loras))
        self._connections.append(session.prompt_changed.connect(self._show_tags))
        self._connections.append(session.variant_changed.connect(lambda _: self.refresh_found()))
        self._show_loras(session.loras)
        self._show_tags(session.prompt)

    def _show_loras(self, loras) -> None:
        if [row.name for row in self.rows] == [use.name for use in loras]:
            for row, use in zip(self.rows, loras, strict=True):
                row.set_use(use)
        else:
            self._rebuild(loras)
        self.add_button.setEnabled(len(loras) < MAX_LORAS)

    def _rebuild(self, loras) -> None:
        focus = self.focusWidget()
        focused = next((i for i, row in enumerate(self.rows) if focus and row.isAncestorOf(focus)), None)
        for row in self.rows:
            self.rows_box.removeWidget(row)
            row.hide()
            row.deleteLater()
        self.rows = []
        for index, use in enumerate(loras):
            row = LoraRow(use, self)
            row.weight_edited.connect(lambda value, i=index: self._set_weight(i, value))
            row.text_weight_edited.connect(lambda value, i=index: self._set_weight(i, value, text=True))
            row.remove_requested.connect(lambda i=index: self._remove(i))
            row.word_chosen.connect(self.add_to_prompt)
            self.rows_box.addWidget(row)
            row.show()  # now, not at the layout's deferred show: the row is there once the model has changed
            self.rows.append(row)
        self.refresh_found()
        if focused is not None:  # a removed row's focus goes to the next row's remove button, or Add
            target = self.rows[min(focused, len(self.rows) - 1)].remove_button if self.rows else self.add_button
            target.setFocus()
        if self.rows:
            QWidget.setTabOrder(self.rows[-1].remove_button, self.add_button)

    def refresh_found(self) -> None:
        """Flag the rows whose file is missing (looked up as the engine does); show what the found ones say about
        themselves, reading a file's header on the thread pool when it is new or has changed."""
        for row in self.rows:
            if self._models_dir is None:
                row.set_found(None, [])
                continue
            path = find_lora_file(row.name, self._models_dir)
            row.set_found(path, lora_candidates(row.name, self._models_dir))
            info = self._info(path) if path is not None else None
            if info is not None:
                row.set_info(info, self._variant())

    def _info(self, path: Path) -> LoraInfo | str | None:
        """What the file at ``path`` says about itself if read since it last changed; else None, and a read is
        started on the thread pool (:meth:`_info_read` shows it where it belongs)."""
        try:
            stat = path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        known = self._infos.get(str(path))
        if known is not None and known[0] == stamp:
            return known[1]
        if (str(path), stamp) not in self._reading:
            self._reading.add((str(path), stamp))
            QThreadPool.globalInstance().start(_ReadInfo(path, stamp, self._info_signals))
        return None

    def _info_read(self, path: str, stamp: tuple[int, int], info: LoraInfo | str) -> None:
        self._reading.discard((path, stamp))
        self._infos[path] = (stamp, info)
        for row in self.rows:
            if row.path is not None and str(row.path) == path:
                row.set_info(info, self._variant())
        action = self._menu_actions.get(path)
        if action is not None:
            with contextlib.suppress(RuntimeError):  # the menu was rebuilt and the action deleted meanwhile
                self._mark(action, path, info)

    def _mark(self, action: QAction, path: str, info: LoraInfo | str) -> None:
        """Say in the Add menu when a file would stop Generate: not a Stable Cascade LoRA, or made for the other
        Stage C than the Model box's."""
        name = action.data()
        variant = self._variant()
        if isinstance(info, str) or info.problem:
            action.setText(f"{name}  — not usable")
            action.setToolTip(f"{path}\n{info if isinstance(info, str) else info.problem}")
        elif other := info.made_for_other(variant):
            action.setText(f"{name}  — for {other.capitalize()}")
            action.setToolTip(f"{path}\nMade for Stage C {other}; the Model box is set to {variant}")

    def _variant(self) -> str | None:
        return self._session.variant if self._session is not None else None

    def add_to_prompt(self, words: str) -> None:
        """Append ``words`` (comma-separated) to the prompt, leaving out any it already contains."""
        if self._session is None:
            return
        prompt = self._session.prompt

        def present(word: str) -> bool:  # as a whole word or phrase, in any case
            return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE) is not None

        new = [w.strip() for w in words.split(",") if w.strip() and not present(w.strip())]
        if new:
            self._session.prompt = ", ".join([prompt.rstrip().rstrip(","), *new] if prompt.strip() else new)

    def _set_weight(self, index: int, weight: float, text: bool = False) -> None:
        """Set row ``index``'s weight (``text``: its text-encoder weight, which then is its own until set back to
        the weight). A text weight that follows the weight keeps following it."""
        if self._session is None or index >= len(self._session.loras):
            return
        loras = list(self._session.loras)
        use = loras[index]
        if text:
            use = use._replace(text_weight=None if float(weight) == use.weight else float(weight))
        else:
            text_weight = None if use.text_weight == float(weight) else use.text_weight
            use = use._replace(weight=float(weight), text_weight=text_weight)
        loras[index] = use
        self._session.loras = tuple(loras)

    def _remove(self, index: int) -> None:
        if self._session is not None and index < len(self._session.loras):
            self._session.loras = self._session.loras[:index] + self._session.loras[index + 1 :]

    def add(self, name: str, weight: float = 1.0) -> None:
        """Append `name` (a file stem in the LoRA folder, or a path); a LoRA already listed is not added twice."""
        session = self._session
        if session is None or len(session.loras) >= MAX_LORAS or any(u.name == name for u in session.loras):
            return
        session.loras = (*session.loras, LoraUse(name, float(weight)))
        self.rows[-1].weight_spin.setFocus()

    def _show_tags(self, prompt: str) -> None:
        tags, unread = split_lora_tags(prompt)[1], unread_lora_tags(prompt)
        text = ", ".join(f"{lora_label(use.name)} {use.describe()}" for use in tags)
        self.tags_hint.setText(f"From prompt tags: {text}" if tags else "")
        self.tags_hint.setVisible(bool(tags))
        self.unread_hint.setText(f"Not read, stays in the prompt as text: {', '.join(unread)}" if unread else "")
        self.unread_hint.setVisible(bool(unread))

    # -- the menu --------------------------------------------------------------------------------------

    def refresh_menu(self) -> None:
        """Fill the menu from the LoRA folder now (so files added while the app runs show up)."""
        self.menu.clear()
        self.refresh_found()
        listed = {use.name for use in self._session.loras} if self._session is not None else set()
        folder = lora_folder(self._models_dir) if self._models_dir is not None else None
        names = list_loras(self._models_dir) if self._models_dir is not None else []
        self._menu_actions = {}
        for name in names:
            action = self.menu.addAction(name)
            action.setData(name)
            path = folder / f"{name}{LORA_SUFFIX}"
            action.setToolTip(str(path))
            self._menu_actions[str(path)] = action
            info = self._info(path)
            if info is not None:
                self._mark(action, str(path), info)
            if name in listed:
                action.setCheckable(True)
                action.setChecked(True)
                action.setEnabled(False)
            else:
                action.triggered.connect(lambda _=False, n=name: self.add(n))
        if not names:
            empty = QAction(f"No LoRA files in {folder}" if folder else "No models folder set", self.menu)
            empty.setEnabled(False)
            empty.setToolTip(f"Put Stage C LoRA files ({LORA_SUFFIX}) in {folder}; this menu lists them when it "
                             "opens" if folder else "Choose a models folder in the preferences")  # fmt: skip
            self.menu.addAction(empty)
            if folder is not None:
                where = QAction(f"Put {LORA_SUFFIX} files there; they show up here", self.menu)
                where.setEnabled(False)
                self.menu.addAction(where)
        self.menu.addSeparator()
        other = self.menu.addAction("Other file…")
        other.setToolTip("Add a LoRA file from anywhere (by its path)")
        other.triggered.connect(self.choose_file)
        if folder is not None:
            opener = self.menu.addAction("Open LoRA folder")
            opener.setToolTip(f"Show {folder} in the file manager (it is made if missing)")
            opener.triggered.connect(self.open_folder)

    def choose_file(self) -> None:
        start = str(lora_folder(self._models_dir)) if self._models_dir is not None else ""
        path, _ = QFileDialog.getOpenFileName(self, "LoRA file", start, f"LoRA files (*{LORA_SUFFIX})")
        if path:
            self.add_file(path)

    def add_file(self, path: str | Path) -> None:
        """Append the LoRA file at ``path``: by name when it is in the LoRA folder (as the menu adds it), else by
        path."""
        path = Path(path)
        folder = lora_folder(self._models_dir) if self._models_dir is not None else None
        inside = folder is not None and path.parent == folder and path.suffix == LORA_SUFFIX
        self.add(path.stem if inside else str(path))

    def open_folder(self) -> None:
        if self._models_dir is None:
            return
        folder = lora_folder(self._models_dir)
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def rows_missing(self) -> list[str]:
        return [row.name for row in self.rows if row.missing]
