"""Real loopback servers for gateway tests: a small OpenAI-compatible upstream, and a
helper that runs any ASGI app (the gateway) under uvicorn on a free port in a thread.

The fake upstream answers every completion with the `model` it received and its own name,
so a test can see which backend served a request and what the gateway rewrote. Its `mode`
makes it fail (500), hang past the caller's timeout, or break off an answer half-sent;
`stream: true` gets server-sent events, one chunk per word, with a pause between chunks.
With `hold` set, an answer waits for that event (a stream waits after its first chunk), so
a test can act while a request is in flight; if nobody releases it within `hold_s`, the
answer says so (500, or an error chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

Mode = Literal["ok", "fail", "hang", "break"]


@dataclass
class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 that says who it is and what it got."""

    name: str
    mode: Mode = "ok"
    hang_s: float = 2.0
    chunk_pause_s: float = 0.05
    models: tuple[str, ...] = ("base",)
    hold: threading.Event | None = None
    hold_s: float = 10.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[socket.socket] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The OpenAI root (ending in /v1)."""
        assert self._server is not None, "start() the upstream first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> FakeUpstream:
        """Listen on a free loopback port in a background thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections, as a server that dies does."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def completion(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        """The answer to one non-streaming request."""
        text = f"{self.name} answers {body.get('model')}"
        choice: dict[str, Any] = ({"index": 0, "text": text, "finish_reason": "stop"}
                                  if path.endswith("/completions") and "chat" not in path else
                                  {"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": text}})
        return {"id": f"cmpl-{self.name}", "object": "chat.completion", "model": body.get(
            "model"), "served_by": self.name, "choices": [choice]}

    def held_too_long(self) -> bool:
        """Wait for `hold` if set; True when nobody released it in time."""
        return self.hold is not None and not self.hold.wait(self.hold_s)

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        """Keep what arrived, for the test to read."""
        with self._lock:
            self.seen.append({"path": path, "headers": headers, "body": body})


def _handler(up: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as two writes; without this, Nagle's algorithm and
            # the client's delayed ACK hold the body back ~40 ms on every answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with up._lock:
                up._open.add(self.connection)

        def finish(self) -> None:
            with up._lock:
                up._open.discard(self.connection)
            super().finish()

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.endswith("/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "owned_by": up.name} for m in up.models]})
            else:
                self._send(200 if self.path == "/health" else 404, {})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.loads(raw)
            up.record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            if up.mode == "hang":
                time.sleep(up.hang_s)
            if up.mode == "break":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"choices": [')
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if up.mode == "fail":
                self._send(500, {"error": {"message": f"{up.name} fails on purpose"}})
                return
            if body.get("stream") is True:
                self._stream(body)
                return
            if up.held_too_long():
                self._send(500, {"error": {"message": f"{up.name}: hold never released"}})
                return
            self._send(200, up.completion(body, self.path))

        def _stream(self, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for i, word in enumerate(f"{up.name} streams {body.get('model')}".split()):
                if i == 1 and up.held_too_long():
                    word = "HOLD-NEVER-RELEASED"
                chunk = {"object": "chat.completion.chunk", "served_by": up.name,
                         "choices": [{"index": 0, "delta": {"content": word + " "}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(up.chunk_pause_s)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port; yield its root URL."""
    import uvicorn

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start under uvicorn; see the log above")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway_process(db: Path, upstream: str, *, port: int | None = None,
                    wait_s: float = 120.0, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Run `upgate gateway serve` as a real process (no upgate.toml); yield its root URL.

    Clients use the root + /v1. The process is stopped on exit; if it dies or does not
    answer /health within `wait_s`, the error carries its output.
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPGATE_")}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "upgate.cli", "gateway", "serve", "--db", str(db),
             "--upstream", upstream, "--port", str(port), *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + wait_s
            while not _answers(f"{url}/health"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    raise RuntimeError(f"`upgate gateway serve` did not come up on {url}: "
                                       + out.read().decode(errors="replace")[-2000:])
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback URL we made)
            return bool(r.status == 200)
    except OSError:
        return False
