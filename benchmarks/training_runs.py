"""A training stage run once per settings, and what it cost: the experiments (fret_train,
decoder_pooling) keep each model in a folder named by its settings, so a re-run trains only what
is missing and still reports the CPU and wall seconds the first run measured."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.common import gecko, gecko_process

SUMMARY = "bench-summary.json"


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or of its finished children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measured(*args: str, fresh: bool = True) -> tuple[bytes, bytes, float, float]:
    """(stdout, stderr, CPU seconds, wall seconds) of `gecko ARGS`: a fresh process (training: its
    memory goes with it, and its start-up counts in the budget), or in this one (evaluation)."""
    who = resource.RUSAGE_CHILDREN if fresh else resource.RUSAGE_SELF
    cpu, wall = cpu_seconds(who), time.perf_counter()
    run = gecko_process(*args) if fresh else gecko(*args)
    return run.stdout, run.stderr, round(cpu_seconds(who) - cpu, 1), round(time.perf_counter() - wall, 1)


def trained(stage: str, output: Path, args: list[str]) -> dict[str, Any]:
    """Run `gecko STAGE --output OUTPUT ARGS` unless the model is there: {"summary": its summary line,
    "cpu_seconds", "wall_seconds"}, saved beside the model."""
    summary_file = output / SUMMARY
    if not summary_file.is_file():
        stdout, _, cpu, wall = measured(stage, "--output", str(output), *args)
        summary_file.write_text(json.dumps({"summary": json.loads(stdout), "cpu_seconds": cpu,
                                            "wall_seconds": wall}) + "\n")
    return json.loads(summary_file.read_text())
