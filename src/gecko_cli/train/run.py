"""A training run shared by `gecko pretrain` and `gecko finetune`: dataset, trainer, summary.

A stage turns its records into rows of already formatted texts (`anchor`, `positive`,
`negative_1..k`) and a `TrainConfig`; `train` feeds them to sentence-transformers' trainer (which
runs on accelerate) with the loss from `train.losses.build_loss`, saves the model (`train/save.py`)
and returns the summary line. Progress goes through the functions the command passes in (see
`train/callbacks.py`): no typer or rich here; torch and sentence-transformers load inside functions.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from gecko_cli import __version__
from gecko_cli.contract.errors import UsageError
from gecko_cli.train.callbacks import LineSink, StepReport, step_counter, step_reporter
from gecko_cli.train.config import TrainConfig
from gecko_cli.train.distributed import launch_rank
from gecko_cli.train.save import checkpoint_written, save_model

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer


def rows_to_dataset(rows: Sequence[dict[str, str]]) -> "Dataset":
    """Rows of equal keys -> a `datasets.Dataset` whose column order is the loss's input order.

    [{"anchor": "task: … | query: q", "positive": "title: none | text: p"}] -> Dataset(anchor, positive)
    """
    from datasets import Dataset

    if not rows:
        raise UsageError("no training examples (empty input, or every record was rejected or dropped)")
    columns = list(rows[0])
    return Dataset.from_dict({name: [row[name] for row in rows] for name in columns})


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


def train(config: TrainConfig, dataset: "Dataset", callbacks: Sequence[Any] = (), *,
          report: StepReport | None = None, say: LineSink | None = None) -> dict[str, Any]:
    """Train `config.init` on `dataset` and save it to `config.output`; return the summary line.

    `report(step, total, status)` runs after every step (a progress bar), `say(line)` for each
    logged loss (a log); with either, the trainer's own `{'loss': ...}` lines are dropped.
    `callbacks` are extra `transformers.TrainerCallback`s (a benchmark's timer).
    Data-parallel (`accelerate launch`, torchrun), every process trains and returns its summary,
    and only rank 0 saves the model. Libraries here print to stdout, and stdout is the record
    stream, so the run happens with stdout sent to stderr.
    """
    config.check()
    check_enough_records(len(dataset), config.batch_size, launch_rank()[1])
    if report or say:
        callbacks = [step_reporter(report, config, say), *callbacks]
    with contextlib.redirect_stdout(sys.stderr):
        model = _initial_model(config)
        own_limit = model.max_seq_length
        if config.max_seq_length is not None:
            model.max_seq_length = config.max_seq_length
        started = time.monotonic()
        trainer, steps, steps_now = _run(model, config, dataset, callbacks)
        seconds = time.monotonic() - started
        model.max_seq_length = own_limit  # a short training limit is a cost choice, not the model's
        if trainer.is_world_process_zero():
            save_model(model, config, steps)
    processes = trainer.args.world_size
    examples = steps_now * config.batch_size * processes  # approximate: last batch may be short
    return {"stage": config.stage, "output": config.output, "steps": steps,
            "final_loss": _round(_last_loss(trainer)), "examples": len(dataset),
            "examples_per_second": round(examples / seconds, 2) if seconds else None,
            "seconds": round(seconds, 2), "processes": processes, "gecko": __version__}


def _initial_model(config: TrainConfig) -> "SentenceTransformer":
    """The model training starts from: `init` as an embedder, or, with a pooling or attention
    choice, a language model grown into one (train/decoder/, NV-Embed). Every data-parallel rank
    builds the same seeded model; `--resume` then loads its checkpoint into it."""
    if config.pooling is None and config.attention is None:
        from gecko_cli.search.embed import load_model

        return load_model(config.init)
    from gecko_cli.contract.env import best_device
    from gecko_cli.train.decoder import build_decoder_embedder

    return build_decoder_embedder(config.init, pooling=config.pooling or "latent-attention",
                                  attention=config.attention or "bidirectional", seed=config.seed, device=best_device())


def _run(model: "SentenceTransformer", config: TrainConfig, dataset: "Dataset",
         callbacks: Sequence[Any]) -> tuple[Any, int, int]:
    """Build the trainer and train: (trainer, global step reached, steps run now)."""
    from transformers.trainer_callback import PrinterCallback

    from gecko_cli.train.losses import build_loss

    loss = build_loss(model, temperature=config.temperature, same_tower=config.same_tower,
                      mrl_dims=config.mrl_dims or None, mini_batch_size=config.mini_batch_size,
                      gather_across_processes=config.gather_across_processes, distill=config.distillation())
    _pick_widget_examples(model, dataset, config.seed)
    trainer = _trainer_class()(model=model, args=_arguments(config), train_dataset=dataset,
                               loss=loss, callbacks=[counter := step_counter(), *callbacks])
    if any(getattr(callback, "draws_progress", False) for callback in callbacks):
        # With `disable_tqdm` the trainer prints every log as a dict (`{'loss': ..., 'grad_norm': ...}`);
        # gecko's own reporter shows the loss instead, as a bar or as its own lines.
        trainer.remove_callback(PrinterCallback)
    try:
        result = trainer.train(resume_from_checkpoint=True if config.resume else None)
    except ValueError as exc:
        if config.resume and "checkpoint" in str(exc).lower():
            raise UsageError(f"--resume: no checkpoint in {config.output} ({exc})") from None
        raise
    return trainer, int(result.global_step), counter.steps


def _trainer_class() -> type:
    """sentence-transformers' trainer, with each `--save-steps` checkpoint written whole or not at
    all: a full disk is one line naming the file (exit 1), not a traceback from safetensors or torch,
    and leaves no partial `checkpoint-N` for `--resume` to choke on (`save.checkpoint_written`)."""
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class Trainer(SentenceTransformerTrainer):
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            folder = Path(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            with checkpoint_written(folder):
                super()._save_checkpoint(model, trial)

    return Trainer


def _pick_widget_examples(model: "SentenceTransformer", dataset: "Dataset", seed: int) -> None:
    """Pick the model card's widget examples (texts for the Hugging Face Hub's inference widget) now,
    quietly. sentence-transformers picks them as the trainer starts, under a "Computing widget
    examples" tqdm bar that lands in logs too, and only when the card has none yet. They are drawn
    with `random` just after the trainer seeds it, so seeding the same way here picks the same ones;
    the trainer seeds again before training, so training does not change."""
    from transformers import set_seed

    set_seed(seed)
    with contextlib.redirect_stderr(io.StringIO()):  # the bar is all this call writes
        model.model_card_data.set_widget_examples(dataset)


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
        disable_tqdm=True,  # gecko reports progress itself (train/callbacks.py), with the loss and examples/s
        use_cpu=not torch.cuda.is_available(),  # fp32: no fp16/bf16 flags on purpose
        dataloader_drop_last=False,
    )


def _last_loss(trainer: Any) -> float | None:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return float(losses[-1]) if losses else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
