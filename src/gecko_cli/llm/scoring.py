"""LLM scoring of (query, candidate passage) pairs: query likelihood and relevance classification.

Both prompts put the passage first (`[instruction + few-shot][passage]`, then the query
for QL, or the query and the yes/no question for RC), so every scorer and every query
that has a passage as a candidate share one prefix, which the embedded backend runs
once (KV cache) and servers with prefix caching reuse.

    QL = log p(query | passage, P_QL)        (sum, or mean per token with ql_norm="mean")
    RC = log p(yes-variants | ...) - log p(no-variants | ...)   (log-odds of relevance)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from gecko_cli.llm.base import Failure, LLMBackend

YES = (" Yes", " yes", "Yes", "yes")
NO = (" No", " no", "No", "no")


def load_prompt(name_or_path: str) -> str:
    """A prompt template: a file path, or the name of one shipped in `gecko_cli/llm/prompts/`."""
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8").rstrip()
    return resources.files("gecko_cli.llm.prompts").joinpath(f"{name_or_path}.txt").read_text(encoding="utf-8").rstrip()


def fill_passage(template: str, title: str | None, text: str) -> str:
    """Put a passage into a template; `{title}. ` disappears when there is no title.

    >>> fill_passage("P: {title}. {text}", "", "Body")
    'P: Body'
    """
    title = (title or "").strip()
    if not title:
        template = template.replace("{title}. ", "").replace("{title}", "")
    return template.replace("{title}", title).replace("{text}", text)


@dataclass(frozen=True)
class ScoringPrompts:
    """The QL and RC templates (each with {title}, {text}, {query})."""

    ql: str
    rc: str

    @classmethod
    def default(cls) -> "ScoringPrompts":
        return cls(load_prompt("query_likelihood"), load_prompt("relevance"))

    def ql_pair(self, query: str, passage: dict[str, Any]) -> tuple[str, str]:
        """(prefix, continuation): the query is scored after everything before `{query}`.

        >>> ScoringPrompts("P: {text}\\nQ:{query}", "").ql_pair("why", {"text": "B"})
        ('P: B\\nQ:', ' why')
        """
        head = self.ql.split("{query}")[0]
        prefix = fill_passage(head, passage.get("title"), passage["text"])
        return prefix, (" " if not prefix.endswith((" ", "\n")) else "") + query.strip()

    def rc_prompt(self, query: str, passage: dict[str, Any]) -> str:
        """The full RC prompt; the label is the next token."""
        head, _, tail = self.rc.partition("{query}")
        return fill_passage(head, passage.get("title"), passage["text"]) + query.strip() + tail


def logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(v))) without overflow.

    >>> round(logsumexp([math.log(0.2), math.log(0.3)]), 6) == round(math.log(0.5), 6)
    True
    """
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def rc_score(logprobs: dict[str, float]) -> float:
    """Log-odds of relevance, each side summing the probability of its spelling variants.

    Variants that tokenize to the same first token are counted once.
    """
    def side(labels: Sequence[str]) -> float:
        unique = {round(logprobs[l], 9): logprobs[l] for l in labels if l in logprobs}
        return logsumexp(list(unique.values()))
    return side(YES) - side(NO)


def score_pairs(backend: LLMBackend, prompts: ScoringPrompts, pairs: Sequence[tuple[str, dict[str, Any]]],
                scorers: Sequence[str], ql_norm: str = "sum") -> list[dict[str, float]]:
    """Scores for (query, passage) pairs, both scorers in one `score_shared` call (the embedded
    model then runs each passage's prefix once for QL and RC of every query; other backends make
    one batch call per scorer).

    A pair whose LLM call failed for itself (a `Failure`) gets `{"error": ...}` instead of that score.
    """
    out: list[dict[str, Any]] = [{} for _ in pairs]
    ql_inputs = [prompts.ql_pair(q, p) for q, p in pairs] if "ql" in scorers else []
    prefixes, continuations = [p for p, _ in ql_inputs], [c for _, c in ql_inputs]
    rc_prompts = [prompts.rc_prompt(q, p) for q, p in pairs] if "rc" in scorers else []
    labels = list(YES + NO)
    ql_values, rc_values = backend.score_shared(prefixes, continuations, rc_prompts, labels)
    for i, (value, continuation) in enumerate(zip(ql_values, continuations)):
        if isinstance(value, Failure):
            out[i]["error"] = value.error
            continue
        n = max(backend.count_tokens(continuation), 1) if ql_norm == "mean" else 1
        out[i]["ql"] = round(value / n, 6)
    for i, logprobs in enumerate(rc_values):
        if isinstance(logprobs, Failure):
            out[i]["error"] = logprobs.error
            continue
        out[i]["rc"] = round(rc_score(logprobs), 6)
    return out
