"""Test double shipped with the package: a process that answers like a vLLM server.

`python -m upgate.deploy.fake_vllm_server --model DIR --served-model-name NAME --port P`
takes the launcher's arguments (others are ignored), answers `/health`, `/v1/models` and
`/v1/chat/completions` on loopback, and says in every reply which folder it serves, so a
test can tell blue from green. It starts in a moment, which lets the unit tier run the real
launcher, process groups and reaper against it. A folder whose `config.json` holds
`{"fail": "why"}` makes it print that and exit 1, as vLLM does on a broken model.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    opts, extra = parser.parse_known_args(argv)
    config = json.loads((Path(opts.model) / "config.json").read_text())
    if config.get("fail"):
        print(f"ERROR: {config['fail']}", flush=True)
        return 1
    name, model = opts.served_model_name, opts.model

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/v1/models":
                self._send(200, {"data": [{"id": name, "root": model, "parent": None}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))
                              or b"{}")
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": "not found"})
            elif body.get("model") != name:
                self._send(404, {"error": f"model {body.get('model')!r} does not exist"})
            else:
                self._send(200, {"model": name, "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": f"served from {model} {' '.join(extra)}"}}]})

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    print(f"fake vLLM serving {model} as {name} on {opts.host}:{opts.port}", flush=True)
    ThreadingHTTPServer((opts.host, opts.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
