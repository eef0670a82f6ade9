#!/usr/bin/env bash
# `make bench`: every benchmark, results under benchmarks/results/. Ratios are measured side by
# side in one run; absolute times on a shared machine are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${GECKO_DATA:-../shared/data}"
python benchmarks/check_evaluate.py --data "$DATA"
for bench in benchmarks/bench_*.py; do
  [ -e "$bench" ] || continue
  echo "== $bench" >&2
  python "$bench"
done
