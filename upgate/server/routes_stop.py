"""The stop button on the chat page: running batches, and stopping one with a reason.

The same rule as `upgate stop` and Slack's "Stop batch" (`graphs.batch.press_stop`, roles
`STOP_ROLES`): a logged-in operator, approver or admin stops a running batch at once; the
ledger records who, why and channel "chat". A paused or stopped batch continues only by a
person's `upgate batch resume --reason`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from upgate.batches import Board
from upgate.graphs.batch import STOP_ROLES, press_stop
from upgate.server.auth import CurrentSession, Reader
from upgate.server.state import ServiceState, service

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/batches", tags=["act"])
Svc = Annotated[ServiceState, Depends(service)]


class StopIn(BaseModel):
    """Why the batch is stopped (recorded in the ledger)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")


def _line(b: dict[str, Any]) -> dict[str, Any]:
    pause = b.get("pause") or {}
    return {"batch_id": b["batch_id"], "status": b["status"], "requester": b["requester"],
            "updated_at": b["updated_at"], "detail": pause.get("detail", ""),
            "next_step": pause.get("next_step", "")}


@router.get("")
def batches(session: Reader, svc: Svc) -> list[dict[str, Any]]:
    """Running batches (which may be stopped) and held ones (waiting for a person)."""
    board = Board(svc.runner.deps.store)
    return [_line(b) for b in board.running() + board.held()]


@router.post("/{batch_id}/stop")
def stop(batch_id: str, body: StopIn, session: CurrentSession, svc: Svc) -> dict[str, Any]:
    """Stop one running batch now: its sandboxes in flight are killed, its checkpoints kept."""
    if not session.roles & set(STOP_ROLES):
        raise HTTPException(403, f"{session.name} may not stop batches (it takes one of the "
                                 f"roles {', '.join(STOP_ROLES)}); ask an operator")
    flagged = press_stop(svc.runner, session.name, body.reason, batch_id, channel="chat")
    if not flagged:
        raise HTTPException(409, f"batch {batch_id} is not running (already paused, stopped "
                                 "or done); reload the list")
    (b,) = flagged
    return {"batch_id": batch_id, "stopped_by": session.name,
            "sandboxes_killed": b["sandboxes_killed"]}
