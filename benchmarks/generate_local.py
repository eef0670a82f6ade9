"""`gecko generate` on the embedded LLM: shared prompt prefixes + early stop vs the naive path.

Side by side in one run, one torch thread, the stage's own core (`stages.generate.generate`: same
filters, one retry of an unusable answer), on the passages of examples/passages.jsonl:

- `main`: what gecko did before — `model.generate` on whole prompts in left-padded batches of 8,
  the task-first prompt (`--prompt generate-task-first`);
- `shared`: the default — prefix-shared prefill, rows decoded together and each stopped when
  its JSON closes, the passage-first prompt that lets the K examples of a passage share it —
  at `--per-passage 1` and `K`;
- `naive_same_prompt`: the naive path on the default prompt, to tell the runtime's gain from the
  prompt's and to check that, at temperature 0, both paths write the same queries;
- `shared_1_bfloat16`, `shared_K_bfloat16` (last, only on a CPU with native bf16 — AMX or AVX512-BF16): the shared
  runs with `--llm-dtype bfloat16`, their floor at the bf16 matmul rate.

The compute floor counts the tokens that must be computed — the distinct token prefixes of all
prompts sent once (a trie over them) plus every generated token — at 2 x (non-embedding
parameters) FLOPs each (+ the LM head for generated tokens), at the matmul rate measured here.

    python -m benchmarks run generate_local [--passages 200 --per-passage 4]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.common import EXAMPLES, read_jsonl
from benchmarks.registry import Benchmark, Context
from gecko_cli.contract.env import has_native_bf16


@dataclass
class Params:
    passages: int = 200  # the first N of examples/passages.jsonl
    per_passage: int = 4  # K of the `shared` K run (the 1 run always happens)
    temperature: float = 0.7  # the stage's default
    seed: int = 0
    threads: int = 1  # torch threads
    equality_passages: int = 200  # temperature-0 comparison, naive vs shared, same prompt
    baseline_prompt: str = "generate-task-first"  # the prompt `main` used
    bfloat16: bool = True  # also the shared runs in bfloat16 (`--llm-dtype`), where the CPU has it natively (AMX, AVX512-BF16)


def matmul_gflops(seconds: float = 2.0, dtype: str = "float32") -> float:
    """GFLOP/s of a prefill-shaped matmul (256 tokens x hidden 576 -> 1536) in `dtype` on this thread count."""
    import torch

    a, w = torch.randn(256, 576).to(getattr(torch, dtype)), torch.randn(576, 1536).to(getattr(torch, dtype))
    for _ in range(5):
        a @ w
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ w
        n += 1
    return 2 * 256 * 576 * 1536 * n / (time.perf_counter() - started) / 1e9


def distinct_prefix_tokens(sequences: list[list[int]]) -> int:
    """Nodes of the trie of the sequences: what a perfect prefix cache must still compute.

    >>> distinct_prefix_tokens([[1, 2, 3], [1, 2, 4], [1, 2, 3], [5]])
    5
    """
    total, previous = 0, []
    for seq in sorted(map(tuple, sequences)):
        shared = 0
        for a, b in zip(previous, seq):
            if a != b:
                break
            shared += 1
        total += len(seq) - shared
        previous = seq
    return total


class Recorder:
    """Wraps a LocalBackend's generate_json: keeps the ids of every prompt sent."""

    def __init__(self, backend: Any):
        self.backend, self.prompts = backend, []
        self.name, self.model_id, self.meter = backend.name, backend.model_id, backend.meter

    def generate_json(self, prompts: list, schema: dict, **kwargs: Any) -> list[str]:
        from gecko_cli.llm.base import answer_prefix

        template = self.backend.tokenizer.apply_chat_template
        texts = [template(answer_prefix(m)[0], add_generation_prompt=True, tokenize=False) + answer_prefix(m)[1]
                 for m in prompts]
        self.prompts += self.backend.encode_many(texts)
        return self.backend.generate_json(prompts, schema, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def run_one(backend: Any, passages: list[dict], prompt: str, per_passage: int, temperature: float,
            seed: int) -> tuple[dict[str, Any], list[dict]]:
    from gecko_cli.llm.generation import default_task_types, parse_template
    from gecko_cli.llm.scoring import load_prompt
    from gecko_cli.stages.generate import GenerateStats, generate

    recorder, stats = Recorder(backend), GenerateStats()
    before = (backend.meter.prompt_tokens, backend.meter.completion_tokens, backend.meter.calls)
    started = time.perf_counter()
    out = list(generate(passages, recorder, parse_template(load_prompt(prompt)), default_task_types(),
                        per_passage=per_passage, temperature=temperature, seed=seed, stats=stats))
    seconds = time.perf_counter() - started
    records = [r for item in out if isinstance(item, list) for r in item]
    examples = len(passages) * per_passage
    completion = backend.meter.completion_tokens - before[1]
    return {"prompt": prompt, "per_passage": per_passage, "seconds": round(seconds, 2),
            "usable_queries": len(records), "queries_per_s": round(len(records) / seconds, 4),
            "examples": examples, "first_attempt_usable": round(1 - stats.retried / examples, 4),
            "rejected_passages": sum(1 for item in out if not isinstance(item, list)),
            "duplicates": stats.duplicates, "calls": backend.meter.calls - before[2],
            "prompt_tokens": backend.meter.prompt_tokens - before[0], "completion_tokens": completion,
            "distinct_prefix_tokens": distinct_prefix_tokens(recorder.prompts),
            "fed_tokens": getattr(backend._decoder, "fed", None),
            "rows_per_decoding_step": _rows_per_step(backend._decoder),
            "phase_seconds": _phases(backend._decoder)}, records


def _rows_per_step(decoder: Any) -> float | None:
    """How full the shared path's decoding batches ran (at most its batch size); None for the naive path."""
    return None if decoder is None or not decoder.steps else round(decoder.decoded / decoder.steps, 1)


def _phases(decoder: Any) -> dict[str, float] | None:
    """Where a shared run's time went (PrefixDecoder.seconds: prefill, decode forwards, sampling);
    None for the naive path."""
    return None if decoder is None else {k: round(v, 2) for k, v in decoder.seconds.items()}


def floor(run: dict[str, Any], params: int, head: int, gflops: float) -> dict[str, Any]:
    flops = 2 * params * (run["distinct_prefix_tokens"] + run["completion_tokens"]) + \
        2 * head * run["completion_tokens"]
    seconds = flops / (gflops * 1e9)
    return {"floor_seconds": round(seconds, 2), "of_floor": round(seconds / run["seconds"], 3)}


def run(params: Params, context: Context) -> dict[str, Any]:
    import torch

    from gecko_cli.llm.local import LocalBackend

    torch.set_num_threads(params.threads)
    passages = read_jsonl(EXAMPLES / "passages.jsonl", params.passages)
    shared, naive = LocalBackend(), LocalBackend(share_prefixes=False)
    naive._model, naive._tokenizer = shared.model, shared.tokenizer  # one copy of the weights
    model = shared.model
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    head = model.config.vocab_size * model.config.hidden_size
    gflops = matmul_gflops()
    runs: dict[str, Any] = {}
    runs["main"], _ = run_one(naive, passages, params.baseline_prompt, 1, params.temperature, params.seed)
    runs["shared_1"], _ = run_one(shared, passages, "generate", 1, params.temperature, params.seed)
    shared._decoder = None  # a cold prompt store for the K run
    runs[f"shared_{params.per_passage}"], _ = run_one(shared, passages, "generate", params.per_passage,
                                                      params.temperature, params.seed)
    runs["naive_same_prompt"], _ = run_one(naive, passages, "generate", 1, params.temperature, params.seed)
    for name, item in runs.items():
        item.update(floor(item, body, head, gflops))
    equal = passages[:params.equality_passages]
    shared._decoder = None
    _, greedy_shared = run_one(shared, equal, "generate", 1, 0.0, params.seed)
    _, greedy_naive = run_one(naive, equal, "generate", 1, 0.0, params.seed)
    by_id = {r["id"]: r["query"] for r in greedy_naive}
    same = sum(by_id.get(r["id"]) == r["query"] for r in greedy_shared)
    differ = [{"id": r["id"], "shared": r["query"], "naive": by_id.get(r["id"])} for r in greedy_shared
              if by_id.get(r["id"]) != r["query"]]
    main, one, k = runs["main"], runs["shared_1"], runs[f"shared_{params.per_passage}"]
    low: dict[str, Any] = {}
    if params.bfloat16 and has_native_bf16("cpu"):
        bf16_runs, gflops_bf16 = _bfloat16_runs(passages, params, body, head)
        runs.update(bf16_runs)
        fast, fast_k = bf16_runs["shared_1_bfloat16"], bf16_runs[f"shared_{params.per_passage}_bfloat16"]
        low = {"matmul_gflops_bfloat16": round(gflops_bf16, 1),
               f"bfloat16_wall_per_passage_{params.per_passage}_vs_1": round(fast_k["seconds"] / fast["seconds"], 3),
               "bfloat16_speedup_usable_queries_per_s": round(fast["queries_per_s"] / main["queries_per_s"], 3),
               "bfloat16_vs_float32_wall_at_1": round(one["seconds"] / fast["seconds"], 3)}
    return {
        "model": shared.model_id, "matmul_gflops": round(gflops, 1), **low,
        "non_embedding_params": body, "runs": runs,
        "speedup_usable_queries_per_s": round(one["queries_per_s"] / main["queries_per_s"], 3),
        f"wall_per_passage_{params.per_passage}_vs_1": round(k["seconds"] / one["seconds"], 3),
        "temperature_0": {"passages": len(equal), "queries_shared": len(greedy_shared),
                          "queries_naive": len(greedy_naive), "identical": same,
                          "identical_share": round(same / max(1, len(greedy_shared)), 4), "differ": differ[:20]},
    }


def _bfloat16_runs(passages: list[dict], params: Params, body: int, head: int) -> tuple[dict[str, Any], float]:
    """(runs, bf16 GFLOP/s): the shared runs again through `LocalBackend(dtype="bfloat16")` — what
    `--llm-dtype bfloat16` runs — each against the floor at the bf16 matmul rate measured now."""
    from gecko_cli.llm.local import LocalBackend

    fast = LocalBackend(dtype="bfloat16")
    fast.model  # loaded before any clock starts, as the float32 runs' model is
    gflops = matmul_gflops(dtype="bfloat16")
    runs = {}
    for k in (1, params.per_passage):
        fast._decoder = None  # a cold prompt store for each run
        item, _ = run_one(fast, passages, "generate", k, params.temperature, params.seed)
        runs[f"shared_{k}_bfloat16"] = {**item, "dtype": fast.dtype, **floor(item, body, head, gflops)}
    return runs, gflops


BENCHMARK = Benchmark(
    name="generate_local",
    summary="gecko generate on the embedded LLM: shared prefixes + early stop vs the naive path, floor, K=4 cost",
    params=Params, run=run,
    quick={"passages": 2, "per_passage": 2, "equality_passages": 2},
)
