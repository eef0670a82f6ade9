"""Compare `gecko generate` prompt variants on SmolLM2-135M (development passages only).

For each variant, on the first N SciFact and N BoolQ corpus passages (one example each, task
types sampled as the stage does, temperature as shipped, first attempt only, no retry):
- usable: share of outputs that are not degenerate (the stage's own `degenerate` rules);
- copies: share rejected because they copy the passage or echo the prompt's example;
- seed@1: share of usable queries for which all-MiniLM-L6-v2 ranks the seed passage first
  among all 2N passages (a cheap quality proxy: a query that says what its passage says).
generate_seconds is 0 when the LLM cache (GECKO_CACHE_DIR) serves a re-run.

    python -m benchmarks run generate_prompts [--passages 30 --variants "one-shot bare"]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from benchmarks.common import SHARED_DATA, missing_paths, read_jsonl, timed
from benchmarks.registry import Benchmark, Context
from gecko_cli.contract.records import validate_passage
from gecko_cli.llm.generation import (MAX_NEW_TOKENS, PASSAGE_WORDS, example_queries, parse_task_types,
                                      parse_template, render, sample_tasks)
from gecko_cli.llm.scoring import load_prompt

CORPORA = ("scifact", "boolq")

SYSTEM = ("You write one search query for a passage. Reply with the query only, on one line, in your own words. "
          "Never copy sentences from the passage.")
ONE_SHOT = """### system
You write one search query for a passage. Reply with the query only, on one line, in your own words. Never copy sentences from the passage.
### user
Task: Given a question, retrieve passages that answer the question
Write a question that the passage answers.
Passage: Python (programming language). The global interpreter lock lets only one thread execute Python bytecode at a time, which limits parallelism on multi-core processors.
### assistant
why is the global interpreter lock in python a problem
### user
Task: {task}
Write {query_kind}.
Passage: {title}. {text}"""
TWO_SHOT = f"""### system
{SYSTEM}
### user
Task: Given a claim, find a passage that supports or refutes it
Write a short claim that the passage supports or refutes.
Passage: Aspirin and heart attacks. In a randomized trial of 22,071 physicians, taking 325 mg of aspirin every other day reduced the risk of a first myocardial infarction by 44 percent.
### assistant
aspirin lowers the risk of a first heart attack
### user
Task: Given a web search query, retrieve relevant passages that answer the query
Write a short web search query for which the passage is a good result.
Passage: Python (programming language). The global interpreter lock lets only one thread execute Python bytecode at a time, which limits parallelism on multi-core processors.
### assistant
python threads parallel gil
### user
Task: {{task}}
Write {{query_kind}}.
Passage: {{title}}. {{text}}"""


@dataclass
class Params:
    passages: int = 30  # the first N of each corpus
    variants: str = ""  # comma-separated variant names (default: all)
    threads: int = 2  # torch threads


def passages(n: int) -> list[dict]:
    return [validate_passage(p) for name in CORPORA for p in read_jsonl(SHARED_DATA / name / "corpus.jsonl", n)]


def evaluate(name: str, template_text: str, docs: list[dict], backend, encoder, doc_vecs) -> dict:
    from gecko_cli.stages import generate as g

    template = parse_template(template_text)
    types = parse_task_types(json.loads(resources.files("gecko_cli.llm.prompts").joinpath("task_types.json").read_text()))
    shots = example_queries(template)
    tasks = [sample_tasks(types, 0, str(p["id"]), 1)[0] for p in docs]
    examples = [g._Example(p, 0, task, render(template, p, task)) for p, task in zip(docs, tasks)]
    _, seconds = timed(g._attempt, backend, examples, shots, 0.7, 0, 0)  # the stage's first attempt, no retry
    usable = [i for i, e in enumerate(examples) if not e.error]
    copies = sum(1 for e in examples if e.error and ("copies" in e.error or "example" in e.error))
    meta = sum(1 for e in examples if e.error and "talks about" in e.error)
    loops = sum(1 for e in examples if e.error and "repeats itself" in e.error)
    top1 = 0
    if usable:
        q = encoder.encode([examples[i].query for i in usable], what="queries")
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        top1 = int(sum(int(np.argmax(doc_vecs @ v)) == i for v, i in zip(q, usable)))
    reasons: dict[str, int] = {}
    for e in examples:
        if e.error:
            key = e.error.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"variant": name, "n": len(examples), "usable": round(len(usable) / len(examples), 3),
            "copies_or_echoes": round(copies / len(examples), 3), "loops": round(loops / len(examples), 3),
            "meta_talk": round(meta / len(examples), 3),
            "seed_rank1_of_usable": round(top1 / max(len(usable), 1), 3),
            "seed_rank1_of_all": round(top1 / len(examples), 3),
            "degenerate_reasons": reasons, "generate_seconds": round(seconds, 1),
            "examples": [{"passage_id": examples[i].passage["id"], "title": examples[i].passage.get("title"),
                          "task": examples[i].task.task, "query": examples[i].query} for i in usable[:3]] +
                        [{"passage_id": examples[i].passage["id"], "query": examples[i].query}
                         for i in usable if examples[i].passage["id"].startswith("boolq")][:2]}


def run(params: Params, context: Context) -> dict[str, Any]:
    import torch

    from gecko_cli.contract.env import cache_dir
    from gecko_cli.llm.cache import CachedBackend, ResultCache
    from gecko_cli.llm.local import LocalBackend
    from gecko_cli.search.embed import load_encoder

    torch.set_num_threads(params.threads)
    docs = passages(params.passages)
    backend = CachedBackend(LocalBackend(), ResultCache(cache_dir() / "llm.sqlite"))
    encoder = load_encoder(None)
    d = encoder.encode([f"{p.get('title') or ''}. {p['text']}" for p in docs], what="passages")
    doc_vecs = d / np.linalg.norm(d, axis=1, keepdims=True)
    variants = {"one-shot JSON (shipped: prompts/generate.txt)": load_prompt("generate"),
                "one-shot bare": ONE_SHOT, "two-shot bare": TWO_SHOT}
    only = [v for v in params.variants.split(",") if v]
    results = []
    for name, text in variants.items():
        if only and name not in only:
            continue
        results.append(evaluate(name, text, docs, backend, encoder, doc_vecs))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "examples"}), file=sys.stderr, flush=True)
    return {"model": backend.model_id, "embedder": "all-MiniLM-L6-v2",
            "passages": f"first {params.passages} of scifact + first {params.passages} of boolq corpus",
            "temperature": 0.7, "max_new_tokens": MAX_NEW_TOKENS, "passage_words": PASSAGE_WORDS, "results": results}


BENCHMARK = Benchmark(
    name="generate_prompts",
    summary="`gecko generate` prompt variants on SmolLM2-135M: usable share, copies, seed ranked first",
    params=Params, run=run, quick={"passages": 1, "threads": 1, "variants": "one-shot JSON (shipped: prompts/generate.txt)"},
    needs=lambda p: missing_paths(*(SHARED_DATA / name / "corpus.jsonl" for name in CORPORA)),
)
