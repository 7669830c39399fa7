"""Swap the adapter a vLLM server serves under the name clients use.

A LoRA candidate is loaded under a versioned name (`ALIAS@HASH12`), then the alias is
pointed at it with an in-place load. The previous version stays loaded under its own
versioned name, so rolling back is one more in-place load. Each step checks the server's
state first, so running it twice changes nothing the second time.

Every load names the content hash the adapter was approved under: the folder is
re-hashed first, and a mismatch is refused before the server is asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from upgate.artifacts import tree_problem
from upgate.errors import DeployError
from upgate.guard import check_model_requests

log = logging.getLogger(__name__)


class ServedModel(BaseModel):
    """One entry of the server's /v1/models."""

    id: str
    root: str | None = None
    parent: str | None = None


class VllmAdmin:
    """The few admin calls upgate makes on a vLLM server (runtime LoRA updating on)."""

    def __init__(self, base_url: str, *, timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def healthy(self) -> bool:
        """Whether the server answers /health."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> dict[str, ServedModel]:
        """Served names (base model and adapters) and what each is."""
        try:
            resp = self._http.get("/v1/models")
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise DeployError(
                f"vLLM at {self.base_url} did not list its models ({exc}); is it running? "
                "Start it with `make vllm`."
            ) from exc
        return {m["id"]: ServedModel.model_validate(m) for m in resp.json().get("data", [])}

    def load_adapter(self, name: str, path: Path, *, expected_sha256: str,
                     inplace: bool = False) -> None:
        """Load a LoRA adapter folder under `name` (replace it if `inplace`), once its
        content hash is `expected_sha256`; DeployError before any request otherwise."""
        check_adapter(path, expected_sha256)
        body: dict[str, object] = {"lora_name": name, "lora_path": str(path)}
        if inplace:
            body["load_inplace"] = True
        resp = self._http.post("/v1/load_lora_adapter", json=body)
        if resp.status_code != 200:
            raise DeployError(
                f"vLLM refused to load adapter {name} from {path}: "
                f"HTTP {resp.status_code} {resp.text[:300]}"
            )

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter; an unknown name is not an error."""
        resp = self._http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if resp.status_code not in (200, 404, 400):
            raise DeployError(f"vLLM failed to unload {name}: HTTP {resp.status_code}")

    def ensure_loaded(self, name: str, path: Path, *, expected_sha256: str) -> None:
        """Load `path` (checked against `expected_sha256`) unless `name` is already served."""
        if name not in self.models():
            self.load_adapter(name, path, expected_sha256=expected_sha256)

    def smoke(self, model: str) -> dict[str, Any]:
        """One short chat completion to `model`: whether it answered, and what."""
        check_model_requests(self.base_url, "use upgate.deploy.testing.FakeVllmAdmin")
        try:
            resp = self._http.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "Reply with one word: ready?"}]})
        except httpx.HTTPError as exc:
            return {"ok": False, "model": model, "error": str(exc)[:300]}
        if resp.status_code != 200:
            return {"ok": False, "model": model, "status": resp.status_code,
                    "error": resp.text[:300]}
        try:
            answer = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return {"ok": False, "model": model, "status": 200,
                    "error": f"no answer in the reply ({exc!r})"}
        return {"ok": isinstance(answer, str), "model": model, "status": 200,
                "answer": str(answer)[:80]}

    def point_alias(self, alias: str, path: Path, *, expected_sha256: str) -> None:
        """Make `alias` serve the adapter at `path` (in place when it already exists)."""
        current = self.models().get(alias)
        if current is not None and current.root == str(path):
            log.info("alias %s already serves %s", alias, path)
            return
        self.load_adapter(alias, path, expected_sha256=expected_sha256,
                          inplace=current is not None)
        after = self.models().get(alias)
        if after is None or (after.root is not None and after.root != str(path)):
            raise DeployError(
                f"after loading, vLLM serves {alias} from "
                f"{after.root if after else 'nothing'}, not {path}"
            )


def check_adapter(path: Path, expected_sha256: str) -> None:
    """Re-hash the adapter folder; DeployError unless it is the approved content."""
    problem = tree_problem(path, expected_sha256)
    if problem is not None:
        raise DeployError(f"refusing to load the adapter: {problem}. Nothing was loaded; "
                          "run a new cycle to build, judge and approve it again")
