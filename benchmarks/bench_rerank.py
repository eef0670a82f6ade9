"""Benchmark `gecko rerank`'s scoring on the embedded LLM (SmolLM2-135M, transformers fp32, CPU).

(query, candidate) pairs scored per second with both scorers (QL and RC), on 200 queries generated
from SciFact passages x their 20 retrieved candidates:

  (a) passage-prefix sharing: `LocalBackend.score_shared` as `gecko rerank` calls it (one call per
      window of records): every QL sequence and RC prompt is grouped by shared token prefix, each
      passage's KV cache runs once and serves QL and RC of every query that has it as a candidate;
  (b) naive full prompts, batched: `LocalBackend(share_prefixes=False)`;
  (c) one at a time: naive full prompts, one sequence per forward.

Data, made once and then reused (benchmarks/data/):
  scifact200_queries.jsonl     `gecko generate` over examples/passages.jsonl (the first 200 SciFact
                               passages), topped up from the next corpus passages until there are 200
                               (the generator rejects a few outputs);
  scifact200_candidates.jsonl  ids + scores of `gecko retrieve --corpus examples/data/scifact/corpus.jsonl
                               --top-k 20` for those queries (the seed is always a candidate).

Timing: 1 torch thread by default (on a machine shared with other jobs 2 threads are slower;
measured by `threads_probe`). Wall time and CPU time (`time.process_time`, what this process got)
are both reported; while other jobs load the machine the CPU-time rates and their ratios are the
stable numbers. Variants run interleaved: each round scores one window of records with (a), then a
slice of the same pairs with (b) and (c), then probes matmul FLOP/s.

Compute floor: 2 x (non-embedding parameters) x (token positions an ideal shared computation must
run: the distinct prefixes of all sequences = nodes of their token trie) + 2 x (LM-head parameters) x
(positions whose next-token distribution is read), divided by the measured fp32 matmul FLOP/s on the
model's own shapes at the same thread count.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_rerank.py [--records 200 --window 1024 --threads 1]

About 50 min on 2 shared cores (a: all 4,094 pairs); --records 64 for a quicker run.

Writes benchmarks/results/rerank_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from gecko_cli.llm import local  # noqa: E402
from gecko_cli.llm.scoring import NO, YES, ScoringPrompts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "data" / "scifact" / "corpus.jsonl"
SEED_PASSAGES = ROOT / "examples" / "passages.jsonl"
DATA = ROOT / "benchmarks" / "data"
QUERIES = DATA / "scifact200_queries.jsonl"
CANDIDATES = DATA / "scifact200_candidates.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "rerank_speed.json"
LABELS = list(YES + NO)
N_QUERIES = 200


# --- data -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gecko(*args: str, stdin: str) -> str:
    """Run the gecko CLI of this checkout; stdout."""
    proc = subprocess.run([sys.executable, "-m", "gecko_cli", *args], input=stdin.encode(), capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"gecko {' '.join(args)} failed:\n{proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def ensure_queries() -> list[dict]:
    """200 generated queries (made once): the 200 example passages, then the next corpus passages."""
    if not QUERIES.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        out = read_jsonl_text(gecko("generate", stdin=SEED_PASSAGES.read_text(encoding="utf-8")))
        used = {str(p["id"]) for p in read_jsonl(SEED_PASSAGES)}
        spare = (p for p in read_jsonl(CORPUS) if str(p["_id"]) not in used)
        while len(out) < N_QUERIES:
            batch = [next(spare) for _ in range(N_QUERIES - len(out))]
            out += read_jsonl_text(gecko("generate", stdin="".join(json.dumps(p) + "\n" for p in batch)))
        QUERIES.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out[:N_QUERIES]), encoding="utf-8")
    return read_jsonl(QUERIES)


def read_jsonl_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ensure_candidates(queries: list[dict]) -> dict[str, list]:
    """id -> [[candidate id, retriever score], ...] (made once with `gecko retrieve`)."""
    if not CANDIDATES.exists():
        stdin = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in queries)
        out = read_jsonl_text(gecko("retrieve", "--corpus", str(CORPUS), "--top-k", "20", stdin=stdin))
        CANDIDATES.write_text("".join(json.dumps({"id": r["id"], "candidates": [
            [c["id"], round(c["retriever_score"], 6)] for c in r["candidates"]]}) + "\n" for r in out))
    return {r["id"]: r["candidates"] for r in read_jsonl(CANDIDATES)}


def build_records() -> list[dict]:
    """Records as `gecko rerank` sees them: query + candidates with title and text."""
    queries = ensure_queries()
    candidates = ensure_candidates(queries)
    corpus = {str(p["_id"]): p for p in read_jsonl(CORPUS)}
    return [dict(q, candidates=[{"id": cid, "title": corpus[str(cid)].get("title", ""), "text": corpus[str(cid)]["text"],
                                 "retriever_score": score} for cid, score in candidates[q["id"]]]) for q in queries]


def scoring_inputs(records: list[dict], prompts: ScoringPrompts) -> tuple[list[str], list[str], list[str]]:
    """(QL prefixes, QL continuations, RC prompts) of every pair, in order: what rerank sends."""
    pairs = [(r["query"], c) for r in records for c in r["candidates"]]
    ql = [prompts.ql_pair(q, p) for q, p in pairs]
    return [p for p, _ in ql], [c for _, c in ql], [prompts.rc_prompt(q, p) for q, p in pairs]


# --- token accounting (no model) ---------------------------------------------------------------


class PlanOnly(local.LocalBackend):
    """The backend's planning and batching with the forward passes replaced by counting: how many
    token positions (a) and (b) feed the model for a given window, at no cost."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_rows = 0

    def _forward_from(self, ids, previous, limit):
        keep = local.reusable(previous, ids, limit)
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


def trie_tokens(seqs: list[list[int]]) -> int:
    """Distinct prefixes of all sequences (token-trie nodes): what an ideal shared run computes.

    [[1, 2, 3], [1, 2, 4], [1, 2]] -> 4
    """
    total, last = 0, []
    for s in sorted(seqs):
        total += len(s) - local._lcp(s, last)
        last = s
    return total


def token_plan(tokenizer_backend: local.LocalBackend, prefixes: list[str], continuations: list[str],
               rc_prompts: list[str], pairs_per_record: list[int], window: int) -> dict:
    """Tokens per pair for (a), (b) and the floor when records are scored `window` at a time."""
    shared = PlanOnly(share_prefixes=True)
    naive = PlanOnly(share_prefixes=False)
    for backend in (shared, naive):
        backend._tokenizer = tokenizer_backend.tokenizer
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


def fret_projection(backend: local.LocalBackend, windows: list[int]) -> dict:
    """Tokens per pair FRet would need over the whole SciFact corpus (5,183 passages x 20 candidates)
    for several windows, with each passage's title as its query (a stand-in for a generated
    query: it retrieves the passage's neighbourhood the same way). Neighbours are retrieved once
    with `gecko retrieve` and cached under $GECKO_CACHE_DIR/bench/. No model forward runs."""
    cache = Path(os.environ.get("GECKO_CACHE_DIR") or Path.home() / ".cache" / "gecko") / "bench"
    path = cache / "scifact_title_neighbours.jsonl"
    corpus = {str(p["_id"]): p for p in read_jsonl(CORPUS)}
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        stdin = "".join(json.dumps({"id": f"{i}#0", "seed": {"id": i, "title": p.get("title", ""), "text": p["text"]},
                                    "task": "Given a title, find the paper", "query": p.get("title") or p["text"][:120]})
                        + "\n" for i, p in corpus.items())
        out = read_jsonl_text(gecko("retrieve", "--corpus", str(CORPUS), "--top-k", "20", stdin=stdin))
        path.write_text("".join(json.dumps({"id": r["id"], "c": [c["id"] for c in r["candidates"]]}) + "\n" for r in out))
    rows = read_jsonl(path)
    records = [{"query": corpus[r["id"].split("#")[0]].get("title") or "", "candidates": [
        {"id": c, "title": corpus[c].get("title", ""), "text": corpus[c]["text"]} for c in r["c"]]} for r in rows]
    prompts = ScoringPrompts.default()
    out = {"records": len(records), "pairs": sum(len(r["candidates"]) for r in records), "by_window": []}
    for window in windows:
        shared, naive_tokens, passages = PlanOnly(share_prefixes=True), 0, 0
        shared._tokenizer = backend.tokenizer
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


# --- timing ------------------------------------------------------------------------------------


def model_shapes(model) -> tuple[list[tuple[int, int]], int, int]:
    """(in, out) of every linear layer of one decoder layer; non-embedding and LM-head parameters."""
    layer = model.get_decoder().layers[0]
    shapes = [tuple(m.weight.shape[::-1]) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    head = model.get_output_embeddings().weight.numel()
    return shapes, body, head


def matmul_probe(shapes: list[tuple[int, int]], tokens: int = 512, seconds: float = 1.0) -> dict:
    """fp32 FLOP/s of x @ W on the model's linear shapes with `tokens` rows (a packed forward's size),
    per wall second (best repetition) and per CPU second (all repetitions)."""
    xs = {k: torch.randn(tokens, k) for k, _ in shapes}
    ws = [torch.randn(a, b) for a, b in shapes]
    flops = sum(2 * tokens * a * b for a, b in shapes)
    best, cpu, reps = float("inf"), 0.0, 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or reps < 3:
        w0, c0 = time.perf_counter(), time.process_time()
        for (a, _), w in zip(shapes, ws):
            xs[a] @ w
        best = min(best, time.perf_counter() - w0)
        cpu += time.process_time() - c0
        reps += 1
    return {"wall_gflops": flops / best / 1e9, "cpu_gflops": flops * reps / cpu / 1e9}


def timed(fn, *args):
    """(result, wall seconds, CPU seconds)."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - w0, time.process_time() - c0


def threads_probe(shapes) -> dict:
    """Matmul FLOP/s at 1 and 2 threads, interleaved (3 rounds): which thread count to use."""
    out: dict[str, list[float]] = {"1": [], "2": []}
    before = torch.get_num_threads()
    for _ in range(3):
        for t in (1, 2):
            torch.set_num_threads(t)
            out[str(t)].append(matmul_probe(shapes, seconds=0.5)["wall_gflops"])
    torch.set_num_threads(before)
    return {f"{t}_thread_wall_gflops": round(statistics.median(v), 1) for t, v in out.items()}


def max_diff(a: tuple[list, list], b: tuple[list, list]) -> float:
    """Largest |difference| over QL scores and every label log-prob."""
    ql = max((abs(x - y) for x, y in zip(a[0], b[0])), default=0.0)
    rc = max((abs(x[label] - y[label]) for x, y in zip(a[1], b[1]) for label in LABELS), default=0.0)
    return max(ql, rc)


class Interleaver:
    """Runs slices of (b) and (c), and matmul probes, from inside (a)'s run: (a) reports each
    result through `on_result`; every `every` results the next slices run (their time is taken
    out of (a)'s), so all variants see the same machine load, side by side."""

    def __init__(self, jobs: list, every: int, shapes):
        self.jobs, self.every, self.shapes = jobs, max(1, every), shapes
        self.heard = 0
        self.paused = {"wall": 0.0, "cpu": 0.0}
        self.probes: list[dict] = []

    def __call__(self, kind: str, index: int, value) -> None:
        self.heard += 1
        if self.heard % self.every == 0 and self.jobs:
            self.run(self.jobs.pop(0))

    def run(self, job) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        self.probes.append(matmul_probe(self.shapes, seconds=0.5))
        job()
        self.paused["wall"] += time.perf_counter() - w0
        self.paused["cpu"] += time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200, help="records (of 200) scored by (a)")
    parser.add_argument("--window", type=int, default=1024, help="records per (a) call (gecko rerank --window)")
    parser.add_argument("--naive-pairs", type=int, default=160, help="pairs also scored by (b), evenly spaced")
    parser.add_argument("--single-pairs", type=int, default=40, help="pairs also scored by (c), evenly spaced")
    parser.add_argument("--slices", type=int, default=20, help="(b)/(c) slices interleaved with (a)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plan-windows", default="1,8,32,64,128,200",
                        help="windows for the token accounting of the 200 queries (no model, cheap)")
    parser.add_argument("--fret-windows", default="32,256,1024,5183",
                        help="windows for the FRet projection over the whole corpus (no model; ~20 min "
                             "the first time, then cached; '' to skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    load_start = os.getloadavg()

    records = build_records()
    prompts = ScoringPrompts.default()
    prefixes, continuations, rc_prompts = scoring_inputs(records, prompts)
    per_record = [len(r["candidates"]) for r in records]

    a = local.LocalBackend()
    a.model  # noqa: B018 (loads)
    b = local.LocalBackend(share_prefixes=False)
    c = local.LocalBackend(share_prefixes=False, max_batch=1)
    for backend in (b, c):
        backend._model, backend._tokenizer = a.model, a.tokenizer
    shapes, body_params, head_params = model_shapes(a.model)

    plans = [token_plan(a, prefixes, continuations, rc_prompts, per_record, int(w))
             for w in args.plan_windows.split(",")]
    fret = cached_fret_projection(a, [int(w) for w in args.fret_windows.split(",") if w])
    threads = threads_probe(shapes)
    torch.set_num_threads(args.threads)

    # warm-up (first-call allocations), not timed
    a.score_shared(prefixes[:2], continuations[:2], rc_prompts[:2], LABELS)
    b.score_shared(prefixes[:1], continuations[:1], rc_prompts[:1], LABELS)

    n_records = min(args.records, len(records))
    n_pairs = sum(per_record[:n_records])
    t = {k: {"pairs": 0, "wall": 0.0, "cpu": 0.0, "tokens": 0} for k in "abc"}
    picked: dict[str, list[int]] = {}
    got_sub: dict[str, tuple[list, list]] = {"b": ([], []), "c": ([], [])}

    def slice_job(key: str, backend: local.LocalBackend, idx: list[int]):
        def job() -> None:
            fed = backend.tokens_fed
            got, wall, cpu = timed(backend.score_shared, [prefixes[i] for i in idx], [continuations[i] for i in idx],
                                   [rc_prompts[i] for i in idx], LABELS)
            t[key]["pairs"] += len(idx)
            t[key]["wall"] += wall
            t[key]["cpu"] += cpu
            t[key]["tokens"] += backend.tokens_fed - fed
            got_sub[key][0].extend(got[0]), got_sub[key][1].extend(got[1])
        return job

    jobs = []
    for key, backend, k in (("b", b, args.naive_pairs), ("c", c, args.single_pairs)):
        picked[key] = [i * n_pairs // k for i in range(min(k, n_pairs))]  # evenly spaced over (a)'s pairs
    for s_ in range(args.slices):
        for key, backend in (("b", b), ("c", c)):
            idx = picked[key][s_ * len(picked[key]) // args.slices:(s_ + 1) * len(picked[key]) // args.slices]
            if idx:
                jobs.append(slice_job(key, backend, idx))
    got_a: tuple[list, list] = ([], [])
    rounds = []
    start = 0
    for r in range(0, n_records, args.window):
        n = sum(per_record[r:min(r + args.window, n_records)])
        sl = slice(start, start + n)
        start += n
        share = round(len(jobs) * n / max(1, n_pairs - sl.start)) if jobs else 0  # this window's slices
        mine, jobs = jobs[:share], jobs[share:]
        inter = Interleaver(mine, 2 * n // (len(mine) + 1), shapes)
        fed = a.tokens_fed
        got, wall, cpu = timed(a.score_shared, prefixes[sl], continuations[sl], rc_prompts[sl], LABELS, inter)
        for job in inter.jobs:  # any left (rounding)
            inter.run(job)
        wall, cpu = wall - inter.paused["wall"], cpu - inter.paused["cpu"]
        got_a[0].extend(got[0]), got_a[1].extend(got[1])
        t["a"]["pairs"] += n
        t["a"]["wall"] += wall
        t["a"]["cpu"] += cpu
        t["a"]["tokens"] += a.tokens_fed - fed
        rounds.append({"records": [r, min(r + args.window, n_records)], "pairs": n, "wall_s": round(wall, 1),
                       "cpu_s": round(cpu, 1), "tokens_fed": a.tokens_fed - fed, "probes": inter.probes})
        print(json.dumps({k: v for k, v in rounds[-1].items() if k != "probes"}), file=sys.stderr, flush=True)
    probes = [p for r in rounds for p in r.pop("probes")]
    diffs = {key: max_diff(got_sub[key], ([got_a[0][i] for i in picked[key]], [got_a[1][i] for i in picked[key]]))
             for key in ("b", "c")}

    wall_gflops = statistics.median(p["wall_gflops"] for p in probes)
    cpu_gflops = statistics.median(p["cpu_gflops"] for p in probes)
    # the floor of what (a) actually scored, with its window
    sub_plan = token_plan(a, prefixes[:n_pairs], continuations[:n_pairs], rc_prompts[:n_pairs],
                          per_record[:n_records], args.window)
    floor_flops = 2 * body_params * sub_plan["_totals"]["floor"] + 2 * head_params * sub_plan["_totals"]["head_rows"]
    fed_flops = 2 * body_params * t["a"]["tokens"] + 2 * head_params * sub_plan["_totals"]["head_rows"]

    def rates(k: str) -> dict:
        v = t[k]
        return {"pairs": v["pairs"], "wall_s": round(v["wall"], 1), "cpu_s": round(v["cpu"], 1),
                "pairs_per_s": round(v["pairs"] / v["wall"], 3), "pairs_per_cpu_s": round(v["pairs"] / v["cpu"], 3),
                "tokens_fed": v["tokens"], "tokens_fed_per_pair": round(v["tokens"] / v["pairs"], 1),
                "tokens_fed_per_cpu_s": round(v["tokens"] / v["cpu"], 1)}

    variants = {k: rates(k) for k in "abc"}
    # (b)'s CPU s per token fed, applied to the naive tokens of exactly (a)'s pairs
    b_cpu_per_token = t["b"]["cpu"] / t["b"]["tokens"]
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "threads_probe": threads},
        "model": a.model_id,
        "model_parameters": {"non_embedding": body_params, "lm_head": head_params},
        "data": {"queries": len(records), "pairs": len(prefixes),
                 "queries_file": str(QUERIES.relative_to(ROOT)), "candidates_file": str(CANDIDATES.relative_to(ROOT)),
                 "made_with": "gecko generate < examples/passages.jsonl (180 queries; topped up to 200 from the next "
                              "corpus passages); gecko retrieve --corpus examples/data/scifact/corpus.jsonl --top-k 20 "
                              "(seed added when missed: 20 or 21 candidates)"},
        "how_measured": (
            f"(a) LocalBackend.score_shared on all {n_pairs} pairs of the first {n_records} records, {args.window} "
            f"records per call (gecko rerank --window {args.window}); (b) LocalBackend(share_prefixes=False) on "
            f"{len(picked['b'])} and (c) the same with max_batch=1 on {len(picked['c'])} evenly spaced pairs of those "
            f"(pair i * {n_pairs} // k), in {args.slices} slices run from inside (a)'s call (interleaved; their "
            "time is taken out of (a)'s); score differences are against (a) on the same pairs. Both scorers per "
            f"pair (QL + the 8 RC label log-probs). torch threads {args.threads}; wall = perf_counter, CPU = "
            "process_time of this process: the machine was shared with other jobs, so the CPU-time rates are "
            "the comparable ones. Matmul FLOP/s: x @ W on the model's linear shapes with 512 rows, probed "
            "before every slice (median)."),
        "variants": {"a_shared": variants["a"], "b_naive_batched": variants["b"], "c_one_at_a_time": variants["c"]},
        "speedup_a_over_b": {
            "pairs_per_s": round(variants["a"]["pairs_per_s"] / variants["b"]["pairs_per_s"], 2),
            "pairs_per_cpu_s": round(variants["a"]["pairs_per_cpu_s"] / variants["b"]["pairs_per_cpu_s"], 2),
            "same_pairs_cpu_estimate": round(b_cpu_per_token * sub_plan["_totals"]["naive"] / t["a"]["cpu"], 2),
            "tokens_naive_over_shared": round(sub_plan["_totals"]["naive"] / t["a"]["tokens"], 2),
        },
        "speedup_a_over_c": {
            "pairs_per_s": round(variants["a"]["pairs_per_s"] / variants["c"]["pairs_per_s"], 2),
            "pairs_per_cpu_s": round(variants["a"]["pairs_per_cpu_s"] / variants["c"]["pairs_per_cpu_s"], 2)},
        "max_abs_diff": {"b_vs_a": diffs["b"], "c_vs_a": diffs["c"]},
        "compute_floor": {
            "definition": "2 x non-embedding params x token-trie positions of (a)'s sequences per window (distinct "
                          "prefixes: each passage once, then every tail) + 2 x LM-head params x positions read (QL "
                          "query tokens + 1 RC read per pair), over the measured matmul FLOP/s; attention score "
                          "FLOPs (about 10% more at these lengths) not counted",
            "floor_tokens": sub_plan["_totals"]["floor"], "tokens_fed_by_a": t["a"]["tokens"],
            "head_rows": sub_plan["_totals"]["head_rows"], "floor_gflop": round(floor_flops / 1e9, 1),
            "matmul_gflops_per_cpu_s": round(cpu_gflops, 1), "matmul_gflops_per_wall_s": round(wall_gflops, 1),
            "floor_cpu_s": round(floor_flops / cpu_gflops / 1e9, 1),
            "achieved_fraction_cpu": round(floor_flops / cpu_gflops / 1e9 / t["a"]["cpu"], 3),
            "achieved_fraction_wall": round(floor_flops / wall_gflops / 1e9 / t["a"]["wall"], 3),
            "fed_flops_over_cpu_time_as_fraction_of_matmul": round(fed_flops / cpu_gflops / 1e9 / t["a"]["cpu"], 3),
        },
        "token_plan_by_window": [{k: v for k, v in p.items() if k != "_totals"} for p in plans],
        "fret_projection": project(fret, variants["a"]["tokens_fed_per_cpu_s"]) if fret else None,
        "rounds": rounds,
        "seconds": round(time.time() - started),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


def cached_fret_projection(backend: local.LocalBackend, windows: list[int]) -> dict | None:
    """`fret_projection`, computed once per set of windows and kept beside the neighbours."""
    if not windows:
        return None
    path = Path(os.environ.get("GECKO_CACHE_DIR") or Path.home() / ".cache" / "gecko") / "bench" / \
        f"fret_projection_{'_'.join(map(str, windows))}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = fret_projection(backend, windows)
    path.write_text(json.dumps(out))
    return out


def project(fret: dict, tokens_per_cpu_s: float) -> dict:
    """Hours of one core for FRet over SciFact at (a)'s measured tokens per CPU second."""
    rows = [dict(row, core_hours=round(fret["pairs"] * row["tokens_per_pair"] / tokens_per_cpu_s / 3600, 1),
                 naive_core_hours=round(fret["pairs"] * row["naive_tokens_per_pair"] / tokens_per_cpu_s / 3600, 1))
            for row in fret["by_window"]]
    return {"what": "FRet step 2 over the SciFact corpus: 5,183 records (one per passage, the passage's title as "
                    "the query) x 20 retrieved candidates; tokens per pair from the backend's own plan; hours at "
                    "(a)'s measured tokens fed per CPU second, on one core",
            "records": fret["records"], "pairs": fret["pairs"], "tokens_fed_per_cpu_s": tokens_per_cpu_s,
            "by_window": rows}


if __name__ == "__main__":
    main()
