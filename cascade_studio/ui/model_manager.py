"""The model manager: which weight files each variant needs, which are here (and where), and downloading
the missing ones with per-file progress, cancel, and a token field when Hugging Face asks for one.

Finding and downloading run in `workers.downloads` threads; this dialog only shows what they report.
The token typed here lives in the field and the running download only: it is never saved or logged.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..workers import downloads
from ..workers.downloads import DownloadThread, FileState, ScanThread

TOKEN_PAGE = "https://huggingface.co/settings/tokens"
NAME, SIZE, STATUS, PROGRESS = range(4)
ROLE_VARIANT = Qt.ItemDataRole.UserRole
ROLE_FILE = Qt.ItemDataRole.UserRole + 1

_FAILURE_TITLES = {
    downloads.ACCESS_DENIED: "Hugging Face needs a token for this repository.",
    downloads.OFFLINE: "No connection to Hugging Face.",
    downloads.NO_SPACE: "Not enough disk space.",
    downloads.VERIFICATION: "A downloaded file was not usable and was removed.",
    downloads.CANCELLED: "Download cancelled.",
    downloads.ERROR: "The download failed.",
}


class ModelManagerDialog(QDialog):
    """Lists every variant's files with sizes and where they are; downloads a variant's missing files."""

    scan_finished = Signal()
    download_finished = Signal(str)  # "done" or a downloads failure kind
    weights_changed = Signal()  # files were added to the weights folder

    def __init__(self, models_dir: str | Path, parent: QWidget | None = None, *, endpoint: str | None = None,
                 reason: str = ""):  # fmt: skip
        super().__init__(parent)
        from ..pipeline import weights  # cheap: listing the registry imports neither torch nor huggingface_hub

        self._weights = weights
        self.models_dir = Path(models_dir).expanduser()
        self.endpoint = endpoint
        self.states: dict[str, FileState] = {}
        self._scan: ScanThread | None = None
        self._download: DownloadThread | None = None
        self._bars: dict[tuple[str, str], QProgressBar] = {}
        self._variant: str | None = None
        self._scanning = self._downloading = False
        self.setWindowTitle("Model manager")
        self.resize(860, 560)

        folder = QLabel(f"Weights folder: <b>{self.models_dir}</b>")
        folder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        open_folder = QPushButton("Open folder")
        open_folder.clicked.connect(self._open_folder)
        top = QHBoxLayout()
        top.addWidget(folder, 1)
        top.addWidget(open_folder)

        self.reason = QLabel(reason, objectName="note", wordWrap=True)
        self.reason.setVisible(bool(reason))

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["File", "Size", "Where", "Progress"])
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.tree.header()
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(STATUS, QHeaderView.ResizeMode.Stretch)
        header.resizeSection(PROGRESS, 150)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.description = QLabel(wordWrap=True)
        self._fill_tree()

        self.message = QLabel(wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setOpenExternalLinks(True)

        self.token_box = QWidget()
        token_row = QHBoxLayout(self.token_box)
        token_row.setContentsMargins(0, 0, 0, 0)
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("hf_…  (read access is enough; it is not saved)")
        token_link = QLabel(f'<a href="{TOKEN_PAGE}">Create a token</a>')
        token_link.setOpenExternalLinks(True)
        token_row.addWidget(QLabel("Hugging Face token:"))
        token_row.addWidget(self.token_edit, 1)
        token_row.addWidget(token_link)
        self.token_box.hide()

        self.download_button = QPushButton("Download")
        self.download_button.setDefault(True)
        self.download_button.clicked.connect(self._download_selected)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.rescan_button = QPushButton("Look again")
        self.rescan_button.clicked.connect(self.scan)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.rescan_button)
        buttons.addStretch()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.reason)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.description)
        layout.addWidget(self.message)
        layout.addWidget(self.token_box)
        layout.addLayout(buttons)
        self.select_variant(weights.DEFAULT_VARIANT)
        self._update_buttons()
        self.scan()

    # -- the list --------------------------------------------------------------------------------------

    def _fill_tree(self) -> None:
        w = self._weights
        for variant in w.VARIANTS:
            item = QTreeWidgetItem([variant, w.human_size(sum(e.size for e in w.files_for(variant))), "looking…"])
            item.setData(NAME, ROLE_VARIANT, variant)
            item.setFirstColumnSpanned(False)
            font = item.font(NAME)
            font.setBold(True)
            item.setFont(NAME, font)
            self.tree.addTopLevelItem(item)
            for entry in w.files_for(variant):
                size = ("about " if entry.size_is_estimate else "") + w.human_size(entry.size)
                child = QTreeWidgetItem([entry.name, size, "looking…"])
                child.setData(NAME, ROLE_VARIANT, variant)
                child.setData(NAME, ROLE_FILE, entry.name)
                child.setToolTip(NAME, f"{entry.description}\nfrom {entry.repo}\nlicence: {entry.licence}")
                item.addChild(child)
                bar = QProgressBar()
                bar.setRange(0, 1000)
                bar.setValue(0)
                bar.setTextVisible(True)
                bar.setFormat("")
                self.tree.setItemWidget(child, PROGRESS, bar)
                self._bars[(variant, entry.name)] = bar
            item.setExpanded(variant == w.DEFAULT_VARIANT)

    def variant_item(self, variant: str) -> QTreeWidgetItem:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(NAME, ROLE_VARIANT) == variant:
                return item
        raise KeyError(variant)

    def file_item(self, variant: str, name: str) -> QTreeWidgetItem:
        item = self.variant_item(variant)
        for i in range(item.childCount()):
            if item.child(i).data(NAME, ROLE_FILE) == name:
                return item.child(i)
        raise KeyError(name)

    def progress_bar(self, variant: str, name: str) -> QProgressBar:
        return self._bars[(variant, name)]

    def select_variant(self, variant: str) -> None:
        item = self.variant_item(variant)
        item.setExpanded(True)
        self.tree.setCurrentItem(item)

    def selected_variant(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(NAME, ROLE_VARIANT) if item is not None else None

    def missing(self, variant: str) -> list[str]:
        """Files of `variant` not in the weights folder (absent, or only in the Hugging Face cache)."""
        return [
            e.name
            for e in self._weights.files_for(variant)
            if self.states.get(e.name) is None
            or self.states[e.name].where not in (self._weights.FOLDER, self._weights.SUBSTITUTE)
        ]

    def _show_states(self) -> None:
        w = self._weights
        for variant in w.VARIANTS:
            absent_size = 0
            absent = 0
            for entry in w.files_for(variant):
                state = self.states.get(entry.name)
                item = self.file_item(variant, entry.name)
                bar = self.progress_bar(variant, entry.name)
                if state is None or state.path is None:
                    text, tip = "missing", ""
                    absent += 1
                    absent_size += entry.size
                    bar.setValue(0)
                    bar.setFormat("")
                elif state.where in (w.FOLDER, w.SUBSTITUTE):
                    text = "in the weights folder" if state.where == w.FOLDER else "not needed: used instead"
                    tip = state.path
                    bar.setValue(bar.maximum())
                    bar.setFormat("present" if state.where == w.FOLDER else Path(state.path).name)
                else:
                    text, tip = f"in the Hugging Face cache ({state.path}); will be linked in", state.path
                item.setText(STATUS, text)
                item.setToolTip(STATUS, tip)
            top = self.variant_item(variant)
            count = len(w.files_for(variant))
            summary = "complete" if not absent else f"{absent} of {count} missing ({w.human_size(absent_size)})"
            top.setText(STATUS, summary)
            top.setToolTip(STATUS, w.VARIANTS[variant])
            top.setToolTip(NAME, w.VARIANTS[variant])

    # -- scanning --------------------------------------------------------------------------------------

    def scan(self) -> None:
        if self._scanning:
            return
        self._scanning = True
        self._scan = ScanThread(self.models_dir, self)
        self._scan.scanned.connect(self._on_scanned)
        self._scan.finished.connect(self._update_buttons)
        self._scan.start()
        self._update_buttons()

    def _on_scanned(self, states: dict[str, FileState]) -> None:
        self._scanning = False
        self.states = states
        self._show_states()
        self._update_buttons()
        self.scan_finished.emit()

    # -- downloading -----------------------------------------------------------------------------------

    @property
    def downloading(self) -> bool:
        return self._downloading

    def _busy(self) -> bool:
        # flags, not isRunning(): they change in the same slot that shows the outcome, so buttons never lag
        return self._downloading or self._scanning

    def _update_buttons(self) -> None:
        variant = self.selected_variant()
        if variant:
            self.description.setText(f"<b>{variant}</b>: {_html(self._weights.VARIANTS[variant])}")
        missing = self.missing(variant) if variant and self.states else []
        self.download_button.setEnabled(bool(missing) and not self._busy())
        if variant and self.states:
            size = sum(self._weights.entry_named(n).size for n in missing if self.states[n].path is None)
            label = f"Download {variant} ({self._weights.human_size(size)})" if size else f"Complete {variant}"
            self.download_button.setText(label if missing else f"{variant} is complete")
        self.cancel_button.setEnabled(self.downloading)
        self.rescan_button.setEnabled(not self._busy())

    def _download_selected(self) -> None:
        variant = self.selected_variant()
        if variant:
            self.start_download(variant)

    def start_download(self, variant: str) -> None:
        if self._busy():
            return
        names = self.missing(variant)
        if not names:
            self._say(f"All files of {variant} are in the weights folder.")
            return
        self._variant = variant
        self._say(f"Downloading {len(names)} file(s) of {variant}…")
        token = self.token_edit.text().strip() or None
        self._downloading = True
        self._download = DownloadThread(names, self.models_dir, token=token, endpoint=self.endpoint, parent=self)
        self._download.file_progress.connect(self._on_progress)
        self._download.succeeded.connect(self._on_succeeded)
        self._download.failed.connect(self._on_failed)
        self._download.finished.connect(self._update_buttons)
        self._download.start()
        self._update_buttons()

    def cancel_download(self) -> None:
        if self.downloading:
            self._download.cancel()
            self._say("Cancelling…")

    def _on_progress(self, name: str, done: int, total: int) -> None:
        for (variant, file_name), bar in self._bars.items():
            if file_name == name and (variant == self._variant or self.states.get(name) is None):
                bar.setValue(round(bar.maximum() * done / total) if total else 0)
                bar.setFormat(f"{self._weights.human_size(done)} of {self._weights.human_size(total)}")

    def _on_succeeded(self) -> None:
        self._downloading = False
        self._say(f"All files of {self._variant} are in {self.models_dir}.")
        self.token_box.setVisible(False)
        self.weights_changed.emit()
        self.download_finished.emit("done")
        self.scan()

    def _on_failed(self, kind: str, message: str) -> None:
        self._downloading = False
        title = _FAILURE_TITLES.get(kind, _FAILURE_TITLES[downloads.ERROR])
        if kind == downloads.ACCESS_DENIED:
            self.token_box.setVisible(True)
            self.token_edit.setFocus()
            title += " Accept the licence on the repository's page, paste a token below and press Download again."
        self._say(f"<b>{_html(title)}</b><br>{_html(message)}")
        self.download_finished.emit(kind)
        self.scan()  # files finished before the failure are kept: show them

    def _say(self, html: str) -> None:
        self.message.setText(html)

    def _open_folder(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.models_dir)))

    # -- closing ---------------------------------------------------------------------------------------

    def stop_threads(self) -> None:
        """Cancel a running download and wait for both threads (the unfinished file is removed)."""
        if self._download is not None:
            self._download.cancel()
            self._download.wait()
            self._downloading = False
        if self._scan is not None:
            self._scan.wait()
            self._scanning = False

    def done(self, result: int) -> None:
        self.stop_threads()
        super().done(result)


def _html(text: str) -> str:
    import html

    return html.escape(text).replace("\n", "<br>")
