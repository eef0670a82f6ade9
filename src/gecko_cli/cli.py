"""The `gecko` command: registers the stages and is the one place errors become exit codes.

Exit codes: 0 ok, 1 bad input, 2 usage, 3 backend unavailable after retries,
130 interrupted. A closed pipe (`gecko ... | head`) ends quietly.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated, Any, Callable

import typer

from gecko_cli import __version__
from gecko_cli.contract.errors import GeckoError
from gecko_cli.progress import message
from gecko_cli.stages import evaluate, finetune, fuse, generate, mine_negatives, pretrain, rerank, retrieve

app = typer.Typer(
    name="gecko",
    help="Raw passages in, a trained text embedder out — the Gecko recipe (arXiv 2403.20327), "
         "one JSONL filter per stage.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gecko {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Raw passages in, a trained text embedder out: every stage reads JSONL on stdin and writes JSONL on stdout.

      gecko evaluate --dataset examples/data/scifact --split test
    """


def guarded(stage: str, command: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command, turning expected failures into `gecko STAGE: message` and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except GeckoError as exc:
            message(f"gecko {stage}: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            message(f"gecko {stage}: interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, like any Unix filter.
            _silence_stdout()
            raise typer.Exit(0) from None

    return wrapper


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


STAGES: dict[str, Callable[..., Any]] = {
    "generate": generate.command,
    "retrieve": retrieve.command,
    "rerank": rerank.command,
    "fuse": fuse.command,
    "mine-negatives": mine_negatives.command,
    "pretrain": pretrain.command,
    "finetune": finetune.command,
    "evaluate": evaluate.command,
}
for _name, _command in STAGES.items():
    app.command(_name)(guarded(_name, _command))


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
