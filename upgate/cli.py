"""The `upgate` command line: run and resume cycles, answer approvals, read the ledger."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from upgate.approvals import add_person, authenticate
from upgate.cli_batch import batch_app, print_curve, print_held, stop_command
from upgate.cli_critique import critique_command
from upgate.cli_sandbox import sandbox_app
from upgate.config import Settings, load_settings
from upgate.errors import UpgateError
from upgate.graphs.runner import Runner
from upgate.graphs.state import CycleState
from upgate.ledger import open_ledger
from upgate.store import Store

app = typer.Typer(
    help="upgate: propose, sandbox, critique, approve, deploy and record AI upgrades.",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
person_app = typer.Typer(help="People who may request and approve changes.",
                         no_args_is_help=True)
app.add_typer(person_app, name="person")
app.add_typer(sandbox_app, name="sandbox")
app.command("critique")(critique_command)
app.add_typer(batch_app, name="batch")
app.command("stop")(stop_command)

# soft_wrap: messages stay on one line when piped, so they can be read (and grepped) whole.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="upgate.toml to use.")]
AsOpt = Annotated[str, typer.Option("--as", help="Who you are (a registered person).")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="UPGATE_TOKEN",
                                              help="Your token (or set UPGATE_TOKEN).")]

_NODE_LABELS = {
    "observe": "gathered evidence", "propose": "proposal made", "policy_check": "policy checked",
    "implement": "candidate built in the sandbox", "critique": "critic's verdict",
    "revise": "revision requested", "gate": "gate", "approve": "human decision",
    "deploy": "deployed", "monitor": "post-deploy check", "rollback": "rolled back",
    "record": "recorded in the ledger",
}


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _runner(settings: Settings) -> Runner:
    from upgate.app import build_deps

    return Runner(build_deps(settings))


def _describe(node: str, data: dict[str, Any]) -> str:
    if data.get("outcome") in ("failed", "blocked", "rejected") and data.get("reason"):
        return f"[red]{data['outcome']}[/red]: {data['reason']}"
    if node == "observe":
        obs = data.get("observation", {})
        return f"visible score {obs.get('visible_score', 'n/a')}"
    if node == "propose" and data.get("proposal"):
        p = data["proposal"]
        return f"{p['recipe']} ({p['kind']}) {p['args']}: {p['rationale'][:120]}"
    if node == "implement" and data.get("candidate"):
        c = data["candidate"]
        return (f"candidate {c['content_hash'][:12]}, {len(c['changed_paths'])} file(s), "
                f"{len(c['artifacts'])} artifact(s)")
    if node == "critique" and data.get("verdict"):
        v = data["verdict"]
        score = ""
        if v.get("baseline_score") is not None:
            score = f" score {v['baseline_score']:.2f} -> {v['candidate_score']:.2f};"
        return f"{v['decision']};{score} {'; '.join(v['reasons'])[:200]}"
    if node == "deploy" and data.get("deployment"):
        d = data["deployment"]
        return d.get("branch") or f"{d.get('alias')} -> {d.get('version_name')}"
    return str(data.get("outcome", ""))


def _progress(node: str, data: dict[str, Any]) -> None:
    console.print(f"  [green]✓[/green] {node:<13} {_NODE_LABELS.get(node, '')}: "
                  f"{_describe(node, data)}", highlight=False)


def _finish(state: CycleState, runner: Runner) -> None:
    cycle = state.get("cycle_id", "?")
    outcome = state.get("outcome", "?")
    if outcome == "awaiting_approval":
        req = runner.pending(cycle) or {}
        folder = runner.deps.state_dir / "evidence" / cycle
        console.print(f"\n[bold yellow]Cycle {cycle} waits for a human decision.[/bold yellow]")
        console.print(f"  evidence: {folder}/{req.get('evidence_hash', '')[:16]}.md "
                      f"(or `upgate show {cycle}`)")
        console.print(f"  candidate {req.get('candidate_hash', '')[:12]}, "
                      f"requested by {req.get('requester')}")
        console.print("  approve:  UPGATE_TOKEN=<token> upgate approve "
                      f"{cycle} --as <approver>")
        console.print("  reject:   UPGATE_TOKEN=<token> upgate reject "
                      f"{cycle} --as <approver> --reason '...'")
    else:
        colour = "green" if outcome == "deployed" else "red"
        console.print(f"\nCycle {cycle}: [{colour}]{outcome}[/{colour}] "
                      f"{state.get('reason', '')}")


def _guard(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UpgateError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    # eval_str: this module uses postponed annotations; typer needs the real Annotated types.
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return wrapper


@app.command()
@_guard
def run(config: ConfigOpt = None, as_: AsOpt = "", token: TokenOpt = None) -> None:
    """Start one upgrade cycle; it runs until it ends or waits for approval."""
    settings = _settings(config)
    runner = _runner(settings)
    requester = authenticate(runner.deps.store, as_ or settings.operator, token)
    console.print(f"[bold]upgate[/bold]: cycle on {runner.deps.manifest.name} "
                  f"requested by {requester}")
    with console.status("running the cycle (evaluations and training take minutes on a CPU)"):
        state = runner.start(requester, progress=_progress)
    _finish(state, runner)


@app.command()
@_guard
def resume(cycle: Annotated[str | None, typer.Argument()] = None,
           config: ConfigOpt = None) -> None:
    """Continue a cycle (or every unfinished one) from its last checkpoint."""
    runner = _runner(_settings(config))
    cycles = [cycle] if cycle else runner.unfinished()
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
    runner = _runner(_settings(config))
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
        table.add_row(req["cycle_id"], req.get("kind", ""), req.get("requester", ""), score,
                      req["candidate_hash"][:12], req["evidence_hash"][:12],
                      req["requested_at"][:19])
    console.print(table)


@app.command()
@_guard
def show(cycle: str, config: ConfigOpt = None) -> None:
    """Show a cycle's evidence packet (what the approver reviews)."""
    settings = _settings(config)
    folder = settings.state_dir / "evidence" / cycle
    packets = sorted(folder.glob("*.md"), key=lambda p: p.stat().st_mtime)
    if not packets:
        raise UpgateError(f"no evidence for cycle {cycle} in {folder}")
    console.print(Markdown(packets[-1].read_text()))


def _decide(cycle: str, action: str, as_: str, token: str | None, reason: str,
            config: Path | None) -> None:
    runner = _runner(_settings(config))
    person = authenticate(runner.deps.store, as_, token)
    with console.status(f"{action} {cycle}"):
        state = runner.decide(cycle, action=action, person=person, reason=reason,
                              progress=_progress)
    _finish(state, runner)


@app.command()
@_guard
def approve(cycle: str, as_: AsOpt, token: TokenOpt = None,
            reason: Annotated[str, typer.Option()] = "", config: ConfigOpt = None) -> None:
    """Approve a waiting cycle's candidate; the graph then deploys it."""
    _decide(cycle, "approve", as_, token, reason, config)


@app.command()
@_guard
def reject(cycle: str, as_: AsOpt, reason: Annotated[str, typer.Option()],
           token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Reject a waiting cycle's candidate, with a reason."""
    _decide(cycle, "reject", as_, token, reason, config)


@app.command()
@_guard
def history(cycle: Annotated[str | None, typer.Argument()] = None,
            config: ConfigOpt = None) -> None:
    """The ledger: every decision of one cycle, or a line per cycle."""
    settings = _settings(config)
    ledger = open_ledger(settings.state_dir)
    if cycle is None:
        table = Table()
        table.add_column("cycle", no_wrap=True, min_width=24)
        for name in ("outcome", "recipe", "entries", "started"):
            table.add_column(name)
        for cid in ledger.cycles():
            entries = ledger.entries(cid)
            last = [e for e in entries if e.node == "record"]
            table.add_row(cid, last[-1].event if last else "(open)",
                          str(last[-1].payload.get("recipe", "")) if last else "",
                          str(len(entries)), entries[0].at[:19])
        console.print(table)
        print_curve(ledger.entries())
        return
    table = Table("seq", "at", "node", "event", "detail", "hash")
    for e in ledger.entries(cycle):
        detail = {k: v for k, v in e.payload.items() if k != "lineage"}
        table.add_row(str(e.seq), e.at[11:19], e.node, e.event, str(detail)[:160],
                      e.hash[:10])
    console.print(table)
    entries = ledger.entries(cycle)
    if entries:
        console.print("lineage:", entries[-1].payload.get("lineage", {}), highlight=False)


@app.command()
@_guard
def verify(config: ConfigOpt = None) -> None:
    """Check the ledger's hash chain; exit 1 when any entry was edited, dropped or moved."""
    settings = _settings(config)
    report = open_ledger(settings.state_dir).verify()
    if report.ok:
        console.print(f"[green]ledger OK[/green]: {report.entries} entries, chain intact")
        return
    for problem in report.problems:
        err.print(f"[red]✗[/red] {problem}", highlight=False)
    raise typer.Exit(1)


@app.command()
@_guard
def reconcile(config: ConfigOpt = None) -> None:
    """After a vLLM restart: point the alias at its active version, reload earlier ones."""
    from upgate.deploy.reconcile import reconcile as do_reconcile

    runner = _runner(_settings(config))
    alias = runner.deps.manifest.model_alias
    if not alias or runner.deps.admin is None:
        console.print("the target serves no model alias; nothing to reconcile")
        return
    result = do_reconcile(runner.deps.store, runner.deps.admin, alias)
    runner.deps.ledger.append("admin", "reconcile", "reconciled", result)
    console.print(f"{alias} -> {result['active'] or '(as the server started it)'}; "
                  f"reloaded {result['loaded'] or 'nothing'}")


@person_app.command("add")
@_guard
def person_add(name: str, config: ConfigOpt = None) -> None:
    """Register a person (or rotate their token); prints the token once."""
    settings = _settings(config)
    store = Store(settings.state_dir / "state.sqlite")
    existed = store.token_hash(name) is not None
    token = add_person(store, name)
    open_ledger(settings.state_dir).append("admin", "person", "rotated" if existed else "added",
                                           {"name": name})
    console.print(f"{name}: token {token}", highlight=False)
    console.print("Keep it secret; pass it as --token or UPGATE_TOKEN.")


def main() -> None:
    """Entry point."""
    logging.basicConfig(level=os.environ.get("UPGATE_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
