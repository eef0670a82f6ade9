"""gecko's benchmarks, one harness: `python -m benchmarks list`, `python -m benchmarks run NAME [--quick]`.

Each benchmark is a module here with a `BENCHMARK` registration (registry.py); shared helpers
(paths, timing, machine facts, JSONL, the gecko CLI) are in common.py. See benchmarks/README.md.
"""
