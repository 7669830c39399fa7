"""Serving a candidate model for judging, behind one interface the critic asks.

The critic never loads adapters itself: it asks a `CandidateServing` for a model name to
send its eval requests to, for as long as it judges. The vLLM implementation loads the
adapter under `upgate-candidate-<hash>` on the same server and unloads it afterwards; it
refuses any name that is, or could be, the live alias, so judging can never touch what
the live alias serves. `RecordingServing` is the test double.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from upgate.errors import EvalError
from upgate.records import Artifact

log = logging.getLogger(__name__)

CANDIDATE_PREFIX = "upgate-candidate-"


def candidate_name(adapter: Artifact) -> str:
    """The name a candidate adapter is served under while it is judged."""
    return f"{CANDIDATE_PREFIX}{adapter.sha256[:12]}"


class AdapterLoader(Protocol):
    """What the vLLM implementation needs from the server's admin API."""

    def ensure_loaded(self, name: str, path: Path, *, expected_sha256: str) -> None:
        """Load an adapter under `name` once its content hash checks out (no-op when loaded)."""

    def unload_adapter(self, name: str) -> None:
        """Unload the adapter `name`."""


class CandidateServing(Protocol):
    """Serves a candidate adapter for the duration of a `with` block; yields its model name."""

    def serve(self, adapter: Artifact) -> AbstractContextManager[str]:
        """A context in which `adapter` answers under the yielded model name."""


class VllmCandidateServing:
    """Loads candidates on the vLLM server under candidate names; never the live alias."""

    def __init__(self, admin: AdapterLoader, live_alias: str | None) -> None:
        self.admin = admin
        self.live_alias = live_alias

    @contextlib.contextmanager
    def serve(self, adapter: Artifact) -> Iterator[str]:
        """Load under `upgate-candidate-<hash>`, yield the name, unload."""
        name = candidate_name(adapter)
        if not name.startswith(CANDIDATE_PREFIX) or name == self.live_alias:
            raise EvalError(f"refusing to serve a candidate as {name!r}: the live alias")
        self.admin.ensure_loaded(name, Path(adapter.path), expected_sha256=adapter.sha256)
        try:
            yield name
        finally:
            self.admin.unload_adapter(name)


class NoServing:
    """For targets that serve no model: a model candidate is an error that says what to do."""

    @contextlib.contextmanager
    def serve(self, adapter: Artifact) -> Iterator[str]:
        """Refuse: there is no server to judge a model candidate on."""
        raise EvalError(
            f"candidate adapter {adapter.name!r} needs a serving endpoint; configure [serving] "
            "with the vLLM server's admin API")
        yield ""  # pragma: no cover (unreachable; makes this a generator)


class RecordingServing:
    """Test double: records which adapters were served under which names."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def serve(self, adapter: Artifact) -> Iterator[str]:
        """Record the load and unload; yield the candidate name."""
        name = candidate_name(adapter)
        self.calls.append(("load", name))
        try:
            yield name
        finally:
            self.calls.append(("unload", name))
