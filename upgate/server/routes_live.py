"""Live progress: start a cycle from the service, and stream a cycle node by node (SSE).

The stream follows the ledger, which every node writes as it finishes, so it shows cycles
run by this process, by the CLI or by a batch elsewhere on the same state folder alike.
Long steps inside a node (training epochs and steps, eval cases, image builds) arrive as
`progress` events, read from the progress board in the state database that the process
running the cycle writes (`upgate.progress`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from upgate.errors import UpgateError
from upgate.graphs.runner import new_cycle_id
from upgate.server.auth import CurrentSession, Reader, require
from upgate.server.state import ServiceState, service
from upgate.server.views import entry_view

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/cycles", tags=["live"])
Svc = Annotated[ServiceState, Depends(service)]
POLL_S = 0.5


@router.post("")
def start(session: CurrentSession, svc: Svc) -> dict[str, str]:
    """Start a cycle requested by the logged-in operator; follow it on its event stream."""
    require("operator", session)
    cycle_id = new_cycle_id()

    def run() -> None:
        try:
            svc.runner.start(session.name, cycle_id=cycle_id)
        except UpgateError as exc:  # recorded by the nodes; keep the service up
            log.warning("cycle %s stopped: %s", cycle_id, exc)
        finally:
            with svc.lock:
                svc.running.discard(cycle_id)

    with svc.lock:
        svc.running.add(cycle_id)
    threading.Thread(target=run, name=f"cycle-{cycle_id}", daemon=True).start()
    return {"cycle_id": cycle_id, "events": f"/api/cycles/{cycle_id}/events"}


def _ended(svc: ServiceState, cycle_id: str, entries: list[Any]) -> bool:
    with svc.lock:
        if cycle_id in svc.running:
            return False
    return any(e.node == "record" for e in entries)


@router.get("/{cycle_id}/events", response_model=None)
async def events(cycle_id: str, request: Request, session: Reader, svc: Svc,
                 after: int = 0) -> EventSourceResponse:
    """Server-sent events: one `node` event per ledger entry of the cycle, `progress` events
    of its long steps (the latest of each), then `end`."""
    board = svc.runner.deps.progress_board

    async def stream() -> AsyncIterator[dict[str, str]]:
        last, last_progress = after, 0
        while not await request.is_disconnected():
            entries = await run_in_threadpool(svc.runner.deps.ledger.entries, cycle_id)
            for e in entries:
                if e.seq > last:
                    last = e.seq
                    yield {"event": "node", "id": str(e.seq),
                           "data": json.dumps(entry_view(e))}
            # No `id`: a reconnecting client resumes by ledger sequence, and progress is
            # only ever the latest state of a step.
            for p in await run_in_threadpool(board.since, cycle_id, last_progress):
                last_progress = p.seq
                yield {"event": "progress", "data": p.model_dump_json()}
            if _ended(svc, cycle_id, entries):
                yield {"event": "end", "data": json.dumps({"cycle_id": cycle_id})}
                return
            await asyncio.sleep(POLL_S)

    return EventSourceResponse(stream())
