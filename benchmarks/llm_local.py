"""Benchmark the embedded LLM backend (SmolLM2-135M-Instruct via transformers) on this machine.

Measures load time (GGUF vs the dequantized copy), generation tokens/s at batch 1 and 8, and
(query, passage) pairs scored per second for query likelihood and relevance labels:
(a) passage-prefix sharing, (b) naive batched full prompts, (c) one at a time — on real SciFact
passages x short SciFact claims, checking that all three give the same scores.

    python -m benchmarks run llm_local [--passages 5 --queries 8 --threads N]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.common import SCIFACT, read_jsonl, timed
from benchmarks.registry import Benchmark, Context

# A representative scoring prompt: instruction + two few-shot examples, then the passage first
# (DESIGN §4), so every query scored against a passage shares `[instruction + few-shot][passage]`.
QL_HEAD = (
    "Read the passage and write a search query that the passage answers.\n\n"
    "Passage: The Great Barrier Reef is the world's largest coral reef system, composed of over "
    "2,900 individual reefs stretching over 2,300 kilometres off the coast of Queensland, Australia.\n"
    "Query: largest coral reef system in the world\n\n"
    "Passage: Metformin is a first-line medication for the treatment of type 2 diabetes, "
    "particularly in people who are overweight. It lowers glucose production in the liver.\n"
    "Query: how does metformin lower blood sugar\n\n"
)
RC_QUESTION = "\nDoes the passage answer the query? Answer Yes or No.\nAnswer:"
LABELS = [" Yes", " No"]


@dataclass
class Params:
    passages: int = 5
    queries: int = 8  # queries per passage
    threads: int = 0  # torch threads (0: torch's); 1 is faster while another process is busy
    gen_prompts: int = 8  # prompts generated at batch 8 (batch 1 takes the first 2)
    max_new_tokens: int = 48
    passage_words: int = 0  # cut each passage to its first N words (0: whole)
    gguf: bool = True  # time the GGUF load; --no-gguf times gecko's cached copy instead (no dequantizing)


def bench_load(cache, gguf: bool) -> dict[str, Any]:
    """GGUF load (dequantize) vs reloading the saved fp32 copy (without `gguf`: gecko's own copy,
    made once per cache dir, stands in for the GGUF load and its time is not reported)."""
    from gecko_cli.llm.local.model import load_from_gguf, load_model, save_atomically

    if gguf:
        (model, tokenizer), gguf_s = timed(load_from_gguf)
    else:
        model, tokenizer, _ = load_model()
    _, save_s = timed(save_atomically, model, tokenizer, cache)
    del model
    (_, _, source), cached_s = timed(load_model, cache)
    assert source == "cache"
    return {"gguf_s": round(gguf_s, 2) if gguf else None, "save_copy_s": round(save_s, 2),
            "cached_copy_s": round(cached_s, 2), "speedup": round(gguf_s / cached_s, 1) if gguf else None}


def bench_generate(llm, passages: list[dict], n_prompts: int, max_new_tokens: int) -> dict[str, Any]:
    """Generated tokens/s with sampling (T=0.7) at batch 1 and 8, on the naive path (`model.generate`
    on whole prompts; `generate_local` measures the shared-prefix path against it)."""
    def prompt(p: dict) -> list[dict]:
        return [{"role": "user", "content": "Write one short search query that this passage answers. "
                 f"Reply as JSON {{\"query\": ...}}.\n\nPassage: {p['text'][:600]}"}]
    prompts = [prompt(p) for p in (passages * n_prompts)[:n_prompts]]
    llm.generate_json(prompts[:1], {}, temperature=0.7, seed=0, max_new_tokens=4)  # warm-up
    out: dict[str, Any] = {}
    for batch, items in ((1, prompts[:2]), (8, prompts)):
        llm.share_prefixes, llm.naive_batch = False, batch
        texts, seconds = timed(llm.generate_json, items, {}, temperature=0.7, seed=0, max_new_tokens=max_new_tokens)
        tokens = sum(llm.count_tokens(t) + 1 for t in texts)  # +1: the end-of-turn token
        out[f"batch_{batch}"] = {"prompts": len(items), "tokens": tokens, "seconds": round(seconds, 2),
                                 "tokens_per_s": round(tokens / seconds, 1)}
    out["sample_output"] = texts[0]
    llm.share_prefixes = True
    return out


def scoring_inputs(passages: list[dict], claims: list[dict], per_passage: int) -> tuple[list[str], list[str]]:
    """(prefixes, queries): every passage paired with `per_passage` short claims."""
    prefixes, queries = [], []
    for k, p in enumerate(passages):
        for c in claims[k * per_passage:(k + 1) * per_passage]:
            prefixes.append(f"{QL_HEAD}Passage: {p['title']}. {p['text']}\nQuery:")
            queries.append(" " + c["text"].rstrip("."))
    return prefixes, queries


def bench_scoring(llm, prefixes: list[str], queries: list[str]) -> dict[str, Any]:
    """Pairs/s and max score difference for QL and RC under the three strategies."""
    rc_prompts = [p + q + RC_QUESTION for p, q in zip(prefixes, queries)]
    llm.query_likelihood(prefixes[:2], queries[:2])  # warm-up
    modes = {"shared_prefix": {"share_prefixes": True, "max_batch": 32},
             "naive_batched": {"share_prefixes": False, "max_batch": 32},
             "one_at_a_time": {"share_prefixes": False, "max_batch": 1}}
    out: dict[str, Any] = {}
    reference: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {}
    for mode, settings in modes.items():
        llm.share_prefixes, llm.max_batch = settings["share_prefixes"], settings["max_batch"]
        ql, ql_s = timed(llm.query_likelihood, prefixes, queries)
        rc, rc_s = timed(llm.label_logprobs, rc_prompts, LABELS)
        rc_flat = [row[label] for row in rc for label in LABELS]
        reference.setdefault("ql", ql), reference.setdefault("rc", rc_flat)
        scores[mode] = ql + rc_flat
        out[mode] = {"ql_pairs_per_s": round(len(ql) / ql_s, 2), "ql_seconds": round(ql_s, 2),
                     "rc_pairs_per_s": round(len(rc) / rc_s, 2), "rc_seconds": round(rc_s, 2),
                     "max_abs_diff_vs_shared": max(
                         max(abs(a - b) for a, b in zip(ql, reference["ql"])),
                         max(abs(a - b) for a, b in zip(rc_flat, reference["rc"])))}
    llm.share_prefixes, llm.max_batch = True, 32
    # the noise floor: the two naive computations differ from each other by float rounding too
    out["max_abs_diff_naive_batched_vs_one_at_a_time"] = max(
        abs(a - b) for a, b in zip(scores["naive_batched"], scores["one_at_a_time"]))
    for mode in ("naive_batched", "one_at_a_time"):
        out[f"speedup_vs_{mode}"] = {
            k: round(out["shared_prefix"][k] / out[mode][k], 1) for k in ("ql_pairs_per_s", "rc_pairs_per_s")}
    return out


def run(params: Params, context: Context) -> dict[str, Any]:
    import torch

    from gecko_cli.llm.local import LocalBackend

    if params.threads:
        torch.set_num_threads(params.threads)
    passages = read_jsonl(SCIFACT / "corpus.jsonl", params.passages)
    if params.passage_words:
        passages = [dict(p, text=" ".join(p["text"].split()[:params.passage_words])) for p in passages]
    claims = read_jsonl(SCIFACT / "queries.jsonl", params.passages * params.queries)
    cache = context.workdir / "smollm2"
    load = bench_load(cache, params.gguf)
    llm = LocalBackend(cache)
    llm.model  # noqa: B018 (loads)
    prefixes, queries = scoring_inputs(passages, claims, params.queries)
    prefix_tokens = [llm.count_tokens(p) for p in prefixes]
    query_tokens = [llm.count_tokens(q) for q in queries]
    return {
        "model": llm.model_id,
        "load": load,
        "generate": bench_generate(llm, passages, params.gen_prompts, params.max_new_tokens),
        "scoring": {"pairs": len(prefixes), "passages": len(passages),
                    "mean_prefix_tokens": round(sum(prefix_tokens) / len(prefix_tokens)),
                    "mean_query_tokens": round(sum(query_tokens) / len(query_tokens), 1),
                    **bench_scoring(llm, prefixes, queries)},
    }


BENCHMARK = Benchmark(
    name="llm_local",
    summary="embedded LLM: load time, generation tokens/s, QL/RC pairs/s with vs without prefix sharing",
    params=Params, run=run,
    quick={"passages": 1, "queries": 2, "gen_prompts": 2, "max_new_tokens": 8, "passage_words": 40, "gguf": False},
)
