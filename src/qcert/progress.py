"""Progress bars for long jobs (rich), silent when output is not a terminal or when disabled."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(console: Console | None = None, transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed and remaining time and a free-text status field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True),
        transient=transient,
        disable=False,
    )


@contextmanager
def progress_task(
    description: str, total: int | None, enabled: bool | None = None
) -> Iterator[tuple[Progress | None, TaskID]]:
    """Context yielding ``(progress, task_id)``, or ``(None, TaskID(-1))`` when disabled (callers
    test ``progress is not None``; the id is then unused).

    ``enabled=None`` shows the bar only when stderr is a terminal.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None, TaskID(-1)
        return
    with make_progress() as prog:
        task = prog.add_task(description, total=total, status="")
        yield prog, task
