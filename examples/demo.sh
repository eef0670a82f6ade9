#!/usr/bin/env bash
# The main job on the embedded defaults, using the real CLI exactly as a user would.
# Today: measure the embedded embedder (all-MiniLM-L6-v2) on SciFact test and STS Benchmark
# test, at four Matryoshka dimensions from one encoding pass. As the FRet stages land this
# grows into: generate | rerank | mine-negatives | finetune | evaluate (base vs fine-tuned).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
echo "== gecko evaluate: embedded all-MiniLM-L6-v2 on SciFact test and STS Benchmark test" >&2
gecko evaluate \
  --dataset examples/data/scifact --split test \
  --sts examples/data/stsbenchmark/test.tsv \
  --dims 384,256,128,64 \
  --run-file 'out/scifact.{dim}.trec' \
  > out/demo-metrics.jsonl
echo "metrics: out/demo-metrics.jsonl   TREC runs: out/scifact.*.trec" >&2
