#!/usr/bin/env bash
# `make demo`: the whole FRet pipeline on the embedded defaults (SmolLM2-135M as the LLM,
# all-MiniLM-L6-v2 as the embedder), with the real CLI in pipes — copy it for your own data.
#
#   passages -> generate -> rerank -> mine-negatives -> finetune -> evaluate (base vs fine-tuned)
#
# Demo-sized: DEMO_PASSAGES seed passages (default 20 of examples/passages.jsonl) and DEMO_TOP_K
# candidates each (default 5) from the whole SciFact corpus. The embedded LLM scores ~0.5-2
# (query, candidate) pairs per second on 2 cores, so rerank is the step that grows fastest:
# 100 passages x top 10 is ~1,100 pairs. The full-size experiment is `make e2e`.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${DEMO_PASSAGES:-20}"
K="${DEMO_TOP_K:-5}"
OUT=out/demo
mkdir -p "$OUT"
step() { echo >&2; echo "== $(date +%H:%M:%S) $*" >&2; }

step "1/5 gecko generate: a (task, query) for each of $N passages (FRet step 1)"
head -n "$N" examples/passages.jsonl \
  | gecko generate --rejects "$OUT/generate-rejects.jsonl" > "$OUT/queries.jsonl"

step "2/5 gecko rerank: top-$K SciFact candidates per query, scored by the LLM, fused (FRet step 2)"
gecko rerank --corpus examples/data/scifact/corpus.jsonl --top-k "$K" \
  --rejects "$OUT/rerank-rejects.jsonl" < "$OUT/queries.jsonl" > "$OUT/fret.jsonl"

step "3/5 gecko mine-negatives: the LLM's top candidate as positive, the lowest-ranked as hard negative"
gecko mine-negatives --audit "$OUT/audit.json" --audit-plot "$OUT/seed-rank.png" \
  --rejects "$OUT/mine-rejects.jsonl" < "$OUT/fret.jsonl" > "$OUT/train.jsonl"

step "4/5 gecko finetune: all-MiniLM-L6-v2 with the Gecko loss and Matryoshka (384..64)"
gecko finetune --output "$OUT/model" --epochs 1 --batch-size 8 --mrl-dims 384,256,128,64 < "$OUT/train.jsonl"

step "5/5 gecko evaluate: base vs fine-tuned on SciFact test (nDCG@10) at 384/256/128/64 dims"
gecko evaluate --dataset examples/data/scifact --split test --dims 384,256,128,64 \
  --model default --model "$OUT/model" --plot "$OUT/scifact-dims.png" > "$OUT/metrics.jsonl"

echo >&2
echo "model: $OUT/model   metrics: $OUT/metrics.jsonl   plots: $OUT/scifact-dims.png $OUT/seed-rank.png" >&2
echo "(a demo-sized run: $(wc -l < "$OUT/train.jsonl") training records; see 'make e2e' for the real experiment)" >&2
