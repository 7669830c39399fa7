"""Delivery: claim due outbox rows, send them, retry with backoff, dead-letter the hopeless.

Delivery runs beside decisions, never inside them: a decision is committed (with its
outbox rows) before any send starts, and nothing a channel answers changes it. The worker
runs as a thread inside `upgate serve` (`start_worker` / `NotifyWorker.stop`) and as one
pass at the end of each CLI command (`deliver_after_command`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from upgate.ledger import open_ledger
from upgate.notify.channels import Channel, SendResult, get_channel
from upgate.notify.config import NotifySettings
from upgate.notify.events import queued_here
from upgate.notify.outbox import Outbox
from upgate.notify.render import compose

if TYPE_CHECKING:
    from upgate.graphs.runner import Runner

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    min(max_s, base_s * 2**(n-1)), so workers that failed together do not retry together."""

    base_s: float = 2.0
    max_s: float = 300.0
    rng: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failed attempt (1-based)."""
        cap: float = min(self.max_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        return cap / 2 + float(self.rng()) * cap / 2


@dataclass
class DeliveryReport:
    """What one pass did."""

    delivered: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def channels_of(notify: NotifySettings) -> dict[str, Channel]:
    """A backend for every configured channel."""
    return {c.name: get_channel(c) for c in notify.channels}


def deliver_due(outbox: Outbox, channels: Mapping[str, Channel], notify: NotifySettings,
                *, backoff: Backoff | None = None, limit: int = 50,
                only_channel: str | None = None) -> DeliveryReport:
    """One pass: send every due message once; record the outcome of each attempt."""
    backoff = backoff or Backoff(notify.backoff_base_s, notify.backoff_max_s)
    report = DeliveryReport()
    hold = {c.name for c in notify.channels if c.on_doubt == "hold"}
    for row in outbox.claim(limit=limit, lease_s=notify.lease_s, channel=only_channel,
                            hold=hold):
        channel = channels.get(row.channel)
        if channel is None:
            result = SendResult(ok=False, error=f"channel {row.channel!r} is no longer "
                                "configured; add it back to [[notify.channels]]")
        else:
            try:
                msg = compose(row, outbox.head(), notify)
                outbox.mark_sending(row.id)
                result = channel.send(msg)
            except Exception as exc:  # a broken channel must not stop the others
                log.exception("channel %s crashed", row.channel)
                result = SendResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        if result.ok:
            outbox.mark_delivered(row.id)
            report.delivered.append(row.id)
        elif row.attempts >= notify.max_attempts:
            outbox.mark_failed(row.id, result.error, retry_in=None)
            report.dead.append(row.id)
            log.warning("notification %s to %s dead after %d attempts: %s", row.id,
                        row.channel, row.attempts, result.error)
        else:
            outbox.mark_failed(row.id, result.error, retry_in=backoff.delay(row.attempts))
            report.retried.append(row.id)
    return report


def check_ledger(state_dir: Path, outbox: Outbox, notify: NotifySettings) -> bool:
    """Verify the ledger; a failure queues a `verify_failed` notice (once per finding)."""
    ledger = open_ledger(state_dir)
    try:
        report = ledger.verify()
    finally:
        ledger.close()
    if report.ok:
        return True
    wanted = [c.name for c in notify.channels if c.wants("verify_failed")]
    key = hashlib.sha256("\n".join(report.problems).encode()).hexdigest()
    outbox.enqueue_direct("verify_failed", wanted,
                          {"problems": report.problems, "entries": report.entries},
                          key=f"verify_failed/{key}", cycle_id="ledger")
    return False


class NotifyWorker:
    """A background thread delivering one state folder's outbox."""

    def __init__(self, state_dir: Path, notify: NotifySettings, *,
                 channels: Mapping[str, Channel] | None = None, poll_s: float = 1.0,
                 verify_every_s: float = 60.0, backoff: Backoff | None = None,
                 runner: Runner | None = None) -> None:
        self.state_dir = state_dir
        self.runner = runner
        self.notify = notify
        self.channels = dict(channels) if channels is not None else channels_of(notify)
        self.poll_s = poll_s
        self.verify_every_s = verify_every_s
        self.backoff = backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> DeliveryReport:
        """One delivery pass (used by the thread, and by tests directly)."""
        outbox = Outbox.of_state(self.state_dir)
        try:
            return deliver_due(outbox, self.channels, self.notify, backoff=self.backoff)
        finally:
            outbox.close()

    def checks(self) -> None:
        """The periodic checks: the ledger verifies, unanswered requests expire."""
        if self.runner is not None:
            from upgate.notify.expiry import sweep_expired

            sweep_expired(self.runner)
        if self.notify.channels:
            outbox = Outbox.of_state(self.state_dir)
            try:
                check_ledger(self.state_dir, outbox, self.notify)
            finally:
                outbox.close()

    def _loop(self) -> None:
        since_checks = self.verify_every_s  # check on the first pass
        while not self._stop.is_set():
            try:
                if since_checks >= self.verify_every_s:
                    self.checks()
                    since_checks = 0.0
                self.run_once()
            except Exception:  # keep delivering; the next pass tries again
                log.exception("notification pass failed")
            self._stop.wait(self.poll_s)
            since_checks += self.poll_s

    def start(self) -> NotifyWorker:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="upgate-notify",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to finish its pass and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def start_worker(state_dir: Path, notify: NotifySettings,
                 runner: Runner | None = None) -> NotifyWorker:
    """For `upgate serve`: deliver in the background (and, given the service's runner,
    expire unanswered requests); call `.stop()` on shutdown."""
    return NotifyWorker(state_dir, notify, runner=runner).start()


@asynccontextmanager
async def notify_lifespan(state_dir: Path, notify: NotifySettings,
                          runner: Runner | None = None
                          ) -> AsyncIterator[dict[str, NotifyWorker]]:
    """The worker for the length of an ASGI app's life: usable as FastAPI's `lifespan`
    (it yields the lifespan state, `{"notify_worker": worker}`)."""
    worker = start_worker(state_dir, notify, runner)
    try:
        yield {"notify_worker": worker}
    finally:
        worker.stop()


@contextmanager
def delivering(state_dir: Path, notify: NotifySettings) -> Iterator[NotifyWorker | None]:
    """Deliver in the background while a long command runs (a batch): its "batch running"
    message, with the stop button, and its approval requests go out as they happen, not
    when the command ends. Nothing starts when no channel is configured."""
    if not notify.channels:
        yield None
        return
    worker = NotifyWorker(state_dir, notify).start()
    try:
        yield worker
    finally:
        worker.stop()


def deliver_after_command() -> None:
    """One pass for every state folder the finished CLI command queued notifications in.

    Called by the CLI's entry point after the command: the command's decisions are already
    committed; a failing channel is logged and left to the retries, never raised.
    """
    for state_dir, notify in queued_here().items():
        try:
            outbox = Outbox.of_state(state_dir)
            try:
                deliver_due(outbox, channels_of(notify), notify)
            finally:
                outbox.close()
        except Exception:
            log.exception("delivering notifications for %s failed", state_dir)
