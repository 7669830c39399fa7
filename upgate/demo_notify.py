"""`make demo-notify`: the demo cycle announced in a local Slack stand-in, approved by button.

It starts the Slack stand-in (`upgate.notify.standin`) on loopback, lays out the demo
folder with a Slack channel pointed at it and a fresh signing secret, runs the demo's
batch, and shows the approval request arriving. Then it starts `upgate serve`, and the
stand-in presses Approve as bob's Slack user (mapped to bob by alice, an admin, on the
record): the service checks Slack's signature and every rule the CLI checks, the cycle
deploys, the original message is replaced with the outcome, and the service's delivery
worker posts the "Deployed" notification to the stand-in.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from upgate import admin
from upgate.demo import NOTIFY_ENV, SERVE_PORT, SLACK_SECRET_ENV, Demo, prepare, run_batch
from upgate.errors import UpgateError
from upgate.hashing import canonical_json
from upgate.identity import load_signer, person_key_id
from upgate.notify.slack_actions import PATH
from upgate.notify.slack_people import SlackState
from upgate.notify.standin import Shown, SlackStandIn

console = Console(soft_wrap=True)

APPROVER = "bob"
APPROVER_SLACK_ID = "U0DEMOBOB"
SERVICE = "approvals"


class DemoNotifyError(UpgateError):
    """The button path of the demo could not run (the service did not start)."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (the chat link in messages names it)."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def slack_setup(demo: Demo, slack_id: str = APPROVER_SLACK_ID,
                person: str = APPROVER) -> None:
    """Once per demo folder: the approval service's key, and `slack_id` mapped to `person`;
    both signed by alice (the admin) and recorded in the ledger."""
    deps = demo.runner.deps
    alice = load_signer(person_key_id("alice"), demo.keys)
    keyring = admin.replay(deps.store, deps.ledger).keyring()
    if f"service:{SERVICE}" not in keyring.public_keys:
        admin.add_service(deps.store, deps.ledger, alice, SERVICE, key_dir=demo.keys)
    people = SlackState(deps.store)
    if people.person_for(slack_id) != person:
        people.map_user(slack_id, person, by="alice")
        record = {"slack_id": slack_id, "person": person, "by": "alice"}
        deps.ledger.append("admin", "notify", "slack_mapped", {
            **record, "signer": alice.key_id,
            "signature": alice.sign(canonical_json(record).encode())})


def start_service(config: Path, keys: Path, port: int, *, env: dict[str, str] | None = None,
                  log: Path | None = None, wait_s: float = 120.0) -> subprocess.Popen[bytes]:
    """`upgate serve` in a child process on 127.0.0.1:`port`, once it answers."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "upgate.cli", "serve", "--config", str(config),
         "--port", str(port), "--key-dir", str(keys)],
        env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoNotifyError(f"upgate serve exited with code {proc.returncode}"
                                  + (f"; see {log}" if log else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise DemoNotifyError(f"upgate serve did not answer on port {port} within {wait_s:g} s")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    """Stop the service the demo started."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def approve_by_button(standin: SlackStandIn, service_url: str, cycle_id: str,
                      slack_user: str = APPROVER_SLACK_ID,
                      wait_s: float = 300.0) -> tuple[Shown, Shown]:
    """Press Approve on the cycle's request as `slack_user`; returns the message's update
    (the outcome) and the "Deployed" notification that follows."""
    standin.interactivity_url = service_url + PATH
    request = standin.wait_for(
        lambda s: not s.is_update and f"`{cycle_id}`" in s.text
        and s.text.startswith("upgate: Approval requested"), wait_s)
    answer = standin.press("approve", user=slack_user, message=request)
    if answer.status_code != 200:
        raise DemoNotifyError(f"the Slack endpoint refused the press: {answer.status_code} "
                              f"{answer.text[:200]}")
    update = standin.wait_for(lambda s: s.is_update, wait_s)
    deployed = standin.wait_for(
        lambda s: not s.is_update and s.text.startswith("upgate: Deployed")
        and f"`{cycle_id}`" in s.text, wait_s)
    return update, deployed


def main() -> None:
    """Run the demo with the Slack stand-in and a button approval."""
    standin = SlackStandIn(signing_secret=secrets.token_hex(16),
                           out=lambda s: console.print(s, highlight=False, markup=False))
    standin.start(int(os.environ.get("UPGATE_DEMO_SLACK_PORT", "0")))
    os.environ[NOTIFY_ENV] = standin.url + "/slack"
    os.environ[SLACK_SECRET_ENV] = standin.signing_secret
    console.print(f"[bold]Slack stand-in[/bold] listening on {standin.url} (loopback only)")
    try:
        demo = prepare()
        slack_setup(demo)
        cycle = run_batch(demo)
        state = demo.runner.state(cycle) if cycle else {}
        if state.get("outcome") != "awaiting_approval":
            console.print("no cycle waits for approval this time (see the notifications "
                          "above); run `make demo-notify` again for another batch")
            return
        port = SERVE_PORT if port_free(SERVE_PORT) else free_port()
        console.print(f"\n[bold]starting `upgate serve` on 127.0.0.1:{port}[/bold] (its "
                      f"log: {demo.root / 'serve.log'})")
        service = start_service(demo.config, demo.keys, port, log=demo.root / "serve.log")
        try:
            approve_by_button(standin, f"http://127.0.0.1:{port}",
                                                 str(cycle))
        finally:
            stop_service(service)
        final = demo.runner.state(str(cycle)).get("outcome")
        console.print(f"\n[bold]cycle {cycle}: {final}[/bold], approved by {APPROVER} from "
                      f"Slack ({APPROVER_SLACK_ID}); the ledger records channel \"slack\".")
        console.print(f"  {sys.executable} -m upgate.cli history {cycle} --config "
                      f"{demo.config}", highlight=False)
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
