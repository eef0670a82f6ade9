"""Training runs shared by `gecko pretrain` and `gecko finetune`: config, dataset, trainer, saving.

A stage turns its records into rows of already formatted texts (`anchor`, `positive`,
`negative_1..k`); this module feeds them to sentence-transformers' trainer (which runs on
accelerate) with the loss from `training.build_loss`, and saves a model directory that embeds
correctly anywhere: `SentenceTransformer(path)` gets the `query`/`document` prompts, and
`gecko evaluate --model DIR` reads the templates (and the training config) from `gecko.json`.
No typer or rich here; torch and sentence-transformers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gecko_cli import __version__
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.text_format import MODEL_TEMPLATES_FILE, PRESETS

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

# What `SentenceTransformer(path).encode(texts, prompt_name=...)` prepends elsewhere. The query
# prompt fixes the default task; gecko itself reads the per-task template from gecko.json.
DEFAULT_TASK = "search result"
SAVED_PROMPTS = {"query": f"task: {DEFAULT_TASK} | query: ", "document": "title: none | text: "}


@dataclass
class TrainConfig:
    """Everything that shapes a run, saved as-is in gecko.json (nanoGPT style: one readable block)."""

    stage: str  # "pretrain" or "finetune"
    init: str  # model the weights start from
    output: str
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    mini_batch_size: int | None = None  # set -> CachedGeckoLoss (GradCache), memory bounded by it
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    temperature: float = 0.05
    same_tower: bool = True
    mrl_dims: list[int] = field(default_factory=list)
    seed: int = 0
    save_steps: int | None = None
    resume: bool = False
    task: str = DEFAULT_TASK
    num_negatives: int = 0  # hard-negative columns per row (0 in pretraining)
    gather_across_processes: bool = True  # data-parallel: in-batch negatives from every process

    def check(self) -> None:
        """Raise `UsageError` for values the trainer would reject later with a traceback."""
        if self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise UsageError("--batch-size and --max-steps must be at least 1")
        if self.epochs <= 0 or self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise UsageError("need --epochs > 0, --lr > 0 and 0 <= --warmup-ratio < 1")
        if self.save_steps is not None and self.save_steps < 1:
            raise UsageError("--save-steps must be at least 1")


def parse_mrl_dims(text: str | None) -> list[int]:
    """`"384,256,128"` -> [384, 256, 128] (largest first, as MatryoshkaLoss reports them).

    >>> parse_mrl_dims("128, 384"), parse_mrl_dims(None)
    ([384, 128], [])
    """
    from gecko_cli.contract.records import parse_int_list

    try:
        dims = parse_int_list(text, "--mrl-dims")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return sorted(set(dims), reverse=True)


def rows_to_dataset(rows: Sequence[dict[str, str]]) -> "Dataset":
    """Rows of equal keys -> a `datasets.Dataset` whose column order is the loss's input order.

    [{"anchor": "task: … | query: q", "positive": "title: none | text: p"}] -> Dataset(anchor, positive)
    """
    from datasets import Dataset

    if not rows:
        raise UsageError("no training examples (empty input, or every record was rejected or dropped)")
    columns = list(rows[0])
    return Dataset.from_dict({name: [row[name] for row in rows] for name in columns})


def launch_rank() -> tuple[int, int]:
    """(this process's rank, number of processes) as `accelerate launch` / torchrun set them.

    (0, 1) in a plain run. Read from the environment, so it is known before training starts.
    """
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def data_parallel_rank(input_file: Path | None, what: str) -> tuple[int, int]:
    """`launch_rank()`, refusing stdin when several processes run (they cannot share it)."""
    rank, processes = launch_rank()
    if processes > 1 and input_file is None:
        raise UsageError(f"with several processes (accelerate launch, torchrun) pass the {what} with --input FILE: "
                         "processes cannot share stdin")
    return rank, processes


def write_summary(stage: str, summary: dict[str, Any], out: Any) -> None:
    """Rank 0 writes the summary line; other ranks of a data-parallel run say only what they did."""
    rank, processes = launch_rank()
    if rank == 0:
        out.write(summary)
    else:
        from gecko_cli.progress import message

        message(f"gecko {stage}: process {rank} of {processes} trained {summary['steps']} steps")


def check_enough_records(records: int, batch_size: int, processes: int) -> None:
    """Refuse a run that would train no step, instead of saving an untrained model.

    Data-parallel, transformers drops each process's uneven last batch (DDP would hang on it),
    so a step needs `batch_size` records per process.

    >>> check_enough_records(2, 2, 2)
    Traceback (most recent call last):
    ...
    gecko_cli.contract.errors.UsageError: 2 training records are fewer than one batch on every process (--batch-size 2 x 2 processes = 4): nothing would be trained
    """
    needed = batch_size * processes if processes > 1 else 1
    if records < needed:
        where = f"one batch on every process (--batch-size {batch_size} x {processes} processes = {needed})" \
            if processes > 1 else "one"
        raise UsageError(f"{records} training records are fewer than {where}: nothing would be trained")


def train(config: TrainConfig, dataset: "Dataset", callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train `config.init` on `dataset` and save it to `config.output`; return the summary line.

    `callbacks` are extra `transformers.TrainerCallback`s (a progress bar, a benchmark's timer).
    Data-parallel (`accelerate launch`, torchrun), every process trains and returns its summary,
    and only rank 0 saves the model. Libraries here print to stdout (the trainer's log dicts when
    tqdm is off), and stdout is the record stream, so the run happens with stdout sent to stderr.
    """
    config.check()
    check_enough_records(len(dataset), config.batch_size, launch_rank()[1])
    with contextlib.redirect_stdout(sys.stderr):
        from gecko_cli.search.embed import load_model

        model = load_model(config.init)
        started = time.monotonic()
        trainer, steps, steps_now = _run(model, config, dataset, callbacks)
        seconds = time.monotonic() - started
        if trainer.is_world_process_zero():
            save_model(model, config, steps)
    processes = trainer.args.world_size
    examples = steps_now * config.batch_size * processes  # approximate: last batch may be short
    return {"stage": config.stage, "output": config.output, "steps": steps,
            "final_loss": _round(_last_loss(trainer)), "examples": len(dataset),
            "examples_per_second": round(examples / seconds, 2) if seconds else None,
            "seconds": round(seconds, 2), "processes": processes, "gecko": __version__}


def _run(model: "SentenceTransformer", config: TrainConfig, dataset: "Dataset",
         callbacks: Sequence[Any]) -> tuple[Any, int, int]:
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_callback import PrinterCallback

    from gecko_cli.train.losses import build_loss

    loss = build_loss(model, config.temperature, config.same_tower, config.mrl_dims or None,
                      config.mini_batch_size, config.gather_across_processes)
    trainer = SentenceTransformerTrainer(model=model, args=_arguments(config), train_dataset=dataset,
                                         loss=loss, callbacks=[monitor := _monitor(), *callbacks])
    if any(getattr(callback, "draws_progress", False) for callback in callbacks):
        trainer.remove_callback(PrinterCallback)  # the bar shows the loss; log lines would tear it
    try:
        result = trainer.train(resume_from_checkpoint=True if config.resume else None)
    except ValueError as exc:
        if config.resume and "checkpoint" in str(exc).lower():
            raise UsageError(f"--resume: no checkpoint in {config.output} ({exc})") from None
        raise
    return trainer, int(result.global_step), monitor.steps


def _arguments(config: TrainConfig) -> Any:
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=config.output,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total (transformers v5)
        seed=config.seed,
        data_seed=config.seed,
        # A duplicate text in a batch is an in-batch false negative (Gecko §3 and eq. 3).
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        logging_steps=10,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,  # gecko draws its own bar (StepReporter), with the loss and examples/s
        use_cpu=not torch.cuda.is_available(),  # fp32: no fp16/bf16 flags on purpose
        dataloader_drop_last=False,
    )


def _monitor() -> Any:
    """A callback that counts this run's steps (a resumed run starts past 0) and logs the last one,
    so the summary's final loss is the loss at the end of training."""
    from transformers import TrainerCallback

    class Monitor(TrainerCallback):
        steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.steps += 1
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return Monitor()


def step_reporter(report: Callable[[int, int, str], None], config: TrainConfig) -> Any:
    """A trainer callback: after each step, `report(step, total, "loss 0.391 · 12.3 ex/s")`.

    For `train(..., callbacks=[...])`: the command layer turns `report` into a progress bar, so
    this module stays free of rich. The loss is the last one logged (every `logging_steps`);
    examples/s count every process's rows (batch size × processes) since training began.
    """
    from transformers import TrainerCallback

    rows_per_step = config.batch_size * launch_rank()[1]

    class StepReporter(TrainerCallback):
        draws_progress = True  # `_run` then drops the trainer's log lines, which would tear the bar
        loss: float | None = None
        started, steps = 0.0, 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started, self.steps = time.monotonic(), 0
            report(state.global_step, state.max_steps, "starting")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps += 1
            self.show(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:  # logged just after on_step_end: show it at once
                self.loss = float(logs["loss"])
                self.show(state)

        def show(self, state: Any) -> None:
            rate = self.steps * rows_per_step / max(time.monotonic() - self.started, 1e-9)
            loss = "…" if self.loss is None else f"{self.loss:.4g}"
            report(state.global_step, state.max_steps, f"loss {loss} · {rate:.1f} ex/s")

    return StepReporter()


def _last_loss(trainer: Any) -> float | None:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return float(losses[-1]) if losses else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def save_model(model: "SentenceTransformer", config: TrainConfig, steps: int) -> None:
    """Save weights with the `query`/`document` prompts, and gecko.json with templates and config."""
    model.prompts = dict(SAVED_PROMPTS)
    model.default_prompt_name = None  # plain encode() stays plain; callers choose a prompt
    model.save(config.output)
    Path(config.output, MODEL_TEMPLATES_FILE).write_text(
        json.dumps(gecko_json(config, steps), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def gecko_json(config: TrainConfig, steps: int) -> dict[str, Any]:
    """What gecko.json holds: the unified-format templates, the task, and how the model was trained.

    >>> cfg = TrainConfig("finetune", "base", "out")
    >>> gecko_json(cfg, 2)["query_template"]
    'task: {task} | query: {text}'
    """
    query_template, document_template = PRESETS["gecko"]
    training = {k: v for k, v in asdict(config).items() if k not in ("output", "task")}
    loss = "CachedGeckoLoss" if config.mini_batch_size else "GeckoLoss"
    if config.mrl_dims:
        loss = f"MatryoshkaLoss({loss})"
    return {"query_template": query_template, "document_template": document_template, "task": config.task,
            "training": {"loss": loss, **training, "steps": steps, "gecko": __version__}}
