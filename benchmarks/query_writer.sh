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
python - "$OUT" "$E2E" <<'PY'
import json, sys
out, e2e = sys.argv[1:]
done = {json.loads(l)["seed"]["id"] for l in open(f"{out}/queries.jsonl")}
done |= {json.loads(json.loads(l)["raw"])["id"] for l in open(f"{out}/generate-rejects.jsonl")}
with open(f"{out}/smol-fret.jsonl", "w") as f:
    f.writelines(l for l in open(f"{e2e}/fret.jsonl") if json.loads(l)["seed"]["id"] in done)
PY

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

python - "$OUT" "$QW_LLM" > benchmarks/results/e2e_query_writer.json <<'PY'
import json, sys
out, url = sys.argv[1:]
rows = lambda path: [json.loads(l) for l in open(path)]

def seed_ranks(path):
    """The seed's rank by retriever score; 21 when the search missed it (it was appended)."""
    ranks = []
    for r in rows(path):
        ids = [str(c["id"]) for c in sorted(r["candidates"], key=lambda c: -c["retriever_score"])]
        ranks.append(21 if len(ids) > 20 else ids.index(str(r["seed"]["id"])) + 1)
    return ranks

first = rows(f"{out}/queries.jsonl")[0]["_provenance"][0]
report = {"what": "query writer ablation: the other LLM's queries vs the embedded SmolLM2-135M's on the same "
                  "SciFact passages; same rerank, mining, fine-tuning; nDCG@10 on the DEV set (SciFact train claims)",
          "other_llm": {"url": url, "model": first.get("model")},
          "passages": len(rows(f"{out}/passages.jsonl")),
          "timings": rows(f"{out}/timings.jsonl"), "writers": {}}
for who in ("smol", "other"):
    ranks = seed_ranks(f"{out}/{who}-fret.jsonl")
    audit = json.load(open(f"{out}/audit-{who}-fused.json"))
    report["writers"][who] = {
        "records": len(ranks),
        "seed_first_by_retriever": round(sum(r == 1 for r in ranks) / len(ranks), 4),
        "seed_in_top20": round(sum(r <= 20 for r in ranks) / len(ranks), 4),
        "positive_not_seed_share": audit["positive_not_seed_share"],
        "finetune": {p: json.loads(open(f"{out}/finetune-{who}-{p}.json").read()) for p in ("fused", "seed")}}
report["dev_ndcg@10"] = [{"model": r["model"], "dim": r["dim"], "ndcg@10": r["ndcg@10"]}
                         for r in rows(f"{out}/dev-metrics.jsonl")]

# Paired bootstrap over the dev queries (per-query nDCG@10 from the TREC runs): is a difference
# more than the noise of 809 queries?
import csv
from pathlib import Path
import numpy as np
from gecko_cli.eval.metrics import ndcg_at

qrels: dict = {}
with open("examples/data/scifact/qrels/train.tsv") as f:
    for row in csv.DictReader(f, delimiter="\t"):
        qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])

def per_query(path: Path) -> dict:
    ranking: dict = {}
    for line in path.read_text().splitlines():
        qid, _, doc, rank, _, _ = line.split()
        ranking.setdefault(qid, []).append((int(rank), doc))
    return {q: ndcg_at(qrels[q], [d for _, d in sorted(r)], 10) for q, r in ranking.items() if q in qrels}

rng = np.random.default_rng(0)
def compare(a: str, b: str, dim: int) -> dict:
    x, y = (per_query(Path(f"{out}/runs/{m}-{dim}.trec")) for m in (a, b))
    d = np.array([x[q] - y[q] for q in sorted(x)])
    boot = d[rng.integers(0, len(d), (2000, len(d)))].mean(axis=1)
    return {"a": a, "b": b, "dim": dim, "queries": len(d), "mean_diff": round(float(d.mean()), 4),
            "ci95": [round(float(v), 4) for v in np.percentile(boot, [2.5, 97.5])]}

for row in report["dev_ndcg@10"]:  # the runs re-score to evaluate's own figures, or the test below means nothing
    mine = per_query(Path(f"{out}/runs/{Path(row['model']).name}-{row['dim']}.trec"))
    assert abs(np.mean(list(mine.values())) - row["ndcg@10"]) < 1e-4, (row, np.mean(list(mine.values())))

pairs = [("model-other-fused", "model-smol-fused"), ("model-other-seed", "model-smol-seed"),
         ("model-other-fused", "all-MiniLM-L6-v2"), ("model-smol-fused", "all-MiniLM-L6-v2"),
         ("model-other-seed", "all-MiniLM-L6-v2"), ("model-other-fused", "model-other-seed")]
report["paired_bootstrap"] = [compare(a, b, dim) for dim in (384, 128) for a, b in pairs]
json.dump(report, sys.stdout, indent=1)
print()
PY
log "done: benchmarks/results/e2e_query_writer.json"
