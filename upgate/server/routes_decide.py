"""Routes that act: decisions, questions about the packet, and the LangChain HITL response.

A decision carries the evidence hash that was on screen; the service refuses a stale page,
checks roles, signs on the person's behalf (channel "chat") and records it in the ledger.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from upgate.errors import AgentOutputError, ApprovalError, EvalError
from upgate.server import decisions
from upgate.server.ask import answer_question
from upgate.server.auth import CurrentSession, Session, require, require_any
from upgate.server.packets import find_packet
from upgate.server.state import ServiceState, service
from upgate.server.views import cycle_view

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/cycles", tags=["act"])
Svc = Annotated[ServiceState, Depends(service)]


class DecisionIn(BaseModel):
    """A decision from the page: what, why, and the packet hash that was on screen."""

    model_config = ConfigDict(extra="forbid")

    action: decisions.Action
    reason: str = Field(default="", max_length=4000)
    evidence_hash: str = Field(min_length=1, max_length=64)


class QuestionIn(BaseModel):
    """A plain-language question about the packet on screen."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=1000)
    evidence_hash: str = Field(min_length=1, max_length=64)


class HumanResponse(BaseModel):
    """LangChain's human-in-the-loop response: accept, edit, response or ignore."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["accept", "edit", "response", "ignore"]
    args: str | dict[str, Any] | None = None
    evidence_hash: str = Field(min_length=1, max_length=64)


def run_decision(svc: ServiceState, session: Session, cycle_id: str, action: decisions.Action,
                 reason: str, evidence_hash: str) -> dict[str, Any]:
    """Take one decision for the session's person; refusals become 403/409 with the reason."""
    require("approver", session)
    with svc.lock:
        svc.running.add(cycle_id)
    try:
        decisions.decide(svc.runner, cycle_id, action=action, person=session.name,
                         reason=reason, evidence_hash=evidence_hash, signer=svc.signer)
    except decisions.StaleEvidenceError as exc:
        _refused(svc, session, cycle_id, action, str(exc))
        raise HTTPException(409, str(exc)) from None
    except ApprovalError as exc:
        _refused(svc, session, cycle_id, action, str(exc))
        raise HTTPException(403, str(exc)) from None
    finally:
        with svc.lock:
            svc.running.discard(cycle_id)
    view = cycle_view(svc.runner, cycle_id)
    assert view is not None
    return view


def _refused(svc: ServiceState, session: Session, cycle_id: str, action: str,
             reason: str) -> None:
    svc.runner.deps.ledger.append(cycle_id, "chat", "decision_refused", {
        "person": session.name, "action": action, "reason": reason, "channel": "chat"})


@router.post("/{cycle_id}/decision")
def decision(cycle_id: str, body: DecisionIn, session: CurrentSession,
             svc: Svc) -> dict[str, Any]:
    """Approve, reject (with a reason) or request changes (with feedback)."""
    return run_decision(svc, session, cycle_id, body.action, body.reason, body.evidence_hash)


@router.post("/{cycle_id}/ask")
def ask(cycle_id: str, body: QuestionIn, session: CurrentSession,
        svc: Svc) -> dict[str, Any]:
    """A question answered by a model from the evidence packet only, citing its sections."""
    require_any(session)
    deps = svc.runner.deps
    try:
        packet = find_packet(deps.state_dir, body.evidence_hash)
    except EvalError as exc:
        raise HTTPException(404, str(exc)) from None
    if packet.get("cycle_id") != cycle_id:
        raise HTTPException(404, f"packet {body.evidence_hash[:12]} is not cycle {cycle_id}'s")
    endpoint = deps.settings.agents.critic
    info = {"endpoint": endpoint.base_url, "model": endpoint.model}
    deps.ledger.append(cycle_id, "chat", "question", {
        "person": session.name, "question": body.question,
        "evidence_hash": body.evidence_hash, "channel": "chat"})
    try:
        reply = answer_question(svc.answer_model(), body.question, packet, model_info=info,
                                retries=endpoint.output_retries)
    except AgentOutputError as exc:
        deps.ledger.append(cycle_id, "chat", "answer_failed", {
            "person": session.name, "reason": str(exc), "model": info})
        raise HTTPException(502, f"the answering model gave no valid answer: {exc}") from None
    deps.ledger.append(cycle_id, "chat", "answer", {
        "person": session.name, "question": body.question, "answer": reply.answer,
        "cites": reply.cites, "found": reply.found, "grounded": reply.grounded,
        "evidence_hash": body.evidence_hash, "model": reply.model})
    return reply.model_dump()


def _text(args: str | dict[str, Any] | None) -> str:
    """The text of a HITL response's args: a string, or an (edited) action request's
    `feedback`/`reason` argument."""
    if isinstance(args, str):
        return args
    if not args:
        return ""
    inner = args.get("args", args)
    if isinstance(inner, dict):
        return str(inner.get("feedback") or inner.get("reason") or "")
    return str(inner)


HITL_ACTIONS: dict[str, decisions.Action] = {
    "accept": "approve", "edit": "request_changes", "ignore": "reject"}


@router.post("/{cycle_id}/hitl")
def hitl(cycle_id: str, body: HumanResponse, session: CurrentSession,
         svc: Svc) -> dict[str, Any]:
    """Answer the interrupt with a LangChain HITL response: accept -> approve, edit ->
    request changes (args: feedback), response -> ask (args: the question), ignore -> reject."""
    text = _text(body.args)
    if body.type == "response":
        return ask(cycle_id, QuestionIn(question=text or "(empty)",
                                        evidence_hash=body.evidence_hash), session, svc)
    action = HITL_ACTIONS[body.type]
    reason = text or ("ignored from a HITL front end" if body.type == "ignore" else "")
    return run_decision(svc, session, cycle_id, action, reason, body.evidence_hash)
