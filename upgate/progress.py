"""Progress of long steps inside a node: training epochs and steps, eval cases, image builds.

A node runs for minutes on a CPU (a LoRA training run, the critic's eval suite, a first
image build); the ledger only hears of it when the node ends. Long steps publish typed
`ProgressEvent`s instead, to the `ProgressSink` of the cycle being driven (`reporting`,
installed by the runner around each drive of a cycle), through `reporter()`:

    report = reporter()                  # bound to this cycle and node; a no-op outside one
    report("case", done=3, total=40, detail="visible")
    sandbox.exec(argv, on_output=report.lines())   # JSON progress lines from a sandbox

Where they are kept: `ProgressBoard`, a small table in the state database (`state.db`), one
row per (cycle, node, kind) holding only the latest event, under a sequence number that
only grows, so another process (`upgate serve` streaming the cycle; a second terminal)
reads what changed since its last look with one indexed query. The rows of a cycle are
deleted when the runner stops driving it (it ended, waits for a person, or was halted).

Why not the ledger: the ledger is append-only and hash-chained, and every entry is kept,
verified and witnessed forever; a training run alone reports hundreds of steps, which would
bloat the chain with records nobody needs once the step is over. Progress is a view of work
in flight, not a decision: losing it loses nothing (the node's own ledger entry says what
the step did).

What a sandbox prints is untrusted: a progress line is parsed as JSON into bounded
integers and a short detail string, and consumers show the detail as text only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from upgate.store import Store

log = logging.getLogger(__name__)

ProgressKind = Literal["epoch", "step", "case", "build"]
KINDS: tuple[ProgressKind, ...] = ("epoch", "step", "case", "build")
MAX_DETAIL = 160
MAX_COUNT = 10**9


class ProgressEvent(BaseModel):
    """How far one long step of a node has come."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cycle_id: str
    node: str
    kind: ProgressKind
    done: int = Field(ge=0, le=MAX_COUNT)
    total: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    """None when the step does not know its end."""
    detail: str = Field(default="", max_length=MAX_DETAIL)
    seq: int = 0
    """Assigned by the board; grows with every event stored."""


class ProgressSink(Protocol):
    """Where progress events go."""

    def publish(self, event: ProgressEvent) -> None:
        """Take one event; must not raise for a well-formed event."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS progress_by_cycle ON progress (cycle_id, seq);
"""


class ProgressBoard:
    """The latest progress of each long step, in the state database (see the module doc)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                store.execute(statement)

    def publish(self, event: ProgressEvent) -> None:
        """Replace the step's previous event with this one, under a new sequence number."""
        body = event.model_dump_json(exclude={"seq"})
        self.store.execute("DELETE FROM progress WHERE cycle_id = ? AND node = ? AND kind = ?",
                           (event.cycle_id, event.node, event.kind))
        self.store.execute(
            "INSERT INTO progress (cycle_id, node, kind, event) VALUES (?, ?, ?, ?)",
            (event.cycle_id, event.node, event.kind, body))

    def since(self, cycle_id: str, after: int = 0) -> list[ProgressEvent]:
        """The cycle's latest events stored after sequence number `after`, oldest first."""
        rows = self.store.execute(
            "SELECT seq, event FROM progress WHERE cycle_id = ? AND seq > ? ORDER BY seq",
            (cycle_id, after))
        out = []
        for seq, body in rows:
            try:
                out.append(ProgressEvent.model_validate_json(body).model_copy(
                    update={"seq": int(seq)}))
            except ValidationError:
                log.warning("skipping an unreadable progress row %s", seq)
        return out

    def prune(self, cycle_id: str) -> None:
        """Forget the cycle's progress (its long steps are over)."""
        self.store.execute("DELETE FROM progress WHERE cycle_id = ?", (cycle_id,))


@dataclass
class MemoryProgress:
    """Test double: keeps every event in a list."""

    events: list[ProgressEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def publish(self, event: ProgressEvent) -> None:
        """Keep the event."""
        with self._lock:
            self.events.append(event)


@dataclass
class FanOut:
    """Publishes to several sinks; one that fails is logged and does not stop the rest."""

    sinks: Sequence[ProgressSink]

    def publish(self, event: ProgressEvent) -> None:
        """Publish to every sink."""
        for sink in self.sinks:
            try:
                sink.publish(event)
            except Exception:
                log.warning("a progress sink failed", exc_info=True)


@dataclass(frozen=True)
class _Binding:
    sink: ProgressSink
    cycle_id: str


_current: ContextVar[_Binding | None] = ContextVar("upgate_progress", default=None)


@contextmanager
def reporting(sink: ProgressSink, cycle_id: str) -> Iterator[None]:
    """Send what `reporter()` reports inside (this thread and the nodes it runs) to `sink`."""
    token = _current.set(_Binding(sink, cycle_id))
    try:
        yield
    finally:
        _current.reset(token)


def _current_node() -> str:
    try:
        from langgraph.config import get_config

        return str(get_config().get("metadata", {}).get("langgraph_node", ""))
    except (RuntimeError, ImportError):
        return ""


class Reporter:
    """Publishes one node's progress; a no-op when no cycle is being reported."""

    def __init__(self, binding: _Binding | None, node: str) -> None:
        self._binding = binding
        self.node = node

    @property
    def active(self) -> bool:
        """Whether events go anywhere."""
        return self._binding is not None

    def __call__(self, kind: ProgressKind, done: int, total: int | None = None,
                 detail: str = "") -> None:
        """Publish one event (bounded; never raises for the caller)."""
        if self._binding is None:
            return
        try:
            event = ProgressEvent(
                cycle_id=self._binding.cycle_id, node=self.node, kind=kind,
                done=max(0, min(int(done), MAX_COUNT)),
                total=None if total is None else max(0, min(int(total), MAX_COUNT)),
                detail=detail[:MAX_DETAIL])
            self._binding.sink.publish(event)
        except Exception:
            log.warning("could not publish progress", exc_info=True)

    def lines(self, fallback: Callable[[str], None] | None = None) -> Callable[[str], None]:
        """An `on_output` listener: JSON progress lines become events; others go to
        `fallback` (if any)."""

        def listen(line: str) -> None:
            parsed = parse_progress_line(line)
            if parsed is not None:
                self(*parsed)
            elif fallback is not None:
                fallback(line)

        return listen


def reporter(node: str | None = None) -> Reporter:
    """A reporter for the current cycle and node (the node LangGraph is running, unless
    named); call it in the node's own thread, then hand it to threads it starts."""
    return Reporter(_current.get(), node if node is not None else _current_node())


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_COUNT else None


def parse_progress_line(line: str) -> tuple[ProgressKind, int, int | None, str] | None:
    """(kind, done, total, detail) from a JSON progress line, or None for any other line.

    Understood: `{"event": "epoch", "epoch": E, "epochs": N, "loss": L}` and
    `{"event": "step", "step": S, "steps": N, "epoch": E, "loss": L}` (the LoRA training
    script's output), and `{"progress": KIND, "done": D, "total": N, "detail": "..."}`.
    """
    text = line.strip()
    if not text.startswith("{") or len(text) > 4096:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    loss = data.get("loss")
    loss_text = f"loss {loss:.4f}" if isinstance(loss, int | float) else ""
    if data.get("event") == "epoch" and (done := _int(data.get("epoch"))) is not None:
        return "epoch", done, _int(data.get("epochs")), loss_text
    if data.get("event") == "step" and (done := _int(data.get("step"))) is not None:
        epoch = _int(data.get("epoch"))
        where = f"epoch {epoch}" if epoch is not None else ""
        return "step", done, _int(data.get("steps")), ", ".join(x for x in (where, loss_text)
                                                              if x)
    kind = data.get("progress")
    if kind in KINDS and (done := _int(data.get("done"))) is not None:
        detail = data.get("detail")
        return kind, done, _int(data.get("total")), detail if isinstance(detail, str) else ""
    return None
