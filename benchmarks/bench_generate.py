"""Benchmark `gecko generate` over HTTP: records/s against a fake OpenAI server with fixed latency.

The fake server (tests/support/fake_openai.py) runs as a subprocess, so it shares no GIL with the
client. For each concurrency C, `gecko generate --llm URL --model fake-model --concurrency C
--no-cache` (fresh GECKO_CACHE_DIR too) turns max(--min-records, --per-c * C) distinct passages
(examples/passages.jsonl repeated with new ids and titles) into records; records/s is compared
with the ideal C / latency. `startup_s` (one 1-record run, minus one latency) is measured too, and
`ratio_excl_startup` discounts it.

`server_ceiling` is what the server sustains at concurrency 64 (ideal 64 / latency) for three
asyncio clients: "raw" (stdlib sockets, one keep-alive connection per worker: the server's own
ceiling), "httpx" (one AsyncClient pool, as gecko uses) and "httpx2" (if installed). `server_raw`
is the same at latency 0. If "raw" is near 1 and gecko is not, the bottleneck is the client side.

    .venv/bin/python benchmarks/bench_generate.py [--latency 0.1] [--concurrency 1 16 64] [--window N]
    .venv/bin/python benchmarks/bench_generate.py --check   # mechanics only, small, writes nothing

Writes benchmarks/results/generate_http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "support" / "fake_openai.py"
PASSAGES = ROOT / "examples" / "passages.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "generate_http.json"
GECKO = Path(sys.executable).parent / "gecko"
NEEDED = ("--llm", "--model", "--concurrency")
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


@contextmanager
def fake_server(latency: float) -> Iterator[str]:
    """Base URL of a fake OpenAI server subprocess, killed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--latency", str(latency),
                                 "--port-file", str(port_file)], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake server did not start (exit code {proc.poll()})")
                time.sleep(0.02)
            yield f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _bodies(requests: int) -> list[dict]:
    """Distinct chat completion bodies shaped like gecko generate's (json_schema response_format)."""
    passages = [json.loads(line) for line in PASSAGES.read_text().splitlines() if line.strip()]
    return [{"model": "fake-model", "temperature": 0.7, "seed": i, "max_tokens": 48,
             "messages": [{"role": "user", "content": f"Passage: {passages[i % len(passages)]['text'][:800]}"}],
             "response_format": {"type": "json_schema", "json_schema": {"name": "q", "schema": SCHEMA}}}
            for i in range(requests)]


async def _raw_client(base_url: str, concurrency: int, bodies: list[dict]) -> float:
    """Seconds for `bodies` over `concurrency` keep-alive sockets: a minimal stdlib HTTP/1.1 client."""
    host, port = base_url.split("//")[1].split("/")[0].split(":")

    async def worker(mine: list[dict]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for body in mine:
            data = json.dumps(body).encode()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(data), data))
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            assert head.startswith("http/1.1 200"), head
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            json.loads(json.loads(await reader.readexactly(length))["choices"][0]["message"]["content"])
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(bodies[i::concurrency]) for i in range(concurrency)))
    return time.perf_counter() - started


async def _httpx_client(module: str, base_url: str, concurrency: int, bodies: list[dict]) -> float:
    """Seconds for `bodies` through one httpx(-compatible) AsyncClient pool, `concurrency` at a time."""
    httpx_ = importlib.import_module(module)
    limits = httpx_.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx_.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        async def worker(mine: list[dict]) -> None:
            for body in mine:
                r = await client.post("/chat/completions", json=body)
                r.raise_for_status()
                json.loads(r.json()["choices"][0]["message"]["content"])
        await asyncio.gather(*(worker([b]) for b in bodies[:concurrency]))  # warm-up: open the connections
        started = time.perf_counter()
        await asyncio.gather(*(worker(bodies[i::concurrency]) for i in range(concurrency)))
        return time.perf_counter() - started


def server_ceiling(latency: float, concurrency: int, requests: dict[str, int]) -> dict:
    """Requests/s from a fresh server subprocess per client kind ("raw" stdlib sockets, "httpx", "httpx2").

    The raw client is the server's own ceiling; httpx 0.28 (httpcore 1.0) adds its pool's cost,
    which grows with the number of connections times requests in flight.
    """
    out: dict = {"latency_s": latency, "concurrency": concurrency}
    if latency:
        out["ideal"] = round(concurrency / latency, 1)
    with fake_server(latency) as url:
        for client, n in requests.items():
            if client != "raw" and importlib.util.find_spec(client) is None:
                continue
            bodies = _bodies(n)
            seconds = asyncio.run(_raw_client(url, concurrency, bodies) if client == "raw"
                                  else _httpx_client(client, url, concurrency, bodies))
            rps = n / seconds
            out[client] = {"requests": n, "seconds": round(seconds, 3), "requests_per_s": round(rps, 1)}
            if latency:
                out[client]["ratio"] = round(rps * latency / concurrency, 3)
    return out


def write_passages(path: Path, n: int) -> None:
    """n distinct passages: examples/passages.jsonl repeated, copies with new ids and titles."""
    base = [json.loads(line) for line in PASSAGES.read_text().splitlines() if line.strip()]
    with path.open("w") as f:
        for i in range(n):
            p = dict(base[i % len(base)])
            copy = i // len(base)
            if copy:
                p["id"] = f"{p['id']}-copy{copy}"
                p["title"] = f"{p.get('title') or ''} (copy {copy})".strip()
            f.write(json.dumps(p) + "\n")


def missing_options() -> list[str]:
    """Which of --llm/--model/--concurrency `gecko generate --help` does not list."""
    help_text = subprocess.run([str(GECKO), "generate", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "200"}).stdout
    return [o for o in NEEDED if o not in help_text]


def run_gecko(url: str, concurrency: int, records: int, workdir: Path, window: int | None) -> dict:
    """Time one `gecko generate` subprocess on `records` passages; count the records written."""
    inp, out, err = workdir / f"in{concurrency}.jsonl", workdir / f"out{concurrency}.jsonl", workdir / "stderr.txt"
    write_passages(inp, records)
    cmd = [str(GECKO), "generate", "--llm", url, "--model", "fake-model", "--concurrency", str(concurrency),
           "--no-cache", "--input", str(inp), "--output", str(out)]
    if window:
        cmd += ["--window", str(window)]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "GECKO_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        env.setdefault("OPENAI_API_KEY", "sk-bench")
        started = time.perf_counter()
        with err.open("w") as stderr:
            code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr).returncode
        seconds = time.perf_counter() - started
    if code:
        tail = "\n".join(err.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{tail}")
    written = sum(1 for line in out.read_text().splitlines() if line.strip())
    return {"records": written, "seconds": seconds, "cmd": cmd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--per-c", type=int, default=20, help="records per unit of concurrency")
    parser.add_argument("--min-records", type=int, default=40)
    parser.add_argument("--window", type=int, help="pass --window N to gecko generate (default: gecko's own)")
    parser.add_argument("--check", action="store_true", help="mechanics only: small sizes, results not written")
    args = parser.parse_args()
    if args.check:
        args.concurrency, args.per_c, args.min_records = [1, 4], 2, 4

    result: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "latency_s": args.latency}
    small = args.check
    result["server_ceiling"] = server_ceiling(args.latency, 64, {"raw": 256 if small else 1920,
                                                                 "httpx": 128 if small else 640,
                                                                 "httpx2": 256 if small else 1280})
    result["server_raw"] = server_ceiling(0.0, 64, {"raw": 1000 if small else 5000, "httpx": 256 if small else 1000})
    print(json.dumps({k: result[k] for k in ("server_ceiling", "server_raw")}), file=sys.stderr)

    missing = missing_options()
    if missing:
        print(f"`gecko generate` lacks {', '.join(missing)}: cannot time it yet", file=sys.stderr)
        if args.check:
            print(json.dumps(result, indent=2))
            return
        sys.exit(2)

    runs = []
    with fake_server(args.latency) as url, tempfile.TemporaryDirectory() as tmp:
        one = run_gecko(url, 1, 1, Path(tmp), args.window)
        startup = max(0.0, one["seconds"] - args.latency)
        result["startup_s"] = round(startup, 3)
        for c in args.concurrency:
            n = max(args.min_records, args.per_c * c)
            run = run_gecko(url, c, n, Path(tmp), args.window)
            ideal = c / args.latency
            rps = run["records"] / run["seconds"]
            rps_net = run["records"] / max(run["seconds"] - startup, 1e-9)
            runs.append({"concurrency": c, "records": run["records"], "passages": n,
                         "seconds": round(run["seconds"], 3), "records_per_s": round(rps, 1),
                         "ideal": round(ideal, 1), "ratio": round(rps / ideal, 3),
                         "ratio_excl_startup": round(rps_net / ideal, 3)})
            print(json.dumps(runs[-1]), file=sys.stderr)
        shown = {url: "$URL", str(run["cmd"][0]): "gecko", str(c): "$C"}
        result["command"] = " ".join(shown.get(a, Path(a).name) for a in run["cmd"])
    result["runs"] = runs
    print(json.dumps(result, indent=2))
    if not args.check:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
