"""The GPU worker: one long-lived thread that owns every network and runs generation jobs one at a time.

:class:`GenerationService` is the GUI thread's front: it queues jobs, cancels them and re-emits the
worker's signals in the GUI thread. :class:`GpuWorker` lives on the one ``QThread`` and imports torch
and the pipeline there, on its first job, so importing this module (and showing the window) never
loads torch.
"""

from __future__ import annotations

import collections
import gc
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QThread, Signal, Slot

from .. import __version__
from ..core.gallery import made_with as made_with_label
from ..core.paths import demo_folder
from ..core.request import GenerationRequest

log = logging.getLogger(__name__)

THREAD_NAME = "cascade-studio-gpu"

#: ModelSet roles → how the status line names them while they load
_ROLE_LABELS = {
    "stage_c": "Stage C",
    "stage_b": "Stage B",
    "stage_a": "Stage A",
    "previewer": "the previewer",
    "text_encoder": "the text encoder",
    "image_encoder": "the image encoder",
    "effnet": "the EfficientNet encoder",
    "controlnet_inpainting": "the inpainting ControlNet",
    "controlnet_canny": "the canny ControlNet",
    "controlnet_super_resolution": "the super-resolution ControlNet",
}

OUT_OF_MEMORY_ADVICE = (
    "The device ran out of memory. Try the memory mode “one stage at a time” (sequential), a smaller image "
    "size or a smaller batch."
)


@dataclass(frozen=True)
class WorkerConfig:
    models_dir: Path
    output_dir: Path
    device: str = "auto"  # as the command line's --device, --dtype and --memory
    dtype: str = "auto"
    memory: str = "auto"
    preview_every: int = 1  # 0: no previews
    compile: bool = False  # Stage C and Stage B through torch.compile (the command line's --compile)
    demo: bool = False  # use the demo model set (pipeline.demo.write_demo_models) instead of models_dir


@dataclass
class _Job:
    id: int
    request: GenerationRequest
    # Set from the GUI thread, read by the GPU thread between steps (a plain bool: reads and writes are atomic).
    cancelled: bool = False


WARM_UP = _Job(0, None)  # type: ignore[arg-type]


@dataclass
class _JobQueue:
    """Pending jobs and the running one, shared by the GUI thread and the GPU thread (all under one lock)."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    pending: collections.deque[_Job] = field(default_factory=collections.deque)
    current: _Job | None = None
    stopping: bool = False
    warm_up: bool = False  # import torch and the pipeline before the first job, if idle

    def request_warm_up(self) -> None:
        with self.lock:
            self.warm_up = True
            self.lock.notify()

    def put(self, job: _Job) -> None:
        with self.lock:
            self.pending.append(job)
            self.lock.notify()

    def take(self) -> _Job | None:
        """The next job (it becomes current), blocking until there is one; None once stopping; WARM_UP
        when a warm-up was asked for and no job waits (a job warms everything up anyway)."""
        with self.lock:
            while not self.pending and not self.stopping and not self.warm_up:
                self.lock.wait()
            if self.stopping:
                return None
            if not self.pending:
                self.warm_up = False
                return WARM_UP
            self.warm_up = False
            self.current = self.pending.popleft()
            return self.current

    def done(self, job: _Job) -> None:
        with self.lock:
            if self.current is job:
                self.current = None

    def remove(self, job_id: int) -> bool:
        with self.lock:
            for job in self.pending:
                if job.id == job_id:
                    self.pending.remove(job)
                    return True
            return False

    def clear(self) -> list[int]:
        with self.lock:
            ids = [job.id for job in self.pending]
            self.pending.clear()
            return ids

    def cancel_current(self, job_id: int | None = None) -> bool:
        with self.lock:
            if self.current is not None and (job_id is None or self.current.id == job_id):
                self.current.cancelled = True
                return True
            return False

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            if self.current is not None:
                self.current.cancelled = True
            self.lock.notify_all()


class _PreviewSlot:
    """At most one unconsumed preview between the threads: a newer frame replaces a stale one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: tuple[int, np.ndarray] | None = None

    def offer(self, job_id: int, frame: np.ndarray) -> bool:
        """Store ``frame``; True when the slot was empty (the GUI thread must be told to take it)."""
        with self._lock:
            was_empty = self._frame is None
            self._frame = (job_id, frame)
            return was_empty

    def take(self) -> tuple[int, np.ndarray] | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


class GpuWorker(QObject):
    """Runs jobs on the GPU thread. Threading contract: lives on the service's one ``QThread``; :meth:`run`
    is its whole life (a loop until the queue stops). Its signals are emitted in the GPU thread and reach
    the service through queued connections; it touches no widget and no GUI-thread object. Reads the
    config through ``config_getter`` (thread-safe) at the start of every job."""

    job_started = Signal(int)
    job_note = Signal(int, str)
    progress = Signal(int, str, int, int)
    preview_available = Signal()
    image_ready = Signal(int, str)
    job_failed = Signal(int, str, str)
    job_finished = Signal(int, str)
    status_changed = Signal(str)
    made_with_changed = Signal(str)  # "cpu · bfloat16": what the loaded pipeline records in its PNGs

    def __init__(self, jobs: _JobQueue, previews: _PreviewSlot, config_getter) -> None:
        super().__init__()
        self._jobs = jobs
        self._previews = previews
        self._config = config_getter
        # Everything below belongs to the GPU thread.
        self._pipeline = None
        self._pipeline_key: tuple | None = None
        self._status = ""
        self._base_status = ""
        self._device_status = ""  # device · precision · memory [· demo weights] of the loaded pipeline
        self._gallery = None
        self._gallery_folder: Path | None = None

    @Slot()
    def run(self) -> None:
        try:
            while (job := self._jobs.take()) is not None:
                if job is WARM_UP:
                    self._warm_up()
                    continue
                self.job_started.emit(job.id)
                try:
                    outcome = self._run_job(job)
                finally:
                    self._jobs.done(job)
                self.job_finished.emit(job.id, outcome)
        finally:
            self._release()
            QThread.currentThread().quit()

    def _warm_up(self) -> None:
        """Import torch, the pipeline and the CLIP tokenizer, and choose the device, so the first job starts at
        once. (The imports hold the GIL for stretches of a few hundred ms: better while the user types a prompt
        than after they press Generate.)"""
        try:
            if "torch" not in sys.modules:
                self._set_status("loading PyTorch…")
            from ..pipeline import conditioning, generate  # noqa: F401

            conditioning.load_tokenizer_module()  # what the first prompt's tokenising would load

            self._pipeline_for(self._config(), "lite")  # ends by reporting the device
        except _Failure as failure:
            self._set_status(f"GPU worker: {failure.message}")
        except Exception as exc:  # a warm-up never fails a job; the job itself will report the problem
            log.warning("warm-up failed: %s", exc)

    # -- one job ------------------------------------------------------------------------------------------

    def _run_job(self, job: _Job) -> str:
        try:
            if job.cancelled:
                return "cancelled"
            return self._generate(job)
        except _Failure as failure:
            self.job_failed.emit(job.id, failure.message, failure.kind)
            return "failed"
        except Exception as exc:  # the worker survives anything a job does
            log.exception("generation job %d failed", job.id)
            oom = _out_of_memory_type()
            if (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower():
                self._after_out_of_memory()
                self.job_failed.emit(job.id, f"{OUT_OF_MEMORY_ADVICE} ({_first_line(exc)})", "out_of_memory")
            else:
                self.job_failed.emit(job.id, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                     "error")  # fmt: skip
            return "failed"
        finally:
            if self._base_status and self._status != self._base_status:
                self._set_status(self._base_status)  # a load that failed half-way said "loading …"

    def _generate(self, job: _Job) -> str:
        request = job.request
        try:
            request.validate()
        except ValueError as exc:
            raise _Failure(str(exc), "invalid") from None
        config = self._config()
        pipeline = self._pipeline_for(config, request.variant)

        from ..core.inpaint import InputError, load_mask
        from ..pipeline.device import precision_name
        from ..pipeline.generate import Cancelled
        from ..pipeline.images import load_image
        from ..pipeline.models import MissingWeights

        try:
            plan = pipeline.plan(request)
            files = pipeline.models.check(request.mode, plan.method)
        except MissingWeights as exc:
            raise _Failure(str(exc), "missing_weights") from None
        except InputError as exc:  # a ControlNet that does not fit this Stage C
            raise _Failure(str(exc), "invalid") from None
        notes = [plan.note] if plan.note else []  # e.g. "inpainting by latent blending (…)"
        # the LoRA files are read and checked (a missing or unfit one fails the job before anything loads); one
        # whose learned tokens cannot be used says so (the files are read once: the run reuses them)
        try:
            loras = pipeline.loras(request)
        except ValueError as exc:  # LoraError
            raise _Failure(str(exc), "invalid") from None
        notes += [lora.token_warning for lora, _ in loras if lora.token_warning]
        if notes:
            self.job_note.emit(job.id, "; ".join(notes))
        model_name = "demo" if config.demo else files["stage_c"].name.removesuffix(".safetensors")
        inputs = {}
        try:
            if request.source_image:
                inputs["source_image"] = load_image(request.source_image)
            if request.mask_image:
                inputs["mask_image"] = load_mask(request.mask_image)
            if request.control_image:
                inputs["control_image"] = load_image(request.control_image)
        except ValueError as exc:
            raise _Failure(str(exc), "invalid") from None
        pipeline.preview_every = max(0, config.preview_every)
        if pipeline.compile != config.compile:  # flipped in the preferences: the loaded networks are kept
            pipeline.compile = config.compile
            self._base_status = self._status_for(config)
            self._set_status(self._base_status)

        def on_progress(event) -> None:
            if event.note:  # e.g. a compilation before the stage's first step: the status bar says so meanwhile
                self._set_status(f"{self._base_status} · {event.note}…")
                return
            if self._status != self._base_status:
                self._set_status(self._base_status)
            self.progress.emit(job.id, event.stage, event.step, event.total)
            if event.preview is not None and self._previews.offer(job.id, event.preview):
                self.preview_available.emit()

        try:
            images = pipeline.run(request, on_progress=on_progress, should_cancel=lambda: job.cancelled, **inputs)
        except Cancelled:
            return "cancelled"
        except MissingWeights as exc:
            raise _Failure(str(exc), "missing_weights") from None
        except InputError as exc:  # the inputs do not fit together (mask size, empty mask …)
            raise _Failure(str(exc), "invalid") from None
        if job.cancelled:
            return "cancelled"
        gallery = self._gallery_for(Path(config.output_dir))
        made_by = {"device": pipeline.device.type, "precision": precision_name(pipeline.models.dtype)}
        for image in images:
            path = gallery.save_generated(
                image.pixels, image.request, model_name=model_name, version=__version__, **made_by
            )
            self.image_ready.emit(job.id, str(path))
        return "done"

    # -- the pipeline, the gallery and the status line -----------------------------------------------------

    def _pipeline_for(self, config: WorkerConfig, variant: str):
        key = (Path(config.models_dir), config.device, config.dtype, config.memory, config.demo, variant)
        if self._pipeline is not None and key == self._pipeline_key:
            return self._pipeline
        self._drop_pipeline()
        if "torch" not in sys.modules:
            self._set_status("loading PyTorch…")
        from ..pipeline.device import choose_device, choose_dtype, choose_memory, precision_name
        from ..pipeline.generate import Pipeline
        from ..pipeline.models import MEMORY_MODES

        try:
            device = choose_device(config.device)
            dtype = choose_dtype(config.dtype, device)
            memory = choose_memory(config.memory, device)
        except ValueError as exc:
            raise _Failure(str(exc), "invalid") from None
        models_dir = Path(config.models_dir)
        if config.demo:
            from ..pipeline.demo import write_demo_models

            self._set_status("preparing the demo weights…")
            models_dir = write_demo_models(demo_folder())
        try:
            models = _reporting_model_set(self._loading)(
                models_dir, variant=variant, device=device, dtype=dtype, memory=memory
            )
        except ValueError as exc:
            raise _Failure(str(exc), "invalid") from None
        precision = precision_name(dtype)
        self.made_with_changed.emit(made_with_label(device.type, precision))
        self._device_status = " · ".join(
            [str(device), precision, MEMORY_MODES[memory].split(" (")[0]] + (["demo weights"] if config.demo else [])
        )
        self._base_status = self._status_for(config)
        self._pipeline = Pipeline(models, preview_every=max(0, config.preview_every), compile=config.compile)
        self._pipeline_key = key
        self._set_status(self._base_status)
        return self._pipeline

    def _status_for(self, config: WorkerConfig) -> str:
        return self._device_status + (" · compiled" if config.compile else "")

    def _loading(self, role: str) -> None:
        self._set_status(f"loading {_ROLE_LABELS.get(role, role)}…")

    def _set_status(self, text: str) -> None:
        self._status = text
        self.status_changed.emit(text)

    def _gallery_for(self, folder: Path):
        if self._gallery is not None and self._gallery_folder == folder:
            return self._gallery
        from ..core.gallery import GalleryIndex

        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None
        folder.mkdir(parents=True, exist_ok=True)
        self._gallery = GalleryIndex(folder)  # sqlite: this connection belongs to the GPU thread
        self._gallery_folder = folder
        return self._gallery

    def _after_out_of_memory(self) -> None:
        if self._pipeline is not None:
            self._pipeline.graphs.clear()  # kept CUDA graphs hold their activations' memory
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _drop_pipeline(self) -> None:
        if self._pipeline is None:
            return
        self._pipeline = None
        self._pipeline_key = None
        self._after_out_of_memory()

    def _release(self) -> None:
        self._drop_pipeline()
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None


class _Failure(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _out_of_memory_type() -> type[BaseException] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)


def _reporting_model_set(on_load):
    """A ModelSet that says which network it is about to load (the class is made here, on the GPU thread,
    so that importing this module does not import torch)."""
    from ..pipeline.models import ModelSet

    class ReportingModelSet(ModelSet):
        def _load(self, role: str):
            on_load(role)
            return super()._load(role)

    return ReportingModelSet


class GenerationService(QObject):
    """The GUI thread's front of the one GPU thread.

    Threading contract: construct it and call every method from the GUI thread. Its signals are emitted
    in the GUI thread (the worker's are queued here and re-emitted), so slots may touch widgets. Job ids
    are unique per service. Call :meth:`shutdown` before the application quits; it is idempotent.
    """

    job_queued = Signal(int, object)  # id, GenerationRequest
    job_started = Signal(int)
    job_note = Signal(int, str)  # id, how the job runs ("inpainting by latent blending (…)"); ControlNet modes only
    progress = Signal(int, str, int, int)  # id, stage "c"|"b"|"a", step, total
    preview = Signal(int, object)  # id, np.ndarray (H, W, 3) uint8
    image_ready = Signal(int, str)  # id, path: already written and indexed
    job_failed = Signal(int, str, str)  # id, message, kind: missing_weights|out_of_memory|invalid|error
    job_finished = Signal(int, str)  # id, done|cancelled|failed|removed
    status_changed = Signal(str)
    #: The device and precision of the loaded pipeline as the gallery shows them ("cpu · bfloat16"), sent when it
    #: is built (at warm-up, and when a job's settings change them); see :attr:`made_with`.
    made_with_changed = Signal(str)

    def __init__(self, config: WorkerConfig, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._config_lock = threading.Lock()
        self._config = config
        self._jobs = _JobQueue()
        self._previews = _PreviewSlot()
        self._next_id = 1
        self._shut_down = False
        self._thread = QThread()
        self._thread.setObjectName(THREAD_NAME)
        self._worker = GpuWorker(self._jobs, self._previews, self._current_config)
        self._worker.moveToThread(self._thread)
        self._worker.job_started.connect(self.job_started)
        self._worker.job_note.connect(self.job_note)
        self._worker.progress.connect(self.progress)
        self._worker.image_ready.connect(self.image_ready)
        self._worker.job_failed.connect(self.job_failed)
        self._worker.job_finished.connect(self.job_finished)
        self._worker.status_changed.connect(self.status_changed)
        self.made_with: str | None = None
        self._worker.made_with_changed.connect(self._made_with_changed)
        self._worker.preview_available.connect(self._deliver_preview)
        self._thread.started.connect(self._worker.run)
        self._thread.start()

    @property
    def config(self) -> WorkerConfig:
        return self._current_config()

    def _made_with_changed(self, text: str) -> None:
        self.made_with = text
        self.made_with_changed.emit(text)

    def _current_config(self) -> WorkerConfig:
        with self._config_lock:
            return self._config

    def set_config(self, config: WorkerConfig) -> None:
        """Takes effect at the start of the next job (the running one keeps its models)."""
        with self._config_lock:
            self._config = config

    def warm_up(self) -> None:
        """Import torch and the pipeline on the GPU thread now (when no job is waiting), and report the
        device in ``status_changed``. Call it once the window is shown; nothing else changes."""
        if not self._shut_down:
            self._jobs.request_warm_up()

    def submit(self, request: GenerationRequest) -> int:
        if self._shut_down:
            raise RuntimeError("the generation service has been shut down")
        job_id = self._next_id
        self._next_id += 1
        self.job_queued.emit(job_id, request)
        self._jobs.put(_Job(job_id, request))
        return job_id

    def current_job(self) -> int | None:
        """The job the GPU thread is running now (it may not have announced itself yet)."""
        with self._jobs.lock:
            return self._jobs.current.id if self._jobs.current else None

    def pending_jobs(self) -> list[int]:
        with self._jobs.lock:
            return [job.id for job in self._jobs.pending]

    def cancel(self, job_id: int) -> None:
        """The running job stops at its next step and writes nothing; a pending one is removed."""
        if not self._jobs.cancel_current(job_id):
            self.remove_pending(job_id)

    def cancel_current(self) -> None:
        self._jobs.cancel_current()

    def cancel_all(self) -> None:
        self.cancel_all_but_current()
        self._jobs.cancel_current()

    def cancel_all_but_current(self) -> None:
        for job_id in self._jobs.clear():
            self.job_finished.emit(job_id, "removed")

    def remove_pending(self, job_id: int) -> None:
        if self._jobs.remove(job_id):
            self.job_finished.emit(job_id, "removed")

    def shutdown(self) -> None:
        """Cancel the running job, drop the pending ones, stop the GPU thread and wait for it."""
        if self._shut_down:
            return
        self._shut_down = True
        self.cancel_all_but_current()
        self._jobs.stop()
        self._thread.quit()
        self._thread.wait()

    @Slot()
    def _deliver_preview(self) -> None:
        frame = self._previews.take()
        if frame is not None:
            self.preview.emit(*frame)
