"""A local Slack stand-in: receives incoming-webhook posts, shows them as text, presses buttons.

For trying notifications and Slack buttons without a Slack workspace (`upgate notify
receiver`, `make demo-notify`). It listens on 127.0.0.1 only. Every message posted to it is
parsed with slack_sdk's block models (Block Kit that Slack would refuse fails here too) and
printed as readable text. A press sends what Slack sends when a person clicks a button: a
`block_actions` payload from a Slack user id, signed v0 with the app's signing secret, with
a `response_url` pointing back here, so the update of the original message shows up too.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    SectionBlock,
)

from upgate.errors import UpgateError
from upgate.notify.channels import IDEMPOTENCY_HEADER
from upgate.notify.testing import LoopbackReceiver, Received, slack_action_request

RESPOND_PATH = "/respond"
_LINK = re.compile(r"<([^|<>]+)\|([^<>]+)>")


class StandInError(UpgateError):
    """The stand-in could not do what was asked (no such button, nothing arrived)."""


def _plain(text: str) -> str:
    """Slack mrkdwn as a terminal shows it: links as `label (url)`, entities unescaped."""
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _obj_text(obj: Any) -> str:
    return _plain(str(getattr(obj, "text", "") or ""))


def render_text(body: dict[str, Any]) -> str:
    """A Slack message (incoming-webhook or response_url body) as readable text.

    The blocks are parsed with slack_sdk's models first: a block it cannot parse raises."""
    raw = body.get("blocks") or []
    blocks = Block.parse_all(raw)
    if len(blocks) != len(raw) or any(b is None for b in blocks):
        raise StandInError("the message holds blocks slack_sdk does not parse")
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, HeaderBlock):
            title = _obj_text(block.text)
            lines += [title, "=" * len(title)]
        elif isinstance(block, SectionBlock):
            if block.text is not None:
                lines.append(_obj_text(block.text))
            for f in block.fields or []:
                name, _, value = _obj_text(f).partition("\n")
                lines.append(f"  {name.strip('*')}: {value}")
        elif isinstance(block, ActionsBlock):
            lines.append("  ".join(f"[{_obj_text(e.text)}]" for e in block.elements
                                   if isinstance(e, ButtonElement)))
        elif isinstance(block, ContextBlock):
            lines.append("  " + " ".join(_obj_text(e) for e in block.elements))
    if not lines:
        lines.append(_plain(str(body.get("text", ""))))
    return "\n".join(lines)


def buttons_of(body: dict[str, Any]) -> dict[str, str]:
    """Button label (lower case) -> action id, for every button of a message."""
    out: dict[str, str] = {}
    for block in Block.parse_all(body.get("blocks") or []):
        if isinstance(block, ActionsBlock):
            for e in block.elements:
                if isinstance(e, ButtonElement) and e.action_id:
                    out[_obj_text(e.text).lower()] = str(e.action_id)
    return out


@dataclass
class Shown:
    """One message as the stand-in showed it."""

    path: str
    id: str
    body: dict[str, Any]
    text: str

    @property
    def is_update(self) -> bool:
        """Whether it came through a response_url (the update of an earlier message)."""
        return self.path == RESPOND_PATH


@dataclass
class SlackStandIn:
    """A loopback "Slack": shows what is posted to it and presses buttons as a Slack user."""

    signing_secret: str = ""
    interactivity_url: str = ""
    out: Callable[[str], None] = field(default=lambda s: print(s, flush=True))
    shown: list[Shown] = field(default_factory=list)
    _receiver: LoopbackReceiver = field(default_factory=LoopbackReceiver)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        """The root URL (post incoming-webhook messages to `url + "/slack"`)."""
        return self._receiver.url

    def start(self, port: int = 0) -> SlackStandIn:
        """Listen on 127.0.0.1 (a free port by default)."""
        self._receiver.on_receive = self._show
        self._receiver.start(port)
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._receiver.stop()

    def _show(self, got: Received) -> None:
        mid = got.headers.get(IDEMPOTENCY_HEADER.lower(), "")
        try:
            body = got.json()
            text = render_text(body)
        except (ValueError, StandInError) as exc:
            body, text = {}, f"(not a Slack message: {exc})"
        shown = Shown(got.path, mid, body, text)
        head = ("update of the message (response_url)" if shown.is_update
                else f"message to {got.path}" + (f" (id {mid})" if mid else ""))
        self.out(f"\n--- Slack stand-in: {head} ---\n{text}")
        with self._cond:
            self.shown.append(shown)
            self._cond.notify_all()

    def wait_for(self, match: Callable[[Shown], bool], timeout_s: float = 60.0) -> Shown:
        """The first message shown that matches (waiting up to `timeout_s` for it)."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: next((s for s in self.shown if match(s)), None), timeout_s)
        if found is None:
            raise StandInError(f"no matching message arrived within {timeout_s:g} s; see "
                               "`upgate notify status` for what is queued or failing")
        return found

    def press(self, label: str, *, user: str, message: Shown | None = None) -> httpx.Response:
        """Click the button `label` (e.g. "approve") of `message` (default: the latest one
        that has it) as Slack user `user`; returns the interactivity endpoint's answer."""
        if not (self.signing_secret and self.interactivity_url):
            raise StandInError("pressing needs the signing secret and the interactivity URL "
                               "(--signing-secret-env, --interactivity)")
        with self._cond:
            candidates = [message] if message else list(reversed(self.shown))
        for m in candidates:
            action = buttons_of(m.body).get(label.lower()) if m.body else None
            if action:
                break
        else:
            raise StandInError(f"no message shown here has a {label!r} button")
        body, headers = slack_action_request(self.signing_secret, action_id=action, user=user,
                                             response_url=self.url + RESPOND_PATH)
        self.out(f"\n--- Slack stand-in: {user} presses [{label}] ({action}) ---")
        return httpx.post(self.interactivity_url, content=body, headers=headers, timeout=30)

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
