"""A tiny local stand-in for the Hugging Face Hub's file resolver, for download tests.

It speaks just enough of the protocol that ``huggingface_hub.hf_hub_download(repo_id, filename,
endpoint=hub.url)`` works: ``HEAD`` and ``GET`` on ``/{repo_id}/resolve/{revision}/{filename}``
answering with ``X-Repo-Commit``, ``ETag`` (the file's sha256, as for LFS files), ``Content-Length``,
and ``206 Partial Content`` for ``Range: bytes=N-``. Switches make it refuse access (401, or 403
with ``X-Error-Code: GatedRepo``), cut the connection half-way through a file once, or serve
garbage; every request is recorded. It listens on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    repo: str
    revision: str
    filename: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, filename) -> content
    deny: int | None = None  # 401 or 403: refuse every file
    gated: bool = False  # with deny: answer as a gated repository does (X-Error-Code: GatedRepo)
    drop_once: set[str] = field(default_factory=set)  # file names whose first full GET is cut half-way
    garbage: set[str] = field(default_factory=set)  # file names served as garbage (same length)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- content ---------------------------------------------------------------------------------

    def add(self, repo: str, filename: str, content: bytes) -> None:
        self.files[(repo, filename)] = content

    def content(self, repo: str, filename: str) -> bytes:
        data = self.files[(repo, filename)]
        if filename in self.garbage:
            return (b"this is not a safetensors file " * (len(data) // 31 + 1))[: len(data)]
        return data

    def gets(self, filename: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and filename in (None, r.filename)]

    # -- server ----------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection, closed after the answer

            def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- protocol --------------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if match is None:
            handler.send_error(404)
            return
        repo, revision, filename = match["repo"], match["rev"], match["file"]
        request = Request(
            "HEAD" if head else "GET",
            repo,
            revision,
            filename,
            handler.headers.get("Range"),
            handler.headers.get("Authorization"),
        )
        with self._lock:
            self.requests.append(request)

        if self.deny:
            handler.send_response(self.deny)
            if self.gated:
                handler.send_header("X-Error-Code", "GatedRepo")
                handler.send_header("X-Error-Message", f"Access to model {repo} is restricted.")
            handler.send_header("X-Repo-Commit", COMMIT)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if (repo, filename) not in self.files:
            handler.send_response(404)
            handler.send_header("X-Error-Code", "EntryNotFound")
            handler.send_header("X-Repo-Commit", COMMIT)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return

        data = self.content(repo, filename)
        etag = hashlib.sha256(data).hexdigest()
        start = 0
        if request.range and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-", request.range.strip())[1])
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{etag}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        if head:
            return
        body = data[start:]
        with self._lock:
            cut = start == 0 and filename in self.drop_once
            if cut:
                self.drop_once.discard(filename)
        if cut:
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return  # the connection closes with the body half sent
        handler.wfile.write(body)


def demo_file_for(name: str) -> str:
    """The demo model set's file that stands in for the registry file ``name`` (same network)."""
    from cascade_studio.pipeline.weights import entry_named

    entry = entry_named(name)
    if entry.network == "stage_c":
        return "stage_c_lite.safetensors"
    if entry.network == "stage_b":
        return "stage_b_lite.safetensors"
    return name


def hub_from_demo(demo_models: Path) -> FakeHub:
    """A (not yet started) hub serving every registry file of a variant, made of the demo model set's tiny networks.

    Registry entries in no variant (alternatives that are never downloaded) are not served.
    """
    from cascade_studio.pipeline.weights import REGISTRY

    hub = FakeHub()
    for entry in REGISTRY:
        if not entry.variants:
            continue
        hub.add(entry.repo, entry.filename, (Path(demo_models) / demo_file_for(entry.name)).read_bytes())
    return hub
