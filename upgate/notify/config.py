"""Notification settings: the `[notify]` block of upgate.toml and its channels.

Channels are a discriminated union on `type`. Secrets (a Slack webhook URL, a webhook
signing secret, Slack's signing secret) never appear in the file: the file names the
environment variable that holds each one.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from upgate.errors import ConfigError

NotificationType = Literal[
    "approval_requested", "approval_decided", "approval_expired", "batch_paused", "deployed",
    "batch_running",
    "rollout_step", "rolled_back", "verify_failed", "cycle_failed", "test",
]
ALL_TYPES: tuple[str, ...] = NotificationType.__args__  # type: ignore[attr-defined]

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def env_secret(name: str, what: str) -> str:
    """The value of the environment variable `name`, or a ConfigError saying what to set."""
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(
            f"environment variable {name} (holding {what}) is empty; export it before "
            "running upgate, or remove the channel from [[notify.channels]]"
        )
    return value


class _ChannelBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    events: tuple[NotificationType, ...] | None = None
    """Only these notification types go to this channel (default: all)."""
    timeout_s: float = Field(default=5.0, gt=0, le=60)

    def wants(self, kind: str) -> bool:
        """Whether this channel receives notifications of this type."""
        return kind == "test" or self.events is None or kind in self.events


class SlackChannelConfig(_ChannelBase):
    """A Slack incoming webhook (Block Kit messages with approve and reject buttons)."""

    type: Literal["slack"] = "slack"
    on_doubt: Literal["resend", "hold"] = "hold"
    """A message whose send was interrupted (it may have arrived) waits for a person: an
    incoming webhook cannot drop a copy by id, so Slack never shows one twice by itself."""
    webhook_url_env: str = Field(pattern=_ENV_NAME)
    """Name of the environment variable holding the incoming webhook's URL."""
    buttons: bool = True
    """Approve and reject buttons on approval requests (needs Slack interactivity)."""

    def url(self) -> str:
        """The webhook URL from the environment."""
        url = env_secret(self.webhook_url_env, f"the Slack webhook URL of channel {self.name}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{self.webhook_url_env} must hold an http(s) URL")
        return url


class WebhookChannelConfig(_ChannelBase):
    """A generic webhook, signed per the Standard Webhooks specification."""

    type: Literal["webhook"] = "webhook"
    on_doubt: Literal["resend", "hold"] = "resend"
    """A message whose send was interrupted is sent again under the same `webhook-id`,
    which a Standard Webhooks consumer uses to keep one copy."""
    url: str
    secret_env: str = Field(pattern=_ENV_NAME)
    """Name of the environment variable holding the signing secret (`whsec_...`)."""

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    def secret(self) -> str:
        """The signing secret from the environment."""
        return env_secret(self.secret_env, f"the signing secret of webhook channel {self.name}")


ChannelConfig = Annotated[SlackChannelConfig | WebhookChannelConfig, Field(discriminator="type")]


class NotifySettings(BaseModel):
    """Where notifications go and how hard delivery tries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[ChannelConfig, ...] = ()
    max_attempts: int = Field(default=6, ge=1, le=50)
    """After this many failed attempts a message is dead-lettered."""
    backoff_base_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    """How long a worker holds a claimed message before another may take it over."""
    chat_url: str | None = None
    """Link to a cycle's chat page; `{cycle_id}` is replaced (e.g. http://host/c/{cycle_id})."""
    slack_signing_secret_env: str | None = Field(default=None, pattern=_ENV_NAME)
    """Name of the environment variable holding Slack's signing secret (interactivity)."""

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: tuple[ChannelConfig, ...]) -> tuple[ChannelConfig, ...]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique; repeated: {', '.join(dupes)}")
        return value

    def channel(self, name: str) -> SlackChannelConfig | WebhookChannelConfig:
        """The channel of that name, or a ConfigError listing the configured ones."""
        for c in self.channels:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.channels) or "none"
        raise ConfigError(
            f"no notification channel named {name!r} (configured: {known}); add it under "
            "[[notify.channels]] in upgate.toml"
        )
