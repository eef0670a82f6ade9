"""The `gecko` command: registers the stages and is the one place errors become exit codes.

Exit codes: 0 ok, 1 bad input or a file that fails during the run (a full disk), 2 usage (also a
path an option or GECKO_CACHE_DIR names that cannot be used, refused before the run), 3 backend
unavailable after retries, 130 interrupted (Ctrl-C or SIGTERM). A closed pipe (`gecko ... | head`)
ends quietly.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from typing import Annotated, Any, Callable, NoReturn

import typer

from gecko_cli import __version__
from gecko_cli.contract.env import cache_dir
from gecko_cli.contract.errors import GeckoError, PathError, caused_by_user
from gecko_cli.contract.paths import check_all, declared
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
    """Run a command, turning expected failures into `gecko STAGE: message` and an exit code.

    The paths the command declares (and `GECKO_CACHE_DIR`, when it has `--no-cache` and it is
    not given) are checked first, before any model loads.
    """
    paths = declared(command)
    uses_cache = "no_cache" in inspect.signature(command).parameters

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            check_all(paths, kwargs)
            if uses_cache and not kwargs.get("no_cache"):
                cache_dir()
            return command(*args, **kwargs)
        except GeckoError as exc:
            fail(stage, str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:
            fail(stage, f"interrupted{f' ({exc.args[0]})' if exc.args else ''}", 130)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, like any Unix filter.
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:
            if not caused_by_user(exc):
                raise  # a bug: the traceback is the report
            fail(stage, str(PathError.from_os_error(exc)), 1)

    return wrapper


def fail(stage: str, text: str, code: int) -> NoReturn:
    """The one line a failed run leaves on stderr, and its exit code."""
    message(f"gecko {stage}: {text}")
    raise typer.Exit(code) from None


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


def _terminated(signum: int, frame: Any) -> None:
    # SIGTERM (kill, a scheduler's time limit) ends a run the way Ctrl-C does: the line in hand
    # finished, the caches closed, exit 130.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGTERM, _terminated)
    app()
