"""The GPU worker and its service, driven by signals with the demo model set on the CPU."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from cascade_studio.core.gallery import GalleryIndex
from cascade_studio.core.metadata import read_metadata
from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.workers.gpu import THREAD_NAME, GenerationService, WorkerConfig, _PreviewSlot
from tests.conftest import ROOT

TIMEOUT_MS = 120_000  # the first job of a service imports torch and loads the networks


def cpu_precision() -> str:
    """The precision the worker's "auto" picks on this machine's CPU (bfloat16 where the CPU has native bf16)."""
    import torch

    from cascade_studio.pipeline.device import choose_dtype, precision_name

    return precision_name(choose_dtype("auto", torch.device("cpu")))


def tiny_request(prompt: str = "a lighthouse at dusk", *, steps_c: int = 3, steps_b: int = 2, **changes):
    request = GenerationRequest(
        prompt,
        seed=7,
        width=256,
        height=256,
        stage_c=StageSettings(steps_c, 4.0, 2.0),
        stage_b=StageSettings(steps_b, 1.1, 1.0),
    )
    return request.with_(**changes)


class Recorder:
    """Every signal of a service, in the order the GUI thread received them."""

    NAMES = ("job_queued", "job_started", "job_note", "progress", "preview", "image_ready", "job_failed",
             "job_finished", "status_changed")  # fmt: skip

    def __init__(self, service: GenerationService) -> None:
        self.events: list[tuple] = []
        for name in self.NAMES:
            getattr(service, name).connect(lambda *args, name=name: self.events.append((name, *args)))

    def of(self, name: str, job_id: int | None = None) -> list[tuple]:
        return [e for e in self.events if e[0] == name and (job_id is None or e[1] == job_id)]

    def outcome(self, job_id: int) -> str | None:
        finished = self.of("job_finished", job_id)
        return finished[-1][2] if finished else None


@pytest.fixture
def demo_env(monkeypatch, demo_cache):
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache))


@pytest.fixture
def make_service(tmp_path, demo_env):
    services = []

    def make(**changes) -> tuple[GenerationService, Recorder]:
        config = WorkerConfig(models_dir=tmp_path / "no-models", output_dir=tmp_path / "out", device="cpu", demo=True)
        service = GenerationService(dataclasses.replace(config, **changes))
        services.append(service)
        return service, Recorder(service)

    yield make
    for service in services:
        service.shutdown()


class Gate:
    """Blocks the GPU thread at the first step of a job until the test opens it or the service stops (no
    sleeping, no races)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.is_open = False
        self.service: GenerationService | None = None
        self.job_id: int | None = None

    def hold(self, service: GenerationService, job_id: int) -> None:
        self.service, self.job_id = service, job_id
        # Direct connection: runs in the GPU thread, inside the job's progress callback.
        service._worker.progress.connect(self._on_progress, Qt.ConnectionType.DirectConnection)

    def _on_progress(self, job_id: int, stage: str, step: int, total: int) -> None:
        if job_id != self.job_id:
            return
        self.reached.set()
        jobs = self.service._jobs
        with jobs.lock:  # the queue's condition: stop() (shutdown) notifies it
            jobs.lock.wait_for(lambda: self.is_open or jobs.stopping, 60)

    def open(self) -> None:
        if self.service is None:
            return
        with self.service._jobs.lock:
            self.is_open = True
            self.service._jobs.lock.notify_all()


@pytest.fixture
def gate(make_service):
    """Requested after make_service, so it opens before the services shut down."""
    g = Gate()
    yield g
    g.open()


def images_in(folder) -> list:
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.exists() else []


def test_import_does_not_load_torch():
    code = "import sys, cascade_studio.workers.gpu; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_job_streams_progress_and_previews_then_writes_an_indexed_png(qtbot, make_service, tmp_path):
    service, rec = make_service()
    assert service._thread.objectName() == THREAD_NAME
    job = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == "done", rec.of("job_failed")

    names = [e[0] for e in rec.events if e[0] != "status_changed"]
    assert names[:2] == ["job_queued", "job_started"]
    assert names[-2:] == ["image_ready", "job_finished"]
    steps = [e[2:] for e in rec.of("progress", job)]
    assert steps == [("c", 1, 3), ("c", 2, 3), ("c", 3, 3), ("b", 1, 2), ("b", 2, 2), ("a", 1, 1)]
    previews = rec.of("preview", job)
    assert previews and all(p[2].dtype == np.uint8 and p[2].ndim == 3 and p[2].shape[2] == 3 for p in previews)
    statuses = [e[1] for e in rec.of("status_changed")]
    assert any(s.startswith("loading") for s in statuses)
    assert statuses[-1] == f"cpu · {cpu_precision()} · all resident · demo weights"

    ((_, _, path),) = rec.of("image_ready", job)
    path = Path(path)
    assert path.is_file() and path.suffix == ".png" and path.parent == (tmp_path / "out").resolve()
    meta = read_metadata(path)
    assert meta.prompt == "a lighthouse at dusk" and meta.seed == 7 and meta.model == "demo"
    assert (meta.extra["device"], meta.extra["precision"]) == ("cpu", cpu_precision())
    index = GalleryIndex(tmp_path / "out")
    try:
        entry = index.entry(path)
        assert entry is not None and entry.prompt == "a lighthouse at dusk" and entry.request_json
    finally:
        index.close()


def test_previews_off_and_batches(qtbot, make_service):
    service, rec = make_service(preview_every=0)
    job = service.submit(tiny_request(batch_size=2))
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == "done", rec.of("job_failed")
    assert rec.of("preview") == []
    paths = [e[2] for e in rec.of("image_ready", job)]
    assert len(set(paths)) == 2
    assert sorted(read_metadata(p).seed for p in paths) == [7, 8]


def test_cancel_mid_run_writes_nothing(qtbot, make_service, tmp_path):
    service, rec = make_service()
    job = service.submit(tiny_request(steps_c=60, steps_b=40))

    def on_progress(job_id, stage, step, total):
        if job_id == job:
            service.cancel(job)

    service.progress.connect(on_progress)
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == "cancelled"
    assert rec.of("image_ready") == [] and rec.of("job_failed") == []
    assert len(rec.of("progress", job)) < 100  # it stopped early
    assert images_in(tmp_path / "out") == []


def test_stale_previews_are_dropped(qtbot, make_service):
    """While the GUI thread is busy, the worker keeps only the newest frame: one delivery, the last one."""
    service, rec = make_service()
    finished = threading.Event()
    service._worker.job_finished.connect(lambda *_: finished.set(), Qt.ConnectionType.DirectConnection)
    slot_frames = []
    original_offer = service._previews.offer

    def offer(job_id, frame):
        slot_frames.append(frame)
        return original_offer(job_id, frame)

    service._previews.offer = offer
    job = service.submit(tiny_request(steps_c=8))
    assert finished.wait(120)  # the GUI thread handles no events meanwhile
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    previews = rec.of("preview", job)
    assert len(slot_frames) == 8 and len(previews) == 1
    assert previews[0][2] is slot_frames[-1]


def test_preview_slot_keeps_one_frame():
    slot = _PreviewSlot()
    a, b = np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)
    assert slot.offer(1, a) is True
    assert slot.offer(1, b) is False
    assert slot.take()[1] is b
    assert slot.take() is None


def test_missing_weights_fail_the_job_and_the_worker_runs_the_next(qtbot, make_service, tmp_path):
    service, rec = make_service(demo=False, models_dir=tmp_path / "empty")
    failing = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(failing) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(failing) == "failed"
    ((_, _, message, kind),) = rec.of("job_failed", failing)
    assert kind == "missing_weights"
    assert "stage_c_lite_bf16.safetensors" in message and str(tmp_path / "empty") in message

    service.set_config(WorkerConfig(models_dir=tmp_path / "empty", output_dir=tmp_path / "out", device="cpu",
                                    demo=True))  # fmt: skip
    ok = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(ok) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(ok) == "done", rec.of("job_failed")
    assert len(images_in(tmp_path / "out")) == 1


def test_invalid_request_and_broken_weights_fail_with_their_kind(qtbot, make_service, tmp_path, demo_models):
    broken = tmp_path / "broken"
    shutil.copytree(demo_models, broken)
    (broken / "stage_b_lite.safetensors").write_bytes(b"not a safetensors file")
    service, rec = make_service(demo=False, models_dir=broken)
    invalid = service.submit(tiny_request(width=300))
    no_source = service.submit(tiny_request(mode="img2img", source_image=str(tmp_path / "nowhere.png")))
    no_lora = service.submit(tiny_request(loras=(("nope", 1.0),)))
    error = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(error) is not None, timeout=TIMEOUT_MS)
    failures = {e[1]: e[2:] for e in rec.of("job_failed")}
    assert failures[invalid][1] == "invalid" and "width must be a multiple of 128" in failures[invalid][0]
    assert failures[no_source][1] == "invalid" and "nowhere.png" in failures[no_source][0]
    assert failures[no_lora][1] == "invalid" and failures[no_lora][0].startswith("LoRA 'nope' not found")
    assert failures[error][1] == "error" and "stage_b_lite.safetensors" in failures[error][0]
    assert [rec.outcome(j) for j in (invalid, no_source, no_lora, error)] == ["failed"] * 4
    assert images_in(tmp_path / "out") == []


def test_out_of_memory_gives_advice(qtbot, make_service, monkeypatch):
    import torch

    from cascade_studio.pipeline.generate import Pipeline

    pipelines = []

    def run(self, request, **kwargs):
        self.graphs.get("c", ("a kept graph",), lambda: lambda *tensors: None)  # as a job on a GPU leaves one
        pipelines.append(self)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Pipeline, "run", run)
    service, rec = make_service()
    job = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    ((_, _, message, kind),) = rec.of("job_failed", job)
    assert kind == "out_of_memory"
    assert "one stage at a time" in message and "smaller" in message and "20.00 GiB" in message
    assert len(pipelines[0].graphs) == 0  # kept CUDA graphs let go of, for their memory


def test_remove_pending_and_cancel_all_but_current(qtbot, make_service, gate, tmp_path):
    service, rec = make_service()
    first = service.submit(tiny_request())
    gate.hold(service, first)
    second, third, fourth = (service.submit(tiny_request(seed=s)) for s in (1, 2, 3))
    assert gate.reached.wait(120)
    assert service.current_job() == first and service.pending_jobs() == [second, third, fourth]

    service.remove_pending(third)
    assert rec.outcome(third) == "removed" and service.pending_jobs() == [second, fourth]
    service.cancel(fourth)  # a pending job is removed by cancel too
    assert rec.outcome(fourth) == "removed"
    service.cancel_all_but_current()
    assert rec.outcome(second) == "removed" and service.pending_jobs() == []
    gate.open()
    qtbot.waitUntil(lambda: rec.outcome(first) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(first) == "done"
    assert [e[1] for e in rec.of("job_started")] == [first]
    assert len(images_in(tmp_path / "out")) == 1


def test_cancel_all(qtbot, make_service, gate, tmp_path):
    service, rec = make_service()
    first = service.submit(tiny_request())
    gate.hold(service, first)
    others = [service.submit(tiny_request(seed=s)) for s in (1, 2)]
    assert gate.reached.wait(120)
    service.cancel_all()
    assert [rec.outcome(j) for j in others] == ["removed", "removed"]
    gate.open()
    qtbot.waitUntil(lambda: rec.outcome(first) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(first) == "cancelled"
    assert images_in(tmp_path / "out") == []

    after = service.submit(tiny_request())  # the worker keeps serving
    qtbot.waitUntil(lambda: rec.outcome(after) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(after) == "done"


def test_shutdown_stops_the_thread_and_is_idempotent(qtbot, make_service, gate):
    service, rec = make_service()
    first = service.submit(tiny_request())
    gate.hold(service, first)
    service.submit(tiny_request(seed=1))
    assert gate.reached.wait(120)
    service.shutdown()  # cancels the held job, which then stops at its next step
    assert not service._thread.isRunning()
    service.shutdown()
    with pytest.raises(RuntimeError):
        service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(first) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(first) == "cancelled"


def test_shutdown_of_an_idle_service(make_service):
    service, _ = make_service()
    service.shutdown()
    assert not service._thread.isRunning()


def test_warm_up_reports_the_device_without_a_job(qtbot, make_service):
    service, rec = make_service()
    service.warm_up()
    ready = f"cpu · {cpu_precision()} · all resident · demo weights"
    assert service.made_with is None  # nothing is known before the pipeline is built
    with qtbot.waitSignal(service.made_with_changed, timeout=TIMEOUT_MS) as made:
        qtbot.waitUntil(lambda: ready in [e[1] for e in rec.of("status_changed")], timeout=TIMEOUT_MS)
    assert made.args == [f"cpu · {cpu_precision()}"] and service.made_with == made.args[0]  # as the PNGs record it
    assert [e[0] for e in rec.events if e[0] != "status_changed"] == []
    job = service.submit(tiny_request())
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == "done"


def test_compile_runs_the_networks_compiled_and_turns_off_without_reloading(qtbot, make_service):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a compilation earlier in this process must not stand in for this one
    graphs = counters["stats"]["unique_graphs"]
    service, rec = make_service(compile=True)
    job = service.submit(tiny_request(steps_c=1, steps_b=1))
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == "done", rec.of("job_failed")
    assert counters["stats"]["unique_graphs"] - graphs == 2  # Stage C and Stage B
    assert rec.of("status_changed")[-1][1] == f"cpu · {cpu_precision()} · all resident · demo weights · compiled"
    # while a stage compiled, the status bar said so
    said = [args[1] for args in rec.of("status_changed")]
    assert any("compiling Stage C" in text for text in said) and any("compiling Stage B" in text for text in said)
    pipeline = service._worker._pipeline

    service.set_config(dataclasses.replace(service.config, compile=False))
    job = service.submit(tiny_request(steps_c=1, steps_b=1, width=384))  # a new size: eager, nothing compiled
    qtbot.waitUntil(lambda: rec.outcome(job) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == "done", rec.of("job_failed")
    assert counters["stats"]["unique_graphs"] - graphs == 2
    assert rec.of("status_changed")[-1][1] == f"cpu · {cpu_precision()} · all resident · demo weights"
    assert service._worker._pipeline is pipeline  # the loaded networks were kept


def test_an_inpaint_job_reads_its_files_says_how_it_runs_and_keeps_the_rest(qtbot, make_service, tmp_path):
    from PIL import Image

    source = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    mask = np.zeros((256, 320), np.uint8)
    mask[40:120, 60:200] = 255
    Image.fromarray(source).save(tmp_path / "canvas.png")
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    service, rec = make_service()
    request = tiny_request(mode="inpaint", source_image=str(tmp_path / "canvas.png"),
                           mask_image=str(tmp_path / "mask.png"), mask_feather=8)  # fmt: skip
    job = service.submit(request)
    blend = service.submit(request.with_(method="latent_blend"))
    empty = service.submit(request.with_(mask_image=str(tmp_path / "canvas.png"), mask_grow=-200))
    qtbot.waitUntil(lambda: rec.outcome(empty) is not None, timeout=TIMEOUT_MS)
    assert rec.outcome(job) == rec.outcome(blend) == "done", rec.of("job_failed")
    assert rec.of("job_note", job) == [("job_note", job, "inpainting through the inpainting ControlNet")]
    assert rec.of("job_note", blend)[0][2] == "inpainting by latent blending (chosen in the request)"
    failures = {e[1]: e[2:] for e in rec.of("job_failed")}
    assert failures[empty][1] == "invalid" and "mask is empty" in failures[empty][0]
    keep = np.ones(mask.shape, bool)
    keep[40 - 8 : 120 + 8, 60 - 8 : 200 + 8] = False
    for job_id, method in ((job, "controlnet"), (blend, "latent_blend")):
        ((_, _, path),) = rec.of("image_ready", job_id)
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.shape == source.shape and np.array_equal(pixels[keep], source[keep])
        meta = read_metadata(path)
        assert meta.request.mode == "inpaint" and meta.request.method == method
