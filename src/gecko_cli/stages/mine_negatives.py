"""`gecko mine-negatives`: ranked candidates -> training records (positive + hard negatives).

The positive is the fused top candidate (Gecko relabels ~15% of seeds this way); the
default negative is the candidate at fused rank 20 (Table 3: p1 + p20 was best). The positive and
negatives keep their scores (retriever_score, ql, rc, rrf, rank), the teacher of `finetune --distill`.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Optional

import typer

from gecko_cli import options as opt
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.paths import WRITE_MAKING_DIRS, writing
from gecko_cli.contract.records import (ID, Field, RecordError, add_provenance, as_passage, check_fields,
                                        normalize_text, seed_id)
from gecko_cli.contract.stream import Rejected, run_stage
from gecko_cli.eval.plots import plot_seed_rank
from gecko_cli.progress import message

OWNED = ("candidates", "positive", "negatives", "positive_is_seed")
# The scores a candidate carries into the training record, so `gecko finetune --distill` can learn
# the teacher's (the LLM's) scores and not only its choice of positive.
SCORE_FIELDS = ("retriever_score", "ql", "rc", "rrf", "rank")


def with_scores(candidate: dict[str, Any]) -> dict[str, Any]:
    """The passage of a candidate with its score fields (the numbers `rerank` and `retrieve` wrote).

    >>> with_scores({"id": 4, "text": "t", "ql": -2.0, "rank_ql": 3, "note": "x"})
    {'id': '4', 'title': '', 'text': 't', 'ql': -2.0}
    """
    scores = {k: candidate[k] for k in SCORE_FIELDS
              if isinstance(candidate.get(k), (int, float)) and not isinstance(candidate.get(k), bool)}
    return {**as_passage(candidate), **scores}


def validate_ranked(record: dict[str, Any]) -> dict[str, Any]:
    """A record with a query and a non-empty list of candidate passages."""
    check_fields(record, (ID, Field("query", (str,)), Field("candidates", (list,))))
    for i, candidate in enumerate(record["candidates"]):
        if not isinstance(candidate, dict):
            raise RecordError(f'field "candidates[{i}]" must be an object')
        check_fields(candidate, (ID, Field("text", (str,)), Field("rank", (int,), required=False)),
                     where=f"candidates[{i}].")
    if record.get("seed") is not None:
        if not isinstance(record["seed"], dict):
            raise RecordError('field "seed" must be an object')
        check_fields(record["seed"], (ID,), where="seed.")
    return record


def parse_strategy(text: str) -> tuple[str, float]:
    """`rank:20` -> ("rank", 20); `percpos:0.95` -> ("percpos", 0.95); `random`, `none`.

    >>> parse_strategy("rank:20"), parse_strategy("none")
    (('rank', 20.0), ('none', 0.0))
    """
    name, _, value = text.partition(":")
    if name in ("random", "none") and not value:
        return name, 0.0
    if name in ("rank", "percpos") and value:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if (name == "rank" and number >= 1 and number.is_integer()) or (name == "percpos" and 0 < number <= 1):
            return name, number
    raise ValueError(f"--strategy must be one of rank:N, random, percpos:F, none; got {text!r}")


def ranked(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates in fused-rank order (`rank` when present, else as given)."""
    if all("rank" in c for c in candidates):
        return sorted(candidates, key=lambda c: c["rank"])
    return list(candidates)


def pick_negatives(pool: list[dict[str, Any]], positive: dict[str, Any], strategy: tuple[str, float],
                   count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Choose `count` negatives from the ranked pool (positive and its duplicates excluded).

    >>> pool = [{"id": str(i), "text": f"t{i}", "retriever_score": 1 - i / 10} for i in range(1, 6)]
    >>> [c["id"] for c in pick_negatives(pool, {"id": "1", "text": "t1"}, ("rank", 20), 1, random.Random(0))]
    ['5']

    A positive ranked last (a seed the search missed) still gets a random negative:

    >>> len(pick_negatives(pool, {"id": "5", "text": "t5"}, ("random", 0.0), 1, random.Random(0)))
    1
    """
    name, value = strategy
    if name == "none" or count == 0:
        return []
    text, positive_id = normalize_text(positive["text"]), str(positive["id"])
    ids = [str(c["id"]) for c in pool]
    start_below = ids.index(positive_id) + 1 if positive_id in ids else 0
    # (fused position, candidate) for every candidate that may be a negative
    allowed = [(i, c) for i, c in enumerate(pool) if ids[i] != positive_id and normalize_text(c["text"]) != text]
    if name == "rank":
        start = int(value) - 1  # the candidate at fused rank N (1-based), else the lowest ranked
        order = [c for i, c in allowed if i >= start] + [c for i, c in reversed(allowed) if i < start]
        return order[:count]
    candidates = [c for i, c in allowed if i >= start_below]
    if name == "random":
        # Below the positive when anything is; a seed positive the search missed sits last, and
        # any other candidate is then as random a negative as the paper's.
        candidates = candidates or [c for _, c in allowed]
        return rng.sample(candidates, min(count, len(candidates)))
    threshold = value * float(positive.get("retriever_score", 0.0))  # percpos (NV-Retriever)
    return [c for c in candidates if float(c.get("retriever_score", 0.0)) <= threshold][:count]


# Rank agreement reported by the audit (Kendall tau over each record's candidates, on the raw
# scores, so a scorer counts whether or not it was fused): name -> the two score fields.
TAU_PAIRS = {"ql_rc": ("ql", "rc"), "ql_retriever": ("ql", "retriever_score")}


def seed_missed_by_search(record: dict[str, Any]) -> bool | None:
    """Whether `gecko retrieve` missed the seed and appended it after its top-k (None: not retrieved here).

    A query whose own passage is not among its nearest neighbours is the clearest sign of a weak
    query; the fused-rank histogram hides it, since RRF can lift the appended seed anywhere.

    >>> prov = [{"stage": "retrieve", "top_k": 2}]
    >>> seed_missed_by_search({"candidates": [{}, {}, {}], "_provenance": prov})
    True
    >>> seed_missed_by_search({"candidates": [{}, {}], "_provenance": prov}), seed_missed_by_search({"candidates": []})
    (False, None)
    """
    top_k = next((p.get("top_k") for p in reversed(record.get("_provenance") or [])
                  if isinstance(p, dict) and p.get("stage") == "retrieve"), None)
    if not isinstance(top_k, int):
        return None
    return len(record.get("candidates") or []) > top_k


@dataclass
class Audit:
    """What relabelling and mining did, for `--audit` and the summary."""

    records: int = 0
    relabelled: int = 0
    seed_rank: Counter = field(default_factory=Counter)
    taus: dict[str, list[float]] = field(default_factory=lambda: {pair: [] for pair in TAU_PAIRS})
    gaps: dict[str, list[float]] = field(default_factory=lambda: {"rrf": [], "retriever_score": [], "ql": [], "rc": []})
    no_negative: int = 0
    seed_missed: int = 0
    searched: int = 0

    def add(self, record: dict[str, Any], pool: list[dict[str, Any]], positive: dict[str, Any],
            negatives: list[dict[str, Any]]) -> None:
        self.records += 1
        seed = seed_id(record) or ""
        self.relabelled += int(bool(seed) and positive["id"] != seed)
        ids = [str(c["id"]) for c in pool]
        self.seed_rank[ids.index(seed) + 1 if seed in ids else "absent"] += 1
        missed = seed_missed_by_search(record)
        if missed is not None:
            self.searched += 1
            self.seed_missed += missed
        for name, (a, b) in TAU_PAIRS.items():
            if len(pool) > 2 and all(isinstance(c.get(a), (int, float)) and isinstance(c.get(b), (int, float)) for c in pool):
                from scipy.stats import kendalltau

                self.taus[name].append(float(kendalltau([c[a] for c in pool], [c[b] for c in pool]).statistic))
        for key, values in self.gaps.items():
            if key in positive and negatives and key in negatives[0]:
                values.append(float(positive[key]) - float(negatives[0][key]))

    def report(self) -> dict[str, Any]:
        share = self.relabelled / self.records if self.records else 0.0
        mean = lambda xs: round(statistics.fmean(xs), 6) if xs else None
        return {"records": self.records, "positive_not_seed": self.relabelled, "positive_not_seed_share": round(share, 6),
                "seed_fused_rank": {str(k): v for k, v in sorted(self.seed_rank.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))},
                "seed_missed_by_search": self.seed_missed if self.searched else None,
                **{f"{name}_kendall_tau_mean": mean(v) for name, v in self.taus.items()}, "no_negative": self.no_negative,
                "positive_minus_negative_mean": {k: mean(v) for k, v in self.gaps.items()}}


def mine(records: Iterable[dict[str, Any]], *, positive_from: str = "fused", strategy: str = "rank:20",
         num_negatives: int = 1, seed: int = 0, audit: Audit | None = None) -> Iterator[dict[str, Any] | Rejected]:
    """Pure core: one training record per ranked record, or a Rejected with the reason.

    `positive_from` is "fused" (the top candidate: LLM relabelling) or "seed"; `audit` collects
    what relabelling and mining did.
    """
    plan = parse_strategy(strategy)
    audit = audit if audit is not None else Audit()
    for record in records:
        pool = ranked(record["candidates"])
        if positive_from == "seed":
            if not isinstance(record.get("seed"), dict):
                yield Rejected(record, '--positive seed: the record has no "seed"')
                continue
            positive = next((c for c in pool if str(c["id"]) == seed_id(record)), None)
            if positive is None:
                if not isinstance(record["seed"].get("text"), str):
                    yield Rejected(record, '--positive seed: the seed is not a candidate and has no "text"')
                    continue
                positive = as_passage(record["seed"])
        else:
            positive = pool[0]
        rng = random.Random(f"{seed}:{record['id']}")  # per record, so shards and reruns agree
        negatives = pick_negatives(pool, {**positive, "id": str(positive["id"])}, plan, num_negatives, rng)
        audit.add(record, pool, {**positive, "id": str(positive["id"])}, negatives)
        if not negatives and plan[0] != "none":
            audit.no_negative += 1
            yield Rejected(record, f"no valid negative for --strategy {strategy} among {len(pool)} candidates")
            continue
        rest = {k: v for k, v in record.items() if k not in OWNED}
        seed_key = seed_id(record)
        out = {**rest, "positive": with_scores(positive), "negatives": [with_scores(n) for n in negatives],
               "positive_is_seed": seed_key is not None and str(positive["id"]) == seed_key}
        yield add_provenance(out, "mine-negatives", positive=positive_from, strategy=strategy,
                             num_negatives=num_negatives, seed=seed)


# --- command ------------------------------------------------------------------------


def command(
    positive: Annotated[str, typer.Option("--positive", help="fused: the top fused candidate (LLM relabelling); seed: the passage the query was written from.")] = "fused",
    strategy: Annotated[str, typer.Option("--strategy", help="rank:N (candidate at fused rank N, else the lowest), random, percpos:F (NV-Retriever), none.")] = "rank:20",
    num_negatives: Annotated[int, typer.Option("--num-negatives", min=0, help="Hard negatives per record.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --strategy random.")] = 0,
    audit: Annotated[Optional[Path], typer.Option("--audit", readable=False, help="Write the audit (relabel share, seed rank histogram, QL-RC Kendall tau, score gaps) as JSON."), WRITE_MAKING_DIRS] = None,
    audit_plot: Annotated[Optional[Path], typer.Option("--audit-plot", readable=False, help="Draw the histogram of the seed's fused rank to FILE.png."), WRITE_MAKING_DIRS] = None,
    input: opt.InputOpt = None,
    output: opt.OutputOpt = None,
    rejects: opt.RejectsOpt = None,
    shard: opt.ShardOpt = None,
) -> None:
    """Turn ranked candidates into training records: a positive and hard negatives.

    Examples:

      gecko mine-negatives < fret.jsonl > train.jsonl

      gecko mine-negatives --positive seed --strategy random --audit audit.json -i tests/data/fret_scored.jsonl

      gecko mine-negatives --audit-plot out/seed-rank.png < fret.jsonl > train.jsonl
    """
    if positive not in ("fused", "seed"):
        raise UsageError("--positive must be fused or seed")
    try:
        parse_strategy(strategy)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = Audit()
    with opt.stage_io(validate_ranked, input=input, output=output, rejects=rejects, shard=shard) as (source, out):
        counts = run_stage(lambda recs: mine(recs, positive_from=positive, strategy=strategy,
                                             num_negatives=num_negatives, seed=seed, audit=report), source, out)
    summary = report.report()
    if audit is not None:
        audit.parent.mkdir(parents=True, exist_ok=True)
        with writing(audit):
            audit.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if audit_plot is not None:
        plot_seed_rank(summary["seed_fused_rank"], audit_plot)
    counts.extra["relabelled"] = report.relabelled
    opt.summary("mine-negatives", counts)
    message(f"gecko mine-negatives: positive differs from the seed in {100 * summary['positive_not_seed_share']:.1f}% "
            f"of records (the paper saw ~15%); Kendall tau QL-RC {summary['ql_rc_kendall_tau_mean']}, "
            f"QL-retriever {summary['ql_retriever_kendall_tau_mean']}"
            + (f"; the search missed the seed in {summary['seed_missed_by_search']:,} of {report.searched:,} records"
               if summary["seed_missed_by_search"] is not None else ""))
