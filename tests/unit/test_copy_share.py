"""`copy_share` (llm/generation.py) gives exactly what the n-gram-set version it replaced gave.

The faster version skips building the passage's n-gram set; these cases hold it to the old
definition, kept here as the reference: random word soups (small vocabularies, so n-grams do
repeat and match), punctuation, case, digits, underscores and non-ASCII text whose lower-casing
changes its length, and real passages with queries cut from them.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from gecko_cli.llm import generation as rules

PASSAGES = Path(__file__).resolve().parents[2] / "examples" / "passages.jsonl"
VOCAB = ["the", "The", "sky", "SKY", "blue", "is", "a", "gene", "cell", "x_1", "42", "café", "Straße", "İstanbul",
         "naïve", "K", "\u212a", "ǅ", "ﬁne", "über", "日本", "語"]
GLUE = [" ", " ", " ", ", ", ". ", "-", "  ", "\n", "'", "—", " (", ") ", "/", "_", "\t"]


def reference(query: str, passage: str, n: int = rules.COPY_NGRAM) -> float:
    """The original implementation: the share of the query's n-grams in the set of the passage's."""
    words = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    q = words(query)
    grams = [tuple(q[i:i + n]) for i in range(len(q) - n + 1)]
    if not grams:
        return 0.0
    p = words(passage)
    have = {tuple(p[i:i + n]) for i in range(len(p) - n + 1)}
    return sum(g in have for g in grams) / len(grams)


def soup(rng: random.Random, vocab: list[str], count: int) -> str:
    """`count` words of `vocab` joined by random punctuation and spacing."""
    return "".join(rng.choice(vocab) + rng.choice(GLUE) for _ in range(count))


def test_random_word_soups_agree_with_the_reference():
    rng = random.Random(15)
    matched = 0
    for case in range(4000):
        vocab = rng.sample(VOCAB, rng.randint(2, 8))  # few words: n-grams repeat, so many match
        passage = soup(rng, vocab, rng.randint(0, 60))
        if case % 3 == 0 and passage:  # a query cut from the passage, maybe mid-word
            start = rng.randrange(len(passage))
            query = passage[start:start + rng.randint(1, 80)] + soup(rng, vocab, rng.randint(0, 3))
        else:
            query = soup(rng, vocab, rng.randint(0, 12))
        n = rng.choice([1, 2, 3, 5, 5, 5, 6])
        expected = reference(query, passage, n)
        assert rules.copy_share(query, passage, n) == expected, (query, passage, n)
        matched += 0 < expected
    assert matched > 1000  # the cases do exercise the lookup, not only the early exits


def _passages() -> list[str]:
    records = [json.loads(line) for line in PASSAGES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"{r.get('title') or ''}\n{r['text']}" for r in records]


def test_real_passages_with_copied_shuffled_and_foreign_queries_agree_with_the_reference():
    rng = random.Random(7)
    passages = _passages()
    shares = []
    for i, passage in enumerate(passages):
        tokens = passage.split()
        start = rng.randrange(max(1, len(tokens) - 12))
        copied = " ".join(tokens[start:start + rng.randint(3, 20)])
        shuffled = " ".join(rng.sample(tokens, min(len(tokens), 10)))
        mixed = f"what does {copied} mean for {' '.join(tokens[:4])}?"
        foreign = " ".join(passages[(i + 1) % len(passages)].split()[:12])
        for query in (copied, copied.upper(), shuffled, mixed, foreign, "why is the sky blue", ""):
            expected = reference(query, passage)
            assert rules.copy_share(query, passage) == expected, (query, i)
            shares.append(expected)
    assert {0.0, 1.0} <= set(shares) and any(0 < s < 1 for s in shares)


@pytest.mark.parametrize("query, passage", [
    ("the sky is blue today", "We know: the SKY is blue, today."),
    ("the sky is blue today friend", "the sky is blue today"),
    ("a b c d e", "a b c d ee"),  # a word that is only a prefix of a passage word
    ("a b c d e", "xa b c d e"),  # ... or only a suffix
    ("bc d e f g", "abc d e f g"),
    ("İstanbul is a big city", "istanbul is a big city"),  # lower() lengthens the dotted İ
    ("\u212a is k a b", "k is k a b"),  # the Kelvin sign lower-cases to an ASCII k
    ("x_1 y_2 z_3 w_4 v_5", "x_1 y_2, z_3; w_4 (v_5)"),
])
def test_edge_cases_agree_with_the_reference(query, passage):
    assert rules.copy_share(query, passage) == reference(query, passage)
