"""Test double shipped with the package: a vLLM server's LoRA admin endpoints in memory.

`FakeVllmAdmin` replaces only the HTTP calls of `VllmAdmin` (list, load, unload); the logic
above them (`ensure_loaded`, `point_alias`) is the real one, so deployers and reconcile run
their real code against it. Like `upgate.agents.testing`, it never talks to a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from upgate.deploy.vllm import ServedModel, VllmAdmin, check_adapter
from upgate.errors import DeployError


class FakeVllmAdmin(VllmAdmin):
    """Served names -> the folder each serves; every load and unload is recorded in `calls`."""

    def __init__(self, served: dict[str, str] | None = None) -> None:  # no HTTP client
        self.base_url = "fake://vllm"
        self.served: dict[str, str] = dict(served or {})
        self.calls: list[tuple[str, str, str]] = []
        self.mute: set[str] = set()
        """Served names whose chat completions fail (a smoke check sees an error)."""

    def close(self) -> None:
        """Nothing to close."""

    def healthy(self) -> bool:
        """Always up."""
        return True

    def models(self) -> dict[str, ServedModel]:
        """What is served now."""
        return {k: ServedModel(id=k, root=v) for k, v in self.served.items()}

    def load_adapter(self, name: str, path: Path, *, expected_sha256: str,
                     inplace: bool = False) -> None:
        """Serve `path` under `name` once its content hash checks out (the real check);
        like vLLM, a second load needs `inplace`."""
        check_adapter(path, expected_sha256)
        if name in self.served and not inplace:
            raise DeployError(f"fake vLLM: {name} is already loaded (load it in place)")
        self.calls.append(("load", name, str(path)))
        self.served[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        """Stop serving `name` (unknown names are fine)."""
        self.calls.append(("unload", name, ""))
        self.served.pop(name, None)

    def smoke(self, model: str) -> dict[str, Any]:
        """A served, unmuted name answers; anything else is an error, as on vLLM."""
        self.calls.append(("smoke", model, ""))
        if model not in self.served:
            return {"ok": False, "model": model, "status": 404, "error": "model not found"}
        if model in self.mute:
            return {"ok": False, "model": model, "status": 500, "error": "muted by the test"}
        return {"ok": True, "model": model, "status": 200, "answer": "ready"}
