"""`upgate sandbox ...`: run a command on a copy of a target inside a sandbox."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from upgate.errors import SandboxError
from upgate.sandboxes.base import ExecResult
from upgate.sandboxes.config import (
    DockerSandboxConfig,
    FakeSandboxConfig,
    LocalSandboxConfig,
    get_sandbox,
)

logger = logging.getLogger(__name__)

sandbox_app = typer.Typer(help="Run commands in an isolated sandbox.", no_args_is_help=True)
console = Console()



def make_config(
    backend: str, timeout_s: float
) -> DockerSandboxConfig | LocalSandboxConfig | FakeSandboxConfig:
    """The default configuration of a backend, with its default timeout set."""
    if backend == "docker":
        return DockerSandboxConfig(default_timeout_s=timeout_s)
    if backend == "local":
        return LocalSandboxConfig(default_timeout_s=timeout_s)
    if backend == "fake":
        return FakeSandboxConfig(default_timeout_s=timeout_s)
    raise typer.BadParameter(f"unknown backend {backend!r}; use docker, local or fake")


def print_result(result: ExecResult) -> None:
    """Show an ExecResult: exit code, limits hit, stdout and stderr."""
    style = "green" if result.ok else "red"
    head = Text(f"exit code {result.exit_code}", style=f"bold {style}")
    head.append(f"  ({result.duration_s:.2f} s)", style="dim")
    if result.limits_hit:
        head.append(f"  limits hit: {', '.join(result.limits_hit)}", style="bold yellow")
    console.print(head)
    if result.stdout:
        console.print(Panel(Text(result.stdout.rstrip("\n")), title="stdout", expand=False))
    if result.stderr:
        console.print(
            Panel(Text(result.stderr.rstrip("\n")), title="stderr", style="red", expand=False)
        )


@sandbox_app.command("run")
def run(
    command: Annotated[list[str], typer.Argument(help="The command, after `--`.")],
    target: Annotated[
        Path | None, typer.Option("--target", help="Folder copied into the workspace.")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="docker, local or fake.")] = "docker",
    timeout: Annotated[float, typer.Option("--timeout", help="Wall-clock limit, seconds.")] = 60.0,
    show_diff: Annotated[bool, typer.Option("--diff", help="Print the diff it made.")] = False,
) -> None:
    """Copy TARGET into a sandbox, run COMMAND there, print what happened."""
    config = make_config(backend, timeout)
    try:
        with get_sandbox(config) as sandbox:
            if target is not None:
                sandbox.copy_in(target)
            result = sandbox.exec(command, timeout_s=timeout)
            print_result(result)
            if show_diff and target is not None:
                console.print(Panel(Text(sandbox.diff() or "(no changes)"), title="diff"))
    except SandboxError as exc:
        console.print(f"[bold red]sandbox error:[/] {exc}")
        raise typer.Exit(2) from exc
    raise typer.Exit(0 if result.ok else (result.exit_code or 1))


@sandbox_app.command("cleanup")
def cleanup(
    all_owners: Annotated[
        bool, typer.Option("--all", help="Also remove sandboxes of running processes.")
    ] = False,
) -> None:
    """Remove sandbox containers and volumes left behind by processes that are gone."""
    from upgate.sandboxes.docker import cleanup_orphans

    try:
        removed = cleanup_orphans(include_live_owners=all_owners)
    except SandboxError as exc:
        console.print(f"[bold red]sandbox error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"removed {removed} container(s)/volume(s)")


@sandbox_app.command("build-image")
def build_image(
    kind: Annotated[str, typer.Option("--kind", help="sandbox or train.")] = "sandbox",
    base_image: Annotated[
        str, typer.Option("--base-image", help="FROM image of the sandbox image.")
    ] = "upgate-sandbox-base:bookworm",
) -> None:
    """Build the sandbox (or train) image if its content-hashed tag is missing."""
    from upgate.sandboxes.images import ensure_image

    if kind not in ("sandbox", "train"):
        raise typer.BadParameter("kind must be sandbox or train")
    try:
        tag = ensure_image("train" if kind == "train" else "sandbox", base_image=base_image)
    except SandboxError as exc:
        console.print(f"[bold red]sandbox error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(tag)
