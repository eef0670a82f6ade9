"""Evaluation data on disk: BEIR folders and tab-separated STS files.

Errors name the file and line, like the stage contract, because a dataset is input too.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from gecko_cli.contract.errors import InputError, UsageError
from gecko_cli.contract.jsonl import LineError, parse_object, read_lines
from gecko_cli.contract.paths import READ, READ_DIR, require
from gecko_cli.contract.records import Field, RecordError, check_fields

CORPUS_FIELDS = (Field("text", (str,), nonempty=False), Field("title", (str,), required=False, nonempty=False))
QUERY_FIELDS = (Field("text", (str,)),)


@dataclass
class BeirDataset:
    """A BEIR retrieval set: corpus, the queries judged in one split, and their qrels."""

    name: str
    split: str
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]  # id -> text, only queries judged in `split`
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance


def _read_jsonl_objects(path: Path, fields: tuple[Field, ...]) -> dict[str, dict]:
    """`{_id -> record}` of a BEIR jsonl file, with file:line errors."""
    out: dict[str, dict] = {}
    with path.open("rb") as handle:
        for line in read_lines(handle):
            try:
                record = parse_object(line)
                key = record.get("_id", record.get("id"))
                if key is None or isinstance(key, (bool, list, dict)):
                    raise RecordError('missing field "_id"')
                check_fields(record, fields)
            except (LineError, RecordError) as exc:
                raise InputError(str(exc), str(path), line.number) from None
            out[str(key)] = record
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (header `query-id corpus-id score`) -> {qid: {docid: score}}."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            try:
                qid, did, score = row[0], row[1], int(float(row[2]))
            except (IndexError, ValueError):
                raise InputError("expected query-id<TAB>corpus-id<TAB>score", str(path), number) from None
            qrels.setdefault(qid, {})[did] = score
    return qrels


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """Load `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv` from a BEIR folder."""
    require(READ_DIR, folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for needed in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not needed.exists():
            splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
            hint = f" (splits here: {', '.join(splits)})" if splits else ""
            raise UsageError(f"{needed}: no such file; --dataset wants a BEIR folder{hint}")
    corpus = {k: {"title": v.get("title") or "", "text": v.get("text") or ""}
              for k, v in _read_jsonl_objects(folder / "corpus.jsonl", CORPUS_FIELDS).items()}
    qrels = {q: rels for q, rels in read_qrels(qrels_path).items() if any(r > 0 for r in rels.values())}
    all_queries = _read_jsonl_objects(folder / "queries.jsonl", QUERY_FIELDS)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise InputError(f"{len(missing)} judged queries are missing from queries.jsonl (first: {missing[0]})",
                         str(qrels_path))
    queries = {q: all_queries[q]["text"] for q in qrels}
    return BeirDataset(folder.name, split, corpus, queries, qrels)


@dataclass
class StsPairs:
    """Sentence pairs with gold similarity scores."""

    name: str
    split: str
    first: list[str]
    second: list[str]
    scores: list[float]


def load_sts(path: Path) -> StsPairs:
    """A tab-separated file whose header has sentence1, sentence2 and score (no quoting)."""
    require(READ, path)
    first, second, scores = [], [], []
    with path.open(encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, [])
        try:
            a, b, s = header.index("sentence1"), header.index("sentence2"), header.index("score")
        except ValueError:
            raise InputError("header must name sentence1, sentence2 and score", str(path), 1) from None
        for number, row in enumerate(rows, 2):
            if not row:
                continue
            try:
                first.append(row[a]), second.append(row[b]), scores.append(float(row[s]))
            except (IndexError, ValueError):
                raise InputError("expected sentence1, sentence2 and a numeric score", str(path), number) from None
    return StsPairs(path.parent.name, path.stem, first, second, scores)
