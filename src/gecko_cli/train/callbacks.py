"""Trainer callbacks: gecko's own progress report, and the step counter behind the summary line.

The run reports through plain functions the command supplies — `report(step, total, status)`
after every step (a progress bar) and `say(line)` for each logged loss (a log off a terminal) —
so the core needs neither rich nor a terminal. transformers is imported inside the functions.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from gecko_cli.train.config import TrainConfig
from gecko_cli.train.distributed import launch_rank

StepReport = Callable[[int, int, str], None]  # (step, total steps, status) after every step
LineSink = Callable[[str], None]  # one line per logged loss


def status_text(loss: float | None, examples_per_second: float) -> str:
    """The progress status: the last logged loss (… before the first) and the throughput.

    >>> status_text(0.39118, 12.34), status_text(None, 0.0)
    ('loss 0.3912 · 12.3 ex/s', 'loss … · 0.0 ex/s')
    """
    loss_text = "…" if loss is None else f"{loss:.4g}"
    return f"loss {loss_text} · {examples_per_second:.1f} ex/s"


def step_reporter(report: StepReport | None, config: TrainConfig, say: LineSink | None = None) -> Any:
    """A trainer callback: after each step `report(step, total, "loss 0.391 · 12.3 ex/s")`, and for
    each logged loss `say("step 10/125 · loss 0.391 · 12.3 ex/s")`; either may be None.

    The loss is the last one logged (every `logging_steps`, and at the last step); examples/s count
    every process's rows (batch size × processes) since training began. The callback says it
    `draws_progress`, so the run drops the trainer's own `{'loss': ...}` lines.
    """
    from transformers import TrainerCallback

    rows_per_step = config.batch_size * launch_rank()[1]

    class StepReporter(TrainerCallback):
        draws_progress = True
        loss: float | None = None
        started, steps = 0.0, 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started, self.steps = time.monotonic(), 0
            if report:
                report(state.global_step, state.max_steps, "starting")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps += 1
            if report:
                report(state.global_step, state.max_steps, self.status())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:  # the end-of-training metrics carry no "loss"
                return
            self.loss = float(logs["loss"])  # logged just after on_step_end: show it at once
            if report:
                report(state.global_step, state.max_steps, self.status())
            if say:
                say(f"step {state.global_step}/{state.max_steps} · {self.status()}")

        def status(self) -> str:
            rate = self.steps * rows_per_step / max(time.monotonic() - self.started, 1e-9)
            return status_text(self.loss, rate)

    return StepReporter()


def step_counter() -> Any:
    """A callback that counts this run's steps (a resumed run starts past 0) and logs the last one,
    so the summary's final loss is the loss at the end of training."""
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.steps += 1
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return StepCounter()
