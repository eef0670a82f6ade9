"""Progress and messages on stderr (stdout carries records only).

Progress bars appear only when stderr is a terminal, so pipes, Makefiles and CI
logs stay clean; `redirect_stdout=False` keeps rich away from the record stream.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

# Off a terminal rich assumes 80 columns and truncates model paths in tables; logs are wider.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


def message(text: str) -> None:
    """One line on stderr, no markup interpretation (records may contain brackets)."""
    stderr.print(text, markup=False)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=stderr, transient=True, redirect_stdout=False, redirect_stderr=False)


@contextmanager
def ticker(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """Yield `tick(n=1)`; draws a bar on a terminal, does nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda n=1: None
        return
    with _progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def encode_callback(description: str) -> Callable[[int, int], None] | None:
    """A `(done, total)` callback for long encodes, or None off a terminal."""
    if not sys.stderr.isatty():
        return None
    bar = _progress()
    task = bar.add_task(description, total=None)
    state = {"started": False}

    def update(done: int, total: int) -> None:
        if not state["started"]:
            bar.start()
            state["started"] = True
        bar.update(task, completed=done, total=total)
        if done >= total:
            bar.stop()

    return update


@contextmanager
def training_bar(stage: str) -> Iterator[Callable[[int, int, str], None] | None]:
    """A rich bar on stderr fed by the trainer's step reporter (`finetune`, `pretrain`); None off a
    terminal and on ranks > 0 of a data-parallel launch."""
    from gecko_cli.train.run import launch_rank

    if not sys.stderr.isatty() or launch_rank()[0] != 0:
        yield None
        return
    columns = (TextColumn(stage), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task("", total=None)
        yield lambda step, total, status: bar.update(task, completed=step, total=total or None, description=status)
