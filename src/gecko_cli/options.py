"""Options and I/O shared by the thin stage commands (the CLI layer: may use typer and rich)."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.jsonl import JsonlWriter, RejectsWriter
from gecko_cli.contract.paths import LLM_MODEL, MODEL_DIR, READ, WRITE, WRITE_DIR, PathUse, require
from gecko_cli.contract.records import Validator, parse_shard, record_id
from gecko_cli.contract.stream import Counts, ResumeState, StageInput, resume_state
from gecko_cli.progress import message

# The PathUse after a path option's typer.Option says what it names; cli.py checks it before the run
# and reports `gecko STAGE: PATH: reason` in one line. `readable=False` keeps click from checking
# first (in a multi-line usage box); every Path option has it.
InputOpt = Annotated[Optional[Path], typer.Option(
    "--input", "-i", readable=False, help="Read JSONL from FILE instead of stdin.", rich_help_panel="Input/output"), READ]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", readable=False, help="Write JSONL to FILE instead of stdout.", rich_help_panel="Input/output"), WRITE]
RejectsOpt = Annotated[Optional[Path], typer.Option(
    "--rejects", readable=False,
    help="Write bad records to FILE as {line, error, raw} and keep going (default: stop at the first).",
    rich_help_panel="Input/output"), WRITE]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="Process only shard I of N (I/N, from 0), by a stable hash of the record id.",
    rich_help_panel="Input/output")]
EmbedderOpt = Annotated[Optional[str], typer.Option(
    "--embedder", envvar="GECKO_EMBEDDER",
    help="sentence-transformers model name or path (default: the embedded all-MiniLM-L6-v2)."), MODEL_DIR]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the on-disk cache.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Encoding batch size.")]

# Retrieval options: `gecko retrieve`, and `gecko rerank` for records without candidates.
CorpusOpt = Annotated[Optional[Path], typer.Option("--corpus", readable=False, help="Passages JSONL or BEIR corpus.jsonl to search (default: the seed passages of the input)."), READ]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Candidates per query (the paper's best: 20).")]
NoSeedOpt = Annotated[bool, typer.Option("--no-seed", help="Do not add the seed passage when the search missed it.")]
ExactOpt = Annotated[bool, typer.Option("--exact", help="Brute-force cosine search instead of the hnswlib index.")]
EfOpt = Annotated[int, typer.Option("--ef", min=1, help="hnswlib search breadth (higher: better recall, slower).")]
# The embedder's own templates when it has them (a gecko-trained model's gecko.json), else plain:
# a model never trained on `task: … | query: …` retrieves worse with it (README, `gecko retrieve`).
QueryPromptOpt = Annotated[Optional[str], typer.Option("--query-prompt", help="Query template ({text}, {task}) or preset: gecko, plain (default: the embedder's stored templates, else plain).")]
DocPromptOpt = Annotated[Optional[str], typer.Option("--doc-prompt", help="Passage template ({text}, {title}) or preset: plain, gecko (default: the embedder's stored templates, else plain).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the index build.")]


# LLM options: `gecko generate` and `gecko rerank`.
_LLM = "LLM"
LLMOpt = Annotated[Optional[str], typer.Option(
    "--llm", envvar="GECKO_LLM", rich_help_panel=_LLM,
    help="'embedded' (SmolLM2-135M in-process; the default), a local model run in-process the same way (a .gguf "
         "file or a transformers model directory), or an OpenAI-compatible server: http://HOST:PORT/v1 "
         "(vLLM, SGLang, llama.cpp, Ollama, TGI, OpenAI)."), LLM_MODEL]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", envvar="GECKO_DEVICE", rich_help_panel=_LLM,
    help="Where an in-process LLM runs: cpu, cuda, cuda:1, ... (default: CUDA when torch sees a GPU, else cpu).")]
LLMDtypeOpt = Annotated[str, typer.Option(
    "--llm-dtype", envvar="GECKO_LLM_DTYPE", rich_help_panel=_LLM,
    help="What an in-process LLM computes in: float32 (exact: the figures in docs/ were made so), bfloat16, or "
         "auto (bfloat16 where the device does it natively: a CUDA GPU, a CPU with AMX or AVX512-BF16; else float32).")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", envvar="GECKO_LLM_MODEL", rich_help_panel=_LLM,
    help="Model name on the server (default: the server's only model).")]
ApiKeyEnvOpt = Annotated[str, typer.Option(
    "--api-key-env", rich_help_panel=_LLM,
    help="Name of the environment variable holding the server's API key (the key itself is never printed or stored).")]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, rich_help_panel=_LLM,
                                             help="Requests in flight to the server.")]
MaxRetriesOpt = Annotated[int, typer.Option(
    "--max-retries", min=0, rich_help_panel=_LLM,
    help="Retries per request on 408/409/429/5xx, timeouts, dropped connections and unusable answers.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, rich_help_panel=_LLM,
                                           help="Seconds to wait for one answer before retrying.")]
BudgetOpt = Annotated[Optional[int], typer.Option(
    "--max-tokens-budget", min=1, rich_help_panel=_LLM,
    help="Stop cleanly (exit 0) before the LLM calls of this run would use more than N tokens.")]
ResumeOutputOpt = Annotated[bool, typer.Option(
    "--resume", rich_help_panel="Input/output",
    help="Append to --output (and --rejects), skipping the input records they already account for.")]


def _shipped_prompt(name: str) -> bool:
    """A prompt gecko ships (`generate`, `query_likelihood`, `relevance`), named without a path."""
    return "/" not in name and resources.files("gecko_cli.llm.prompts").joinpath(f"{name}.txt").is_file()


PROMPT_FILE = PathUse(is_name=_shipped_prompt)  # --prompt, --ql-prompt, --rc-prompt: a file, or a shipped name


# Training options shared by `gecko pretrain` and `gecko finetune`.
ModelOutputOpt = Annotated[Path, typer.Option("--output", "-o", readable=False,
                                              help="Model directory to write (checkpoints go there too)."), WRITE_DIR]
EpochsOpt = Annotated[float, typer.Option("--epochs", help="Passes over the data (ignored with --max-steps).")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps.")]
# Cost grows with text length, and all-MiniLM-L6-v2 itself was trained on 128-token texts; the saved
# model keeps the limit it started with, so what it encodes later is not cut shorter.
TextFormatOpt = Annotated[str, typer.Option("--text-format", help="How training writes texts: gecko (the paper's `task: ... | query: ...` and `title: ... | text: ...`) or plain (the query; title and text), the format a plain sentence-transformers model learnt. Saved with the model, so evaluate and retrieve write texts the same way.")]
MaxSeqLengthOpt = Annotated[Optional[int], typer.Option("--max-seq-length", min=1, help="Cut training texts to N tokens (faster; default: the model's own limit). The saved model keeps its own limit.")]
PoolingOpt = Annotated[Optional[str], typer.Option("--pooling", help="With a language model as --init (embedded-llm, a GGUF file, a ...ForCausalLM folder): grow it into an embedder the NV-Embed way, pooling its token states by latent-attention (512 latents, 8 heads; the default), mean, or last (an EOS token).")]
AttentionOpt = Annotated[Optional[str], typer.Option("--attention", help="With a language model as --init: bidirectional (NV-Embed, the default) or causal.")]
MiniBatchSizeOpt = Annotated[Optional[int], typer.Option("--mini-batch-size", help="Use the cached (GradCache) loss: memory bounded by this, not --batch-size.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (linear warmup and decay).")]
WarmupRatioOpt = Annotated[float, typer.Option("--warmup-ratio", help="Fraction of steps spent warming up.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="τ in eq. 3 (cosine / τ).")]
NoSameTowerOpt = Annotated[bool, typer.Option("--no-same-tower", help="Drop the other queries of the batch from the denominator.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output.")]
GatherOpt = Annotated[bool, typer.Option("--gather-across-processes/--no-gather-across-processes", help="Data-parallel (accelerate launch): in-batch negatives from every process's batch, as if one process held them all.")]


def utf8_stdout() -> None:
    """Records are UTF-8 whatever the locale says."""
    if hasattr(sys.stdout, "reconfigure") and (sys.stdout.encoding or "").lower() != "utf-8":
        sys.stdout.reconfigure(encoding="utf-8")


@contextmanager
def stage_io(validate: Validator, *, input: Path | None, output: Path | None, rejects: Path | None = None,
             shard: str | None = None, resume: bool = False,
             done_key: Callable[[dict], str] | None = None) -> Iterator[tuple[StageInput, JsonlWriter]]:
    """Open the input, output and rejects streams of a stage; close them at the end.

    Keywords only: input and output are both paths, and a swap must not pass silently.

    With `resume`, --output and --rejects are appended to (a torn last line is cut off first),
    and the input records they already account for are skipped: outputs by `done_key(output
    record)` = the input record's id, rejects by input line number.
    """
    try:
        shard_spec = parse_shard(shard) if shard else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    done: ResumeState | None = None
    if resume:
        if output is None:
            raise UsageError("--resume needs --output FILE (the file to continue)")
        done = resume_state(output, rejects, done_key or record_id)
    with ExitStack() as stack:
        if input is None:
            stream, source = sys.stdin.buffer, "<stdin>"
        else:
            require(READ, input)
            stream, source = stack.enter_context(input.open("rb")), str(input)
        if output is None:
            utf8_stdout()
            out = sys.stdout
        else:
            out = stack.enter_context(output.open("a" if resume else "w", encoding="utf-8", newline="\n"))
        rejects_writer = None
        if rejects is not None:
            rejects_writer = RejectsWriter(stack.enter_context(
                rejects.open("a" if resume else "w", encoding="utf-8", newline="\n")))
        stage_input = StageInput(stream, source, validate, rejects_writer, shard_spec)
        if done is not None:
            stage_input.skip_ids, stage_input.skip_lines = done.ids, done.lines
        yield stage_input, JsonlWriter(out)


def summary(stage: str, counts: Counts) -> None:
    """The one-line end-of-run summary on stderr."""
    message(counts.summary(stage))


def llm_counts(counts: Counts, backend: Any) -> None:
    """Add the LLM's numbers to a stage summary: calls, cache hits, retries, tokens, records/s."""
    meter = backend.meter
    counts.extra.update({"LLM calls": meter.calls, "from the cache": backend.cache.hits, "retries": meter.retries,
                         "prompt tokens": meter.prompt_tokens, "completion tokens": meter.completion_tokens})
    counts.show_rate = True
