"""Benchmark `gecko rerank`'s scoring on the embedded LLM (SmolLM2-135M, transformers fp32, CPU).

(query, candidate) pairs scored per second with both scorers (QL and RC), on 200 queries generated
from SciFact passages x their 20 retrieved candidates (benchmarks/data/, see rerank_tokens.py):

  (a) passage-prefix sharing: `LocalBackend.score_shared` as `gecko rerank` calls it (one call per
      window of records): every QL sequence and RC prompt is grouped by shared token prefix, each
      passage's KV cache runs once and serves QL and RC of every query that has it as a candidate;
  (b) naive full prompts, batched: `LocalBackend(share_prefixes=False)`;
  (c) one at a time: naive full prompts, one sequence per forward.

Timing: 1 torch thread by default (on a machine shared with other jobs 2 threads are slower;
measured by `threads_probe`). Wall time and CPU time (`time.process_time`, what this process got)
are both reported; while other jobs load the machine the CPU-time rates and their ratios are the
stable numbers. Variants run interleaved: each round scores one window of records with (a), then a
slice of the same pairs with (b) and (c), then probes matmul FLOP/s.

Compute floor: 2 x (non-embedding parameters) x (token positions an ideal shared computation must
run: the distinct prefixes of all sequences = nodes of their token trie) + 2 x (LM-head parameters) x
(positions whose next-token distribution is read), divided by the measured fp32 matmul FLOP/s on the
model's own shapes at the same thread count.

    python -m benchmarks run rerank_speed [--records 200 --window 1024 --threads 1]   # --records 64: quicker
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from benchmarks.common import ROOT, Stopwatch, stopwatch
from benchmarks.registry import Benchmark, Context
from benchmarks.rerank_tokens import (CANDIDATES, LABELS, QUERIES, build_records, cached_fret_projection, project,
                                      scoring_inputs, token_plan)


@dataclass
class Params:
    records: int = 200  # records (of the data's) scored by (a)
    window: int = 1024  # records per (a) call (gecko rerank --window)
    naive_pairs: int = 160  # pairs also scored by (b), evenly spaced
    single_pairs: int = 40  # pairs also scored by (c), evenly spaced
    slices: int = 20  # (b)/(c) slices interleaved with (a)
    threads: int = 1  # torch threads
    plan_windows: str = "1,8,32,64,128,200"  # token accounting of the data's records (no model, cheap)
    fret_windows: str = "32,256,1024,5183"  # FRet projection over the whole corpus (no model; slow once, cached; "" skips)
    data_records: int = 200  # records read from benchmarks/data (the token plans cover these)
    candidates: int = 0  # keep the first N candidates of each record (0: all)
    passage_words: int = 0  # cut each candidate to its first N words (0: whole)
    probe_seconds: float = 0.5  # each matmul probe


def model_shapes(model: Any) -> tuple[list[tuple[int, int]], int, int]:
    """(in, out) of every linear layer of one decoder layer; non-embedding and LM-head parameters."""
    import torch

    layer = model.get_decoder().layers[0]
    shapes = [tuple(m.weight.shape[::-1]) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    head = model.get_output_embeddings().weight.numel()
    return shapes, body, head


def matmul_probe(shapes: list[tuple[int, int]], tokens: int = 512, seconds: float = 1.0) -> dict[str, float]:
    """fp32 FLOP/s of x @ W on the model's linear shapes with `tokens` rows (a packed forward's size),
    per wall second (best repetition) and per CPU second (all repetitions)."""
    import torch

    xs = {k: torch.randn(tokens, k) for k, _ in shapes}
    ws = [torch.randn(a, b) for a, b in shapes]
    flops = sum(2 * tokens * a * b for a, b in shapes)
    best, cpu, reps = float("inf"), 0.0, 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or reps < 3:
        with stopwatch() as watch:
            for (a, _), w in zip(shapes, ws):
                xs[a] @ w
        best = min(best, watch.wall)
        cpu += watch.cpu
        reps += 1
    return {"wall_gflops": flops / best / 1e9, "cpu_gflops": flops * reps / cpu / 1e9}


def threads_probe(shapes: list[tuple[int, int]], seconds: float) -> dict[str, float]:
    """Matmul FLOP/s at 1 and 2 threads, interleaved (3 rounds): which thread count to use."""
    import torch

    out: dict[str, list[float]] = {"1": [], "2": []}
    before = torch.get_num_threads()
    for _ in range(3):
        for t in (1, 2):
            torch.set_num_threads(t)
            out[str(t)].append(matmul_probe(shapes, seconds=seconds)["wall_gflops"])
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

    def __init__(self, jobs: list[Callable[[], None]], every: int, shapes: list, probe_seconds: float):
        self.jobs, self.every, self.shapes, self.probe_seconds = jobs, max(1, every), shapes, probe_seconds
        self.heard = 0
        self.paused = Stopwatch()
        self.probes: list[dict] = []

    def __call__(self, kind: str, index: int, value: Any) -> None:
        self.heard += 1
        if self.heard % self.every == 0 and self.jobs:
            self.run(self.jobs.pop(0))

    def run(self, job: Callable[[], None]) -> None:
        with stopwatch() as watch:
            self.probes.append(matmul_probe(self.shapes, seconds=self.probe_seconds))
            job()
        self.paused.wall += watch.wall
        self.paused.cpu += watch.cpu


class Tally:
    """Pairs, wall and CPU seconds, tokens fed: one variant's running totals."""

    def __init__(self) -> None:
        self.pairs, self.wall, self.cpu, self.tokens = 0, 0.0, 0.0, 0

    def add(self, pairs: int, watch: Stopwatch, tokens: int) -> None:
        self.pairs, self.wall, self.cpu, self.tokens = (self.pairs + pairs, self.wall + watch.wall,
                                                        self.cpu + watch.cpu, self.tokens + tokens)

    def rates(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1),
                "pairs_per_s": round(self.pairs / self.wall, 3), "pairs_per_cpu_s": round(self.pairs / self.cpu, 3),
                "tokens_fed": self.tokens, "tokens_fed_per_pair": round(self.tokens / self.pairs, 1),
                "tokens_fed_per_cpu_s": round(self.tokens / self.cpu, 1)}


def backends(threads: int) -> tuple[Any, Any, Any]:
    """(a) shared prefixes, (b) naive batched, (c) naive one at a time, sharing one loaded model."""
    import torch

    from gecko_cli.llm.local import LocalBackend

    torch.set_num_threads(threads)
    a = LocalBackend()
    a.model  # noqa: B018 (loads)
    b = LocalBackend(share_prefixes=False)
    c = LocalBackend(share_prefixes=False, max_batch=1)
    for backend in (b, c):
        backend._model, backend._tokenizer = a.model, a.tokenizer
    return a, b, c


@dataclass
class Inputs:
    """Every (query, candidate) pair of the records, as rerank sends them."""

    prefixes: list[str]
    continuations: list[str]
    rc_prompts: list[str]
    per_record: list[int]  # pairs of each record, in order

    def score(self, backend: Any, idx: list[int] | slice, on_result: Any = None) -> tuple[list, list]:
        pick = (lambda xs: xs[idx]) if isinstance(idx, slice) else (lambda xs: [xs[i] for i in idx])
        return backend.score_shared(pick(self.prefixes), pick(self.continuations), pick(self.rc_prompts), LABELS,
                                    on_result)


def interleaved(params: Params, inputs: Inputs, a: Any, b: Any, c: Any, shapes: list) -> dict[str, Any]:
    """(a) over the first `records` records, `window` at a time, with slices of (b) and (c) on evenly
    spaced pairs of those run from inside (a)'s calls; tallies, rounds, probes, score differences."""
    n_records = min(params.records, len(inputs.per_record))
    n_pairs = sum(inputs.per_record[:n_records])
    tally = {k: Tally() for k in "abc"}
    got_sub: dict[str, tuple[list, list]] = {"b": ([], []), "c": ([], [])}
    picked = {key: [i * n_pairs // k for i in range(min(k, n_pairs))]  # evenly spaced over (a)'s pairs
              for key, k in (("b", params.naive_pairs), ("c", params.single_pairs))}

    def slice_job(key: str, backend: Any, idx: list[int]) -> Callable[[], None]:
        def job() -> None:
            fed = backend.tokens_fed
            with stopwatch() as watch:
                got = inputs.score(backend, idx)
            tally[key].add(len(idx), watch, backend.tokens_fed - fed)
            got_sub[key][0].extend(got[0]), got_sub[key][1].extend(got[1])
        return job

    jobs = []
    for s_ in range(params.slices):
        for key, backend in (("b", b), ("c", c)):
            idx = picked[key][s_ * len(picked[key]) // params.slices:(s_ + 1) * len(picked[key]) // params.slices]
            if idx:
                jobs.append(slice_job(key, backend, idx))
    got_a: tuple[list, list] = ([], [])
    rounds = []
    start = 0
    for r in range(0, n_records, params.window):
        n = sum(inputs.per_record[r:min(r + params.window, n_records)])
        sl = slice(start, start + n)
        start += n
        share = round(len(jobs) * n / max(1, n_pairs - sl.start)) if jobs else 0  # this window's slices
        mine, jobs = jobs[:share], jobs[share:]
        inter = Interleaver(mine, 2 * n // (len(mine) + 1), shapes, params.probe_seconds)
        fed = a.tokens_fed
        with stopwatch() as watch:
            got = inputs.score(a, sl, inter)
        for job in inter.jobs:  # any left (rounding)
            inter.run(job)
        watch.wall, watch.cpu = watch.wall - inter.paused.wall, watch.cpu - inter.paused.cpu
        got_a[0].extend(got[0]), got_a[1].extend(got[1])
        tally["a"].add(n, watch, a.tokens_fed - fed)
        rounds.append({"records": [r, min(r + params.window, n_records)], "pairs": n, "wall_s": round(watch.wall, 1),
                       "cpu_s": round(watch.cpu, 1), "tokens_fed": a.tokens_fed - fed, "probes": inter.probes})
        print(json.dumps({k: v for k, v in rounds[-1].items() if k != "probes"}), file=sys.stderr, flush=True)
    probes = [p for r in rounds for p in r.pop("probes")]
    diffs = {key: max_diff(got_sub[key], ([got_a[0][i] for i in picked[key]], [got_a[1][i] for i in picked[key]]))
             for key in ("b", "c")}
    return {"n_records": n_records, "n_pairs": n_pairs, "tally": tally, "picked": picked, "rounds": rounds,
            "probes": probes, "diffs": diffs}


def compute_floor(sub_plan: dict[str, Any], tokens_fed: int, a: Tally, body: int, head: int,
                  probes: list[dict[str, float]]) -> dict[str, Any]:
    """How close (a) came to the FLOPs an ideal shared computation needs, at the probed matmul speed."""
    wall_gflops = statistics.median(p["wall_gflops"] for p in probes)
    cpu_gflops = statistics.median(p["cpu_gflops"] for p in probes)
    floor_flops = 2 * body * sub_plan["_totals"]["floor"] + 2 * head * sub_plan["_totals"]["head_rows"]
    fed_flops = 2 * body * tokens_fed + 2 * head * sub_plan["_totals"]["head_rows"]
    return {
        "definition": "2 x non-embedding params x token-trie positions of (a)'s sequences per window (distinct "
                      "prefixes: each passage once, then every tail) + 2 x LM-head params x positions read (QL "
                      "query tokens + 1 RC read per pair), over the measured matmul FLOP/s; attention score "
                      "FLOPs (about 10% more at these lengths) not counted",
        "floor_tokens": sub_plan["_totals"]["floor"], "tokens_fed_by_a": tokens_fed,
        "head_rows": sub_plan["_totals"]["head_rows"], "floor_gflop": round(floor_flops / 1e9, 1),
        "matmul_gflops_per_cpu_s": round(cpu_gflops, 1), "matmul_gflops_per_wall_s": round(wall_gflops, 1),
        "floor_cpu_s": round(floor_flops / cpu_gflops / 1e9, 1),
        "achieved_fraction_cpu": round(floor_flops / cpu_gflops / 1e9 / a.cpu, 3),
        "achieved_fraction_wall": round(floor_flops / wall_gflops / 1e9 / a.wall, 3),
        "fed_flops_over_cpu_time_as_fraction_of_matmul": round(fed_flops / cpu_gflops / 1e9 / a.cpu, 3),
    }


def run(params: Params, context: Context) -> dict[str, Any]:
    import torch

    from gecko_cli.llm.scoring import ScoringPrompts

    started = time.time()
    records = build_records(params.data_records, params.candidates, params.passage_words)
    inputs = Inputs(*scoring_inputs(records, ScoringPrompts.default()), [len(r["candidates"]) for r in records])
    a, b, c = backends(params.threads)
    shapes, body_params, head_params = model_shapes(a.model)
    plans = [token_plan(a.tokenizer, inputs.prefixes, inputs.continuations, inputs.rc_prompts, inputs.per_record, int(w))
             for w in params.plan_windows.split(",")]
    fret = cached_fret_projection(a.tokenizer, [int(w) for w in params.fret_windows.split(",") if w])
    threads = threads_probe(shapes, params.probe_seconds)
    torch.set_num_threads(params.threads)
    inputs.score(a, slice(0, 2)), inputs.score(b, slice(0, 1))  # warm-up (first-call allocations), not timed

    m = interleaved(params, inputs, a, b, c, shapes)
    tally, n_pairs, n_records, picked = m["tally"], m["n_pairs"], m["n_records"], m["picked"]
    # the floor of what (a) actually scored, with its window
    sub_plan = token_plan(a.tokenizer, inputs.prefixes[:n_pairs], inputs.continuations[:n_pairs],
                          inputs.rc_prompts[:n_pairs], inputs.per_record[:n_records], params.window)
    variants = {k: tally[k].rates() for k in "abc"}
    # (b)'s CPU s per token fed, applied to the naive tokens of exactly (a)'s pairs
    b_cpu_per_token = tally["b"].cpu / tally["b"].tokens
    return {
        "threads_probe": threads,
        "model": a.model_id,
        "model_parameters": {"non_embedding": body_params, "lm_head": head_params},
        "data": {"queries": len(records), "pairs": len(inputs.prefixes),
                 "queries_file": str(QUERIES.relative_to(ROOT)), "candidates_file": str(CANDIDATES.relative_to(ROOT)),
                 "made_with": "gecko generate < examples/passages.jsonl (180 queries; topped up to 200 from the next "
                              "corpus passages); gecko retrieve --corpus examples/data/scifact/corpus.jsonl --top-k 20 "
                              "(seed added when missed: 20 or 21 candidates)"},
        "how_measured": (
            f"(a) LocalBackend.score_shared on all {n_pairs} pairs of the first {n_records} records, {params.window} "
            f"records per call (gecko rerank --window {params.window}); (b) LocalBackend(share_prefixes=False) on "
            f"{len(picked['b'])} and (c) the same with max_batch=1 on {len(picked['c'])} evenly spaced pairs of those "
            f"(pair i * {n_pairs} // k), in {params.slices} slices run from inside (a)'s call (interleaved; their "
            "time is taken out of (a)'s); score differences are against (a) on the same pairs. Both scorers per "
            f"pair (QL + the {len(LABELS)} RC label log-probs). torch threads {params.threads}; wall = perf_counter, "
            "CPU = process_time of this process: the machine was shared with other jobs, so the CPU-time rates are "
            "the comparable ones. Matmul FLOP/s: x @ W on the model's linear shapes with 512 rows, probed "
            "before every slice (median)."),
        "variants": {"a_shared": variants["a"], "b_naive_batched": variants["b"], "c_one_at_a_time": variants["c"]},
        "speedup_a_over_b": {
            "pairs_per_s": round(variants["a"]["pairs_per_s"] / variants["b"]["pairs_per_s"], 2),
            "pairs_per_cpu_s": round(variants["a"]["pairs_per_cpu_s"] / variants["b"]["pairs_per_cpu_s"], 2),
            "same_pairs_cpu_estimate": round(b_cpu_per_token * sub_plan["_totals"]["naive"] / tally["a"].cpu, 2),
            "tokens_naive_over_shared": round(sub_plan["_totals"]["naive"] / tally["a"].tokens, 2),
        },
        "speedup_a_over_c": {
            "pairs_per_s": round(variants["a"]["pairs_per_s"] / variants["c"]["pairs_per_s"], 2),
            "pairs_per_cpu_s": round(variants["a"]["pairs_per_cpu_s"] / variants["c"]["pairs_per_cpu_s"], 2)},
        "max_abs_diff": {"b_vs_a": m["diffs"]["b"], "c_vs_a": m["diffs"]["c"]},
        "compute_floor": compute_floor(sub_plan, tally["a"].tokens, tally["a"], body_params, head_params, m["probes"]),
        "token_plan_by_window": [{k: v for k, v in p.items() if k != "_totals"} for p in plans],
        "fret_projection": project(fret, variants["a"]["tokens_fed_per_cpu_s"]) if fret else None,
        "rounds": m["rounds"],
        "seconds": round(time.time() - started),
    }


BENCHMARK = Benchmark(
    name="rerank_speed",
    summary="`gecko rerank` scoring pairs/s on the embedded LLM: shared prefixes vs naive prompts, vs the compute floor",
    params=Params, run=run,
    # 2 records x 3 candidates of 40 words (the LLM's forward passes are what costs); no FRet projection
    quick={"records": 2, "window": 2, "naive_pairs": 2, "single_pairs": 1, "slices": 2, "plan_windows": "1,2",
           "fret_windows": "", "data_records": 2, "candidates": 3, "passage_words": 40, "probe_seconds": 0.1},
)
