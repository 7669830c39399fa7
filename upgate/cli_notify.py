"""`upgate notify ...`: what is queued or failed, a test message, Slack user mapping."""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from upgate.admin import replay
from upgate.approvals import prove_identity
from upgate.config import Settings, load_settings
from upgate.errors import UpgateError
from upgate.hashing import canonical_json
from upgate.identity import default_key_dir, ensure_outside, load_signer, person_key_id
from upgate.ledger import open_ledger
from upgate.notify.outbox import Outbox
from upgate.notify.slack_people import SlackState
from upgate.notify.worker import channels_of, deliver_due
from upgate.store import Store

notify_app = typer.Typer(help="Notifications: Slack and webhook channels, their outbox.",
                         no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]


def _run(fn: Callable[..., None], *args: Any) -> None:
    """Run a command body; an UpgateError becomes its message and exit code 2."""
    try:
        fn(*args)
    except UpgateError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _outbox(settings: Settings) -> Outbox:
    return Outbox.of_state(settings.state_dir)


def _ago(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()[:19]


@notify_app.command("status")
def status(config: ConfigOpt = None) -> None:
    """Messages pending, failing and dead-lettered, per channel."""
    _run(_status, config)


def _status(config: Path | None) -> None:
    settings = load_settings(config)
    outbox = _outbox(settings)
    seq, digest = outbox.head()
    console.print(f"ledger head #{seq} {digest[:16]}", highlight=False)
    if not settings.notify.channels:
        console.print("no channels configured: add [[notify.channels]] to upgate.toml")
    table = Table("channel", "type", "pending", "failing", "delivered", "dead", "in doubt")
    counts = outbox.counts()
    failing: dict[str, int] = {}
    for row in outbox.rows("pending"):
        if row.attempts:
            failing[row.channel] = failing.get(row.channel, 0) + 1
    configured = {c.name: c.type for c in settings.notify.channels}
    for name in sorted(set(configured) | set(counts)):
        c = counts.get(name, {})
        table.add_row(name, configured.get(name, "(removed)"), str(c.get("pending", 0)),
                      str(failing.get(name, 0)), str(c.get("delivered", 0)),
                      str(c.get("dead", 0)), str(c.get("doubt", 0)))
    console.print(table)
    trouble = [r for r in outbox.rows() if r.status in ("dead", "doubt") or
               (r.status == "pending" and r.attempts)]
    for row in trouble[-20:]:
        when = (row.status if row.status in ("dead", "doubt")
                else f"next try {_ago(row.next_at)}")
        console.print(f"  {row.id} {row.channel} {row.type} {row.cycle_id}: "
                      f"{row.attempts} attempt(s), {when}: {row.last_error}", highlight=False)
    if any(r.status == "dead" for r in trouble):
        console.print("retry dead messages after fixing the channel: upgate notify deliver "
                      "--retry-dead")
    if any(r.status == "doubt" for r in trouble):
        console.print("in doubt: a send was interrupted after it went out, so it may have "
                      "arrived; check the channel, then send them again (marked as possible "
                      "repeats) with: upgate notify deliver --resend-in-doubt")


@notify_app.command("test")
def send_test(channel: str, config: ConfigOpt = None) -> None:
    """Send a test message (carrying the ledger head) to one channel, now."""
    _run(_test, channel, config)


def _test(channel: str, config: Path | None) -> None:
    settings = load_settings(config)
    settings.notify.channel(channel)  # a clear error for an unknown name
    outbox = _outbox(settings)
    key = f"test/{channel}/{secrets.token_hex(8)}"
    (mid,) = outbox.enqueue_direct("test", [channel], {"text": "upgate notification test: "
                                   "this channel works."}, key=key, cycle_id="test")
    deliver_due(outbox, channels_of(settings.notify), settings.notify, only_channel=channel)
    row = outbox.get(mid)
    if row is not None and row.status == "delivered":
        console.print(f"[green]sent[/green] {mid} to {channel}", highlight=False)
        return
    error = row.last_error if row is not None else "not claimed (another worker holds it)"
    err.print(f"[red]not delivered[/red] to {channel}: {error}; it stays queued for retries "
              "(see `upgate notify status`)", highlight=False)
    raise typer.Exit(1)


@notify_app.command("deliver")
def deliver(config: ConfigOpt = None, retry_dead: Annotated[bool, typer.Option(
        help="Queue dead-lettered messages again first.")] = False,
            resend_in_doubt: Annotated[bool, typer.Option(
                help="Send messages held in doubt again (marked as possible repeats).")
            ] = False) -> None:
    """Deliver what is due now (the server's worker does this continuously)."""
    _run(_deliver, config, retry_dead, resend_in_doubt)


def _deliver(config: Path | None, retry_dead: bool, resend_in_doubt: bool) -> None:
    settings = load_settings(config)
    outbox = _outbox(settings)
    if retry_dead:
        console.print(f"{outbox.retry_dead()} dead message(s) queued again")
    if resend_in_doubt:
        console.print(f"{outbox.resend_doubt()} message(s) in doubt queued again")
    report = deliver_due(outbox, channels_of(settings.notify), settings.notify)
    console.print(f"delivered {len(report.delivered)}, to retry {len(report.retried)}, "
                  f"dead {len(report.dead)}")


@notify_app.command("map-slack")
def map_slack(slack_id: str, person: str,
              as_: Annotated[str, typer.Option(
                  "--as", help="The acting admin (signs the mapping with their key).")],
              key_dir: Annotated[Path | None, typer.Option(
                  "--key-dir", help="Private key folder (default $UPGATE_KEY_DIR, else "
                  "~/.config/upgate/keys).")] = None,
              config: ConfigOpt = None) -> None:
    """Map a Slack user id to an upgate person, so their button presses count as theirs."""
    _run(_map_slack, slack_id, person, as_, key_dir, config)


def _map_slack(slack_id: str, person: str, as_: str, key_dir: Path | None,
               config: Path | None) -> None:
    settings = load_settings(config)
    folder = key_dir or default_key_dir()
    ensure_outside(folder, settings.state_dir)
    signer = load_signer(person_key_id(as_), folder)
    store = Store(settings.state_dir / "state.sqlite")
    ledger = open_ledger(settings.state_dir)
    try:
        admin = prove_identity(replay(store, ledger).keyring(), as_, signer, role="admin")
        SlackState(store).map_user(slack_id, person, by=admin)
        record = {"slack_id": slack_id, "person": person, "by": admin}
        ledger.append("admin", "notify", "slack_mapped", {
            **record, "signer": signer.key_id,
            "signature": signer.sign(canonical_json(record).encode())})
    finally:
        store.close()
        ledger.close()
    console.print(f"Slack user {slack_id} is {person} (set by {admin})", highlight=False)


@notify_app.command("receiver")
def receiver(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1.")] = 8099,
    interactivity: Annotated[str, typer.Option(
        help="Where buttons post, e.g. http://127.0.0.1:8765/slack/actions.")] = "",
    signing_secret_env: Annotated[str, typer.Option(
        help="Environment variable holding the signing secret ([notify] "
        "slack_signing_secret_env of the service).")] = "",
) -> None:
    """A local Slack stand-in: shows each message posted to it as text; type
    `approve U0123ABC` (or reject, stop-batch) to press that button as that Slack user."""
    _run(_receiver, port, interactivity, signing_secret_env)


def _receiver(port: int, interactivity: str, signing_secret_env: str) -> None:
    from upgate.notify.config import env_secret
    from upgate.notify.standin import SlackStandIn

    secret = env_secret(signing_secret_env, "the Slack signing secret") \
        if signing_secret_env else ""
    standin = SlackStandIn(signing_secret=secret, interactivity_url=interactivity,
                           out=lambda s: console.print(s, highlight=False, markup=False))
    standin.start(port)
    console.print(f"Slack stand-in on {standin.url}: point a slack channel's webhook URL at "
                  f"{standin.url}/slack", highlight=False)
    try:
        for line in sys.stdin:
            words = line.split()
            if len(words) != 2:
                console.print("type: BUTTON SLACK_USER_ID (e.g. approve U0123ABC)")
                continue
            try:
                answer = standin.press(words[0], user=words[1])
                console.print(f"the endpoint answered {answer.status_code}", highlight=False)
            except UpgateError as exc:
                err.print(f"[red]error:[/red] {exc}", highlight=False)
        threading.Event().wait()  # stdin closed (run in the background): keep listening
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
