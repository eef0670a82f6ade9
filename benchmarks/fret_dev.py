"""The quality experiment's dev set: SciFact *train* claims split into two fixed halves by hash.

    python -m benchmarks.fret_dev out/scifact-dev

writes a BEIR folder that `gecko evaluate --dataset out/scifact-dev --split half-b` reads (the corpus
and queries are links to examples/data/scifact; qrels/half-a.tsv and half-b.tsv split the train
qrels by claim), and `out/scifact-dev/gold-half-a.jsonl`, the gold-label training records of
half A (claim, cited abstract) in the form `gecko retrieve | gecko mine-negatives` reads, so the
gold reference is trained on half A exactly as examples/scifact_train_records.sh trains on all.

Every model is compared on half B; half A's labels train only the gold reference. SciFact *test*
is never used to choose anything (docs/experiments.md).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

from benchmarks.common import SCIFACT


def half(claim_id: str) -> str:
    """"a" or "b": the claim's fixed half (the parity of the first byte of sha256(id)).

    >>> half("2"), half("0")
    ('a', 'b')
    """
    return "a" if hashlib.sha256(claim_id.encode()).digest()[0] % 2 == 0 else "b"


def read_qrels(path: Path) -> list[tuple[str, str, str]]:
    """(query id, corpus id, score) rows of a BEIR qrels TSV, header skipped."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [(q, d, s) for q, d, s in list(csv.reader(handle, delimiter="\t"))[1:]]


def write_split(folder: Path, source: Path = SCIFACT) -> dict[str, int]:
    """Write the dev folder; returns the number of claims in each half."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = folder / name
        if not link.exists():
            link.symlink_to((source / name).resolve())
    rows = read_qrels(source / "qrels/train.tsv")
    claims: dict[str, set[str]] = {"a": set(), "b": set()}
    for part in ("a", "b"):
        mine = [row for row in rows if half(row[0]) == part]
        claims[part] = {q for q, _, _ in mine}
        with (folder / "qrels" / f"half-{part}.tsv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["query-id", "corpus-id", "score"])
            writer.writerows(mine)
    write_gold(folder / "gold-half-a.jsonl", source, [row for row in rows if half(row[0]) == "a"])
    return {part: len(ids) for part, ids in claims.items()}


def write_gold(path: Path, source: Path, rows: list[tuple[str, str, str]]) -> None:
    """Gold (claim, cited abstract) pairs as generate-shaped records: the abstract is the seed."""
    queries = {}
    with (source / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            queries[record["_id"]] = record["text"]
    corpus = {}
    with (source / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            corpus[record["_id"]] = {"id": record["_id"], "title": record["title"], "text": record["text"]}
    with path.open("w", encoding="utf-8") as out:
        for query_id, doc_id, _ in rows:
            out.write(json.dumps({"id": f"{query_id}-{doc_id}", "task": "fact checking",
                                  "query": queries[query_id], "seed": corpus[doc_id]}) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.fret_dev OUT_FOLDER", file=sys.stderr)
        return 2
    counts = write_split(Path(argv[0]))
    print(f"fret_dev: {argv[0]}: half A {counts['a']} claims, half B {counts['b']} claims", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
