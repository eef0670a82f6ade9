# Sourced by fret_generate.sh and fret_teacher.sh: one line of costs.jsonl for a finished shard.
#   record_cost NAME REJECTS_KEY STARTED_SECONDS   (uses DATA, WORK, OMP_NUM_THREADS)
# CPU seconds sum every run of the shard's commands (an interrupted run's too, from WORK/NAME.cpu):
# the machine is often shared, so wall time alone would not say what a shard costs.
record_cost() {
  local name="$1" key="$2" started="$3"
  printf '{"shard": "%s", "records": %d, "%s": %d, "wall_seconds": %d, "cpu_seconds": %d, "threads": %s, "git": "%s"}\n' \
    "$name" "$(wc -l < "$WORK/$name.jsonl")" "$key" "$(wc -l < "$WORK/$name.rejects.jsonl")" \
    "$((SECONDS - started))" "$(awk '{s += $1 + $2} END {printf "%d", s}' "$WORK/$name.cpu")" "$OMP_NUM_THREADS" \
    "$(git rev-parse --short HEAD)" >> "$DATA/costs.jsonl"
}
