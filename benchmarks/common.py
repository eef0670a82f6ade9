"""What every benchmark shares: repository paths, timing, machine facts, JSONL, the gecko CLI, small data.

Heavy libraries (torch) are never imported here: `python -m benchmarks list` stays instant.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import gzip
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, TypeVar

from gecko_cli.contract.jsonl import LineError, parse_object, read_lines

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # committed results: only full runs write here
DATA = ROOT / "benchmarks" / "data"  # committed inputs made once (see rerank_speed)
QUICK_OUT = ROOT / "out" / "benchmarks"  # where a --quick run writes by default
EXAMPLES = ROOT / "examples"
SCIFACT = EXAMPLES / "data" / "scifact"
# The shared evaluation sets (STS Benchmark, SICK-R, BoolQ, MEDLINE, ...) live beside the clone.
SHARED_DATA = Path(os.environ.get("GECKO_DATA") or ROOT.parent / "shared" / "data")
# The gecko CLI of this checkout, as a subprocess (shown as `gecko` in results).
GECKO = [sys.executable, "-m", "gecko_cli"]
# As gecko's own entry point does: the embedded models are on disk, never fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PACKAGES = ("torch", "transformers", "sentence-transformers", "hnswlib", "numpy", "llama-cpp-python")

T = TypeVar("T")


# --- JSONL: gecko's own reader, so a bad line names its file and number ------------------------


def _records(stream: IO[bytes], origin: str, limit: int | None) -> list[dict[str, Any]]:
    out = []
    for line in itertools.islice(read_lines(stream), limit):
        try:
            out.append(parse_object(line))
        except LineError as exc:
            raise ValueError(f"{origin}:{line.number}: {exc}") from None
    return out


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` (default all) JSON objects of a JSONL file, gzipped when it ends in .gz;
    [] when it does not exist."""
    if not path.exists():
        return []
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as stream:
        return _records(stream, str(path), limit)


def parse_jsonl(data: str | bytes, origin: str = "<output>") -> list[dict[str, Any]]:
    """JSONL text (a subprocess's stdout) -> objects.

    >>> parse_jsonl('{"id": 1}\\n\\n{"id": 2}\\n')
    [{'id': 1}, {'id': 2}]
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return _records(io.BytesIO(raw), origin, None)


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line, UTF-8 as is (what the old benchmark files hold)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl_text(records), encoding="utf-8")
    return path


def filter_jsonl(src: Path, dst: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Copy the lines of a JSONL file whose object `keep` accepts, byte for byte; how many were kept."""
    kept = 0
    with src.open("rb") as stream, dst.open("wb") as out:
        for line in read_lines(stream):
            try:
                record = parse_object(line)
            except LineError as exc:
                raise ValueError(f"{src}:{line.number}: {exc}") from None
            if keep(record):
                out.write(line.data + b"\n")
                kept += 1
    return kept


def count_lines(path: Path) -> int:
    """Non-blank lines of a text file (records of a JSONL file)."""
    with path.open("rb") as stream:
        return sum(1 for line in stream if line.strip())


# --- timing -------------------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Wall-clock and CPU seconds (of this process) of a `with stopwatch()` block."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield watch
    finally:
        watch.wall, watch.cpu = time.perf_counter() - wall, time.process_time() - cpu


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """(result, wall seconds) of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


# --- machine ------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(load_before: list[float] | None = None) -> dict[str, Any]:
    """One shape for every result: CPU, cores, threads, load (before and after the run), versions.

    torch's thread count is read only when the benchmark imported torch (it sets it).
    """
    torch = sys.modules.get("torch")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": {"before": load_before, "after": loadavg()},
            "packages": {name: package_version(name) for name in PACKAGES}}


def git_sha() -> str | None:
    """HEAD's commit, with `-dirty` when tracked files differ from it (None outside a git clone)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def missing_module(name: str) -> str | None:
    """Why a benchmark cannot run without the optional module `name`, or None when it is installed."""
    return None if importlib.util.find_spec(name) else f"needs the {name} module (make install-test)"


def missing_paths(*paths: Path) -> str | None:
    """Why a benchmark cannot run without these files, or None when they all exist."""
    missing = [str(p) for p in paths if not p.exists()]
    return f"missing {', '.join(missing)}" if missing else None


# --- the gecko CLI -------------------------------------------------------------------------------


def gecko_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


@dataclass
class GeckoRun:
    """What a gecko command wrote (bytes, as a subprocess's would be)."""

    stdout: bytes
    stderr: bytes


def gecko(*args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None) -> GeckoRun:
    """Run a gecko command in this process (the CLI app, as the tests' CliRunner does): the same code
    as `gecko ARGS`, without paying for a fresh interpreter and torch import on every call.

    `env` is set for the duration of the call. A failure raises with the tail of gecko's stderr.
    Use `gecko_process` when the fresh process is part of what is measured.
    """
    from typer.testing import CliRunner

    from gecko_cli.cli import app

    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    result = CliRunner().invoke(app, list(args), input=data, env=env)
    if result.exit_code != 0:
        if result.exc_info and not isinstance(result.exception, SystemExit):
            raise RuntimeError(f"gecko {' '.join(args)} raised") from result.exception
        tail = result.stderr_bytes.decode("utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"gecko {' '.join(args)} exited {result.exit_code}:\n{tail}")
    return GeckoRun(result.stdout_bytes, result.stderr_bytes)


def gecko_process(*args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None) -> GeckoRun:
    """Run this checkout's gecko CLI as a fresh process (start-up and peak memory included)."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    proc = subprocess.run([*GECKO, *args], input=data, capture_output=True, env=env or gecko_env())
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"gecko {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return GeckoRun(proc.stdout, proc.stderr)


def rel(path: str | Path) -> str:
    """A path as a reader of this repository would write it: relative to the root when inside it."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def shown_command(cmd: list[str], replace: dict[str, str] | None = None) -> str:
    """A command line as a reader would type it: `python -m gecko_cli` as `gecko`, paths by name."""
    replace = replace or {}
    words = cmd[len(GECKO):] if cmd[:len(GECKO)] == GECKO else cmd
    return " ".join(["gecko"] + [replace.get(w, Path(w).name if "/" in w else w) for w in words])


# --- small copies of the data sets, for --quick runs ---------------------------------------------


def beir_subset(src: Path, dst: Path, queries: dict[str, int], extra_docs: int) -> Path:
    """A small BEIR folder: the first n judged queries of each split, every document they judge,
    and the first `extra_docs` other documents. Deterministic, so embedding caches are shared.

    beir_subset(SCIFACT, tmp, {"test": 5}, 40) -> tmp with corpus.jsonl, queries.jsonl, qrels/test.tsv
    """
    from gecko_cli.eval.data import read_qrels

    keep_docs: set[str] = set()
    keep_queries: set[str] = set()
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    for split, n in queries.items():
        qrels = read_qrels(src / "qrels" / f"{split}.tsv")
        chosen = list(qrels)[:n]
        keep_queries.update(chosen)
        rows = [(q, d, s) for q in chosen for d, s in qrels[q].items()]
        keep_docs.update(d for _, d, _ in rows)
        with (dst / "qrels" / f"{split}.tsv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerows([("query-id", "corpus-id", "score"), *rows])
    corpus = read_jsonl(src / "corpus.jsonl")
    others = [d for d in corpus if str(d["_id"]) not in keep_docs][:extra_docs]
    keep_docs.update(str(d["_id"]) for d in others)
    write_jsonl(dst / "corpus.jsonl", (d for d in corpus if str(d["_id"]) in keep_docs))
    write_jsonl(dst / "queries.jsonl", (q for q in read_jsonl(src / "queries.jsonl") if str(q["_id"]) in keep_queries))
    return dst


def tsv_head(src: Path, dst: Path, rows: int) -> Path:
    """The header and the first `rows` rows of a TSV file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open(encoding="utf-8") as f:
        dst.write_text("".join(itertools.islice(f, rows + 1)), encoding="utf-8")
    return dst
