"""Saving a trained model so that it embeds correctly anywhere.

`SentenceTransformer(path)` gets the `query`/`document` prompts (`SAVED_PROMPTS`), and
`gecko evaluate --model DIR` reads the unified-format templates, the task and the training
config from `gecko.json` beside the weights. A `--save-steps` checkpoint is written whole or not
at all (`checkpoint_written`).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from gecko_cli import __version__
from gecko_cli.contract.paths import writing
from gecko_cli.contract.text_format import MODEL_TEMPLATES_FILE, PRESETS, SAVED_PROMPTS
from gecko_cli.train.config import TrainConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def save_model(model: "SentenceTransformer", config: TrainConfig, steps: int) -> None:
    """Save weights with the `query`/`document` prompts (Gecko's format; none for plain texts), and
    gecko.json with templates and config.

    A write that fails (a full disk) is an OSError naming the file or `config.output`, also when
    the library reports it its own way: safetensors raises SafetensorError, tokenizers a bare
    Exception, torch a RuntimeError (`writing`).
    """
    # Plain texts get no prompt (sentence-transformers saves its empty defaults), never Gecko's.
    model.prompts = dict(SAVED_PROMPTS) if config.text_format == "gecko" else {}
    model.default_prompt_name = None  # plain encode() stays plain; callers choose a prompt
    with writing(config.output, (Exception,)):
        model.save(config.output)
        Path(config.output, MODEL_TEMPLATES_FILE).write_text(
            json.dumps(gecko_json(config, steps), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def gecko_json(config: TrainConfig, steps: int) -> dict[str, Any]:
    """What gecko.json holds: the unified-format templates, the task, and how the model was trained.

    >>> cfg = TrainConfig(stage="finetune", init="base", output="out")
    >>> gecko_json(cfg, 2)["query_template"]
    'task: {task} | query: {text}'
    """
    query_template, document_template = PRESETS[config.text_format]
    training = {k: v for k, v in asdict(config).items() if k not in ("output", "task")}
    loss = "CachedGeckoLoss" if config.mini_batch_size else "GeckoLoss"
    if config.mrl_dims:
        loss = f"MatryoshkaLoss({loss})"
    return {"query_template": query_template, "document_template": document_template, "task": config.task,
            "training": {"loss": loss, **training, "steps": steps, "gecko": __version__}}


@contextmanager
def checkpoint_written(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Around the trainer's save of one checkpoint: a failed write (a full disk) is an OSError naming
    the file or `folder`, however the library reports it (as in `save_model`), and whatever fails or
    interrupts the save removes the half-written `folder`.

    `--resume` starts from the newest `checkpoint-N` folder and cannot load a partial one; with the
    partial one gone it starts from the checkpoint before, and the space it held is free again.
    """
    try:
        with writing(folder, (Exception,)):
            yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
