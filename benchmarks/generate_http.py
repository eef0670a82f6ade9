"""Benchmark `gecko generate` over HTTP: records/s against a fake OpenAI server with fixed latency.

The fake server (tests/support/fake_openai.py) runs as a subprocess, so it shares no GIL with the
client. For each concurrency C, `gecko generate --llm URL --model fake-model --concurrency C
--no-cache` (a fresh process and GECKO_CACHE_DIR) turns max(min_records, per_c * C) distinct
passages (examples/passages.jsonl repeated with new ids and titles) into records; records/s is
compared with the ideal C / latency. `startup_s` (one 1-record run, minus one latency) is measured
too, and `ratio_excl_startup` discounts it.

`server_ceiling` is what the server sustains at concurrency 64 (ideal 64 / latency) for four
asyncio clients: "raw" (stdlib sockets, one keep-alive connection per worker: the server's own
ceiling), "wire" (gecko's own HTTP/1.1 client, gecko_cli/llm/http/wire.py, which `--llm http://...`
uses), "httpx" (one AsyncClient pool, which gecko uses for https, proxies and injected transports)
and "httpx2" (if installed). `server_raw` is the same at latency 0. If "raw" is near 1 and gecko is
not, the bottleneck is the client side.

`marginal` compares gecko with openai-python's `AsyncOpenAI` (the client distilabel and most
scripts use; installed with the test extra) side by side against the same server: each sends
gecko generate's requests for N and then 2N passages at `--marginal-concurrency`, in a fresh
process; (2N - N) / (t(2N) - t(N)) is the marginal rate, so start-up and imports cancel. The
client process's CPU (user + sys, from the kernel's accounting of each finished child) is kept
the same way: `cpu_ms_per_record` = (cpu(2N) - cpu(N)) / N, what each record costs the client,
which unlike a rate does not depend on what else the machine is running.

    python -m benchmarks run generate_http [--latency 0.1 --concurrency 1,16,64 --window N]
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from benchmarks.common import EXAMPLES, GECKO, ROOT, count_lines, gecko_env, read_jsonl, shown_command, write_jsonl
from benchmarks.registry import Benchmark, Context

SERVER = ROOT / "tests" / "support" / "fake_openai.py"
PASSAGES = EXAMPLES / "passages.jsonl"
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


@dataclass
class Params:
    latency: float = 0.1  # seconds the fake server waits before each answer
    concurrency: str = "1,16,64"
    per_c: int = 20  # records per unit of concurrency
    min_records: int = 40
    window: int = 0  # pass --window N to gecko generate (0: gecko's own)
    ceiling_requests: str = "raw:1920,wire:1920,httpx:640,httpx2:1280"  # per client, at `latency`, concurrency 64
    raw_requests: str = "raw:5000,wire:5000,httpx:1000"  # per client, at latency 0
    marginal_records: int = 1280  # N of the marginal-rate comparison (runs N and 2N)
    marginal_concurrency: int = 64
    marginal_rounds: int = 2  # each client's N and 2N runs, alternating clients, repeated


def counts(text: str) -> dict[str, int]:
    """"raw:256,httpx:128" -> {"raw": 256, "httpx": 128}"""
    return {k: int(v) for k, v in (item.split(":") for item in text.split(",") if item)}


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
    passages = read_jsonl(PASSAGES)
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


async def _wire_client(base_url: str, concurrency: int, bodies: list[dict]) -> float:
    """Seconds for `bodies` through gecko's own client (one WirePool), `concurrency` workers."""
    from gecko_cli.llm.http.wire import WirePool

    pool = WirePool(base_url, headers={}, timeout=60, connect_timeout=30)

    async def worker(mine: list[dict]) -> None:
        for body in mine:
            reply = await pool.post("/chat/completions", json.dumps(body).encode())
            assert reply.status_code == 200, reply.status_code
            json.loads(json.loads(reply.content)["choices"][0]["message"]["content"])

    await asyncio.gather(*(worker([b]) for b in bodies[:concurrency]))  # warm-up: open the connections
    started = time.perf_counter()
    await asyncio.gather(*(worker(bodies[i::concurrency]) for i in range(concurrency)))
    seconds = time.perf_counter() - started
    await pool.aclose()
    return seconds


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
    """Requests/s from a fresh server subprocess per client kind ("raw" stdlib sockets, "wire",
    "httpx", "httpx2").

    The raw client is the server's own ceiling; "wire" is gecko's client without the rest of
    gecko; httpx 0.28 (httpcore 1.0) adds its pool's cost, which grows with the number of
    connections times requests in flight.
    """
    out: dict = {"latency_s": latency, "concurrency": concurrency}
    if latency:
        out["ideal"] = round(concurrency / latency, 1)
    with fake_server(latency) as url:
        for client, n in requests.items():
            if client not in ("raw", "wire") and importlib.util.find_spec(client) is None:
                continue
            bodies = _bodies(n)
            seconds = asyncio.run(_raw_client(url, concurrency, bodies) if client == "raw"
                                  else _wire_client(url, concurrency, bodies) if client == "wire"
                                  else _httpx_client(client, url, concurrency, bodies))
            rps = n / seconds
            out[client] = {"requests": n, "seconds": round(seconds, 3), "requests_per_s": round(rps, 1)}
            if latency:
                out[client]["ratio"] = round(rps * latency / concurrency, 3)
    return out


def write_passages(path: Path, n: int) -> None:
    """n distinct passages: examples/passages.jsonl repeated, copies with new ids and titles."""
    base = read_jsonl(PASSAGES)
    out = []
    for i in range(n):
        p = dict(base[i % len(base)])
        copy = i // len(base)
        if copy:
            p["id"] = f"{p['id']}-copy{copy}"
            p["title"] = f"{p.get('title') or ''} (copy {copy})".strip()
        out.append(p)
    write_jsonl(path, out)


def children_cpu() -> float:
    """User + sys seconds of every child process waited for so far (a difference is one run's CPU)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_gecko(url: str, concurrency: int, records: int, workdir: Path, window: int) -> dict[str, Any]:
    """Time one `gecko generate` process on `records` passages; count the records written; its CPU."""
    inp, out, err = workdir / f"in{concurrency}.jsonl", workdir / f"out{concurrency}.jsonl", workdir / "stderr.txt"
    write_passages(inp, records)
    cmd = [*GECKO, "generate", "--llm", url, "--model", "fake-model", "--concurrency", str(concurrency),
           "--no-cache", "--input", str(inp), "--output", str(out)]
    if window:
        cmd += ["--window", str(window)]
    with tempfile.TemporaryDirectory() as cache:
        env = gecko_env(GECKO_CACHE_DIR=cache)
        env.setdefault("OPENAI_API_KEY", "sk-bench")
        cpu, started = children_cpu(), time.perf_counter()
        with err.open("w") as stderr:
            code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr).returncode
        seconds, cpu = time.perf_counter() - started, children_cpu() - cpu
    if code:
        tail = "\n".join(err.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{tail}")
    return {"records": count_lines(out), "seconds": seconds, "cpu_s": cpu, "cmd": cmd}


def peer_requests(passages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat completion bodies gecko generate sends for these passages (its prompt, its schema)."""
    from gecko_cli.llm.base import answer_prefix
    from gecko_cli.llm.generation import (MAX_NEW_TOKENS, SCHEMA, default_task_types, parse_template, render,
                                          sample_seed, sample_tasks)
    from gecko_cli.llm.http.schema import response_format
    from gecko_cli.llm.scoring import load_prompt

    template, types = parse_template(load_prompt("generate")), default_task_types()
    return [{"model": "fake-model", "temperature": 0.7, "seed": sample_seed(0, 0), "max_tokens": MAX_NEW_TOKENS,
             "messages": answer_prefix(render(template, p, sample_tasks(types, 0, str(p["id"]), 1)[0]))[0],
             "response_format": response_format(SCHEMA, "json_schema")} for p in passages]


async def _openai_peer(url: str, concurrency: int, inp: Path, out: Path) -> None:
    """What a script on AsyncOpenAI does for `gecko generate`: one request per passage, at most
    `concurrency` in flight, each answer parsed and written as a record."""
    from openai import AsyncOpenAI

    passages = read_jsonl(inp)
    client = AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=6)
    gate = asyncio.Semaphore(concurrency)

    async def one(passage: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            answer = await client.chat.completions.create(**body)
        return {"id": f"{passage['id']}#0", "query": json.loads(answer.choices[0].message.content)["query"]}

    records = await asyncio.gather(*(one(p, b) for p, b in zip(passages, peer_requests(passages))))
    write_jsonl(out, records)
    await client.close()


def run_peer(url: str, concurrency: int, records: int, workdir: Path) -> dict[str, Any]:
    """Time one AsyncOpenAI process (`python -m benchmarks.generate_http peer ...`) like run_gecko."""
    inp, out = workdir / f"peer-in{records}.jsonl", workdir / f"peer-out{records}.jsonl"
    write_passages(inp, records)
    cmd = [sys.executable, "-m", "benchmarks.generate_http", "peer", url, str(concurrency), str(inp), str(out)]
    cpu, started = children_cpu(), time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=gecko_env(), check=True, stdout=subprocess.DEVNULL)
    return {"records": count_lines(out), "seconds": time.perf_counter() - started, "cpu_s": children_cpu() - cpu}


def marginal(url: str, params: Params, workdir: Path) -> dict[str, Any]:
    """Marginal records/s of gecko and of AsyncOpenAI, N vs 2N passages, runs interleaved."""
    n, c = params.marginal_records, params.marginal_concurrency
    clients = {"gecko": lambda k: run_gecko(url, c, k, workdir, params.window)}
    if importlib.util.find_spec("openai") is not None:
        clients["async_openai"] = lambda k: run_peer(url, c, k, workdir)
    times: dict[str, dict[int, list[float]]] = {name: {n: [], 2 * n: []} for name in clients}
    cpus: dict[str, dict[int, list[float]]] = {name: {n: [], 2 * n: []} for name in clients}
    for _ in range(params.marginal_rounds):
        for size in (n, 2 * n):
            for name, go in clients.items():
                done = go(size)
                if done["records"] < 0.95 * size:  # gecko drops duplicate queries; nothing else may go
                    raise RuntimeError(f"{name} wrote {done['records']} records for {size} passages")
                times[name][size].append(done["seconds"])
                cpus[name][size].append(done["cpu_s"])
    ideal = c / params.latency
    out: dict[str, Any] = {"records": n, "concurrency": c, "ideal": round(ideal, 1)}
    for name, by_size in times.items():
        small, large = min(by_size[n]), min(by_size[2 * n])  # best of the rounds: least disturbed
        rate = n / (large - small)
        cpu_n, cpu_2n = min(cpus[name][n]), min(cpus[name][2 * n])
        out[name] = {"seconds_n": round(small, 3), "seconds_2n": round(large, 3), "marginal_per_s": round(rate, 1),
                     "of_ideal": round(rate / ideal, 3), "cpu_s_n": round(cpu_n, 3), "cpu_s_2n": round(cpu_2n, 3),
                     "cpu_ms_per_record": round(1000 * (cpu_2n - cpu_n) / n, 3),
                     "all_seconds": {str(k): [round(s, 3) for s in v] for k, v in by_size.items()}}
    return out


def run(params: Params, context: Context) -> dict[str, Any]:
    result: dict[str, Any] = {"latency_s": params.latency}
    result["server_ceiling"] = server_ceiling(params.latency, 64, counts(params.ceiling_requests))
    result["server_raw"] = server_ceiling(0.0, 64, counts(params.raw_requests))
    print(json.dumps({k: result[k] for k in ("server_ceiling", "server_raw")}), file=sys.stderr)
    runs = []
    with fake_server(params.latency) as url:
        one = run_gecko(url, 1, 1, context.workdir, params.window)
        startup = max(0.0, one["seconds"] - params.latency)
        result["startup_s"] = round(startup, 3)
        for c in (int(x) for x in params.concurrency.split(",")):
            n = max(params.min_records, params.per_c * c)
            run = run_gecko(url, c, n, context.workdir, params.window)
            ideal = c / params.latency
            rps = run["records"] / run["seconds"]
            rps_net = run["records"] / max(run["seconds"] - startup, 1e-9)
            runs.append({"concurrency": c, "records": run["records"], "passages": n,
                         "seconds": round(run["seconds"], 3), "cpu_s": round(run["cpu_s"], 3),
                         "records_per_s": round(rps, 1),
                         "ideal": round(ideal, 1), "ratio": round(rps / ideal, 3),
                         "ratio_excl_startup": round(rps_net / ideal, 3)})
            print(json.dumps(runs[-1]), file=sys.stderr)
        result["command"] = shown_command(run["cmd"], {url: "$URL", str(c): "$C"})
        result["marginal"] = marginal(url, params, context.workdir)
        print(json.dumps(result["marginal"]), file=sys.stderr)
    result["runs"] = runs
    return result


BENCHMARK = Benchmark(
    name="generate_http",
    summary="`gecko generate --llm` records/s against a fake OpenAI server at 100 ms, by --concurrency",
    params=Params, run=run,
    quick={"concurrency": "1,4", "per_c": 2, "min_records": 4,
           "ceiling_requests": "raw:128,wire:128,httpx:64,httpx2:128", "raw_requests": "raw:256,wire:256,httpx:64",
           "marginal_records": 16, "marginal_concurrency": 8, "marginal_rounds": 1},
)


if __name__ == "__main__" and sys.argv[1:2] == ["peer"]:  # the AsyncOpenAI process of `marginal`
    asyncio.run(_openai_peer(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])))
