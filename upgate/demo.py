"""`make demo`: one governed upgrade cycle on the bundled example target, on real parts.

It lays out a demo folder (the example target as a fresh git repository, a config pointing
the agents at the local vLLM server, two people), runs one cycle, and stops at the human
approval, printing exactly how to approve or reject.

People: alice is the first admin and the operator who requests; bob approves. Their
private keys live in the demo folder's own `keys/` (outside its `state/`), and the state
holds only their public keys, registered by alice's signed commands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from upgate import admin
from upgate.app import build_deps
from upgate.config import Settings, load_settings
from upgate.graphs.runner import Runner
from upgate.identity import generate_key, load_signer, person_key_id
from upgate.ledger import open_ledger
from upgate.store import Store

console = Console(soft_wrap=True)

REPO = Path(__file__).resolve().parents[1]
NOTIFY_ENV = "UPGATE_DEMO_NOTIFY_URL"
SLACK_SECRET_ENV = "UPGATE_DEMO_SLACK_SECRET"  # noqa: S105 (a variable name)
SERVE_PORT = 8765


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def layout(root: Path, *, port: int, sandbox: str = "docker") -> Path:
    """Create (or reuse) the demo folder; returns its config file."""
    target = root / "ticket-triage"
    if not (target / ".git").exists():
        shutil.copytree(REPO / "examples" / "ticket-triage", target,
                        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        _git(target, "init", "-q", "-b", "main")
        _git(target, "add", "-A")
        _git(target, "-c", "user.name=upgate demo", "-c", "user.email=demo@localhost",
             "commit", "-qm", "ticket-triage: initial version")
    shutil.copy(REPO / "examples" / "policy.toml", root / "policy.toml")
    model_dir = REPO / ".cache" / "models" / "smollm2-135m-instruct"
    endpoint = f"http://127.0.0.1:{port}"
    agents = "".join(
        f'\n[agents.{name}]\nbase_url = "{endpoint}/v1"\nmodel = "smollm2"\n'
        f"output_retries = 2\nmax_tokens = 400\n"
        for name in ("proposer", "coder", "critic")
    )
    config = root / "upgate.toml"
    config.write_text(
        "# Written by `make demo`: the example target, served by the local vLLM server.\n"
        'state_dir = "state"\npolicy = "policy.toml"\noperator = "alice"\n\n'
        f'[target]\npath = "ticket-triage"\nsuite = "{REPO / "examples/suites/ticket-triage"}"\n\n'
        f'[serving]\nbase_url = "{endpoint}"\nbase_model_path = "{model_dir}"\n\n'
        # The ledger's heads go to a fast-forward-only git repository beside (not inside)
        # the state folder, signed with a key in the demo's key folder.
        '[witness]\ntype = "git"\npath = "witness.git"\nkey_dir = "keys"\n\n'
        f'[sandbox]\ntype = "{sandbox}"\n{agents}'
    )
    if os.environ.get(NOTIFY_ENV):
        # Opt-in: notifications to the webhook URL the variable holds (e.g. a local receiver:
        # `python -m upgate.notify.testing --port 8099`, then
        # UPGATE_DEMO_NOTIFY_URL=http://127.0.0.1:8099/).
        # With UPGATE_DEMO_SLACK_SECRET set too, its buttons go to `upgate serve`.
        buttons = (f'slack_signing_secret_env = "{SLACK_SECRET_ENV}"\n'
                   if os.environ.get(SLACK_SECRET_ENV) else "")
        with config.open("a") as fh:
            fh.write(f'\n[notify]\n{buttons}'
                     f'chat_url = "http://127.0.0.1:{SERVE_PORT}/?cycle={{cycle_id}}"\n'
                     f'\n[[notify.channels]]\ntype = "slack"\nname = "demo"\n'
                     f'webhook_url_env = "{NOTIFY_ENV}"\n')
    return config


def people(settings: Settings, keys: Path, tokens: Path) -> None:
    """Initialise the state once (alice: admin), register bob, keep the policy adopted."""
    store = Store(settings.state_dir / "state.sqlite")
    ledger = open_ledger(settings.state_dir, settings.witness)
    tokens.mkdir(exist_ok=True)
    try:
        text = settings.policy.read_text()
        ids = admin.replay(store, ledger)
        if not ids.seq:
            made = admin.init_state(store, ledger, admin="alice", policy_text=text,
                                    key_dir=keys)
            (tokens / "alice").write_text(made.token)
            (tokens / "alice").chmod(0o600)
            ids = admin.replay(store, ledger)
        alice = load_signer(person_key_id("alice"), keys)
        if ids.policy is None or ids.policy_text != text:
            admin.adopt_policy(store, ledger, alice, text)
        if "bob" not in ids.people:
            public = generate_key(person_key_id("bob"), keys, replace=True)
            made = admin.add_person(store, ledger, alice, "bob", public_key=public)
            (tokens / "bob").write_text(made.token)
            (tokens / "bob").chmod(0o600)
    finally:
        store.close()
        ledger.close()


@dataclass
class Demo:
    """The demo folder, laid out and with its people: what the demo's steps share."""

    root: Path
    config: Path
    settings: Settings
    keys: Path
    runner: Runner


def prepare() -> Demo:
    """Lay out the demo folder ($UPGATE_DEMO_DIR, else .upgate-demo) and its people."""
    root = Path(os.environ.get("UPGATE_DEMO_DIR", REPO / ".upgate-demo")).resolve()
    port = int(os.environ.get("UPGATE_VLLM_PORT", "8011"))
    root.mkdir(parents=True, exist_ok=True)
    config = layout(root, port=port)
    settings = load_settings(config)
    keys = root / "keys"
    people(settings, keys, root / "tokens")
    return Demo(root, config, settings, keys, Runner(build_deps(settings)))


def run_batch(demo: Demo) -> str | None:
    """Run the demo's batch; returns its last cycle, if it ran any."""
    runner = demo.runner
    console.print(f"[bold]upgate demo[/bold] in {demo.root}")
    console.print("  target: ticket-triage (a support-ticket router served by vLLM as 'triage')")
    console.print("  people: alice (admin) requests, bob approves; private keys in keys/, "
                  "outside state/\n")

    from upgate.cli import _finish, _progress

    # An autonomous batch that pauses at the first approval request: a recipe the critic
    # rejects is recorded and left out of the next proposal against the same baseline.
    from upgate.notify.worker import delivering

    with delivering(runner.deps.state_dir, runner.deps.settings.notify), \
            console.status("running cycles: evaluate, propose, build in the sandbox, "
                           "critique (minutes on a CPU)"):
        report = runner.batch("alice", max_cycles=4, max_pending=1, pause_after_failures=4,
                              progress=_progress, on_cycle=lambda st: _finish(st, runner))
    console.print(f"\nbatch: {report.stopped_because}")
    if os.environ.get(NOTIFY_ENV):
        from upgate.notify.worker import deliver_after_command

        deliver_after_command()
        console.print(f"notifications sent to ${NOTIFY_ENV} (see `upgate notify status`)")
    return report.cycles[-1] if report.cycles else None


def main() -> None:
    """Run the demo."""
    demo = prepare()
    cycle = run_batch(demo)
    if cycle is None:
        return
    root, config, keys = demo.root, demo.config, demo.keys
    state = demo.runner.state(cycle)
    up = f"{sys.executable} -m upgate.cli"
    if state.get("outcome") == "awaiting_approval":
        console.print("\n[bold]To approve it as bob (this swaps the served model):[/bold]")
        console.print(f"  UPGATE_KEY_DIR={keys} {up} approve {cycle} --as bob "
                      f"--config {config}", highlight=False, soft_wrap=True)
        console.print("[bold]To reject it:[/bold]")
        console.print(f"  UPGATE_KEY_DIR={keys} {up} reject {cycle} --as bob "
                      f"--reason 'why' --config {config}", highlight=False, soft_wrap=True)
        console.print("[bold]Or review, ask about the evidence and decide on the chat page:[/bold]")
        console.print(f"  UPGATE_KEY_DIR={keys} {up} service add approvals --as alice "
                      f"--config {config}   # once", highlight=False, soft_wrap=True)
        console.print(f"  UPGATE_KEY_DIR={keys} {up} serve --config {config}",
                      highlight=False, soft_wrap=True)
        console.print(f"  then open http://127.0.0.1:{SERVE_PORT}/?cycle={cycle} and log in as bob "
                      f"(token in {root / 'tokens' / 'bob'})", highlight=False, soft_wrap=True)
    console.print("[bold]Then:[/bold]")
    console.print(f"  {up} history {cycle} --config {config}", highlight=False, soft_wrap=True)
    console.print(f"  {up} verify --config {config}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
