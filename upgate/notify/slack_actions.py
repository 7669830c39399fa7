"""Approve from Slack: the interactivity endpoint behind the approve, reject and stop buttons.

A button press reaches `POST /slack/actions` as a form with a `payload` field. It counts
only if Slack's v0 signature over the raw body verifies within the 5-minute window, the
same signature was never seen before, the Slack user is mapped to an upgate person by an
admin, and the evidence hash carried by the button is the one the cycle still waits on.
Then it goes through `Runner.decide`, the same path (and checks) as the CLI, signed by the
approval service, and the original message is replaced with the outcome.

The "Stop batch" button of a batch-running message stops that batch the way `upgate stop`
does (same roles: operator, approver or admin), recorded with who, why and channel "slack".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import httpx
from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk.models.blocks import ContextBlock, MarkdownTextObject, SectionBlock
from slack_sdk.signature import Clock, SignatureVerifier

from upgate.errors import ApprovalError, ConfigError, UpgateError
from upgate.notify.config import env_secret
from upgate.notify.outbox import Outbox
from upgate.notify.render import parse_action_id, slack_escape
from upgate.notify.slack_people import SlackState

if TYPE_CHECKING:
    from upgate.config import Settings
    from upgate.graphs.runner import Runner

log = logging.getLogger(__name__)

PATH = "/slack/actions"


class Decider(Protocol):
    """Turns an authenticated person's choice into a decision (`Runner.decide`)."""

    def __call__(self, cycle_id: str, *, action: str, person: str, reason: str,
                 evidence_hash: str) -> dict[str, Any]:
        """Decide; returns the cycle's state afterwards, raises ApprovalError if refused."""
        ...


class Stopper(Protocol):
    """Presses stop on a running batch for a person (`graphs.batch.press_stop`)."""

    def __call__(self, batch_id: str, *, person: str, reason: str) -> list[dict[str, Any]]:
        """Stop it; returns the batches flagged (none when it was not running); raises
        ApprovalError when the person may not stop batches."""
        ...


def runner_stopper(runner: Any) -> Stopper:
    """A Stopper over a `Runner`: the CLI's role rule, recorded with channel "slack"."""
    from upgate.graphs.batch import STOP_ROLES, press_stop
    from upgate.server.decisions import roles

    def stop(batch_id: str, *, person: str, reason: str) -> list[dict[str, Any]]:
        if not roles(runner, person) & set(STOP_ROLES):
            raise ApprovalError(f"{person} may not stop batches (it takes one of the roles "
                                f"{', '.join(STOP_ROLES)} under the adopted policy)")
        return press_stop(runner, person, reason, batch_id, channel="slack")

    return stop


def runner_decider(runner: Any, signer: Any) -> Decider:
    """A Decider over a `Runner`, signing with the approval service's signer."""

    def decide(cycle_id: str, *, action: str, person: str, reason: str,
               evidence_hash: str) -> dict[str, Any]:
        state = runner.decide(cycle_id, action=action, person=person, reason=reason,
                              channel="slack", signer=signer, evidence_hash=evidence_hash)
        return dict(state)

    return decide


def post_response(url: str, body: dict[str, Any]) -> None:
    """Post to the `response_url` Slack gave (updates the original message)."""
    try:
        httpx.post(url, json=body, timeout=10.0).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("could not update the Slack message at its response_url: %s", exc)


@dataclass
class SlackActions:
    """Everything the endpoint needs; built once by the approval service."""

    signing_secret: str
    people: SlackState
    decide: Decider
    pending: Callable[[str], dict[str, Any] | None]
    head: Callable[[], tuple[int, str]]
    respond: Callable[[str, dict[str, Any]], None] = post_response
    stop: Stopper | None = None
    clock: Clock = field(default_factory=Clock)

    def verify(self, body: bytes, timestamp: str | None, signature: str | None) -> str | None:
        """Why the request must be refused, or None when it is authentic and fresh."""
        if not timestamp or not timestamp.isdigit() or not signature:
            return "missing or malformed Slack signature headers"
        verifier = SignatureVerifier(self.signing_secret, clock=self.clock)
        if not verifier.is_valid(body, timestamp, signature):
            return "the Slack signature does not verify, or the request is older than 5 minutes"
        if not self.people.first_sight(signature, int(timestamp)):
            return "this request was already received (a replay)"
        return None

    def handle(self, action: str, cycle_id: str, evidence_hash: str, slack_user: str,
               response_url: str | None) -> dict[str, Any]:
        """Decide on behalf of the mapped person; tell Slack the outcome. Returns the reply."""
        reply = self._decide(action, cycle_id, evidence_hash, slack_user)
        if response_url:
            self.respond(response_url, reply)
        return reply

    def handle_stop(self, batch_id: str, slack_user: str,
                    response_url: str | None) -> dict[str, Any]:
        """Stop a running batch on behalf of the mapped person; tell Slack. Returns the reply."""
        reply = self._stop(batch_id, slack_user)
        if response_url:
            self.respond(response_url, reply)
        return reply

    def _stop(self, batch_id: str, slack_user: str) -> dict[str, Any]:
        person = self.people.person_for(slack_user)
        if person is None:
            return _refusal(f"Slack user {slack_user} is not mapped to an upgate person; an "
                            f"admin runs `upgate notify map-slack {slack_user} PERSON --as "
                            "ADMIN`", what="the stop")
        if self.stop is None:
            return _refusal("this service does not stop batches", what="the stop")
        try:
            flagged = self.stop(batch_id, person=person,
                                reason=f"stop button in Slack, pressed by {slack_user}")
        except ApprovalError as exc:
            return _refusal(str(exc), what="the stop")
        except Exception:  # a bug: say so in Slack rather than leave the button hanging
            log.exception("Slack stop of %s crashed", batch_id)
            return _refusal("the approval service failed while stopping; run `upgate stop "
                            "--reason '...'`", what="the stop")
        if not flagged:
            return _refusal(f"batch {batch_id} is not running (already paused, stopped or "
                            "done; see `upgate inbox`)", what="the stop")
        killed = sum(int(b.get("sandboxes_killed", 0)) for b in flagged)
        seq, digest = self.head()
        text = (f"*stop pressed* by {person} (Slack {slack_user}): batch `{batch_id}` stops "
                f"before its next step; {killed} sandbox(es) killed. Only a person's "
                "`upgate batch resume --reason '...'` continues it.")
        return {
            "replace_original": True, "text": f"upgate: batch {batch_id} stopped by {person}",
            "blocks": [SectionBlock(text=MarkdownTextObject(text=text[:2900])).to_dict(),
                       ContextBlock(elements=[MarkdownTextObject(
                           text=f"ledger head #{seq} `{digest[:16]}`")]).to_dict()],
        }

    def _decide(self, action: str, cycle_id: str, evidence_hash: str,
                slack_user: str) -> dict[str, Any]:
        person = self.people.person_for(slack_user)
        if person is None:
            return _refusal(f"Slack user {slack_user} is not mapped to an upgate person; an "
                            f"admin runs `upgate notify map-slack {slack_user} PERSON --as "
                            "ADMIN`")
        request = self.pending(cycle_id)
        if request is None:
            return _refusal(f"cycle {cycle_id} is not waiting for a decision (already "
                            "decided, expired or unknown)")
        if request.get("evidence_hash") != evidence_hash:
            return _refusal("the evidence changed since this message was sent; open the new "
                            "approval request and review it")
        try:
            state = self.decide(cycle_id, action=action, person=person,
                                reason=f"via Slack by {slack_user}", evidence_hash=evidence_hash)
        except ApprovalError as exc:
            return _refusal(str(exc))
        except UpgateError as exc:
            log.exception("Slack decision on %s failed", cycle_id)
            return _refusal(f"upgate could not apply the decision: {exc}")
        except Exception:  # a bug: say so in Slack rather than leave the button hanging
            log.exception("Slack decision on %s crashed", cycle_id)
            return _refusal("the approval service failed while deciding; see its log")
        outcome = str(state.get("outcome", "?"))
        verb = "approved" if action == "approve" else "rejected"
        seq, digest = self.head()
        text = f"*{verb}* by {person} (Slack {slack_user}): cycle `{cycle_id}` is now *{outcome}*"
        if state.get("reason") and outcome != "deployed":
            text += f": {slack_escape(str(state['reason']))}"
        return {
            "replace_original": True, "text": f"upgate: {verb} by {person}: {outcome}",
            "blocks": [SectionBlock(text=MarkdownTextObject(text=text[:2900])).to_dict(),
                       ContextBlock(elements=[MarkdownTextObject(
                           text=f"ledger head #{seq} `{digest[:16]}`")]).to_dict()],
        }


def _refusal(reason: str, *, what: str = "the decision") -> dict[str, Any]:
    return {"replace_original": False, "response_type": "ephemeral",
            "text": f"upgate refused {what}: {slack_escape(reason)}"}


def slack_router(actions: SlackActions, *, path: str = PATH) -> APIRouter:
    """The FastAPI router the approval service includes (`app.include_router(...)`)."""
    router = APIRouter()

    @router.post(path)
    async def slack_action(request: Request, background: BackgroundTasks) -> Response:
        body = await request.body()
        refused = actions.verify(body, request.headers.get("x-slack-request-timestamp"),
                                 request.headers.get("x-slack-signature"))
        if refused is not None:
            log.warning("Slack action refused: %s", refused)
            return JSONResponse({"error": refused}, status_code=401)
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            pressed = payload["actions"][0]
            parsed = parse_action_id(str(pressed["action_id"]))
            slack_user = str(payload["user"]["id"])
        except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "not a Slack block action payload"}, status_code=400)
        if parsed is None:
            return JSONResponse({"error": "not an upgate button"}, status_code=400)
        action, cycle_id, evidence_hash = parsed
        if action == "stop":  # cycle_id is the batch's id here
            background.add_task(actions.handle_stop, cycle_id, slack_user,
                                payload.get("response_url"))
            return Response(status_code=200)
        # Slack wants an answer within 3 s; a decision can deploy, so it runs after the reply
        # and reports through response_url.
        background.add_task(actions.handle, action, cycle_id, evidence_hash, slack_user,
                            payload.get("response_url"))
        return Response(status_code=200)

    return router


def slack_actions_router(settings: Settings, runner: Runner, signer: Any) -> APIRouter:
    """For `upgate serve`: the router over the service's runner and signer."""
    name = settings.notify.slack_signing_secret_env
    if not name:
        raise ConfigError(
            "Slack buttons need Slack's signing secret: set [notify] slack_signing_secret_env "
            "to the name of the environment variable that holds it"
        )
    secret = env_secret(name, "Slack's signing secret")
    outbox = Outbox.of_state(settings.state_dir)
    return slack_router(SlackActions(
        signing_secret=secret, people=SlackState(runner.deps.store),
        decide=runner_decider(runner, signer), pending=runner.pending, head=outbox.head,
        stop=runner_stopper(runner),
    ))
