"""Read-only routes: inbox, cycles with state and timeline, evidence packets, ledger, verify."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from upgate.errors import EvalError
from upgate.server.auth import Reader
from upgate.server.packets import find_packet, plot_path, section_texts
from upgate.server.state import ServiceState, service
from upgate.server.views import cycle_summary, cycle_view, entry_view

router = APIRouter(prefix="/api", tags=["read"])
_BATCH = re.compile(r"b\d{8}-\d{6}-[0-9a-f]+")
Svc = Annotated[ServiceState, Depends(service)]


@router.get("/inbox")
def inbox(session: Reader, svc: Svc) -> list[dict[str, Any]]:
    """Every cycle waiting for a human decision (the interrupt values, HITL shape included)."""
    return svc.runner.inbox()


@router.get("/cycles")
def cycles(session: Reader, svc: Svc) -> list[dict[str, Any]]:
    """A line per cycle, newest first."""
    ids = svc.runner.deps.ledger.cycles()
    return [cycle_summary(svc.runner, c) for c in reversed(ids)
            if c != "admin" and not _BATCH.fullmatch(c)]


@router.get("/cycles/{cycle_id}")
def cycle(cycle_id: str, session: Reader, svc: Svc) -> dict[str, Any]:
    """One cycle: state, pending request, lineage and timeline from the ledger."""
    view = cycle_view(svc.runner, cycle_id)
    if view is None:
        raise HTTPException(404, f"no cycle {cycle_id!r}; see the inbox or /api/cycles")
    return view


@router.get("/evidence/{evidence_hash}")
def evidence(evidence_hash: str, session: Reader, svc: Svc) -> dict[str, Any]:
    """The evidence packet with this hash (verified), and its sections as short text."""
    try:
        packet = find_packet(svc.runner.deps.state_dir, evidence_hash)
    except EvalError as exc:
        raise HTTPException(404, str(exc)) from None
    return {"packet": packet, "sections": section_texts(packet)}


@router.get("/evidence/{evidence_hash}/plot.svg", response_model=None)
def plot(evidence_hash: str, session: Reader, svc: Svc) -> FileResponse:
    """The packet's SVG plot of per-slice deltas and intervals."""
    try:
        path = plot_path(svc.runner.deps.state_dir, evidence_hash)
    except EvalError as exc:
        raise HTTPException(404, str(exc)) from None
    if path is None:
        raise HTTPException(404, "this packet has no plot")
    return FileResponse(path, media_type="image/svg+xml")


@router.get("/ledger")
def ledger(session: Reader, svc: Svc, cycle: str | None = None,
           after: int = 0) -> list[dict[str, Any]]:
    """Ledger entries (of one cycle, or all) after sequence number `after`."""
    return [entry_view(e) for e in svc.runner.deps.ledger.entries(cycle) if e.seq > after]


@router.get("/verify")
def verify(session: Reader, svc: Svc) -> dict[str, Any]:
    """Check the ledger's hash chain."""
    return svc.runner.deps.ledger.verify().model_dump()
