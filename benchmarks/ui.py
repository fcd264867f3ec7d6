"""The window's responsiveness: launch to first paint, GUI-thread stalls while the GPU thread generates, and
gallery open time and memory for large folders.

    .venv/bin/python benchmarks/ui.py                          # everything, Qt's offscreen platform
    xvfb-run -a .venv/bin/python benchmarks/ui.py              # the same on an X server (xcb platform)
    .venv/bin/python benchmarks/ui.py --only gallery --gallery-sizes 1000,10000 --workdir /tmp/ui-bench

Every measurement runs in a child process of its own (a clean interpreter, clean peak RSS, nothing
imported beforehand); the parent prints the tables. The platform is xcb when ``$DISPLAY`` is set, else
offscreen (``--platform`` overrides). Settings, caches and output folders live in a temporary folder.

* launch: from the parent's ``Popen`` (interpreter start included) to the end of the first paint event of
  the main window (``MainWindow(settings, demo=True)``, shown the way ``cascade_studio.app`` shows it),
  plus whether torch was imported by then (it must not be). ``--launch-runs`` runs; the first one also
  pays for a cold page cache.
* stall: the window with a :class:`GenerationService` on the demo weights (the CPU unless ``--device``),
  a 5 ms ``QTimer`` heartbeat in the GUI thread recording the gaps between its ticks, while one cold job
  (torch import and weight loading on the GPU thread) and ``--stall-jobs`` warm jobs run with previews
  every step. Target: no gap over 50 ms.
* gallery: a folder of N small PNGs carrying our metadata (written once; kept with ``--workdir``), opened
  in the gallery panel: time to the first paint of its list, time until every image is listed, RSS at both
  points and the peak; cold (no index: the folder is scanned) and warm (the index exists). Target: first
  paint under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, proc_status_mib, table  # noqa: E402

REPLY = "@@bench "
STALL_TARGET_MS = 50.0
HEARTBEAT_MS = 5


def reply(message: dict) -> None:
    # A marked line, so that anything a library prints to stdout cannot be mistaken for a reply.
    sys.stdout.write(REPLY + json.dumps(message) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- children


def _isolate(tmp: Path) -> None:
    """Settings, caches and pictures in ``tmp`` (set before Qt reads them)."""
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data")):
        os.environ[var] = str(tmp / sub)


def _app():
    """The application as ``cascade_studio.app`` creates it (HiDPI policy, theme), under bench names."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        try:
            from cascade_studio.app import create_application
        except ImportError:
            app = QApplication([sys.argv[0]])
        else:
            app = create_application([sys.argv[0]])
    app.setOrganizationName("cascade-studio-bench")
    app.setApplicationName("cascade-studio-bench")
    return app


def _settings(tmp: Path, device: str = "auto"):
    from PySide6.QtCore import QSettings

    from cascade_studio.state.settings import Settings

    store = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    settings = Settings(store, models_dir_default=tmp / "models", output_dir_default=tmp / "outputs")
    settings.device = device
    return settings


def _window(tmp: Path, device: str = "auto"):
    """The real main window when it exists, else the panels this benchmark's author had (labelled)."""
    try:
        from cascade_studio.ui.main_window import MainWindow
    except ImportError:
        return _stand_in_window(tmp), "stand-in window (ui.main_window missing): image view + queue + gallery"
    return MainWindow(_settings(tmp, device), demo=True), "MainWindow(settings, demo=True)"


def _stand_in_window(tmp: Path):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDockWidget, QMainWindow

    from cascade_studio.ui.image_view import ImageView
    from cascade_studio.ui.queue_panel import QueuePanel

    window = QMainWindow()
    window.resize(1400, 900)
    window.image_view = ImageView()
    window.setCentralWidget(window.image_view)
    window.queue_panel = QueuePanel()
    dock = QDockWidget("Queue")
    dock.setWidget(window.queue_panel)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    try:
        from cascade_studio.ui.gallery import GalleryPanel
    except ImportError:
        window.gallery = None
    else:
        window.gallery = GalleryPanel()
        window.gallery.set_folder(tmp / "outputs")
        dock = QDockWidget("Gallery")
        dock.setWidget(window.gallery)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
    return window


class _PaintWatch:
    """Calls ``on_paint(start_of_paint)`` on the event-loop turn after each paint of ``widget`` or any of its
    children (the paint and its flush are then complete)."""

    def __init__(self, widget, on_paint) -> None:
        from PySide6.QtCore import QEvent, QObject, QTimer

        self._widget = widget
        outer = self

        class Filter(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
                if event.type() == QEvent.Type.Paint and outer._belongs(obj):
                    started = time.monotonic()
                    QTimer.singleShot(0, lambda: on_paint(started))
                return False

        self._filter = Filter()
        _app().installEventFilter(self._filter)

    def _belongs(self, obj) -> bool:
        from PySide6.QtWidgets import QWidget

        return isinstance(obj, QWidget) and (obj is self._widget or self._widget.isAncestorOf(obj))

    def remove(self) -> None:
        _app().removeEventFilter(self._filter)


def child_launch(args: argparse.Namespace) -> None:
    t_main = time.monotonic()
    tmp = Path(args.tmp)
    _isolate(tmp)
    app = _app()
    window, label = _window(tmp)
    t_built = time.monotonic()
    result: dict = {}

    def painted(started: float) -> None:
        if result:
            return
        now = time.monotonic()
        result.update(
            spawn_to_paint_s=now - args.t0,
            spawn_to_main_s=t_main - args.t0,
            main_to_built_s=t_built - t_main,
            built_to_paint_s=now - t_built,
            paint_event_s=now - started,
            torch_loaded="torch" in sys.modules,
            open_clip_loaded="open_clip" in sys.modules,
            rss_mib=proc_status_mib("VmRSS"),
            window=label,
            platform=app.platformName(),
        )
        app.quit()

    watch = _PaintWatch(window, painted)
    window.show()
    app.exec()
    watch.remove()
    _close(window)
    reply(result)


def _close(window) -> None:
    window.close()  # the real window's closeEvent shuts its service down
    for name in ("service", "_service", "generation_service"):
        service = getattr(window, name, None)
        if service is not None and hasattr(service, "shutdown"):
            service.shutdown()
    gallery = getattr(window, "gallery", None)
    model = getattr(gallery, "model", None)
    if model is not None and hasattr(model, "shutdown"):
        model.shutdown()


def _service_of(window, tmp: Path, device: str):
    """The window's own generation service (started now rather than on the next event-loop turn), else a
    service wired the way the window wires it."""
    from cascade_studio.workers.gpu import GenerationService, WorkerConfig

    start = getattr(window, "start_service", None)
    if callable(start):
        start()
    if isinstance(getattr(window, "service", None), GenerationService):
        return window.service, "the window's own service"
    service = GenerationService(WorkerConfig(tmp / "models", tmp / "outputs", device=device, demo=True))
    queue = getattr(window, "queue_panel", None)
    if queue is not None:
        queue.set_service(service)
    view = getattr(window, "image_view", None)
    if view is not None:
        service.preview.connect(lambda _id, pixels: view.show_array(pixels))
        service.image_ready.connect(lambda _id, path: view.show_path(path))
    gallery = getattr(window, "gallery", None)
    if gallery is not None:
        service.image_ready.connect(lambda _id, path: gallery.add_path(path))
    return service, "a service wired like the window's (queue panel, image view, gallery)"


def child_stall(args: argparse.Namespace) -> None:
    from PySide6.QtCore import QElapsedTimer, Qt, QTimer

    from cascade_studio.core.request import GenerationRequest, StageSettings

    tmp = Path(args.tmp)
    _isolate(tmp)
    os.environ["XDG_CACHE_HOME"] = args.cache
    app = _app()
    window, label = _window(tmp, args.device)
    window.show()
    service, wiring = _service_of(window, tmp, args.device)

    clock = QElapsedTimer()
    clock.start()
    ticks: list[float] = []
    marks: list[tuple[float, str, int]] = []  # (ms, event, job id)
    heartbeat = QTimer()
    heartbeat.setTimerType(Qt.TimerType.PreciseTimer)
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e6))
    heartbeat.start()

    request = GenerationRequest(
        "a lighthouse on a cliff at dusk, oil painting",
        seed=1,
        width=args.stall_size,
        height=args.stall_size,
        stage_c=StageSettings(args.steps_c, 4.0, 2.0),
        stage_b=StageSettings(args.steps_b, 1.1, 1.0),
    )
    jobs = 1 + args.stall_jobs
    finished: list[tuple[int, str]] = []
    failures: list[str] = []
    counts = {"progress": 0, "preview": 0}
    statuses: list[tuple[float, str]] = [(0.0, "")]
    service.status_changed.connect(lambda text: statuses.append((clock.nsecsElapsed() / 1e6, text)))
    service.job_started.connect(lambda i: marks.append((clock.nsecsElapsed() / 1e6, "start", i)))
    service.job_finished.connect(lambda i, o: (marks.append((clock.nsecsElapsed() / 1e6, "end", i)),
                                               finished.append((i, o))))  # fmt: skip
    service.job_failed.connect(lambda i, message, kind: failures.append(f"{kind}: {message}"))
    service.progress.connect(lambda *a: counts.__setitem__("progress", counts["progress"] + 1))
    service.preview.connect(lambda *a: counts.__setitem__("preview", counts["preview"] + 1))

    idle_until = [0.0]
    warm = {"start": None, "end": None}

    def submit_all() -> None:
        idle_until[0] = clock.nsecsElapsed() / 1e6
        for i in range(jobs):
            service.submit(request.with_(seed=1 + i))

    def warm_up() -> None:
        warm["start"] = clock.nsecsElapsed() / 1e6

        def ready(text: str) -> None:
            if warm["end"] is None and text.startswith(args.device):
                warm["end"] = clock.nsecsElapsed() / 1e6
                QTimer.singleShot(args.idle_ms, submit_all)

        service.status_changed.connect(ready)
        service.warm_up()

    def check_done() -> None:
        if len(finished) >= jobs or failures:
            app.quit()

    # An idle stretch first (the heartbeat's own jitter), then the jobs, or the warm-up and then the jobs.
    QTimer.singleShot(args.idle_ms, warm_up if args.warm_up else submit_all)
    poll = QTimer()
    poll.timeout.connect(check_done)
    poll.start(50)
    app.exec()
    heartbeat.stop()
    poll.stop()
    _close(window)
    service.shutdown()

    def gaps(lo: float, hi: float) -> list[float]:
        inside = [t for t in ticks if lo <= t <= hi]
        return [b - a for a, b in zip(inside, inside[1:])]

    starts = {i: t for t, e, i in marks if e == "start"}
    ends = {i: t for t, e, i in marks if e == "end"}
    ids = sorted(starts)
    if args.warm_up:
        phases = {"idle (no job)": gaps(0, warm["start"] or ticks[-1])}
        if warm["end"] is not None:
            phases["warm-up (imports, device)"] = gaps(warm["start"], warm["end"])
        first_name = "first job (weights load)"
    else:
        phases = {"idle (no job)": gaps(0, idle_until[0])}
        first_name = "cold job (torch import, load)"
    if ids:
        phases[first_name] = gaps(starts[ids[0]], ends.get(ids[0], ticks[-1]))
        if len(ids) > 1:
            phases[f"{len(ids) - 1} warm jobs"] = gaps(starts[ids[1]], ends.get(ids[-1], ticks[-1]))
    durations = [ends[i] - starts[i] for i in ids if i in ends]
    # Each long gap with the worker's status line when it began (what the GPU thread was doing).
    long_gaps = []
    for a, b in zip(ticks, ticks[1:]):
        if b - a > STALL_TARGET_MS:
            phase = [text for t, text in statuses if t <= a][-1]
            long_gaps.append({"at_ms": a, "gap_ms": b - a, "status": phase})
    reply(
        {
            "window": label,
            "wiring": wiring,
            "platform": app.platformName(),
            "failures": failures,
            "outcomes": [o for _, o in finished],
            "job_s": [d / 1000 for d in durations],
            "progress_signals": counts["progress"],
            "preview_signals": counts["preview"],
            "phases": {name: _gap_stats(g) for name, g in phases.items()},
            "long_gaps": long_gaps,
        }
    )


def _gap_stats(gaps: list[float]) -> dict:
    if not gaps:
        return {"ticks": 0}
    ordered = sorted(gaps)
    return {
        "ticks": len(gaps),
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": ordered[-1],
        "over_target": sum(g > STALL_TARGET_MS for g in gaps),
    }


def child_gallery(args: argparse.Namespace) -> None:
    from PySide6.QtWidgets import QAbstractItemView

    t_main = time.monotonic()
    tmp = Path(args.tmp)
    _isolate(tmp)
    os.environ["XDG_CACHE_HOME"] = args.cache  # the thumbnail cache: empty for a cold open, kept for a warm one
    app = _app()
    from cascade_studio.ui.gallery import GalleryPanel

    folder = Path(args.folder)
    rss_start = proc_status_mib("VmRSS")
    panel = GalleryPanel()
    panel.resize(1200, 800)
    model = _gallery_model(panel)
    view = getattr(panel, "view", None) or next(iter(panel.findChildren(QAbstractItemView)), None)
    result: dict = {"count": args.count, "rss_before_mib": rss_start}
    t0 = time.monotonic()

    def painted(started: float) -> None:
        rows = model.rowCount() if model is not None else -1
        if "first_paint_s" not in result:
            result["first_paint_s"] = time.monotonic() - t0
            result["rows_at_first_paint"] = rows
            result["rss_first_paint_mib"] = proc_status_mib("VmRSS")
        if rows > 0 and "rows_paint_s" not in result:
            result["rows_paint_s"] = time.monotonic() - t0

    thumbs = {"made": 0, "last_s": None}

    def thumbnail_ready(*_args) -> None:
        thumbs["made"] += 1
        thumbs["last_s"] = time.monotonic() - t0

    loader = getattr(panel, "thumbnails", None)
    if loader is not None and hasattr(loader, "thumbnail_ready"):
        loader.thumbnail_ready.connect(thumbnail_ready)

    def listed() -> bool:
        if model is None:
            return True
        total = model.total() if hasattr(model, "total") else model.rowCount()
        return total >= args.count and not getattr(model, "loading", False)

    watch = _PaintWatch(view or panel, painted)
    panel.set_folder(folder)
    panel.show()
    deadline = time.monotonic() + args.timeout
    while ("first_paint_s" not in result or not listed()) and time.monotonic() < deadline:
        app.processEvents()
        app.sendPostedEvents()
        if "first_paint_s" in result and not listed():
            time.sleep(0.001)  # the model fills from its loading thread
    result["listed_s"] = time.monotonic() - t0 if listed() else None
    result["rows_listed"] = model.rowCount() if model is not None else -1
    result["rss_listed_mib"] = proc_status_mib("VmRSS")
    # Let the visible thumbnails be made (background threads), then read the memory again.
    settle = time.monotonic() + args.settle
    while time.monotonic() < settle:
        app.processEvents()
        time.sleep(0.005)
    result["rss_settled_mib"] = proc_status_mib("VmRSS")
    result["thumbnails_made"] = thumbs["made"]
    result["last_thumbnail_s"] = thumbs["last_s"]
    result["peak_rss_mib"] = proc_status_mib("VmHWM")
    result["main_to_open_s"] = t0 - t_main
    watch.remove()
    if hasattr(panel, "shutdown"):
        panel.shutdown()
    elif model is not None and hasattr(model, "shutdown"):
        model.shutdown()
    panel.close()
    from PySide6.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(30_000)
    reply(result)


def _gallery_model(panel):
    for name in ("model", "gallery_model", "_model"):
        model = getattr(panel, name, None)
        if model is not None and hasattr(model, "rowCount"):
            return model
    return None


def write_gallery_folder(folder: Path, count: int) -> None:
    """``count`` small PNGs with our metadata (varied prompts, seeds, sizes), written without fsync."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    from cascade_studio import __version__
    from cascade_studio.core.metadata import png_text_chunks
    from cascade_studio.core.request import GenerationRequest

    folder.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in folder.glob("*.png")}
    rng = np.random.default_rng(0)
    words = [
        "lighthouse",
        "cliff",
        "dusk",
        "forest",
        "city",
        "river",
        "portrait",
        "cat",
        "dragon",
        "castle",
        "neon",
        "rain",
        "snow",
        "desert",
    ]
    yy, xx = np.mgrid[0:96, 0:128]
    for i in range(count):
        name = f"20250101-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-000_{i}.png"
        if name in have:
            continue
        prompt = " ".join(rng.choice(words, size=6))
        request = GenerationRequest(prompt, seed=i, width=1024, height=768)
        a, b = rng.integers(0, 255, size=2)
        pixels = np.stack([(xx * 2 + a) % 256, (yy * 2 + b) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
        info = PngImagePlugin.PngInfo()
        for key, value in png_text_chunks(request, "stage_c_lite_bf16", __version__).items():
            info.add_text(key, value)
        Image.fromarray(pixels).save(folder / name, pnginfo=info)


# ------------------------------------------------------------------------------------------------ parent


def run_child(kind: str, args: argparse.Namespace, extra: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *extra]
    t0 = time.monotonic()
    cmd += ["--t0", repr(t0)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=args.timeout + 120)
    for line in proc.stdout.splitlines():
        if line.startswith(REPLY):
            return json.loads(line[len(REPLY) :])
    sys.stderr.write(proc.stderr[-5000:])
    raise SystemExit(f"child {kind} failed with exit status {proc.returncode}")


def child_env(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = args.platform
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def bench_launch(args: argparse.Namespace, work: Path) -> None:
    rows, labels = [], set()
    for run in range(args.launch_runs):
        tmp = work / f"launch-{run}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        r = run_child("launch", args, ["--tmp", str(tmp)], child_env(args))
        labels.add(f"{r['window']} on {r['platform']}")
        rows.append(
            [
                str(run + 1),
                f"{r['spawn_to_paint_s'] * 1000:.0f}",
                f"{r['spawn_to_main_s'] * 1000:.0f}",
                f"{r['main_to_built_s'] * 1000:.0f}",
                f"{r['built_to_paint_s'] * 1000:.0f}",
                "yes" if r["torch_loaded"] or r["open_clip_loaded"] else "no",
                f"{r['rss_mib']:.0f}",
            ]
        )
    totals = sorted(float(r[1]) for r in rows)
    print(f"\nLaunch to first paint ({'; '.join(sorted(labels))}), {args.launch_runs} runs")
    headers = ["run", "spawn→paint ms", "spawn→main ms", "main→built ms", "built→painted ms", "torch?", "RSS MiB"]
    print(table(headers, rows))
    print(f"median {statistics.median(totals):.0f} ms, best {totals[0]:.0f} ms (spawn: the parent's Popen)")


def bench_stall(args: argparse.Namespace, work: Path) -> None:
    tmp = work / "stall"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cache = work / "cache"
    # The demo weights are written once, beforehand: the cold job should time the import and loading only.
    write = "import sys; from cascade_studio.pipeline.demo import write_demo_models; write_demo_models(sys.argv[1])"
    subprocess.run([sys.executable, "-c", write, str(cache / "cascade-studio" / "demo-models")], cwd=ROOT, check=True)
    extra = [
        "--tmp", str(tmp), "--cache", str(cache), "--device", args.device,
        "--stall-size", str(args.stall_size), "--stall-jobs", str(args.stall_jobs),
        "--steps-c", str(args.steps_c), "--steps-b", str(args.steps_b), "--idle-ms", str(args.idle_ms),
    ] + (["--warm-up"] if args.warm_up else [])  # fmt: skip
    r = run_child("stall", args, extra, child_env(args))
    print(
        f"\nGUI-thread stalls during generation: {r['window']} on {r['platform']}, {r['wiring']}; demo weights on "
        f"{args.device}, {args.stall_size}x{args.stall_size}, Stage C {args.steps_c} steps, Stage B {args.steps_b}, "
        f"previews every step; {HEARTBEAT_MS} ms heartbeat" + ("; service.warm_up() first" if args.warm_up else "")
    )
    if r["failures"]:
        print("  job failures: " + "; ".join(r["failures"]))
    print(
        f"jobs {', '.join(r['outcomes'])}; job times {', '.join(f'{s:.2f}' for s in r['job_s'])} s; "
        f"{r['progress_signals']} progress and {r['preview_signals']} preview signals delivered"
    )
    rows = []
    for name, s in r["phases"].items():
        if not s["ticks"]:
            rows.append([name, "0", "-", "-", "-", "-"])
            continue
        rows.append([name, str(s["ticks"]), f"{s['median_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}",
                     str(s["over_target"])])  # fmt: skip
    print(table(["phase", "ticks", "median gap ms", "p99 gap ms", "max gap ms", f"gaps > {STALL_TARGET_MS:.0f} ms"],
                rows))  # fmt: skip
    for gap in r["long_gaps"]:
        print(f"  gap of {gap['gap_ms']:.0f} ms at {gap['at_ms'] / 1000:.2f} s, GPU thread status: {gap['status']!r}")


def bench_gallery(args: argparse.Namespace, work: Path) -> None:
    try:
        import cascade_studio.ui.gallery  # noqa: F401
    except ImportError as exc:
        print(f"\nGallery: skipped ({exc})")
        return
    rows = []
    for count in args.gallery_sizes:
        folder = work / f"gallery-{count}"
        t0 = time.perf_counter()
        write_gallery_folder(folder, count)
        made = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in folder.glob("*.png")) / 2**20
        print(f"  folder of {count} PNGs ready in {made:.1f} s ({size:.0f} MiB)", flush=True)
        for mode in ("cold", "warm"):
            cache = work / f"gallery-cache-{count}"
            if mode == "cold":
                shutil.rmtree(folder / ".cascade-studio", ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
            tmp = work / f"gallery-run-{count}-{mode}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            extra = ["--tmp", str(tmp), "--folder", str(folder), "--count", str(count), "--settle",
                     str(args.settle), "--cache", str(cache)]  # fmt: skip
            r = run_child("gallery", args, extra, child_env(args))
            listed = f"{r['listed_s']:.2f}" if r["listed_s"] is not None else f"> {args.timeout}"
            rows_paint = f"{r['rows_paint_s'] * 1000:.0f}" if r.get("rows_paint_s") is not None else "-"
            last_thumb = f"{r['last_thumbnail_s']:.2f}" if r.get("last_thumbnail_s") is not None else "-"
            rows.append(
                [
                    f"{count} {mode}",
                    f"{r['first_paint_s'] * 1000:.0f}",
                    rows_paint,
                    listed,
                    str(r["rows_listed"]),
                    f"{r['thumbnails_made']} by {last_thumb}",
                    f"{r['rss_before_mib']:.0f}",
                    f"{r['rss_first_paint_mib']:.0f}",
                    f"{r['rss_listed_mib']:.0f}",
                    f"{r['rss_settled_mib']:.0f}",
                    f"{r['peak_rss_mib']:.0f}",
                ]
            )
    print(f"\nGallery open (GalleryPanel.set_folder + show; cold: no index, warm: index present; 128x96 PNGs; "
          f"RSS settled: after {args.settle:.1f} s more of events)")  # fmt: skip
    headers = ["images", "first paint ms", "first rows ms", "all listed s", "rows", "thumbnails (s)", "RSS before MiB",
               "RSS at paint MiB", "RSS listed MiB", "RSS settled MiB", "peak RSS MiB"]  # fmt: skip
    print(table(headers, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="launch,stall,gallery", help="comma-separated parts (default: all)")
    parser.add_argument("--platform", help="Qt platform for the children (default: xcb with $DISPLAY, else offscreen)")
    parser.add_argument("--launch-runs", type=int, default=5, help="launches to time (default 5)")
    parser.add_argument("--device", default="cpu", help="the stall part's device (default cpu)")
    parser.add_argument("--stall-size", type=int, default=512, help="image side of the stall jobs (default 512)")
    parser.add_argument("--stall-jobs", type=int, default=5, help="warm jobs after the cold one (default 5)")
    parser.add_argument("--steps-c", type=int, default=20, help="Stage C steps of the stall jobs (default 20)")
    parser.add_argument("--steps-b", type=int, default=10, help="Stage B steps of the stall jobs (default 10)")
    parser.add_argument("--warm-up", action="store_true", help="stall part: call service.warm_up() first")
    parser.add_argument("--idle-ms", type=int, default=500, help="heartbeat before the first job (default 500)")
    parser.add_argument("--gallery-sizes", default="1000,10000", help="folder sizes (default 1000,10000)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of events after a gallery is listed")
    parser.add_argument("--timeout", type=float, default=300, help="per child, seconds (default 300)")
    parser.add_argument("--workdir", help="keep (and reuse) the gallery folders and demo weights here")
    parser.add_argument("--child", choices=("launch", "stall", "gallery"), help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "launch":
        return child_launch(args)
    if args.child == "stall":
        return child_stall(args)
    if args.child == "gallery":
        return child_gallery(args)

    args.platform = args.platform or ("xcb" if os.environ.get("DISPLAY") else "offscreen")
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - {"launch", "stall", "gallery"}
    if unknown:
        parser.error(f"--only takes launch, stall, gallery (not {', '.join(sorted(unknown))})")
    args.gallery_sizes = [int(n) for n in args.gallery_sizes.split(",") if n.strip()]
    import PySide6

    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {_load()}; Python {sys.version.split()[0]}, "
        f"PySide6 {PySide6.__version__}, Qt platform {args.platform}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade_bench_ui_") as scratch:
        work = Path(args.workdir) if args.workdir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if "launch" in parts:
            bench_launch(args, work)
        if "stall" in parts:
            bench_stall(args, work)
        if "gallery" in parts:
            bench_gallery(args, work)
    print(f"\nLoad average at the end {_load()}; total wall time {time.perf_counter() - started:.1f} s")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
