#!/usr/bin/env bash
# FRet steps 2-3 for the quality experiment: the top 10 SciFact abstracts `gecko retrieve` finds
# for every generated query (benchmarks/fret_generate.sh; the seed appended when missed), each
# scored by the embedded LLM's query likelihood (`gecko rerank`). The scores pick the positive and
# are the teacher of `finetune --distill`.
#
# Teacher shards slice the *passages* (benchmarks/fret_data.py): shard J scores, for every query,
# the candidates whose abstract falls in slice J, all in one rerank call, so each abstract's prompt
# runs once for all the queries that retrieved it. Each shard is committed on its own, without
# passage text; card: benchmarks/data/scifact-fret/README.md.
#
#   bash benchmarks/fret_teacher.sh          # every missing teacher shard (all generation shards needed)
#   bash benchmarks/fret_teacher.sh 3        # teacher shard 3 only
#
# Only queries whose own abstract the retriever finds in its top k are scored (the round-trip filter,
# FRET_FOUND=1; 0 scores every query): the others are mostly queries the 135M LLM got wrong, and
# scoring them would cost about as much again.
#
# QL is stored as the paper's sum over the query's tokens: on dev, distilling the per-token mean
# (margins on the student's scale, weight 1) did worse than the sum at T = 4 and weight 0.1
# (docs/experiments.md, "Teacher scale"). `gecko rerank --ql-norm mean` on the same pairs gives
# the mean from the LLM cache in seconds.
#
# Knobs: FRET_SHARDS (32 generation shards), FRET_TEACHER_SHARDS (8), FRET_K (4), FRET_SEED (0),
# FRET_TOP_K (10), FRET_FOUND (1), FRET_CORPUS; FRET_WRITER (the generation files of another writer,
# fret_generate.sh), FRET_USE_SHARDS (N: only generation shards 0..N-1, for a writer too slow for
# the whole corpus; default all), FRET_FROM_SHARD (F: start at generation shard F, so shards added
# later get a teacher set of their own, `-gF-Nof32`, and the scored ones are not scored again;
# `fret_train --teacher A,B` pools the sets). The teacher is always the embedded LLM.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS="${FRET_SHARDS:-32}"
TEACHER_SHARDS="${FRET_TEACHER_SHARDS:-8}"
K="${FRET_K:-4}"
SEED="${FRET_SEED:-0}"
TOP_K="${FRET_TOP_K:-10}"
FOUND="${FRET_FOUND:-1}"
CORPUS="${FRET_CORPUS:-examples/data/scifact/corpus.jsonl}"
DATA=benchmarks/data/scifact-fret
WORK=out/fret
WRITER="${FRET_WRITER:-}"
USE="${FRET_USE_SHARDS:-$SHARDS}"
FROM="${FRET_FROM_SHARD:-0}"
GENERATED="generate${WRITER:+-$WRITER}-k${K}-seed${SEED}"
FILTER=$([[ "$FOUND" == 1 ]] && echo "-found" || true)
if [[ "$FROM" != 0 ]]; then SUBSET="-g${FROM}-${USE}of${SHARDS}"
elif [[ "$USE" != "$SHARDS" ]]; then SUBSET="-g${USE}of${SHARDS}"
else SUBSET=""; fi
TAG="top${TOP_K}${FILTER}${WRITER:+-$WRITER}-k${K}-seed${SEED}${SUBSET}"
mkdir -p "$WORK"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
source benchmarks/fret_costs.sh

candidates() {  # every generated query with its top-k candidates (recomputed when missing: cheap)
  local file="$WORK/candidates-$TAG.jsonl" i files=()
  for ((i = FROM; i < USE; i++)); do files+=("$DATA/$GENERATED-shard${i}of$SHARDS.jsonl.gz"); done
  for i in "${files[@]}"; do
    if [[ ! -f "$i" ]]; then
      echo "gecko fret: $i is not committed yet; make it first (bash benchmarks/fret_generate.sh)" >&2
      exit 1
    fi
  done
  if [[ ! -s "$file" ]]; then
    zcat "${files[@]}" | gecko retrieve --corpus "$CORPUS" --top-k "$TOP_K" \
      | if [[ "$FOUND" == 1 ]]; then python -m benchmarks.fret_data found "$TOP_K"; else cat; fi > "$file.tmp"
    mv "$file.tmp" "$file"
  fi
  echo "$file"
}

one_shard() {
  local j="$1" name cands
  name="teacher-$TAG-shard${j}of${TEACHER_SHARDS}"
  if [[ -f "$DATA/$name.jsonl.gz" ]]; then
    echo "gecko fret: $name already committed, skipped" >&2
    return
  fi
  cands=$(candidates)
  local started=$SECONDS cpu="$WORK/$name.cpu"
  [[ -s "$WORK/$name.input.jsonl" ]] || python -m benchmarks.fret_data slice "$j/$TEACHER_SHARDS" < "$cands" > "$WORK/$name.input.jsonl"
  # One window for the whole shard: every abstract's prompt prefix runs once (--resume and the LLM
  # cache make an interrupted shard continue where it stopped).
  /usr/bin/time -a -o "$cpu" -f "%U %S" gecko rerank --window 1000000 --resume -i "$WORK/$name.input.jsonl" \
    -o "$WORK/$name.jsonl" --rejects "$WORK/$name.rejects.jsonl"
  python -m benchmarks.fret_data slim < "$WORK/$name.jsonl" | gzip -9 -n > "$DATA/$name.jsonl.gz.tmp"
  gzip -9 -n -c "$WORK/$name.rejects.jsonl" > "$DATA/$name.rejects.jsonl.gz"
  mv "$DATA/$name.jsonl.gz.tmp" "$DATA/$name.jsonl.gz"
  record_cost "$name" rejected "$started"
}

if [[ $# -gt 0 ]]; then
  one_shard "$1"
else
  for ((j = 0; j < TEACHER_SHARDS; j++)); do one_shard "$j"; done
fi
