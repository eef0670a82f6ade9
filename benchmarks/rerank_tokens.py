"""The rerank_speed benchmark's data and its token accounting (no model forward pass runs here).

Data, made once and then reused (benchmarks/data/):
  scifact200_queries.jsonl     `gecko generate` over examples/passages.jsonl (the first 200 SciFact
                               passages), topped up from the next corpus passages until there are 200
                               (the generator rejects a few outputs);
  scifact200_candidates.jsonl  ids + scores of `gecko retrieve --corpus examples/data/scifact/corpus.jsonl
                               --top-k 20` for those queries (the seed is always a candidate).

Token accounting: the backend's own planning and batching with the forward passes replaced by
counting, so the token positions that (a) shared prefixes and (b) naive full prompts feed the
model are known for any window, at no cost; and the floor, the token-trie nodes of all sequences.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import DATA, EXAMPLES, SCIFACT, gecko, jsonl_text, parse_jsonl, read_jsonl
from gecko_cli.llm.scoring import NO, YES, ScoringPrompts

CORPUS = SCIFACT / "corpus.jsonl"
SEED_PASSAGES = EXAMPLES / "passages.jsonl"
QUERIES = DATA / "scifact200_queries.jsonl"
CANDIDATES = DATA / "scifact200_candidates.jsonl"
LABELS = list(YES + NO)
N_QUERIES = 200


# --- data ---------------------------------------------------------------------------------------


def ensure_queries() -> list[dict]:
    """200 generated queries (made once): the 200 example passages, then the next corpus passages."""
    if not QUERIES.exists():
        out = parse_jsonl(gecko("generate", stdin=SEED_PASSAGES.read_bytes()).stdout)
        used = {str(p["id"]) for p in read_jsonl(SEED_PASSAGES)}
        spare = (p for p in read_jsonl(CORPUS) if str(p["_id"]) not in used)
        while len(out) < N_QUERIES:
            batch = [next(spare) for _ in range(N_QUERIES - len(out))]
            out += parse_jsonl(gecko("generate", stdin=jsonl_text(batch)).stdout)
        QUERIES.parent.mkdir(parents=True, exist_ok=True)
        QUERIES.write_text(jsonl_text(out[:N_QUERIES]), encoding="utf-8")
    return read_jsonl(QUERIES)


def ensure_candidates(queries: list[dict]) -> dict[str, list]:
    """id -> [[candidate id, retriever score], ...] (made once with `gecko retrieve`)."""
    if not CANDIDATES.exists():
        out = parse_jsonl(gecko("retrieve", "--corpus", str(CORPUS), "--top-k", "20", stdin=jsonl_text(queries)).stdout)
        CANDIDATES.write_text("".join(json.dumps({"id": r["id"], "candidates": [
            [c["id"], round(c["retriever_score"], 6)] for c in r["candidates"]]}) + "\n" for r in out))
    return {r["id"]: r["candidates"] for r in read_jsonl(CANDIDATES)}


def build_records(limit: int | None = None, candidates: int | None = None, words: int | None = None) -> list[dict]:
    """Records as `gecko rerank` sees them: query + candidates with title and text (the first `limit`
    records, their first `candidates` candidates, each text cut to its first `words` words)."""
    queries = ensure_queries()[:limit]
    found = ensure_candidates(queries)
    corpus = {str(p["_id"]): p for p in read_jsonl(CORPUS)}

    def text(cid: str) -> str:
        return " ".join(corpus[cid]["text"].split()[:words]) if words else corpus[cid]["text"]

    return [dict(q, candidates=[{"id": cid, "title": corpus[str(cid)].get("title", ""), "text": text(str(cid)),
                                 "retriever_score": score} for cid, score in found[q["id"]][:candidates or None]])
            for q in queries]


def scoring_inputs(records: list[dict], prompts: ScoringPrompts) -> tuple[list[str], list[str], list[str]]:
    """(QL prefixes, QL continuations, RC prompts) of every pair, in order: what rerank sends."""
    pairs = [(r["query"], c) for r in records for c in r["candidates"]]
    ql = [prompts.ql_pair(q, p) for q, p in pairs]
    return [p for p, _ in ql], [c for _, c in ql], [prompts.rc_prompt(q, p) for q, p in pairs]


# --- token accounting ---------------------------------------------------------------------------


@functools.cache
def _plan_only_class() -> type:
    """LocalBackend with its forward passes replaced by counting (made on first use: it imports torch)."""
    import torch

    from gecko_cli.llm.local import LocalBackend
    from gecko_cli.llm.local.plan import reusable

    class PlanOnly(LocalBackend):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.head_rows = 0

        def _forward_from(self, ids, previous, limit):
            keep = reusable(previous, ids, limit)
            self.tokens_fed += len(ids) - keep
            return torch.zeros(len(ids) - keep, 1), keep, (ids, [("kv",)])

        def _packed_hidden(self, tails, prefix):
            self.tokens_fed += sum(map(len, tails))
            return torch.zeros(sum(map(len, tails)), 1)

        def _padded_hidden(self, tails):
            self.tokens_fed += max(map(len, tails)) * len(tails)
            return torch.zeros(sum(map(len, tails)), 1)

        def _readout(self, hidden, offsets, jobs, shared, label_ids):
            self.head_rows += sum((j.ql[1] - j.ql[0] if j.ql else 0) + j.read for j in jobs)
            return [(0.0 if j.ql else None, [0.0] * len(label_ids) if j.read else None) for j in jobs]

    return PlanOnly


def plan_only(tokenizer: Any, share_prefixes: bool) -> Any:
    """A backend that plans and counts the token positions it would feed, with `tokenizer`."""
    backend = _plan_only_class()(share_prefixes=share_prefixes)
    backend._tokenizer = tokenizer
    return backend


def trie_tokens(seqs: list[list[int]]) -> int:
    """Distinct prefixes of all sequences (token-trie nodes): what an ideal shared run computes.

    [[1, 2, 3], [1, 2, 4], [1, 2]] -> 4
    """
    from gecko_cli.llm.local.plan import _lcp

    total, last = 0, []
    for s in sorted(seqs):
        total += len(s) - _lcp(s, last)
        last = s
    return total


def token_plan(tokenizer: Any, prefixes: list[str], continuations: list[str], rc_prompts: list[str],
               pairs_per_record: list[int], window: int) -> dict[str, Any]:
    """Tokens per pair for (a), (b) and the floor when records are scored `window` at a time."""
    shared, naive = plan_only(tokenizer, True), plan_only(tokenizer, False)
    floor = head = passages = 0
    start = 0
    for r in range(0, len(pairs_per_record), window):
        n = sum(pairs_per_record[r:r + window])
        sl = slice(start, start + n)
        start += n
        for backend in (shared, naive):
            backend.score_shared(prefixes[sl], continuations[sl], rc_prompts[sl], LABELS)
        heads = shared.encode_many(prefixes[sl])
        ql = [h + c for h, c in zip(heads, shared.encode_many(continuations[sl]))]
        floor += trie_tokens(ql + shared.encode_many(rc_prompts[sl]))
        head += sum(len(q) - len(h) for q, h in zip(ql, heads)) + n  # QL positions + one RC read per pair
        passages += len(set(prefixes[sl]))
    pairs = start
    return {"window_records": window, "pairs": pairs, "distinct_passages_per_window_sum": passages,
            "pairs_per_passage": round(pairs / passages, 2),
            "tokens_per_pair": {"naive": round(naive.tokens_fed / pairs, 1), "shared": round(shared.tokens_fed / pairs, 1),
                                "floor": round(floor / pairs, 1)},
            "head_rows_per_pair": round(head / pairs, 2),
            "naive_over_shared_tokens": round(naive.tokens_fed / shared.tokens_fed, 2),
            "shared_over_floor_tokens": round(shared.tokens_fed / floor, 3),
            "_totals": {"naive": naive.tokens_fed, "shared": shared.tokens_fed, "floor": floor, "head_rows": head}}


def fret_projection(tokenizer: Any, windows: list[int], cache: Path) -> dict[str, Any]:
    """Tokens per pair FRet would need over the whole SciFact corpus (5,183 passages x 20 candidates)
    for several windows, with each passage's title as its query (a stand-in for a generated
    query: it retrieves the passage's neighbourhood the same way). Neighbours are retrieved once
    with `gecko retrieve` and kept in `cache`. No model forward runs."""
    path = cache / "scifact_title_neighbours.jsonl"
    corpus = {str(p["_id"]): p for p in read_jsonl(CORPUS)}
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        stdin = jsonl_text({"id": f"{i}#0", "seed": {"id": i, "title": p.get("title", ""), "text": p["text"]},
                            "task": "Given a title, find the paper", "query": p.get("title") or p["text"][:120]}
                           for i, p in corpus.items())
        out = parse_jsonl(gecko("retrieve", "--corpus", str(CORPUS), "--top-k", "20", stdin=stdin).stdout)
        path.write_text("".join(json.dumps({"id": r["id"], "c": [c["id"] for c in r["candidates"]]}) + "\n" for r in out))
    records = [{"query": corpus[r["id"].split("#")[0]].get("title") or "", "candidates": [
        {"id": c, "title": corpus[c].get("title", ""), "text": corpus[c]["text"]} for c in r["c"]]}
        for r in read_jsonl(path)]
    prompts = ScoringPrompts.default()
    out: dict[str, Any] = {"records": len(records), "pairs": sum(len(r["candidates"]) for r in records), "by_window": []}
    for window in windows:
        shared, naive_tokens, passages = plan_only(tokenizer, True), 0, 0
        for k in range(0, len(records), window):
            prefixes, continuations, rc_prompts = scoring_inputs(records[k:k + window], prompts)
            shared.score_shared(prefixes, continuations, rc_prompts, LABELS)
            naive_tokens += sum(map(len, shared.encode_many(prefixes))) + sum(map(len, shared.encode_many(continuations)))
            naive_tokens += sum(map(len, shared.encode_many(rc_prompts)))
            passages += len(set(prefixes))
        out["by_window"].append({"window_records": window, "pairs_per_passage": round(out["pairs"] / passages, 2),
                                 "tokens_per_pair": round(shared.tokens_fed / out["pairs"], 1),
                                 "naive_tokens_per_pair": round(naive_tokens / out["pairs"], 1)})
        print(json.dumps(out["by_window"][-1]), file=sys.stderr, flush=True)
    return out


def cached_fret_projection(tokenizer: Any, windows: list[int]) -> dict[str, Any] | None:
    """`fret_projection`, computed once per set of windows and kept beside the neighbours
    (under $GECKO_CACHE_DIR/bench/)."""
    from gecko_cli.contract.env import cache_dir

    if not windows:
        return None
    cache = cache_dir() / "bench"
    path = cache / f"fret_projection_{'_'.join(map(str, windows))}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = fret_projection(tokenizer, windows, cache)
    path.write_text(json.dumps(out))
    return out


def project(fret: dict[str, Any], tokens_per_cpu_s: float) -> dict[str, Any]:
    """Hours of one core for FRet over SciFact at (a)'s measured tokens per CPU second."""
    rows = [dict(row, core_hours=round(fret["pairs"] * row["tokens_per_pair"] / tokens_per_cpu_s / 3600, 1),
                 naive_core_hours=round(fret["pairs"] * row["naive_tokens_per_pair"] / tokens_per_cpu_s / 3600, 1))
            for row in fret["by_window"]]
    return {"what": "FRet step 2 over the SciFact corpus: 5,183 records (one per passage, the passage's title as "
                    "the query) x 20 retrieved candidates; tokens per pair from the backend's own plan; hours at "
                    "(a)'s measured tokens fed per CPU second, on one core",
            "records": fret["records"], "pairs": fret["pairs"], "tokens_fed_per_cpu_s": tokens_per_cpu_s,
            "by_window": rows}
