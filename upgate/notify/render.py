"""What a notification says, rendered for each kind of channel.

`compose` turns an outbox row and the ledger's current head into a channel-neutral
`Message`; `slack_blocks` builds Block Kit with slack_sdk's block models; `webhook_body`
is the JSON a generic webhook receives. Every message carries the ledger head it was sent
under, so a channel's history is a witness of the ledger.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from upgate.notify.config import NotifySettings
from upgate.notify.outbox import OutboxRow

ACTION_PREFIX = "upgate"
ACTIONS = ("approve", "reject", "stop")
STOP_SUBJECT = "batch"
"""The last part of a stop button's action id (it is bound to a batch, not to evidence)."""

_TITLES = {
    "approval_requested": "Approval requested",
    "approval_decided": "Decision recorded",
    "approval_expired": "Approval request expired",
    "batch_paused": "Batch paused",
    "batch_running": "Batch running",
    "deployed": "Deployed",
    "rollout_step": "Rollout step",
    "rolled_back": "Rolled back",
    "verify_failed": "Ledger verification FAILED",
    "cycle_failed": "Cycle failed",
    "test": "Test message",
}


# Notifications about a batch or the ledger, not one cycle: no link to a cycle's chat page.
_NO_CYCLE = ("test", "batch_paused", "batch_running", "verify_failed")


class Message(BaseModel):
    """One notification, ready to render for any channel."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    cycle_id: str
    title: str
    text: str
    fields: tuple[tuple[str, str], ...]
    evidence_hash: str | None
    ledger_seq: int
    ledger_hash: str
    head_seq: int
    head_hash: str
    link: str | None
    buttons: bool
    facts: dict[str, Any]
    stop_batch: str | None = None
    possible_repeat: bool = False
    """An earlier send of this message was interrupted after it went out: it may be a copy."""
    """The running batch a "Stop batch" button stops (on batch_running messages)."""


def action_id(action: str, cycle_id: str, evidence_hash: str) -> str:
    """A button's action id: what it does, to which cycle, bound to the evidence shown."""
    return f"{ACTION_PREFIX}:{action}:{cycle_id}:{evidence_hash}"


def parse_action_id(value: str) -> tuple[str, str, str] | None:
    """(action, cycle id, evidence hash) from an action id, or None if it is not ours."""
    parts = value.split(":")
    if len(parts) != 4 or parts[0] != ACTION_PREFIX or parts[1] not in ACTIONS:
        return None
    return parts[1], parts[2], parts[3]


def _score(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def _text(kind: str, cycle: str, f: dict[str, Any]) -> str:
    if kind == "approval_requested":
        lines = [f"Cycle `{cycle}` waits for a human decision: {f.get('recipe', '?')} "
                 f"({f.get('kind', '?')}) requested by {f.get('requester', '?')}."]
        lines += [f"• {s}" for s in f.get("summary", [])]
        return "\n".join(lines)
    if kind == "approval_decided":
        return (f"{f.get('approver', '?')} chose *{f.get('action', '?')}* on `{cycle}` "
                f"via {f.get('channel', '?')}. {f.get('reason', '')}").strip()
    if kind == "approval_expired":
        return f"The approval request of `{cycle}` expired unanswered."
    if kind == "batch_paused":
        if f.get("threshold"):
            return (f"The autonomous batch {'stopped' if f.get('action') == 'stop' else 'paused'}"
                    f": {f.get('detail', '')} (threshold {f['threshold']}: "
                    f"{f.get('observed', '?')} against {f.get('limit', '?')}). "
                    f"Next: {f.get('next_step', 'see `upgate inbox`')}")
        return f"The autonomous batch paused: {f.get('reason', '?')}"
    if kind == "batch_running":
        if f.get("by"):
            return (f"{f['by']} resumed the autonomous batch `{f.get('batch_id', '?')}` on "
                    f"{f.get('target', '?')}: {f.get('reason', '')}")
        return (f"An autonomous batch `{f.get('batch_id', '?')}` runs on {f.get('target', '?')} "
                f"for {f.get('requester', '?')} (up to {f.get('max_cycles', '?')} cycles, "
                f"policy {f.get('policy_version', '?')}). Stop it here, or with `upgate stop "
                f"--reason '...'`.")
    if kind == "deployed":
        d = f.get("deployment") or {}
        where = d.get("branch") or f"{d.get('alias')} -> {d.get('version_name')}"
        return f"Cycle `{cycle}` deployed: {where} (deployment {d.get('deployment_id', '?')})."
    if kind == "rollout_step":
        return f"Rollout of `{cycle}`: step {f.get('step', '?')} at {f.get('percent', '?')}%."
    if kind == "rolled_back":
        return f"Cycle `{cycle}` was rolled back: {f.get('reason') or 'post-deploy regression'}."
    if kind == "verify_failed":
        problems = f.get("problems") or []
        return "The ledger does not verify:\n" + "\n".join(f"• {p}" for p in problems[:8])
    if kind == "cycle_failed":
        return f"Cycle `{cycle}` failed: {f.get('reason', '?')}"
    return str(f.get("text", "upgate notification test: this channel works."))


def compose(row: OutboxRow, head: tuple[int, str], notify: NotifySettings,
            *, buttons: bool = True) -> Message:
    """The message for one outbox row, under the ledger head at send time."""
    f = {k: v for k, v in row.payload.items() if k != "type"}
    kind = row.type
    subject = "Batch" if kind.startswith("batch_") else "Cycle"
    fields: list[tuple[str, str]] = [(subject, row.cycle_id)]
    if kind == "approval_requested":
        fields += [("Score", f"{_score(f.get('baseline_score'))} -> "
                             f"{_score(f.get('candidate_score'))}"),
                   ("Candidate", str(f.get("candidate_hash", ""))[:12]),
                   ("Evidence", str(f.get("evidence_hash", ""))[:12]),
                   ("Policy", str(f.get("policy_version", ""))),
                   ("Expires", str(f.get("expires_at", "?"))[:19])]
    link = None
    if notify.chat_url and row.cycle_id and kind not in _NO_CYCLE:
        link = notify.chat_url.replace("{cycle_id}", row.cycle_id)
    evidence = f.get("evidence_hash") if kind == "approval_requested" else None
    stop = str(f["batch_id"]) if kind == "batch_running" and f.get("batch_id") else None
    return Message(
        id=row.id, type=kind, cycle_id=row.cycle_id, title=_TITLES.get(kind, kind),
        text=_text(kind, row.cycle_id, f), fields=tuple(fields),
        evidence_hash=str(evidence) if evidence else None, ledger_seq=row.ledger_seq,
        ledger_hash=row.ledger_hash, head_seq=head[0], head_hash=head[1], link=link,
        buttons=buttons and (evidence is not None or stop is not None), facts=f,
        stop_batch=stop, possible_repeat=row.interrupted > 0,
    )


def slack_escape(text: str) -> str:
    """Text as Slack shows it literally: `<!channel>`, `<url|label>` and `@here` markup in
    a model's or a candidate's words stay words (Slack's own escaping of &, < and >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_blocks(msg: Message) -> list[Block]:
    """Block Kit for Slack: summary, scores, link, ledger head, approve/reject buttons."""
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"upgate: {msg.title}"[:150])),
        # Plain text, not mrkdwn: the summary and fields carry words of models, candidates
        # and people, and mrkdwn has no escape for *bold*, _italic_, ~strike~ or `code`.
        SectionBlock(text=PlainTextObject(text=slack_escape(msg.text)[:2900], emoji=False),
                     fields=[PlainTextObject(text=slack_escape(f"{k}: {v}")[:1900],
                                             emoji=False)
                             for k, v in msg.fields[:10]]),
    ]
    if msg.link:
        blocks.append(SectionBlock(text=MarkdownTextObject(
            text=f"<{msg.link}|Open the evidence and discuss it in the chat page>")))
    if msg.buttons and msg.evidence_hash:
        blocks.append(ActionsBlock(block_id=f"decide:{msg.cycle_id}"[:255], elements=[
            ButtonElement(text="Approve", style="primary", value=msg.evidence_hash,
                          action_id=action_id("approve", msg.cycle_id, msg.evidence_hash)),
            ButtonElement(text="Reject", style="danger", value=msg.evidence_hash,
                          action_id=action_id("reject", msg.cycle_id, msg.evidence_hash)),
        ]))
    if msg.buttons and msg.stop_batch:
        blocks.append(ActionsBlock(block_id=f"stop:{msg.stop_batch}"[:255], elements=[
            ButtonElement(text="Stop batch", style="danger", value=msg.stop_batch,
                          action_id=action_id("stop", msg.stop_batch, STOP_SUBJECT),
                          confirm=ConfirmObject(
                              title="Stop this batch?", confirm="Stop it", deny="Cancel",
                              text="Its sandboxes in flight are killed at once; only a "
                                   "person's `upgate batch resume` continues it.")),
        ]))
    repeat = (f"possible repeat: an earlier send of `{msg.id}` was interrupted; if it "
              "showed already, this is the same message · ") if msg.possible_repeat else ""
    blocks.append(ContextBlock(elements=[MarkdownTextObject(
        text=f"{repeat}ledger head #{msg.head_seq} `{msg.head_hash[:16]}` · "
             f"entry #{msg.ledger_seq} `{msg.ledger_hash[:16]}` · id `{msg.id}`")]))
    return blocks


def slack_payload(msg: Message) -> dict[str, Any]:
    """The JSON body posted to a Slack incoming webhook."""
    again = " (possible repeat)" if msg.possible_repeat else ""
    return {"text": slack_escape(f"upgate: {msg.title}{again}: "
                                 f"{msg.text.splitlines()[0]}")[:300],
            "mrkdwn": False,  # the notification text too stays words
            "blocks": [b.to_dict() for b in slack_blocks(msg)]}


def webhook_body(msg: Message, timestamp: str) -> dict[str, Any]:
    """The Standard Webhooks payload: type, timestamp, data."""
    return {
        "type": f"upgate.{msg.type}",
        "timestamp": timestamp,
        "data": {
            "id": msg.id, "cycle_id": msg.cycle_id, "title": msg.title, "text": msg.text,
            "facts": msg.facts, "link": msg.link, "possible_repeat": msg.possible_repeat,
            "ledger_entry": {"seq": msg.ledger_seq, "hash": msg.ledger_hash},
            "ledger_head": {"seq": msg.head_seq, "hash": msg.head_hash},
        },
    }
