"""Candidate retrieval shared by `gecko retrieve` and `gecko rerank` (FRet step 2, first half).

Embeds each record's `task: {task} | query: {query}`, finds the top-k passages of the
corpus and attaches them as `candidates`; the seed passage is always a candidate
(appended with its own score when the search missed it), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from gecko_cli.contract.env import cache_dir
from gecko_cli.contract.errors import InputError, UsageError
from gecko_cli.contract.jsonl import JsonlWriter, LineError, parse_object, read_lines
from gecko_cli.contract.records import (Field, RecordError, add_provenance, as_passage, check_fields, passage_id,
                                        validate_passage)
from gecko_cli.contract.stream import Counts, StageInput, run_stage
from gecko_cli.contract.text_format import Templates, resolve_templates
from gecko_cli.search.embed import Encoder, display_name, load_encoder
from gecko_cli.search.index import Manifest, Searcher, corpus_hash
from gecko_cli.search.vectors import normalize

QUERY_FIELDS = (Field("query", (str,)), Field("task", (str,), required=False))


@dataclass
class Corpus:
    """Passages with ids, in a fixed order (row i of the index is passage i)."""

    ids: list[str]
    titles: list[str]
    texts: list[str]

    def candidate(self, row: int, score: float) -> dict[str, Any]:
        return {"id": self.ids[row], "title": self.titles[row], "text": self.texts[row],
                "retriever_score": round(float(score), 6)}


def corpus_from_passages(passages: Iterable[dict[str, Any]]) -> Corpus:
    """A corpus from passage records (`id` or `_id`), first occurrence of an id wins.

    >>> corpus_from_passages([{"id": 1, "text": "a"}, {"_id": "1", "text": "b", "title": "T"}]).texts
    ['a']
    """
    seen: dict[str, tuple[str, str]] = {}
    for passage in passages:
        key = str(passage_id(passage))
        if key not in seen:
            seen[key] = ((passage.get("title") or "").strip(), passage["text"])
    return Corpus(list(seen), [t for t, _ in seen.values()], [x for _, x in seen.values()])


def read_corpus(path: Path) -> Corpus:
    """Passages JSONL or a BEIR `corpus.jsonl`, with file:line errors."""
    passages = []
    with path.open("rb") as handle:
        for line in read_lines(handle):
            try:
                passages.append(validate_passage(parse_object(line)))
            except (LineError, RecordError) as exc:
                raise InputError(str(exc), str(path), line.number) from None
    return corpus_from_passages(passages)


def validate_query_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record `retrieve` can work on: an id, a query, and optionally a task and a seed."""
    check_fields(record, (Field("id", (str, int)), *QUERY_FIELDS))
    seed = record.get("seed")
    if seed is not None:
        if not isinstance(seed, dict):
            raise RecordError('field "seed" must be an object')
        validate_passage(seed)
    return record


def validate_rerank_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record `rerank` can score: a query record whose candidates, if any, are passages."""
    validate_query_record(record)
    if "candidates" in record:
        check_fields(record, (Field("candidates", (list,)),))
        for i, candidate in enumerate(record["candidates"]):
            if not isinstance(candidate, dict):
                raise RecordError(f'field "candidates[{i}]" must be an object')
            check_fields(candidate, (Field("id", (str, int)), *PASSAGE_TEXT), where=f"candidates[{i}].")
    return record


PASSAGE_TEXT = (Field("text", (str,)), Field("title", (str,), required=False, nonempty=False))


def build_searcher(encoder: Encoder, corpus: Corpus, templates: Templates, root: Path | None,
                   exact: bool = False, ef: int = 100, seed: int = 0) -> tuple[Searcher, np.ndarray]:
    """Encode the corpus (cached) and load or build its index."""
    docs = [templates.render_document(t, title) for t, title in zip(corpus.texts, corpus.titles)]
    vectors = encoder.encode(docs, what="corpus passages")
    manifest = Manifest(encoder.fingerprint, int(vectors.shape[1]), corpus_hash(corpus.ids, docs),
                        len(docs), seed=seed)
    return Searcher(vectors, manifest, root, exact=exact, ef=ef), vectors


def retrieve(records: Iterable[dict[str, Any]], encoder: Encoder, corpus: Corpus, searcher: Searcher,
             templates: Templates, top_k: int = 20, with_seed: bool = True,
             batch: int = 256) -> Iterator[dict[str, Any]]:
    """Pure-ish core: each record with `candidates` attached, in input order, batched encoding."""
    row_of = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
    it = iter(records)
    while chunk := list(islice(it, batch)):
        queries = normalize(encoder.encode([templates.render_query(r["query"], r.get("task")) for r in chunk],
                                           what="queries"))
        seeds = _seed_vectors(chunk, encoder, templates, searcher.vectors, row_of) if with_seed else {}
        rows, scores = searcher.search(queries, top_k)
        for record, query, row_list, score_list in zip(chunk, queries, rows, scores):
            candidates = [corpus.candidate(r, s) for r, s in zip(row_list, score_list) if r >= 0]
            seed = record.get("seed")
            if with_seed and isinstance(seed, dict) and not any(c["id"] == passage_id(seed) for c in candidates):
                candidates.append(_seed_candidate(seed, float(seeds[passage_id(seed)] @ query)))
            record["candidates"] = candidates
            yield record


def _seed_candidate(seed: dict[str, Any], score: float) -> dict[str, Any]:
    """The seed appended after the top-k, its title stripped like the corpus's (see corpus_from_passages)."""
    passage = as_passage(seed)
    return {**passage, "title": passage["title"].strip(), "retriever_score": round(score, 6)}


def _seed_vectors(chunk: list[dict[str, Any]], encoder: Encoder, templates: Templates, vectors: np.ndarray,
                  row_of: dict[str, int]) -> dict[str, np.ndarray]:
    """Unit vectors of the chunk's seeds: from the corpus when there, else encoded (cached)."""
    seeds = {passage_id(r["seed"]): r["seed"] for r in chunk if isinstance(r.get("seed"), dict)}
    out = {k: vectors[row_of[k]] for k in seeds if k in row_of}
    missing = [k for k in seeds if k not in row_of]
    if missing:
        docs = [templates.render_document(seeds[k]["text"], seeds[k].get("title")) for k in missing]
        out.update(zip(missing, normalize(encoder.encode(docs, what="seed passages"))))
    return out


def seeds_of(records: Sequence[dict[str, Any]]) -> Corpus:
    """Without `--corpus`, the corpus is the seed passages of the input itself."""
    return corpus_from_passages(r["seed"] for r in records if isinstance(r.get("seed"), dict))


@dataclass(frozen=True, kw_only=True)
class RetrievalOptions:
    """What `retrieve` (and `rerank`, for records without candidates) needs to know (keywords only)."""

    corpus: Path | None = None
    top_k: int = 20
    with_seed: bool = True
    exact: bool = False
    ef: int = 100
    embedder: str | None = None
    query_prompt: str | None = None  # None: the embedder's stored templates, else plain
    doc_prompt: str | None = None
    batch_size: int = 32
    seed: int = 0
    use_cache: bool = True
    only_missing: bool = False  # rerank: keep candidates a record already has


def with_provenance(records: Iterable[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
    """Append the retrieve entry to each record's `_provenance`."""
    for record in records:
        yield add_provenance(record, "retrieve", **params)


def run_with_candidates(source: StageInput, out: JsonlWriter, options: RetrievalOptions, *,
                        progress: Callable[[str], Any] | None = None,
                        then: Callable[[Iterable[dict[str, Any]]], Iterator[Any]] | None = None,
                        warn: Callable[[str], None] | None = None,
                        on_record: Callable[[], None] | None = None) -> Counts:
    """Attach candidates to every record that lacks them, run `then` over all records, write.

    The corpus is `options.corpus`, or the input's own seed passages (then the whole
    input is read first).
    """
    records: Iterable[dict[str, Any]] = source.records()
    need = True
    if options.corpus is not None:
        passages = read_corpus(options.corpus)
    else:
        records = list(records)
        need = not options.only_missing or any("candidates" not in r for r in records)
        passages = seeds_of(records)
        if need and not passages.ids:
            raise UsageError('no corpus: give --corpus FILE, or records with a "seed" passage')

    def core(recs: Iterable[dict[str, Any]]) -> Iterator[Any]:
        if need:
            recs = _retrieve_missing(recs, passages, options, progress)
        return then(recs) if then else iter(recs)

    return run_stage(core, source, out, records=records, warn=warn, on_record=on_record)


def _retrieve_missing(records: Iterable[dict[str, Any]], corpus: Corpus, options: RetrievalOptions,
                      progress: Callable[[str], Any] | None) -> Iterator[dict[str, Any]]:
    """Retrieve for the records that need it; keep the others as they are, in order.

    The embedder and the index are loaded when the first record needs them, so a
    `rerank` whose records all carry candidates never loads them.
    """
    it = iter(records)
    search: tuple[Encoder, Searcher, Templates, dict[str, Any]] | None = None
    while chunk := list(islice(it, 256)):
        todo = [r for r in chunk if "candidates" not in r or not options.only_missing]
        if todo and search is None:
            encoder = load_encoder(options.embedder, options.use_cache, options.batch_size, progress=progress)
            templates = resolve_templates(encoder.name, options.query_prompt, options.doc_prompt, None)
            searcher, _ = build_searcher(encoder, corpus, templates,
                                         cache_dir() / "indexes" if options.use_cache else None,
                                         exact=options.exact, ef=options.ef, seed=options.seed)
            params = {"embedder": display_name(encoder.name), "top_k": options.top_k, "exact": options.exact,
                      "ef": options.ef, "query_template": templates.query}
            search = (encoder, searcher, templates, params)
        if todo:
            encoder, searcher, templates, params = search
            # retrieve() fills each record's candidates in place; run it to the end
            for _ in with_provenance(retrieve(todo, encoder, corpus, searcher, templates, top_k=options.top_k,
                                              with_seed=options.with_seed), **params):
                pass
        yield from chunk
