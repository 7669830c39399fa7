"""A real HTTP receiver on loopback, standing in for Slack and for a webhook consumer.

Tests (and `make demo` with a webhook URL) point channels at it. It records every request,
keeps the first copy of each idempotency id (the dedupe a consumer is expected to do), and
can be told to answer 500 or to hang past the sender's timeout.

    python -m upgate.notify.testing --port 8099     # print what arrives
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from upgate.notify.channels import IDEMPOTENCY_HEADER

Mode = Literal["ok", "fail", "hang"]


@dataclass
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class LoopbackReceiver:
    """A threaded HTTP server on 127.0.0.1 recording POSTs; `mode` sets its answer."""

    mode: Mode = "ok"
    hang_s: float = 3.0
    echo: bool = False
    on_receive: Callable[[Received], None] | None = None
    """Called with each request as it arrives (after it is recorded)."""
    requests: list[Received] = field(default_factory=list)
    unique: dict[str, Received] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        """The receiver's root URL."""
        assert self._server is not None, "start() the receiver first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, port: int = 0) -> LoopbackReceiver:
        """Listen on 127.0.0.1 (a free port by default) in a background thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                receiver._record(got)
                if receiver.mode == "hang":
                    time.sleep(receiver.hang_s)
                status = 500 if receiver.mode == "fail" else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"receiver error")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _record(self, got: Received) -> None:
        with self._cond:
            self.requests.append(got)
            key = got.headers.get("webhook-id") or got.headers.get(IDEMPOTENCY_HEADER.lower())
            if key and key not in self.unique:
                self.unique[key] = got
            self._cond.notify_all()
        if self.echo:
            print(f"--- {got.path} id={key}\n{json.dumps(got.json(), indent=2)}", flush=True)
        if self.on_receive is not None:
            self.on_receive(got)

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[Received]:
        """Block until `n` requests arrived (or the timeout); returns them."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.requests) >= n, timeout_s)
            return list(self.requests)

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Run a receiver that prints every message it gets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    receiver = LoopbackReceiver(echo=True).start(args.port)
    print(f"listening on {receiver.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        receiver.stop()


def slack_action_request(signing_secret: str, *, action_id: str, user: str,
                         response_url: str | None = None, timestamp: int | None = None
                         ) -> tuple[bytes, dict[str, str]]:
    """A block_actions request signed the way Slack signs it: (form body, headers)."""
    from urllib.parse import urlencode

    from slack_sdk.signature import SignatureVerifier

    payload: dict[str, Any] = {
        "type": "block_actions", "user": {"id": user, "username": user.lower()},
        "actions": [{"action_id": action_id, "type": "button", "value": "x"}],
    }
    if response_url:
        payload["response_url"] = response_url
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    return body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature or "",
                  "Content-Type": "application/x-www-form-urlencoded"}


if __name__ == "__main__":
    main()
