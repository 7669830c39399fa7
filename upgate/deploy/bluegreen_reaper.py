"""Stop blues whose rollback window has passed, from any process, durably.

`reap_expired` is the one rule: a running server upgate started, whose stop time has
come and which carries no unpinned traffic, is stopped, dropped from the alias's routes
and recorded (`bluegreen`/`blue_stopped`). A server that carries traffic again (a rollback
moved it back) loses its stop time instead. The deployer reaps before every deploy,
`upgate bluegreen reap` reaps on demand, and a switch leaves a detached reaper process
(`python -m upgate.deploy.bluegreen_reaper SPEC`) that sleeps until the next stop time,
reaps, and exits when nothing is scheduled: the process that switched may exit at once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

from upgate.deploy.bluegreen_state import ServerRegistry
from upgate.deploy.vllm_servers import stop_server
from upgate.gateway.routes import RouteTable

log = logging.getLogger(__name__)

RecordFn = Callable[[str, str, dict[str, Any], str], None]


class ReaperSpec(BaseModel):
    """Everything a detached reaper needs, passed to it as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers_db: Path
    routes_db: Path
    state_dir: Path
    witness: dict[str, Any] | None = None
    """The ledger's witness configuration (its JSON form), so heads stay witnessed."""
    poll_s: float = 2.0

    @property
    def pid_file(self) -> Path:
        """Where the running reaper writes its pid."""
        return self.servers_db.with_suffix(".reaper.pid")


def reap_expired(servers: ServerRegistry, routes: RouteTable, record: RecordFn, *,
                 now: float | None = None) -> list[dict[str, Any]]:
    """Stop due servers that carry no traffic (see the module docstring)."""
    now = time.time() if now is None else now
    done: list[dict[str, Any]] = []
    for row in servers.due(now):
        with servers.switching():
            backends = routes.routes(row.alias)
            if any(b.version == row.version and b.weight > 0 for b in backends):
                servers.update(row.alias, row.version, stop_after=None)
                log.info("%s of %s carries traffic again; not stopping it", row.version,
                         row.alias)
                continue
            ran = stop_server(row.pid, row.port) if row.pid and row.port else False
            rest = [b for b in backends if b.version != row.version]
            if len(rest) < len(backends) and any(b.weight for b in rest):
                routes.set_routes(row.alias, rest,
                                  reason=f"bluegreen: {row.version} stopped (window over)")
            servers.update(row.alias, row.version, status="stopped", stop_after=None, pid=None)
        if row.log:
            Path(row.log).with_suffix(".pid").unlink(missing_ok=True)
        after_s = round(now - row.switched_at, 3) if row.switched_at else None
        payload = {"alias": row.alias, "version_name": row.version, "base_url": row.base_url,
                   "after_s": after_s, "was_running": ran}
        if row.cycle_id:
            record(row.cycle_id, "blue_stopped", payload,
                   f"{row.cycle_id}/bluegreen/blue_stopped/{row.version}/{row.started_at}")
        log.info("stopped %s of %s at %s (%s s after the switch)", row.version, row.alias,
                 row.base_url, after_s)
        done.append(payload)
    return done


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return "bluegreen_reaper" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
        errors="replace")


def spawn_reaper(spec: ReaperSpec) -> int | None:
    """Start a detached reaper unless one runs; its pid, or None when one was running.

    Called after a stop time is written: a reaper about to exit re-reads the schedule after
    removing its pid file, so a stop is never left without a reaper.
    """
    if _alive(spec.pid_file):
        return None
    spec.pid_file.parent.mkdir(parents=True, exist_ok=True)
    out = spec.pid_file.with_suffix(".log").open("ab")
    with out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "upgate.deploy.bluegreen_reaper", spec.model_dump_json()],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
    log.info("reaper started (pid %d)", proc.pid)
    return proc.pid


def ledger_record(spec: ReaperSpec) -> tuple[RecordFn, Callable[[], None]]:
    """A recorder appending to the state folder's ledger, and its closer."""
    from upgate.ledger import open_ledger
    from upgate.witness import WitnessConfig

    witness = (TypeAdapter(WitnessConfig).validate_python(spec.witness)
               if spec.witness is not None else None)
    ledger = open_ledger(spec.state_dir, witness)

    def record(cycle_id: str, event: str, payload: dict[str, Any], key: str) -> None:
        ledger.append(cycle_id, "bluegreen", event, payload, key=key)

    return record, ledger.close


def run(spec: ReaperSpec) -> None:
    """Sleep until each scheduled stop, reap, exit when nothing is scheduled."""
    servers, routes = ServerRegistry(spec.servers_db), RouteTable(spec.routes_db)
    record, close = ledger_record(spec)
    spec.pid_file.write_text(f"{os.getpid()}\n")
    try:
        while True:
            due = servers.next_stop()
            if due is None:
                spec.pid_file.unlink(missing_ok=True)
                if servers.next_stop() is None:
                    return
                spec.pid_file.write_text(f"{os.getpid()}\n")
                continue
            if due > time.time():
                time.sleep(min(spec.poll_s, max(due - time.time(), 0.0)))
                continue
            reap_expired(servers, routes, record)
    finally:
        if _alive(spec.pid_file) and spec.pid_file.read_text().split()[0] == str(os.getpid()):
            spec.pid_file.unlink(missing_ok=True)
        servers.close()
        routes.close()
        close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached reaper."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(ReaperSpec.model_validate(json.loads(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
