"""Rich progress bars for a stage's long steps: drawn in a terminal, silent otherwise (CI, logs,
or DVC under `mudjack run`, whose output is captured). The core only sees a `step` callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress(description: str, total: int, console: Console | None = None
             ) -> Iterator[Callable[[str], None]]:
    """Yield `step(name)`, to call as each of `total` steps starts."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield lambda _name: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total)
        done = [0]

        def step(name: str) -> None:
            bar.update(task, completed=done[0], description=f"{description}: {name}")
            done[0] += 1

        yield step
        bar.update(task, completed=total, description=description)
