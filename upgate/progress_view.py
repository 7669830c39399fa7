"""The terminal's view of long steps: rich progress bars on a TTY, plain lines elsewhere.

`upgate run` and `upgate batch` install it beside the progress board for the cycles they
drive (`terminal_progress`): one bar per long step (training epochs and steps, eval cases,
image builds) while it runs, removed when its node ends. Without a terminal (a log file,
CI) the same events become a few plain lines: every epoch and build step, and steps and
cases at each quarter and at the end. Details from a sandbox are printed as text, never
as rich markup.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from upgate.progress import FanOut, ProgressEvent

if TYPE_CHECKING:
    from upgate.graphs.runner import Runner

_Key = tuple[str, str, str]


def bar_columns() -> tuple[ProgressColumn, ...]:
    """The columns of every upgate progress bar."""
    return (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}", markup=False))


class TerminalProgress:
    """A `ProgressSink` drawing each long step as a bar (`bar` given) or as plain lines."""

    def __init__(self, console: Console, bar: Progress | None = None) -> None:
        self.console = console
        self.bar = bar
        self._tasks: dict[_Key, TaskID] = {}
        self._lock = threading.Lock()

    def publish(self, event: ProgressEvent) -> None:
        """Show one event."""
        key = (event.cycle_id, event.node, event.kind)
        with self._lock:
            if self.bar is None:
                if _worth_a_line(event):
                    self.console.print(Text(f"  … {event.node} {event.kind} {_count(event)} "
                                            f"{event.detail}".rstrip()), highlight=False)
                return
            task = self._tasks.get(key)
            if task is None:
                task = self.bar.add_task(f"{event.node}: {event.kind}", total=event.total,
                                         detail=event.detail)
                self._tasks[key] = task
            self.bar.update(task, completed=event.done, total=event.total,
                            detail=event.detail)

    def node_done(self, node: str) -> None:
        """Remove the bars of a node that ended (its long steps are over)."""
        with self._lock:
            for key in [k for k in self._tasks if k[1] == node]:
                task = self._tasks.pop(key)
                if self.bar is not None:
                    self.bar.remove_task(task)


def _count(event: ProgressEvent) -> str:
    return f"{event.done}/{event.total}" if event.total else str(event.done)


def _worth_a_line(event: ProgressEvent) -> bool:
    if event.kind in ("epoch", "build") or not event.total:
        return True
    quarter = max(1, event.total // 4)
    return event.done == event.total or event.done % quarter == 0


@contextmanager
def terminal_progress(runner: Runner, console: Console, *, bar: Progress | None = None,
                      status: str = "") -> Iterator[TerminalProgress]:
    """Show the long steps of the cycles `runner` drives inside the block.

    On a terminal the bars go into `bar` (the caller's, e.g. the batch's cycles bar) or into
    one made here, with `status` as an open-ended first line; elsewhere, plain lines.
    """
    own: Progress | None = None
    if bar is None and console.is_terminal:
        own = bar = Progress(*bar_columns(), console=console, transient=True)
        own.add_task(status or "working", total=None, detail="")
        own.start()
    view = TerminalProgress(console, bar if console.is_terminal else None)
    previous = runner.deps.progress
    runner.deps.progress = FanOut([previous or runner.deps.progress_board, view])
    try:
        yield view
    finally:
        runner.deps.progress = previous
        if own is not None:
            own.stop()
