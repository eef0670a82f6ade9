#!/usr/bin/env bash
# `make e2e`: FRet over the unlabelled SciFact corpus with the embedded LLM and embedder, then
# fine-tune all-MiniLM-L6-v2 and evaluate it against the base model (issue 6). Hours of CPU:
# every stage writes its output under out/e2e/ and resumes, and every LLM call is cached, so an
# interrupted run continues where it stopped. N passages: E2E_PASSAGES (default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${E2E_PASSAGES:-2000}"
OUT=out/e2e
mkdir -p "$OUT"
stamp() { date +%s; }
log() { echo "== $(date +%H:%M:%S) $*" >&2; }

# 1. Seed passages: the N SciFact abstracts with the smallest sha256(id) (a fixed, unbiased sample).
python - "$N" > "$OUT/passages.jsonl" <<'PY'
import hashlib, json, sys
n = int(sys.argv[1])
rows = [json.loads(l) for l in open("examples/data/scifact/corpus.jsonl", encoding="utf-8")]
rows.sort(key=lambda r: hashlib.sha256(r["_id"].encode()).hexdigest())
for r in rows[:n]:
    print(json.dumps({"id": r["_id"], "title": r["title"], "text": r["text"]}, ensure_ascii=False))
PY

# 2. FRet step 1: a (task, query) per passage.
log "generate ($N passages)"; t=$(stamp)
gecko generate -i "$OUT/passages.jsonl" -o "$OUT/queries.jsonl" --rejects "$OUT/generate-rejects.jsonl" --resume
echo "{\"stage\": \"generate\", \"seconds\": $(( $(stamp) - t ))}" >> "$OUT/timings.jsonl"
