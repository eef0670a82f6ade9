#!/usr/bin/env bash
# Real training records from SciFact *train* qrels (the claims with the abstracts they cite),
# with hard negatives mined by gecko itself: retrieve top-20 from the SciFact corpus, keep the
# cited abstract as the positive (--positive seed), negative = candidate at rank 20.
# Used to check that `gecko finetune` learns (evaluate on SciFact *test*, never train on it).
#   bash examples/scifact_train_records.sh > out/scifact-train-records.jsonl
# SCIFACT_DATA: another BEIR folder of the same shape (benchmarks/train_scifact.py passes a small one).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SCIFACT_DATA:-examples/data/scifact}"
python - "$DATA" <<'PY' | gecko retrieve --corpus "$DATA/corpus.jsonl" --top-k 20 | gecko mine-negatives --positive seed --strategy rank:20
import csv, json, sys
data = sys.argv[1]
queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in open(f"{data}/queries.jsonl")}
corpus = {}
for line in open(f"{data}/corpus.jsonl"):
    d = json.loads(line)
    corpus[d["_id"]] = {"id": d["_id"], "title": d["title"], "text": d["text"]}
for q, doc, _ in list(csv.reader(open(f"{data}/qrels/train.tsv"), delimiter="\t"))[1:]:
    print(json.dumps({"id": f"{q}-{doc}", "task": "fact checking", "query": queries[q], "seed": corpus[doc]}))
PY
