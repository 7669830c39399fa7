"""Notification channels: one Protocol, a backend per kind, chosen by the config's `type`.

A send's failure (a 500, a timeout, a refused connection) is a returned value: the worker
decides about retries. Every request carries the message's idempotency id as a header
(`webhook-id` for Standard Webhooks, `X-Upgate-Idempotency-Key` for both).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Protocol

import httpx
from pydantic import BaseModel, ConfigDict
from standardwebhooks.webhooks import Webhook

from upgate.errors import ConfigError
from upgate.notify.config import SlackChannelConfig, WebhookChannelConfig
from upgate.notify.render import Message, slack_payload, webhook_body

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "X-Upgate-Idempotency-Key"


class SendResult(BaseModel):
    """What one delivery attempt came to."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    status: int | None = None
    error: str = ""


class Channel(Protocol):
    """Somewhere a message can be sent."""

    name: str

    def send(self, msg: Message) -> SendResult:
        """Send one message; failures are values."""
        ...


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> SendResult:
    try:
        resp = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        return SendResult(ok=False, error=f"timed out after {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return SendResult(ok=False, error=f"{type(exc).__name__}: {exc}")
    if 200 <= resp.status_code < 300:
        return SendResult(ok=True, status=resp.status_code)
    return SendResult(ok=False, status=resp.status_code,
                      error=f"HTTP {resp.status_code}: {resp.text[:200]}")


class SlackWebhookChannel:
    """A Slack incoming webhook: Block Kit JSON."""

    def __init__(self, cfg: SlackChannelConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg

    def send(self, msg: Message) -> SendResult:
        """Post the Block Kit message."""
        try:
            url = self.cfg.url()
        except ConfigError as exc:
            return SendResult(ok=False, error=str(exc))
        if not self.cfg.buttons:
            msg = msg.model_copy(update={"buttons": False})
        body = json.dumps(slack_payload(msg)).encode()
        return _post(url, body, {"Content-Type": "application/json",
                                 IDEMPOTENCY_HEADER: msg.id}, self.cfg.timeout_s)


class StandardWebhookChannel:
    """A generic webhook signed per the Standard Webhooks specification."""

    def __init__(self, cfg: WebhookChannelConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg

    def send(self, msg: Message) -> SendResult:
        """Sign (webhook-id, webhook-timestamp, body) and post."""
        try:
            signer = Webhook(self.cfg.secret())
        except ConfigError as exc:
            return SendResult(ok=False, error=str(exc))
        except Exception as exc:  # the library raises bare errors on a malformed secret
            return SendResult(ok=False, error=f"{self.cfg.secret_env} is not a valid "
                              f"Standard Webhooks secret (whsec_<base64>): {exc}")
        now = datetime.now(UTC).replace(microsecond=0)
        stamp = str(int(now.timestamp()))
        body = json.dumps(webhook_body(msg, now.isoformat()))
        headers = {
            "Content-Type": "application/json", "webhook-id": msg.id,
            "webhook-timestamp": stamp,
            "webhook-signature": signer.sign(msg.id, now, body),
            IDEMPOTENCY_HEADER: msg.id,
        }
        return _post(self.cfg.url, body.encode(), headers, self.cfg.timeout_s)


def get_channel(cfg: SlackChannelConfig | WebhookChannelConfig) -> Channel:
    """The backend for one channel's config."""
    if isinstance(cfg, SlackChannelConfig):
        return SlackWebhookChannel(cfg)
    return StandardWebhookChannel(cfg)
