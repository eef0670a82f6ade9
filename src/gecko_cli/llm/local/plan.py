"""Planning shared-prefix scoring (pure: token ids in, a plan out; no model, no torch).

In FRet one passage is a candidate for many queries, and both scoring prompts start
`[instruction + few-shot][passage]`. The embedded backend therefore groups the sequences it
scores by their common token prefix: each group's prefix runs once into a KV cache (starting from
the previous group's cache where they agree, e.g. the instruction) and the tails (query, question)
are scored from it. `plan_groups` chooses the groups; a `Job` is one sequence to score, and
`merge_ql_into_rc` lets a query's QL ride in its RC prompt's pass (QL's sequence begins the RC prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class _Cluster:
    """Sorted sequences lo..hi-1 and the cheapest way found to run them."""

    lo: int
    hi: int
    total: int  # tokens of all members
    cost: int  # tokens the best plan for this cluster feeds the model
    groups: list[tuple[int, list[int]]] = field(default_factory=list)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix: ([1, 2, 3], [1, 2, 4]) -> 2."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reusable(previous: tuple[list[int], Any] | None, ids: list[int], limit: int) -> int:
    """How many leading ids can be served from the previous run's KV cache: their common prefix,
    at most `limit`.

    ([1, 2, 3], "kv"), [1, 2, 4], 5) -> 2
    """
    return max(0, min(_lcp(previous[0], ids), limit)) if previous else 0


def plan_groups(seqs: list[list[int]], caps: list[int], overhead: int = 16) -> list[tuple[int, list[int]]]:
    """Split sequences into groups that each run one shared prefix, minimising tokens fed.

    Sorted sequences that share a prefix are contiguous; merging neighbours from the longest
    common prefix down (single linkage) builds the prefix tree, and each merge keeps the merged
    group only if running its prefix once is cheaper than its parts (`overhead` tokens per
    group stand for a forward call). `caps[i]` bounds how much of sequence i may be shared (its
    scored part must be recomputed). Groups run in sorted order, each starting from the KV cache
    of the one before where they agree (`PrefixScorer._run`), so a lone sequence costs only what
    differs from its predecessor: a passage scored once never pulls a shared passage's pairs
    into an instruction-only group. Returns (shared length, member indices) pairs.

    ([[1,2,3,4],[1,2,3,5],[9]], [3,3,1]) -> [(3, [0, 1]), (1, [2])]
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    raw = [_lcp(seqs[a], seqs[b]) for a, b in zip(order, order[1:])]
    lcps = [min(n, caps[a], caps[b]) for n, a, b in zip(raw, order, order[1:])]
    # what a sequence can take from its predecessor's cache (its hidden states from cap - 1 on are needed)
    reuse = [0] + [max(0, min(n, caps[b] - 1)) for n, b in zip(raw, order[1:])]
    by_lo = {k: _Cluster(k, k + 1, len(seqs[i]), len(seqs[i]) - reuse[k] + overhead, [(caps[i], [i])])
             for k, i in enumerate(order)}
    by_hi = {c.hi: c for c in by_lo.values()}
    for k in sorted(range(len(lcps)), key=lambda k: -lcps[k]):
        a, b = by_hi.pop(k + 1), by_lo.pop(k + 1)
        shared, total = lcps[k], a.total + b.total
        whole = total - (b.hi - a.lo - 1) * shared - min(reuse[a.lo], shared - 1) + overhead
        if shared > 1 and whole <= a.cost + b.cost:
            merged = _Cluster(a.lo, b.hi, total, whole, [(shared, order[a.lo:b.hi])])
        else:
            merged = _Cluster(a.lo, b.hi, total, a.cost + b.cost, a.groups + b.groups)
        by_lo[a.lo] = by_hi[b.hi] = merged
    return [g for c in by_lo.values() for g in c.groups]


@dataclass
class Job:
    """One sequence: `ids` = the naive full prompt. `ql` = (start, end): sum log p(ids[p]) over
    start <= p < end (query likelihood); `read`: the next-token distribution after the last id
    (labels). One job can do both: QL of a query whose ids begin an RC prompt's ids is read from
    the RC prompt's forward pass (causal attention: positions < end never see what follows).
    `calls` = the token count of each naive call the job stands for (the meter counts those)."""

    ids: list[int]
    ql: tuple[int, int] | None = None
    read: bool = False
    calls: list[int] = field(default_factory=list)

    @property
    def cap(self) -> int:
        """How much of the sequence may come from a shared cache: hidden states are needed from
        position cap - 1 on (QL: the position before the first scored token; labels: the last)."""
        return self.ql[0] if self.ql else len(self.ids)


def merge_ql_into_rc(ql: list[list[int]], ql_starts: list[int], rc: list[list[int]]) -> tuple[
        list[Job], list[tuple[int | None, int | None]]]:
    """Jobs for QL sequences and RC prompts; a QL sequence that is a prefix of an RC prompt rides
    in that prompt's job. Returns (jobs, owners) with owners[j] = (QL index, RC index) of job j.

    In sorted order every sequence that extends a QL sequence follows it directly, so one pass
    pairs each QL sequence with the first unpaired RC prompt that extends it (same passage, same
    query: the scoring prompts differ only after the query).

    ([[1, 2, 3]], [2], [[1, 2, 3, 9]]) -> ([Job([1, 2, 3, 9], (2, 3), True)], [(0, 0)])
    """
    entries = sorted([(ids, 0, i) for i, ids in enumerate(ql)] + [(ids, 1, i) for i, ids in enumerate(rc)])
    jobs: list[Job] = []
    owners: list[tuple[int | None, int | None]] = []
    pending: int | None = None  # the job of the last QL sequence, still without an RC partner
    for ids, kind, i in entries:
        if kind == 1 and pending is not None and len(ids) > len(jobs[pending].ids) and \
                ids[:len(jobs[pending].ids)] == jobs[pending].ids:
            job = jobs[pending]
            job.ids, job.read = ids, True
            job.calls.append(len(ids))
            owners[pending] = (owners[pending][0], i)
            pending = None
            continue
        if kind == 0:
            jobs.append(Job(ids, (ql_starts[i], len(ids)), False, [len(ids)]))
            owners.append((i, None))
            pending = len(jobs) - 1
        else:
            jobs.append(Job(ids, None, True, [len(ids)]))
            owners.append((None, i))
    return jobs, owners
