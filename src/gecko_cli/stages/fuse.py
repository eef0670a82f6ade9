"""`gecko fuse`: re-rank candidates from score fields already in the records, no LLM call.

Lets a user change k, the scorers or their weights and re-mine negatives without
paying for the LLM again.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Iterable, Iterator, Optional, Sequence

import typer

from gecko_cli import options as opt
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.records import (ID, Field, RecordError, add_provenance, check_fields, mark_positive_is_seed,
                                        parse_list)
from gecko_cli.contract.stream import run_stage
from gecko_cli.search.fusion import fuse_candidates

CANDIDATES = Field("candidates", (list,))


def candidate_validator(scores: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A validator for records whose candidates all carry the given numeric score fields."""
    fields = (ID, *(Field(name, (int, float)) for name in scores))

    def validate(record: dict[str, Any]) -> dict[str, Any]:
        check_fields(record, (ID, CANDIDATES))
        for i, candidate in enumerate(record["candidates"]):
            if not isinstance(candidate, dict):
                raise RecordError(f'field "candidates[{i}]" must be an object')
            check_fields(candidate, fields, where=f"candidates[{i}].")
        return record

    return validate


def fuse(records: Iterable[dict[str, Any]], scores: Sequence[str], k: float = 0.0,
         weights: Sequence[float] | None = None) -> Iterator[dict[str, Any]]:
    """Pure core: each record with its candidates re-ranked and `positive_is_seed` updated.

    >>> rec = {"id": "q", "seed": {"id": "b"}, "candidates": [{"id": "a", "ql": 1.0}, {"id": "b", "ql": 2.0}]}
    >>> out = next(fuse([rec], ["ql"]))
    >>> [c["id"] for c in out["candidates"]], out["positive_is_seed"]
    (['b', 'a'], True)
    """
    for record in records:
        record["candidates"] = fuse_candidates(record["candidates"], scores, k, weights)
        mark_positive_is_seed(record)
        yield add_provenance(record, "fuse", scores=list(scores), k=k, weights=list(weights) if weights else None)


# --- command ------------------------------------------------------------------------


def option_list(text: str, what: str, kind: type = str) -> list[Any]:
    """`"ql,rc"` -> ["ql", "rc"]; `"1,0.5"` with kind=float -> [1.0, 0.5]; UsageError if unreadable or empty."""
    try:
        values = parse_list(text, kind)
    except ValueError:
        raise UsageError(f"{what}: cannot read {text!r}") from None
    if not values:
        raise UsageError(f"{what}: empty")
    return values


def command(
    scores: Annotated[str, typer.Option("--scores", help="Comma-separated candidate score fields to fuse (higher is better).")] = "ql,rc",
    k: Annotated[float, typer.Option("--k", help="RRF constant: sum of w/(k + rank). Gecko uses 0; 60 is common elsewhere.")] = 0.0,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Comma-separated weight per score (default: all 1).")] = None,
    input: opt.InputOpt = None,
    output: opt.OutputOpt = None,
    rejects: opt.RejectsOpt = None,
    shard: opt.ShardOpt = None,
) -> None:
    """Re-rank candidates by reciprocal rank fusion of score fields already in the records.

    Examples:

      gecko fuse --scores ql,rc --k 0 < fret.jsonl > refused.jsonl

      gecko fuse --scores ql,rc,retriever_score --weights 1,1,0.5 --k 60 -i fret.jsonl
    """
    names = option_list(scores, "--scores")
    weight_list = option_list(weights, "--weights", float) if weights else None
    if weight_list is not None and len(weight_list) != len(names):
        raise UsageError(f"--weights has {len(weight_list)} values for {len(names)} scores")
    with opt.stage_io(candidate_validator(names), input=input, output=output, rejects=rejects,
                      shard=shard) as (source, out):
        counts = run_stage(lambda recs: fuse(recs, names, k, weight_list), source, out)
    opt.summary("fuse", counts)
