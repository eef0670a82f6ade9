#!/usr/bin/env bash
# Does a better query writer make a better embedder? The make-e2e pipeline on the same passages
# with the queries of an LLM you serve (any OpenAI-compatible server) vs the embedded SmolLM2-135M.
#
#   QW_LLM=http://127.0.0.1:8011/v1 bash benchmarks/query_writer.sh
#
# Needs a finished `make e2e` (its out/e2e/passages.jsonl and fret.jsonl are the embedded side).
# Only the query writer differs: both sides are re-ranked by the embedded default (QL fused with
# the retriever, `--query-prompt gecko` as the e2e run), mined and fine-tuned as make e2e does
# (LLM positive and seed positive, rank-20 negative), then evaluated on the DEV set (SciFact
# train claims) — never tuned on test. Writes benchmarks/results/e2e_query_writer.json.
# QW_PASSAGES (default 700): the first N of out/e2e/passages.jsonl. Resumes like make e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${QW_LLM:?set QW_LLM to the /v1 URL of an OpenAI-compatible server}"
N="${QW_PASSAGES:-700}"
E2E=out/e2e
OUT=out/query-writer
mkdir -p "$OUT"
stamp() { date +%s; }
log() { echo "== $(date +%H:%M:%S) $*" >&2; }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
[ -s "$E2E/fret.jsonl" ] || { echo "query_writer.sh: run make e2e first ($E2E/fret.jsonl is missing)" >&2; exit 2; }

head -"$N" "$E2E/passages.jsonl" > "$OUT/passages.jsonl"
if [ $(( $(lines "$OUT/queries.jsonl") + $(lines "$OUT/generate-rejects.jsonl") )) -lt "$N" ]; then
  log "generate with $QW_LLM ($N passages)"; t=$(stamp)
  gecko generate --llm "$QW_LLM" --concurrency 1 -i "$OUT/passages.jsonl" -o "$OUT/queries.jsonl" \
    --rejects "$OUT/generate-rejects.jsonl" --resume
  echo "{\"stage\": \"generate\", \"seconds\": $(( $(stamp) - t ))}" >> "$OUT/timings.jsonl"
fi

# The embedded writer's records for exactly the passages the other writer got through.
python -m benchmarks.query_writer same-seeds "$OUT" "$E2E"

if [ $(( $(lines "$OUT/other-fret.jsonl") + $(lines "$OUT/rerank-rejects.jsonl") )) -lt "$(lines "$OUT/queries.jsonl")" ]; then
  log "rerank the other writer's queries (embedded default, two shards)"; t=$(stamp)
  for i in 0 1; do
    OMP_NUM_THREADS=1 gecko rerank --corpus examples/data/scifact/corpus.jsonl --top-k 20 --query-prompt gecko \
      --shard "$i/2" -i "$OUT/queries.jsonl" --rejects "$OUT/rerank-rejects-$i.jsonl" -o "$OUT/other-fret-$i.jsonl" --resume &
  done
  wait
  cat "$OUT/other-fret-0.jsonl" "$OUT/other-fret-1.jsonl" > "$OUT/other-fret.jsonl"
  cat "$OUT/rerank-rejects-0.jsonl" "$OUT/rerank-rejects-1.jsonl" > "$OUT/rerank-rejects.jsonl"
  echo "{\"stage\": \"rerank\", \"seconds\": $(( $(stamp) - t ))}" >> "$OUT/timings.jsonl"
fi

NAMES=()
for who in smol other; do
  for positive in fused seed; do
    name="$who-$positive"
    gecko mine-negatives --positive "$positive" --strategy rank:20 -i "$OUT/$who-fret.jsonl" \
      --audit "$OUT/audit-$name.json" -o "$OUT/train-$name.jsonl"
    NAMES+=("$name")
  done
done
pids=()
for name in "${NAMES[@]}"; do
  [ -f "$OUT/model-$name/config.json" ] && continue
  log "finetune: $name"
  ( t=$(stamp)
    OMP_NUM_THREADS=1 gecko finetune --output "$OUT/model-$name" --epochs 1 --batch-size 32 \
      --mrl-dims 384,256,128,64 --seed 0 -i "$OUT/train-$name.jsonl" \
      > "$OUT/finetune-$name.json" 2> "$OUT/finetune-$name.log"
    echo "{\"stage\": \"finetune-$name\", \"seconds\": $(( $(stamp) - t ))}" >> "$OUT/timings.jsonl" ) &
  pids+=($!)
  if [ "${#pids[@]}" -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

log "evaluate on the dev set (SciFact train claims)"; t=$(stamp)
MODELS=(--model default)
for name in "${NAMES[@]}"; do MODELS+=(--model "$OUT/model-$name"); done
gecko evaluate --dataset examples/data/scifact --split train --dims 384,128 "${MODELS[@]}" \
  --run-file "$OUT/runs/{model}-{dim}.trec" > "$OUT/dev-metrics.jsonl"
echo "{\"stage\": \"evaluate\", \"seconds\": $(( $(stamp) - t ))}" >> "$OUT/timings.jsonl"

python -m benchmarks.query_writer report "$OUT" "$QW_LLM"
log "done: benchmarks/results/e2e_query_writer.json"
