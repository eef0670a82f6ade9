"""The benchmark registry, parameters from the command line, and the one result envelope.

A benchmark is a module of this package that ends with

    BENCHMARK = Benchmark(name="retrieve", summary="...", params=Params, run=run,
                          quick={"queries": 20})

`Params` is a dataclass whose defaults are the full-size run; `quick` overrides some of them for a
tiny run (seconds) that still goes through the real code; `run(params, context)` returns the
results. Every result file is the envelope

    {"name", "date", "git_sha", "version", "machine", "parameters", "results"}

and the full run of NAME writes benchmarks/results/NAME.json; a quick run never writes there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import inspect
import json
import pkgutil
import re
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from benchmarks.common import QUICK_OUT, RESULTS, git_sha, loadavg, machine_info

ENVELOPE = ("name", "date", "git_sha", "version", "machine", "parameters", "results")
HELPERS = {"common", "registry", "__main__"}


class Skip(Exception):
    """The benchmark cannot run here (an optional module, data set or experiment output is missing)."""


@dataclass
class Context:
    """What a run gets besides its parameters."""

    quick: bool
    out: Path  # the result file; a benchmark may write figures beside it
    workdir: Path  # scratch space, removed after the run


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its name is also its result file, benchmarks/results/NAME.json."""

    name: str
    summary: str  # one line for `python -m benchmarks list`
    params: type  # a dataclass; its defaults are the full-size run
    run: Callable[[Any, Context], dict[str, Any]]
    quick: Mapping[str, Any] = field(default_factory=dict)  # overrides for --quick
    needs: Callable[[Any], str | None] | None = None  # why it cannot run with these parameters, or None
    after: str | None = None  # the long experiment whose outputs it summarises; `make bench` leaves it out
    quick_setup: Callable[[Any, Context], Any] | None = None  # --quick: make tiny inputs, return new params

    @property
    def result(self) -> Path:
        return RESULTS / f"{self.name}.json"


def discover() -> dict[str, Benchmark]:
    """Every module of this package that defines BENCHMARK, by name."""
    import benchmarks

    found: dict[str, Benchmark] = {}
    for module in pkgutil.iter_modules(benchmarks.__path__):
        if module.name in HELPERS:
            continue
        bench = getattr(importlib.import_module(f"benchmarks.{module.name}"), "BENCHMARK", None)
        if isinstance(bench, Benchmark):
            if bench.name in found:
                raise RuntimeError(f"two benchmarks are called {bench.name}")
            found[bench.name] = bench
    return dict(sorted(found.items()))


# --- parameters ---------------------------------------------------------------------------------


def _option_type(hint: Any) -> type:
    """int | None -> int; the parameter types are int, float, str and bool."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def field_comments(params: type) -> dict[str, str]:
    """The comment after each field in the dataclass's source (the option's help).

    `    top_k: int = 20  # the --top-k` -> {"top_k": "the --top-k"}
    """
    try:
        source = inspect.getsource(params)
    except (OSError, TypeError):
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#(.*)$", source, re.M)}


def add_options(parser: argparse.ArgumentParser, params: type) -> None:
    """One --kebab-case option per field of the parameter dataclass; its help is the field's comment."""
    hints, comments = typing.get_type_hints(params), field_comments(params)
    for f in dataclasses.fields(params):
        kind = _option_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f"{comments[f.name]} (default: {f.default!r})" if f.name in comments else f"default: {f.default!r}"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=kind.__name__.upper(), help=text)


def parameters(bench: Benchmark, quick: bool, overrides: Mapping[str, Any] | None = None) -> Any:
    """The full-size defaults, then the quick ones, then what the command line set."""
    values = dict(bench.quick) if quick else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return bench.params(**values)


# --- running ------------------------------------------------------------------------------------


def envelope(name: str, parameters: Mapping[str, Any], results: dict[str, Any],
             load_before: list[float] | None = None) -> dict[str, Any]:
    """The one shape of every result file."""
    from gecko_cli import __version__

    return {"name": name, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git_sha": git_sha(), "version": __version__, "machine": machine_info(load_before),
            "parameters": dict(parameters), "results": results}


def output_path(bench: Benchmark, quick: bool, out: Path | None) -> Path:
    """Where the result goes; a quick run is refused a place among the committed results."""
    path = (out or (QUICK_OUT / f"{bench.name}.json" if quick else bench.result)).resolve()
    if quick and path.is_relative_to(RESULTS.resolve()):
        raise SystemExit(f"a --quick run does not write under {RESULTS}: pass --out elsewhere")
    return path


def run(bench: Benchmark, quick: bool = False, out: Path | None = None,
        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one benchmark, write its envelope to the output path, return the envelope.

    Raises Skip when it cannot run here.
    """
    params = parameters(bench, quick, overrides)
    path = output_path(bench, quick, out)
    with tempfile.TemporaryDirectory(prefix=f"bench-{bench.name}-") as tmp:
        context = Context(quick=quick, out=path, workdir=Path(tmp))
        if quick and bench.quick_setup is not None:  # may raise Skip too (no data to cut from)
            params = bench.quick_setup(params, context)
        reason = bench.needs(params) if bench.needs else None
        if reason:
            raise Skip(reason)
        load_before = loadavg()
        results = bench.run(params, context)
    shown = {"quick": quick, **dataclasses.asdict(params)}
    result = envelope(bench.name, shown, results, load_before)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{bench.name}: wrote {path}", file=sys.stderr)
    return result
