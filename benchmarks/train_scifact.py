"""Does `gecko finetune` learn? SciFact train qrels -> training records -> finetune -> SciFact test.

The records come from examples/scifact_train_records.sh (each train claim with the abstract it
cites as the positive, the retriever's rank-20 candidate as the negative); the model is the
embedded all-MiniLM-L6-v2, fine-tuned with the Gecko loss and MRL; base and fine-tuned are
evaluated on the SciFact **test** claims (never trained on).

    python -m benchmarks run train_scifact       # one fine-tune (see benchmarks/README.md)
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SCIFACT, beir_subset, gecko, gecko_env, parse_jsonl, rel
from benchmarks.registry import Benchmark, Context

RECORDS_SCRIPT = "examples/scifact_train_records.sh"


@dataclass
class Params:
    data: str = str(SCIFACT)  # a BEIR folder with qrels/train.tsv and qrels/test.tsv
    epochs: float = 1.0
    batch_size: int = 32
    mrl_dims: str = "384,256,128,64"
    dims: str = "384,256,128,64"  # evaluated
    seed: int = 0
    max_steps: int = 0  # 0: whole epochs
    task: str = "fact checking"


def training_records(data: str) -> bytes:
    """The example script's JSONL (it runs gecko retrieve and mine-negatives itself)."""
    import subprocess

    env = gecko_env(SCIFACT_DATA=data, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(ROOT / RECORDS_SCRIPT)], capture_output=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{RECORDS_SCRIPT} exited {proc.returncode}:\n{proc.stderr.decode()[-2000:]}")
    return proc.stdout


def run(params: Params, context: Context) -> dict[str, Any]:
    records = context.workdir / "scifact-train-records.jsonl"
    records.write_bytes(training_records(params.data))
    model = context.workdir / "scifact-ft"
    finetune = ["finetune", "--output", str(model), "--epochs", f"{params.epochs:g}", "--batch-size",
                str(params.batch_size), "--mrl-dims", params.mrl_dims, "--seed", str(params.seed)]
    if params.max_steps:
        finetune += ["--max-steps", str(params.max_steps)]
    summary = json.loads(gecko(*finetune, "-i", str(records)).stdout)
    evaluate = ["evaluate", "--dataset", params.data, "--split", "test", "--model", "default", "--model", str(model),
                "--task", params.task, "--dims", params.dims]
    rows = parse_jsonl(gecko(*evaluate).stdout)
    ndcg = {str(r["dim"]): {} for r in rows}
    for r in rows:
        ndcg[str(r["dim"])]["finetuned" if r["model"] == str(model) else "base"] = r["ndcg@10"]
    return {
        "what": "Does gecko finetune learn? SciFact train qrels -> training records -> finetune -> SciFact test",
        "commands": [f"bash {RECORDS_SCRIPT} > {records.name}",
                     " ".join(["gecko", *map(rel, finetune), "<", records.name]),
                     " ".join(["gecko", *map(rel, evaluate)])],
        "training_records": sum(1 for line in records.read_bytes().splitlines() if line.strip()),
        "positive": "the cited abstract (--positive seed)",
        "negative": "candidate at rank 20 of the embedded retriever (rank:20)",
        "finetune_summary": summary,
        "ndcg@10": ndcg,
    }


def quick_setup(params: Params, context: Context) -> Params:
    """4 train claims and 5 test claims over the abstracts they cite and 40 others; one step."""
    data = beir_subset(Path(params.data), context.workdir / "scifact", {"train": 4, "test": 5}, extra_docs=40)
    return replace(params, data=str(data), batch_size=2, max_steps=1, mrl_dims="384,128", dims="384,128")


BENCHMARK = Benchmark(
    name="train_scifact",
    summary="fine-tune on SciFact train qrels (gold labels), evaluate base vs fine-tuned on SciFact test",
    params=Params, run=run, quick_setup=quick_setup,
)
