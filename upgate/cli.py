"""The `upgate` command line: run and resume cycles, answer approvals, read the ledger."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from upgate.approvals import prove_identity
from upgate.cli_admin import init_command, policy_app, service_app
from upgate.cli_admin import register as register_admin_commands
from upgate.cli_batch import batch_app, print_curve, print_held, stop_command
from upgate.cli_bluegreen import bluegreen_app
from upgate.cli_critique import critique_command
from upgate.cli_gateway import gateway_app
from upgate.cli_notify import notify_app
from upgate.cli_report import report_command
from upgate.cli_rollback import rollback_command
from upgate.cli_rollout import rollout_app
from upgate.cli_sandbox import sandbox_app
from upgate.config import Settings, load_settings
from upgate.errors import EvalError, LedgerError, UpgateError
from upgate.evidence_store import check_cycle_id, read_packet
from upgate.graphs.runner import Runner, validate_cycle_id
from upgate.graphs.state import CycleState
from upgate.identity import KeySigner, default_key_dir, load_signer, person_key_id
from upgate.ledger import open_ledger
from upgate.progress_view import TerminalProgress, terminal_progress

app = typer.Typer(
    help="upgate: propose, sandbox, critique, approve, deploy and record AI upgrades.",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
person_app = typer.Typer(help="People who may request and approve changes.",
                         no_args_is_help=True)
app.add_typer(person_app, name="person")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(policy_app, name="policy")
app.add_typer(service_app, name="service")
app.command("critique")(critique_command)
app.add_typer(notify_app, name="notify")
app.add_typer(batch_app, name="batch")
app.command("stop")(stop_command)
app.command("rollback")(rollback_command)
app.command("report")(report_command)
app.add_typer(gateway_app, name="gateway")
app.add_typer(bluegreen_app, name="bluegreen")
app.add_typer(rollout_app, name="rollout")

# soft_wrap: messages stay on one line when piped, so they can be read (and grepped) whole.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
AsOpt = Annotated[str, typer.Option("--as", help="Who you are (a registered person).")]
KeyDirOpt = Annotated[Path | None, typer.Option(
    "--key-dir", help="Your private key folder (default $UPGATE_KEY_DIR, else "
    "~/.config/upgate/keys).")]

_NODE_LABELS = {
    "observe": "gathered evidence", "propose": "proposal made", "policy_check": "policy checked",
    "implement": "candidate built in the sandbox", "critique": "critic's verdict",
    "revise": "revision requested", "gate": "gate", "approve": "human decision",
    "deploy": "deployed", "monitor": "post-deploy check", "rollback": "rolled back",
    "record": "recorded in the ledger",
}


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _runner(settings: Settings, for_cycles: bool = True) -> Runner:
    from upgate.app import build_deps

    return Runner(build_deps(settings, for_cycles=for_cycles))


def _identify(runner: Runner, name: str, key_dir: Path | None,
              role: str | tuple[str, ...]) -> KeySigner:
    """The caller's signer, after proving they hold `name`'s registered key and a role."""
    from upgate.admin import replay

    signer = load_signer(person_key_id(name), key_dir or default_key_dir())
    prove_identity(replay(runner.deps.store, runner.deps.ledger).keyring(), name, signer,
                   role=role)
    return signer


def _describe(node: str, data: dict[str, Any]) -> Text:
    """One line about a node's result; every value in it is shown as text, never markup."""
    if data.get("outcome") in ("failed", "blocked", "rejected") and data.get("reason"):
        return Text.assemble((str(data["outcome"]), "red"), f": {data['reason']}")
    if node == "observe":
        obs = data.get("observation", {})
        return Text(f"visible score {obs.get('visible_score', 'n/a')}")
    if node == "propose" and data.get("proposal"):
        p = data["proposal"]
        return Text(f"{p['recipe']} ({p['kind']}) {p['args']}: {p['rationale'][:120]}")
    if node == "implement" and data.get("candidate"):
        c = data["candidate"]
        return Text(f"candidate {c['content_hash'][:12]}, {len(c['changed_paths'])} file(s), "
                    f"{len(c['artifacts'])} artifact(s)")
    if node == "critique" and data.get("verdict"):
        v = data["verdict"]
        score = ""
        if v.get("baseline_score") is not None:
            score = f" score {v['baseline_score']:.2f} -> {v['candidate_score']:.2f};"
        return Text(f"{v['decision']};{score} {'; '.join(v['reasons'])[:200]}")
    if node == "deploy" and data.get("deployment"):
        d = data["deployment"]
        return Text(str(d.get("branch") or f"{d.get('alias')} -> {d.get('version_name')}"))
    return Text(str(data.get("outcome", "")))


def _progress(node: str, data: dict[str, Any]) -> None:
    line = Text.assemble("  ", ("✓", "green"),
                         f" {node:<13} {_NODE_LABELS.get(node, '')}: ", _describe(node, data))
    console.print(line, highlight=False)


def _and_close_bars(bars: TerminalProgress) -> Callable[[str, dict[str, Any]], None]:
    """The node printer, which also removes the bars of the node that just ended."""
    def show(node: str, data: dict[str, Any]) -> None:
        bars.node_done(node)
        _progress(node, data)
    return show


def _finish(state: CycleState, runner: Runner) -> None:
    cycle = str(state.get("cycle_id", "?"))
    outcome = str(state.get("outcome", "?"))
    if outcome == "awaiting_approval":
        req = runner.pending(cycle) or {}
        console.print(Text(f"\nCycle {cycle} waits for a human decision.", "bold yellow"))
        console.print(Text(f"  evidence: `upgate show {cycle}` (packet "
                           f"{str(req.get('evidence_hash', ''))[:16]}, re-hashed when shown)"))
        console.print(Text(f"  candidate {str(req.get('candidate_hash', ''))[:12]}, "
                           f"requested by {req.get('requester')}"))
        console.print(Text(f"  approvals: {len(req.get('approved_by') or [])} of "
                           f"{req.get('approvals_required', 1)}"))
        console.print(Text(f"  approve:  upgate approve {cycle} --as <approver>   "
                           "(signed with your key in $UPGATE_KEY_DIR)"))
        console.print(Text(f"  reject:   upgate reject {cycle} --as <approver> --reason '...'"))
    else:
        colour = "green" if outcome == "deployed" else "red"
        console.print(Text.assemble(f"\nCycle {cycle}: ", (outcome, colour),
                                    f" {state.get('reason', '')}"), highlight=False)


def _cells(*values: object) -> list[Text]:
    """Table cells shown as text: ledger and request values are never read as markup."""
    return [Text(str(v)) for v in values]


def _guard(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UpgateError as exc:
            err.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False)
            raise typer.Exit(2) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    # eval_str: this module uses postponed annotations; typer needs the real Annotated types.
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return wrapper


@app.command()
@_guard
def run(config: ConfigOpt = None, as_: AsOpt = "", key_dir: KeyDirOpt = None) -> None:
    """Start one upgrade cycle; it runs until it ends or waits for approval."""
    settings = _settings(config)
    runner = _runner(settings)
    requester = as_ or settings.operator
    _identify(runner, requester, key_dir, "operator")
    console.print(f"[bold]upgate[/bold]: cycle on {runner.deps.manifest.name} "
                  f"requested by {requester}")
    with terminal_progress(runner, console, status="running the cycle (evaluations and "
                           "training take minutes on a CPU)") as bars:
        state = runner.start(requester, progress=_and_close_bars(bars))
    _finish(state, runner)


@app.command()
@_guard
def resume(cycle: Annotated[str | None, typer.Argument()] = None,
           config: ConfigOpt = None) -> None:
    """Continue a cycle (or every unfinished one) from its last checkpoint."""
    runner = _runner(_settings(config))
    cycles = [validate_cycle_id(cycle)] if cycle else runner.unfinished()
    if not cycles:
        console.print("nothing to resume")
    for cid in cycles:
        console.print(f"resuming {cid}")
        with console.status(f"resuming {cid}"):
            state = runner.resume(cid, progress=_progress)
        _finish(state, runner)


@app.command()
@_guard
def inbox(config: ConfigOpt = None) -> None:
    """List the cycles waiting for a human decision, with their evidence."""
    runner = _runner(_settings(config), for_cycles=False)
    waiting = runner.inbox()
    held = print_held(runner)
    if not waiting:
        if not held:
            console.print("inbox is empty")
        return
    table = Table()
    table.add_column("cycle", no_wrap=True, min_width=24)
    for name in ("kind", "requester", "score", "candidate", "evidence", "requested"):
        table.add_column(name)
    for req in waiting:
        score = ""
        if req.get("baseline_score") is not None:
            score = f"{req['baseline_score']:.2f} -> {req['candidate_score']:.2f}"
        table.add_row(*_cells(req["cycle_id"], req.get("kind", ""), req.get("requester", ""),
                              score, req["candidate_hash"][:12], req["evidence_hash"][:12],
                              req["requested_at"][:19]))
    console.print(table)


@app.command()
@_guard
def show(cycle: str, config: ConfigOpt = None) -> None:
    """Show the evidence packet a cycle's approval request is bound to, re-hashed."""
    check_cycle_id(cycle)
    runner = _runner(_settings(config))
    request = runner.pending(cycle)
    if request is not None:
        evidence_hash = str(request["evidence_hash"])
        note = "the packet this cycle's approval request is bound to"
    else:
        critiques = [e for e in runner.deps.ledger.entries(cycle)
                     if e.node == "critique" and e.payload.get("evidence_hash")]
        if not critiques:
            raise EvalError(f"cycle {cycle} has no evidence recorded in the ledger; "
                            "see `upgate history`")
        evidence_hash = str(critiques[-1].payload["evidence_hash"])
        note = "not waiting for a decision: the packet of its last critique in the ledger"
    packet = read_packet(runner.deps.state_dir, cycle, evidence_hash)
    console.print(Text(f"{note}; hash {evidence_hash} verified", "dim"))
    console.print(Markdown(packet.to_markdown()))


def _decide(cycle: str, action: str, as_: str, key_dir: Path | None, reason: str,
            evidence: str | None, config: Path | None) -> None:
    validate_cycle_id(cycle)
    runner = _runner(_settings(config), for_cycles=False)
    roles = ("approver",) if action == "approve" else ("approver", "admin", "operator")
    signer = _identify(runner, as_, key_dir, roles)
    request = runner.pending(cycle) or {}
    bound = str(request.get("evidence_hash", ""))
    if evidence is None:
        evidence = bound  # the summary printed below is what the person reviews
    elif len(evidence) >= 12 and bound.startswith(evidence.lower()):
        evidence = bound
    if request:
        console.print(f"{action} {cycle}: candidate {request['candidate_hash'][:12]}, "
                      f"evidence {bound[:16]}, policy {request['policy_version']}",
                      highlight=False, markup=False)
    with console.status(f"{action} {cycle}"):
        state = runner.decide(cycle, action=action, person=as_, reason=reason, signer=signer,
                              evidence_hash=evidence, progress=_progress)
    _finish(state, runner)


EvidenceOpt = Annotated[str | None, typer.Option(
    "--evidence", help="The evidence hash you reviewed (from `upgate show`); a mismatch "
    "with the pending request is refused.")]


@app.command()
@_guard
def approve(cycle: str, as_: AsOpt, key_dir: KeyDirOpt = None,
            reason: Annotated[str, typer.Option()] = "", evidence: EvidenceOpt = None,
            config: ConfigOpt = None) -> None:
    """Approve a waiting cycle's candidate (signed with your key); the graph then deploys it."""
    _decide(cycle, "approve", as_, key_dir, reason, evidence, config)


@app.command()
@_guard
def reject(cycle: str, as_: AsOpt, reason: Annotated[str, typer.Option()],
           key_dir: KeyDirOpt = None, evidence: EvidenceOpt = None,
           config: ConfigOpt = None) -> None:
    """Reject a waiting cycle's candidate, with a reason (possible even after it expired)."""
    _decide(cycle, "reject", as_, key_dir, reason, evidence, config)


@app.command()
@_guard
def cancel(cycle: str, as_: AsOpt, reason: Annotated[str, typer.Option()],
           key_dir: KeyDirOpt = None, config: ConfigOpt = None) -> None:
    """End an unfinished cycle (waiting, stopped or stuck), with a reason."""
    validate_cycle_id(cycle)
    runner = _runner(_settings(config), for_cycles=False)
    _identify(runner, as_, key_dir, ("operator", "admin"))
    state = runner.cancel(cycle, person=as_, reason=reason)
    console.print(f"cycle {cycle}: {state.get('outcome', 'cancelled')}", highlight=False,
                  markup=False)


@app.command()
@_guard
def history(cycle: Annotated[str | None, typer.Argument()] = None,
            config: ConfigOpt = None) -> None:
    """The ledger: every decision of one cycle, or a line per cycle."""
    settings = _settings(config)
    ledger = open_ledger(settings.state_dir)
    if cycle is not None:
        check_cycle_id(cycle)
    if cycle is None:
        table = Table()
        table.add_column("cycle", no_wrap=True, min_width=24)
        for name in ("outcome", "recipe", "entries", "started"):
            table.add_column(name)
        for cid in ledger.cycles():
            entries = ledger.entries(cid)
            last = [e for e in entries if e.node == "record"]
            table.add_row(*_cells(cid, last[-1].event if last else "(open)",
                                  str(last[-1].payload.get("recipe", "")) if last else "",
                                  str(len(entries)), entries[0].at[:19]))
        console.print(table)
        print_curve(ledger.entries())
        return
    table = Table("seq", "at", "node", "event", "detail", "hash")
    for e in ledger.entries(cycle):
        # What a reader looks for first (who decided, why) leads; the rest follows.
        lead = ("approver", "action", "outcome", "reason")
        first: dict[str, Any] = {k: e.payload[k] for k in lead if k in e.payload}
        detail: dict[str, Any] = {**first, **{k: v for k, v in e.payload.items()
                              if k != "lineage" and k not in first}}
        table.add_row(*_cells(str(e.seq), e.at[11:19], e.node, e.event, str(detail)[:160],
                              e.hash[:10]))
    console.print(table)
    entries = ledger.entries(cycle)
    if entries:
        console.print(Text(f"lineage: {entries[-1].payload.get('lineage', {})}"),
                      highlight=False)


@app.command()
@_guard
def verify(
    config: ConfigOpt = None,
    publish: Annotated[bool, typer.Option(
        "--publish", help="First publish the current head to the witness (after an outage; "
        "check the entries since the last witnessed head before you do).")] = False,
) -> None:
    """Check the ledger's chain and its witness; exit 1 on any rewrite, loss or edit."""
    settings = _settings(config)
    ledger = open_ledger(settings.state_dir, settings.witness)
    if publish and not ledger.publish_head():
        err.print(Text("the head could not be published; see the log", "red"))
    report = ledger.verify()
    problems = list(report.problems)
    if report.ok:  # a sound chain: is every deploy and rollback backed by an approval?
        from upgate.store import Store
        from upgate.verified import unbacked

        problems += unbacked(ledger, Store(settings.state_dir / "state.sqlite"))
    if problems:
        for problem in problems:
            err.print(Text.assemble(("✗", "red"), f" {problem}"), highlight=False)
        raise typer.Exit(1)
    console.print(Text.assemble(("ledger OK", "green"),
                                f": {report.entries} entries, chain intact"), highlight=False)
    if report.witness is None:
        err.print(Text("warning: no [witness] is configured, so a rewritten and re-chained "
                       "ledger, a truncated one or a deleted database cannot be detected "
                       "(see SECURITY.md)", "yellow"), highlight=False)
    else:
        console.print(Text(f"checked against the witness: {report.witness}"), highlight=False)


@app.command()
@_guard
def reconcile(config: ConfigOpt = None) -> None:
    """After a vLLM restart: reload the versions the ledger shows approved and deployed."""
    from upgate.deploy.reconcile import reconcile as do_reconcile

    runner = _runner(_settings(config))
    alias = runner.deps.manifest.model_alias
    if not alias or runner.deps.admin is None:
        console.print("the target serves no model alias; nothing to reconcile")
        return
    report = runner.deps.ledger.verify()
    if not report.ok:
        raise LedgerError("the ledger does not verify, so it cannot say what was approved: "
                          + "; ".join(report.problems[:3]) + ". Run `upgate verify`.")
    result = do_reconcile(runner.deps.store, runner.deps.admin, alias, runner.deps.ledger)
    runner.deps.ledger.append("admin", "reconcile", "reconciled", result)
    console.print(Text(f"{alias} -> {result['active'] or '(as the server started it)'}; "
                       f"reloaded {result['loaded'] or 'nothing'}"), highlight=False)
    for line in result["refused"]:
        err.print(Text.assemble(("refused", "red"), f" {line}"), highlight=False)
    if result["refused"]:
        raise typer.Exit(1)


@app.command()
@_guard
def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Listen address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Listen port.")] = 8765,
    secure_cookies: Annotated[bool, typer.Option(
        help="Mark the session cookie Secure (when a TLS proxy fronts the service).")] = False,
    service: Annotated[str, typer.Option(
        help="The service's name: it signs decisions as service:NAME.")] = "approvals",
    key_dir: Annotated[Path | None, typer.Option(
        "--key-dir", help="Folder of the service's private key (default $UPGATE_KEY_DIR, "
        "else ~/.config/upgate/keys); never inside the state folder.")] = None,
) -> None:
    """The approval service: HTTP API (docs at /docs) and the chat page, on one port."""
    from upgate.identity import default_key_dir
    from upgate.server.app import is_loopback
    from upgate.server.app import serve as run_service
    from upgate.server.keys import service_signer

    runner = _runner(_settings(config))
    signer = service_signer(runner, service, key_dir or default_key_dir())
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] listening on {host}, not loopback: put a TLS "
                  "proxy in front (see the README) and pass --secure-cookies", highlight=False)
    console.print(f"upgate approval service on http://{host}:{port}/ (API docs: /docs), "
                  f"signing as {signer.key_id}", highlight=False)
    run_service(runner, signer=signer, host=host, port=port, secure_cookies=secure_cookies)


app.command("init")(_guard(init_command))
register_admin_commands(person_app, _guard)


def main() -> None:
    """Entry point."""
    logging.basicConfig(level=os.environ.get("UPGATE_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        app()
    finally:
        from upgate.notify.worker import deliver_after_command

        deliver_after_command()


if __name__ == "__main__":
    main()
