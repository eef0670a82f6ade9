#!/usr/bin/env bash
# FRet step 1 for the quality experiment: K (task, query) per SciFact abstract with the embedded
# LLM, in --shard slices that are each finished, compressed and committed on their own
# (benchmarks/data/scifact-fret/, card: README.md there). A shard already committed is skipped;
# an interrupted one resumes (gecko generate --resume; finished LLM calls come from the cache).
#
#   bash benchmarks/fret_generate.sh            # every missing shard, one after another
#   bash benchmarks/fret_generate.sh 3          # shard 3 only (two at once on two cores is fine)
#
# Knobs: FRET_SHARDS (32), FRET_K (4), FRET_SEED (0), FRET_CORPUS (the SciFact corpus); another
# writer: FRET_LLM (gecko generate --llm, e.g. a GGUF file) with FRET_WRITER, a short name that goes
# into the file names (FRET_LLM=out/models/qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf FRET_WRITER=qwen05,
# benchmarks/second_writer.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS="${FRET_SHARDS:-32}"
K="${FRET_K:-4}"
SEED="${FRET_SEED:-0}"
CORPUS="${FRET_CORPUS:-examples/data/scifact/corpus.jsonl}"
LLM="${FRET_LLM:-embedded}"
WRITER="${FRET_WRITER:-}"
if [[ "$LLM" != embedded && -z "$WRITER" ]]; then
  echo "gecko fret: FRET_LLM=$LLM needs FRET_WRITER, a short name for its files" >&2
  exit 2
fi
DATA=benchmarks/data/scifact-fret
WORK=out/fret
mkdir -p "$DATA" "$WORK"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
source benchmarks/fret_costs.sh

one_shard() {
  local i="$1" name
  name="generate${WRITER:+-$WRITER}-k${K}-seed${SEED}-shard${i}of${SHARDS}"
  if [[ -f "$DATA/$name.jsonl.gz" ]]; then
    echo "gecko fret: $name already committed, skipped" >&2
    return
  fi
  local started=$SECONDS cpu="$WORK/$name.cpu"
  /usr/bin/time -a -o "$cpu" -f "%U %S" gecko generate --llm "$LLM" --per-passage "$K" --seed "$SEED" --shard "$i/$SHARDS" --resume \
    -o "$WORK/$name.jsonl" --rejects "$WORK/$name.rejects.jsonl" < "$CORPUS"
  # Finished: publish the shard (records and rejects) and its cost for the dataset card.
  gzip -9 -n -c "$WORK/$name.jsonl" > "$DATA/$name.jsonl.gz.tmp"
  gzip -9 -n -c "$WORK/$name.rejects.jsonl" > "$DATA/$name.rejects.jsonl.gz"
  mv "$DATA/$name.jsonl.gz.tmp" "$DATA/$name.jsonl.gz"
  record_cost "$name" rejected_passages "$started"
}

if [[ $# -gt 0 ]]; then
  one_shard "$1"
else
  for ((i = 0; i < SHARDS; i++)); do one_shard "$i"; done
fi
