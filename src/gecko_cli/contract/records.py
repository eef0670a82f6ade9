"""Record shapes, field validation, passages and seeds, shards, option lists and provenance.

Validation raises `RecordError` with a message that names the field; the stream
driver adds the file and line number (`<stdin>:17: missing field "query"`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from gecko_cli import __version__

Validator = Callable[[dict[str, Any]], dict[str, Any]]


class RecordError(ValueError):
    """A record that does not have the shape a stage needs."""


@dataclass(frozen=True)
class Field:
    """A required (or optional) field with the JSON types it may have."""

    name: str
    types: tuple[type, ...]
    required: bool = True
    nonempty: bool = True


_TYPE_NAMES = {str: "a string", int: "a number", float: "a number", list: "an array",
               dict: "an object", bool: "a boolean"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def check_fields(record: Mapping[str, Any], fields: tuple[Field, ...], where: str = "") -> None:
    """Raise RecordError for the first missing, empty or mistyped field.

    >>> check_fields({"id": 1}, (Field("query", (str,)),))
    Traceback (most recent call last):
    gecko_cli.contract.records.RecordError: missing field "query"
    """
    for field in fields:
        name = f"{where}{field.name}"
        if field.name not in record or record[field.name] is None:
            if field.required:
                raise RecordError(f'missing field "{name}"')
            continue
        value = record[field.name]
        # bool is an int in Python, but `true` is no id or score in JSON.
        if not isinstance(value, field.types) or (isinstance(value, bool) and bool not in field.types):
            wanted = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in field.types))
            raise RecordError(f'field "{name}" must be {wanted}, got {_type_name(value)}')
        if field.nonempty and isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
            raise RecordError(f'field "{name}" is empty')


ID = Field("id", (str, int))
PASSAGE_FIELDS = (ID, Field("text", (str,)), Field("title", (str,), required=False, nonempty=False))
DOC_FIELDS = (Field("text", (str,)), Field("title", (str,), required=False, nonempty=False))
TRAINING_FIELDS = (ID, Field("query", (str,)), Field("task", (str,), required=False),
                   Field("positive", (dict,)), Field("negatives", (list,), required=False, nonempty=False))


def validate_passage(record: dict[str, Any]) -> dict[str, Any]:
    """A passage `{"id", "text", "title"?}`; BEIR's `_id` is accepted as `id`.

    >>> validate_passage({"_id": "d1", "text": "Hello"})["id"]
    'd1'
    """
    if "id" not in record and "_id" in record:
        record = {"id": record["_id"], **{k: v for k, v in record.items() if k != "_id"}}
    check_fields(record, PASSAGE_FIELDS)
    return record


def validate_training(record: dict[str, Any]) -> dict[str, Any]:
    """A `mine-negatives` training record: id, query, positive{text}, negatives[{text}]."""
    check_fields(record, TRAINING_FIELDS)
    check_fields(record["positive"], DOC_FIELDS, where="positive.")
    for i, negative in enumerate(record.get("negatives") or []):
        if not isinstance(negative, dict):
            raise RecordError(f'field "negatives[{i}]" must be an object, got {_type_name(negative)}')
        check_fields(negative, DOC_FIELDS, where=f"negatives[{i}].")
    return record


def record_id(record: Mapping[str, Any]) -> str:
    """The record's id as a string (ids may be JSON numbers in user data)."""
    return str(record["id"])


def in_shard(key: str, index: int, count: int) -> bool:
    """Stable assignment of a record to shard `index` of `count` by a hash of its id.

    Stable across runs, machines and Python versions (no `hash()` salt), so a
    Slurm array or GNU parallel can split a corpus and `cat` joins it.

    >>> sum(in_shard(str(i), s, 3) for i in range(100) for s in range(3))
    100
    """
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def parse_shard(spec: str) -> tuple[int, int]:
    """`"2/8"` -> (2, 8); shards are numbered from 0.

    >>> parse_shard("0/4")
    (0, 4)
    """
    try:
        index_text, count_text = spec.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--shard must look like I/N (for example 0/4), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {spec}: need 0 <= I < N")
    return index, count


def normalize_text(text: str) -> str:
    """Case- and space-insensitive key for spotting duplicate texts.

    >>> normalize_text("  Why  IS the  Sky ")
    'why is the sky'
    """
    return " ".join(text.lower().split())


def parse_list(text: str | None, kind: Callable[[str], Any] = str) -> list[Any]:
    """A comma-separated option value -> its items, blanks dropped; None or "" -> [].

    Raises ValueError when an item does not convert to `kind` (the caller names the option).

    >>> parse_list("ql, rc,"), parse_list("1,0.5", float), parse_list(None)
    (['ql', 'rc'], [1.0, 0.5], [])
    """
    return [kind(part.strip()) for part in (text or "").split(",") if part.strip()]


def parse_int_list(text: str | None, flag: str) -> list[int]:
    """`"384, 128"` -> [384, 128] in the order given; None or "" -> [].

    >>> parse_int_list("384, 128", "--dims"), parse_int_list(None, "--dims")
    ([384, 128], [])
    """
    try:
        return parse_list(text, int)
    except ValueError:
        raise ValueError(f"{flag} wants comma-separated integers, got {text!r}") from None


# --- Passages, seeds and candidates ----------------------------------------------------


def passage_id(passage: Mapping[str, Any]) -> str | None:
    """A passage's id as a string: `id`, else BEIR's `_id`; None when it has neither.

    >>> passage_id({"_id": 7, "text": "t"}), passage_id({"text": "t"})
    ('7', None)
    """
    value = passage.get("id", passage.get("_id"))
    return None if value is None else str(value)


def seed_id(record: Mapping[str, Any]) -> str | None:
    """The id of the record's seed passage (the one its query was written from), if it has one.

    >>> seed_id({"seed": {"id": 3, "text": "t"}}), seed_id({"seed": "x"}), seed_id({})
    ('3', None, None)
    """
    seed = record.get("seed")
    return passage_id(seed) if isinstance(seed, dict) else None


def as_passage(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """The passage part of a candidate or seed, `{"id", "title", "text"}` (scores stay behind).

    >>> as_passage({"id": 4, "text": "t", "ql": -2.0})
    {'id': '4', 'title': '', 'text': 't'}
    """
    return {"id": passage_id(candidate), "title": candidate.get("title") or "", "text": candidate["text"]}


def mark_positive_is_seed(record: dict[str, Any]) -> dict[str, Any]:
    """Set `positive_is_seed`: is the top candidate (the positive FRet trains on) the seed?

    Left as it is when the record has no seed with an id, or no candidates.

    >>> mark_positive_is_seed({"seed": {"_id": "b"}, "candidates": [{"id": "b"}]})["positive_is_seed"]
    True
    """
    seed = seed_id(record)
    if seed is not None and record.get("candidates"):
        record["positive_is_seed"] = str(record["candidates"][0]["id"]) == seed
    return record


# --- Provenance --------------------------------------------------------------------------


def add_provenance(record: dict[str, Any], stage: str, **params: Any) -> dict[str, Any]:
    """Append this stage's entry to `_provenance` (never an API key: callers pass none).

    >>> add_provenance({"id": "a"}, "fuse", k=0)["_provenance"][0]["stage"]
    'fuse'
    """
    entry = {"stage": stage, "gecko": __version__, **params}
    record["_provenance"] = [*record.get("_provenance", []), entry]
    return record
