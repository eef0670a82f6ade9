"""Progress and messages on stderr (stdout carries records only).

Progress bars appear only when stderr is a terminal, so pipes, Makefiles and CI
logs stay clean; `redirect_stdout=False` keeps rich away from the record stream.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from gecko_cli.train.distributed import launch_rank

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
    if not sys.stderr.isatty() or launch_rank()[0] != 0:
        yield None
        return
    columns = (TextColumn(stage), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task("", total=None)
        yield lambda step, total, status: bar.update(task, completed=step, total=total or None, description=status)


def training_log(stage: str) -> Callable[[str], None] | None:
    """Where the trainer's progress lines go when no bar is drawn: `gecko finetune: step 10/125 · …`
    on stderr, from rank 0 only (every rank of a data-parallel launch trains the same steps)."""
    if launch_rank()[0] != 0:
        return None
    return lambda line: message(f"gecko {stage}: {line}")


def training_summary(stage: str, summary: dict[str, Any]) -> None:
    """The end-of-training line on stderr; ranks > 0 of a data-parallel run say only what they did."""
    rank, processes = launch_rank()
    if rank == 0:
        message(training_summary_text(stage, summary))
    else:
        message(f"gecko {stage}: process {rank} of {processes} trained {summary['steps']} steps")


def training_summary_text(stage: str, summary: dict[str, Any]) -> str:
    """`train`'s summary line, for a reader.

    >>> training_summary_text("finetune", {"steps": 3, "seconds": 12.5, "examples_per_second": 5.12,
    ...                                    "final_loss": 0.41234, "processes": 1, "output": "out/model"})
    'gecko finetune: 3 steps in 12.5 s (5.1 ex/s), final loss 0.4123, model saved to out/model'
    """
    rate, loss = summary.get("examples_per_second"), summary.get("final_loss")
    processes = summary.get("processes", 1)
    where = f" on {processes} processes" if processes > 1 else ""
    rate_text = "…" if rate is None else f"{rate:.1f}"
    loss_text = "…" if loss is None else f"{loss:.4g}"
    steps = f"{summary['steps']} step" + ("" if summary["steps"] == 1 else "s")
    return (f"gecko {stage}: {steps} in {summary['seconds']} s{where} ({rate_text} ex/s), "
            f"final loss {loss_text}, model saved to {summary['output']}")
