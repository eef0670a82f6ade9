"""Committed FRet data: teacher shards by passage, without the passages' text.

The LLM's cost of scoring (query, passage) pairs is mostly the passage: its prompt prefix runs once
for every query that has it as a candidate *in the same call*. So teacher shards slice the
**passages**, not the queries: shard J holds, for every query, only its candidates whose passage
id falls in slice J (`slice`), and one `gecko rerank` call over the whole shard runs each of those
passages once. `join` merges a query's candidates back from every shard, and `gecko fuse` ranks them.

`gecko rerank` writes every candidate with its title and text, so benchmarks/data/ keeps only ids
and scores (`slim`); `hydrate` puts the text back from the corpus.

    gecko retrieve ... | python -m benchmarks.fret_data slice 3/8 | gecko rerank ... \
        | python -m benchmarks.fret_data slim | gzip > teacher-shard3of8.jsonl.gz
    zcat teacher-shard*of8.jsonl.gz | python -m benchmarks.fret_data join | python -m benchmarks.fret_data hydrate \
        | gecko fuse --scores retriever_score,ql | gecko mine-negatives ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from benchmarks.common import SCIFACT
from gecko_cli.contract.records import in_shard, parse_shard

TEXT_FIELDS = ("title", "text")


def slim(record: dict[str, Any]) -> dict[str, Any]:
    """A reranked record without passage text (the seed and every candidate keep their id and scores).

    >>> slim({"id": "q", "seed": {"id": "7", "title": "T", "text": "x"},
    ...       "candidates": [{"id": "7", "title": "T", "text": "x", "ql": -3.5}]})
    {'id': 'q', 'seed': {'id': '7'}, 'candidates': [{'id': '7', 'ql': -3.5}]}
    """
    out = dict(record)
    if isinstance(record.get("seed"), dict):
        out["seed"] = {k: v for k, v in record["seed"].items() if k not in TEXT_FIELDS}
    out["candidates"] = [{k: v for k, v in c.items() if k not in TEXT_FIELDS} for c in record["candidates"]]
    return out


def hydrate(record: dict[str, Any], corpus: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Put the corpus's title and text back into the seed and the candidates (KeyError: unknown id).

    >>> hydrate({"id": "q", "seed": {"id": "7"}, "candidates": [{"id": "7", "ql": -3.5}]},
    ...         {"7": {"title": "T", "text": "x"}})["candidates"]
    [{'id': '7', 'title': 'T', 'text': 'x', 'ql': -3.5}]
    """
    out = dict(record)
    if isinstance(record.get("seed"), dict):
        out["seed"] = _with_text(record["seed"], corpus)
    out["candidates"] = [_with_text(c, corpus) for c in record["candidates"]]
    return out


def _with_text(passage: dict[str, Any], corpus: dict[str, dict[str, str]]) -> dict[str, Any]:
    doc = corpus[str(passage["id"])]
    rest = {k: v for k, v in passage.items() if k != "id"}
    return {"id": passage["id"], "title": doc["title"], "text": doc["text"], **rest}


def slice_candidates(record: dict[str, Any], index: int, count: int) -> dict[str, Any] | None:
    """The record with only the candidates whose passage is in slice `index` of `count` (None: none is).

    >>> r = {"id": "q", "candidates": [{"id": str(i)} for i in range(6)]}
    >>> sorted(c["id"] for j in range(3) for c in (slice_candidates(r, j, 3) or {"candidates": []})["candidates"])
    ['0', '1', '2', '3', '4', '5']
    """
    mine = [c for c in record["candidates"] if in_shard(str(c["id"]), index, count)]
    return {**record, "candidates": mine} if mine else None


def found(record: dict[str, Any], k: int) -> dict[str, Any] | None:
    """The record cut to its top-k candidates if its seed is among them (the round-trip filter), else None.

    `gecko retrieve` appends the seed after the top-k when the search missed it; that copy is not a find.

    >>> r = {"id": "q", "seed": {"id": "2"}, "candidates": [{"id": "1"}, {"id": "2"}, {"id": "3"}]}
    >>> [c["id"] for c in found(r, 2)["candidates"]], found(r, 1)
    (['1', '2'], None)
    """
    top = record["candidates"][:k]
    seed = str(record.get("seed", {}).get("id"))
    return {**record, "candidates": top} if any(str(c["id"]) == seed for c in top) else None


# Fields rerank sets from the whole candidate list, meaningless for a slice of it: `join` drops them.
SLICE_RANKS = ("rank", "rrf", "rank_ql", "rank_rc", "rank_retriever_score")


def join(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Merge the slices of each query (by id, in first-seen order) into one record with all its candidates.

    The candidates keep their scores; the ranks computed within one slice are dropped (`gecko fuse`
    ranks the whole list), and so is the record's `positive_is_seed`.

    >>> list(join([{"id": "q", "candidates": [{"id": "1", "ql": -1, "rank": 1}]},
    ...            {"id": "q", "candidates": [{"id": "2", "ql": -2, "rank": 1}]}]))
    [{'id': 'q', 'candidates': [{'id': '1', 'ql': -1}, {'id': '2', 'ql': -2}]}]
    """
    merged: dict[str, dict[str, Any]] = {}
    for record in records:
        key = str(record["id"])
        candidates = [{k: v for k, v in c.items() if k not in SLICE_RANKS} for c in record["candidates"]]
        if key in merged:
            merged[key]["candidates"] += candidates
        else:
            merged[key] = {**{k: v for k, v in record.items() if k != "positive_is_seed"}, "candidates": candidates}
    yield from merged.values()


def read_corpus(path: Path) -> dict[str, dict[str, str]]:
    """A BEIR corpus.jsonl -> {id: {title, text}}."""
    corpus = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            corpus[str(doc.get("_id", doc.get("id")))] = {"title": doc.get("title") or "", "text": doc["text"]}
    return corpus


def _lines(stream: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            yield json.loads(line)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fret_data")
    parser.add_argument("action", choices=["slim", "hydrate", "slice", "join", "found"])
    parser.add_argument("shard", nargs="?", help="slice: I/N, the slice of passages to keep; found: K")
    parser.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    args = parser.parse_args(argv)
    records: Iterable[dict[str, Any] | None]
    if args.action == "join":
        records = join(_lines(sys.stdin))
    elif args.action == "slice":
        index, count = parse_shard(args.shard or "")
        records = (slice_candidates(r, index, count) for r in _lines(sys.stdin))
    elif args.action == "found":
        k = int(args.shard or 0)
        records = (found(r, k) for r in _lines(sys.stdin))
    elif args.action == "hydrate":
        corpus = read_corpus(args.corpus)
        records = (hydrate(r, corpus) for r in _lines(sys.stdin))
    else:
        records = (slim(r) for r in _lines(sys.stdin))
    for record in records:
        if record is not None:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
