"""Benchmark the embedded LLM backend (SmolLM2-135M-Instruct via transformers) on this machine.

Measures load time (GGUF vs the dequantized copy), generation tokens/s at batch 1 and 8, and
(query, passage) pairs scored per second for query likelihood and relevance labels:
(a) passage-prefix sharing, (b) naive batched full prompts, (c) one at a time — on real SciFact
passages x short SciFact claims, checking that all three give the same scores.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_llm_local.py [--passages 5 --queries 8 --threads N]

Writes benchmarks/results/llm_local.json. Runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from gecko_cli.llm import local  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
RESULTS = Path(__file__).resolve().parent / "results" / "llm_local.json"

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


def read_jsonl(path: Path, n: int) -> list[dict]:
    """First n records of a JSONL file."""
    with path.open() as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def bench_load(cache: Path) -> dict:
    """GGUF load (dequantize) vs reloading the saved fp32 copy."""
    (model, tokenizer), gguf_s = timed(local.load_from_gguf)
    _, save_s = timed(local.save_atomically, model, tokenizer, cache)
    del model
    (_, _, source), cached_s = timed(local.load_model, cache)
    assert source == "cache"
    return {"gguf_s": round(gguf_s, 2), "save_copy_s": round(save_s, 2), "cached_copy_s": round(cached_s, 2),
            "speedup": round(gguf_s / cached_s, 1)}


def bench_generate(llm: local.LocalBackend, passages: list[dict]) -> dict:
    """Generated tokens/s with sampling (T=0.7) at batch 1 and 8, 48 new tokens at most."""
    def prompt(p: dict) -> list[dict]:
        return [{"role": "user", "content": "Write one short search query that this passage answers. "
                 f"Reply as JSON {{\"query\": ...}}.\n\nPassage: {p['text'][:600]}"}]
    prompts = [prompt(p) for p in (passages * 2)[:8]]
    llm.generate_json(prompts[:1], {}, temperature=0.7, seed=0, max_new_tokens=4)  # warm-up
    out = {}
    for batch, items in ((1, prompts[:2]), (8, prompts)):
        llm.generate_batch = batch
        texts, seconds = timed(llm.generate_json, items, {}, temperature=0.7, seed=0, max_new_tokens=48)
        tokens = sum(llm.count_tokens(t) + 1 for t in texts)  # +1: the end-of-turn token
        out[f"batch_{batch}"] = {"prompts": len(items), "tokens": tokens, "seconds": round(seconds, 2),
                                 "tokens_per_s": round(tokens / seconds, 1)}
    out["sample_output"] = texts[0]
    return out


def scoring_inputs(passages: list[dict], claims: list[dict], per_passage: int):
    """(prefixes, queries): every passage paired with `per_passage` short claims."""
    prefixes, queries = [], []
    for k, p in enumerate(passages):
        for c in claims[k * per_passage:(k + 1) * per_passage]:
            prefixes.append(f"{QL_HEAD}Passage: {p['title']}. {p['text']}\nQuery:")
            queries.append(" " + c["text"].rstrip("."))
    return prefixes, queries


def bench_scoring(llm: local.LocalBackend, prefixes: list[str], queries: list[str]) -> dict:
    """Pairs/s and max score difference for QL and RC under the three strategies."""
    rc_prompts = [p + q + RC_QUESTION for p, q in zip(prefixes, queries)]
    llm.query_likelihood(prefixes[:2], queries[:2])  # warm-up
    modes = {"shared_prefix": {"share_prefixes": True, "max_batch": 32},
             "naive_batched": {"share_prefixes": False, "max_batch": 32},
             "one_at_a_time": {"share_prefixes": False, "max_batch": 1}}
    out, reference, scores = {}, {}, {}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=5)
    parser.add_argument("--queries", type=int, default=8, help="queries per passage")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is faster while another process is busy")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    passages = read_jsonl(DATA / "corpus.jsonl", args.passages)
    claims = read_jsonl(DATA / "queries.jsonl", args.passages * args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "smollm2"
        load = bench_load(cache)
        llm = local.LocalBackend(cache)
        llm.model  # noqa: B018 (loads)
        prefixes, queries = scoring_inputs(passages, claims, args.queries)
        prefix_tokens = [llm.count_tokens(p) for p in prefixes]
        query_tokens = [llm.count_tokens(q) for q in queries]
        result = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "load_average": os.getloadavg(), "python": platform.python_version(),
                        "torch": torch.__version__, "transformers": transformers.__version__},
            "model": llm.model_id,
            "load": load,
            "generate": bench_generate(llm, passages),
            "scoring": {"pairs": len(prefixes), "passages": len(passages),
                        "mean_prefix_tokens": round(sum(prefix_tokens) / len(prefix_tokens)),
                        "mean_query_tokens": round(sum(query_tokens) / len(query_tokens), 1),
                        **bench_scoring(llm, prefixes, queries)},
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
