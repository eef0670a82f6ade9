"""`python -m benchmarks list | run NAME [--quick] [--out FILE] [--PARAM VALUE ...] | run --all [--quick]`.

Run from the repository root. `run NAME --help` lists NAME's parameters; `--quick` is a tiny run
(seconds) that writes to out/benchmarks/NAME.json, never over benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.registry import Benchmark, Skip, add_options, discover, run


def show_list(benches: dict[str, Benchmark]) -> None:
    """One line per benchmark: name, what it measures, what it needs first."""
    width = max(map(len, benches))
    for bench in benches.values():
        after = f"  [after {bench.after}]" if bench.after else ""
        print(f"{bench.name:<{width}}  {bench.summary}{after}")


def run_one(bench: Benchmark, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks run {bench.name}", description=bench.summary)
    parser.add_argument("--quick", action="store_true", help="a tiny run; writes to out/benchmarks/ by default")
    parser.add_argument("--out", type=Path, help=f"result file (default: benchmarks/results/{bench.name}.json; "
                        f"with --quick out/benchmarks/{bench.name}.json)")
    add_options(parser, bench.params)
    args = vars(parser.parse_args(argv))
    quick, out = args.pop("quick"), args.pop("out")
    try:
        run(bench, quick=quick, out=out, overrides=args)
    except Skip as exc:
        print(f"{bench.name}: skipped: {exc}", file=sys.stderr)
        return 3
    return 0


def run_all(benches: dict[str, Benchmark], quick: bool) -> int:
    """Every benchmark that does not summarise a long experiment, in name order; a skip is reported
    and the others still run; the first failure stops (as `make` would)."""
    skipped = []
    for bench in benches.values():
        if bench.after:
            continue
        print(f"== {bench.name}{' (quick)' if quick else ''}", file=sys.stderr, flush=True)
        try:
            run(bench, quick=quick)
        except Skip as exc:
            skipped.append(f"{bench.name} ({exc})")
    if skipped:
        print("skipped: " + "; ".join(skipped), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    benches = discover()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "list":
        show_list(benches)
        return 0
    if argv[0] == "run" and len(argv) > 1 and argv[1] == "--all":
        return run_all(benches, quick="--quick" in argv[2:])
    if argv[0] == "run" and len(argv) > 1 and argv[1] in benches:
        return run_one(benches[argv[1]], argv[2:])
    known = ", ".join(benches)
    print(f"usage: python -m benchmarks list | run NAME|--all [--quick]; NAME is one of: {known}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
