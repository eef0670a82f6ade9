"""The stage contract through a real command (`gecko fuse`), as a user meets it."""

import subprocess
import sys

import pytest

from gecko_cli.cli import app
from tests.conftest import jsonl, read_jsonl


def good(i: int) -> dict:
    return {"id": f"q{i}", "seed": {"id": "a"}, "extra": {"keep": [i, "é"]},
            "candidates": [{"id": "a", "ql": -2.0, "rc": 0.5}, {"id": "b", "ql": -1.0, "rc": 0.9}]}


TEN_MB = '{"id": "big", "candidates": [{"id": "a", "ql": 1, "rc": 1, "text": "' + "x" * (10 * 1024 * 1024) + '"}]}'

MALFORMED = [
    ('{"id": "q", "candidates": [', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object, got an array"),
    ('"just a string"', "expected a JSON object, got a string"),
    ('{"candidates": []}', 'missing field "id"'),
    ('{"id": "q"}', 'missing field "candidates"'),
    ('{"id": "q", "candidates": []}', 'field "candidates" is empty'),
    ('{"id": "q", "candidates": {"id": "a"}}', 'field "candidates" must be an array, got an object'),
    ('{"id": "q", "candidates": [{"id": "a", "ql": "high", "rc": 1}]}', 'field "candidates[0].ql" must be a number, got a string'),
    ('{"id": "q", "candidates": [{"id": "a", "rc": 1}]}', 'missing field "candidates[0].ql"'),
    ('{"id": "q", "candidates": [{"id": "a", "ql": NaN, "rc": 1}]}', "NaN is not allowed"),
    (b'{"id": "\xc3\x28", "candidates": []}', "invalid UTF-8"),
    (TEN_MB, "over the limit"),
]


def as_bytes(line) -> bytes:
    return line if isinstance(line, bytes) else line.encode()


@pytest.mark.parametrize("bad, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_bad_line_error_exit_1_earlier_records_written(runner, bad, message):
    data = as_bytes(jsonl(good(1), good(2))) + b"\n" + as_bytes(bad) + b"\n" + as_bytes(jsonl(good(4)))
    result = runner.invoke(app, ["fuse"], input=data)
    assert result.exit_code == 1
    assert [r["id"] for r in read_jsonl(result.stdout)] == ["q1", "q2"]
    assert result.stderr.startswith("gecko fuse: <stdin>:4: ")  # the blank line 3 still counts
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_rejects_account_for_every_line(runner, tmp_path):
    data = as_bytes(jsonl(good(0)))
    for i, (bad, _) in enumerate(MALFORMED):
        data += as_bytes(bad) + b"\n" + as_bytes(jsonl(good(i + 1)))
    rejects = tmp_path / "rejects.jsonl"
    result = runner.invoke(app, ["fuse", "--rejects", str(rejects)], input=data)
    assert result.exit_code == 0, result.stderr
    out = read_jsonl(result.stdout)
    rejected = read_jsonl(rejects.read_text())
    assert len(out) == len(MALFORMED) + 1 and len(rejected) == len(MALFORMED)
    assert [r["line"] for r in rejected] == [2 * i + 2 for i in range(len(MALFORMED))]
    for entry, (_, message) in zip(rejected, MALFORMED):
        assert message in entry["error"] and isinstance(entry["raw"], str)
    assert f"{2 * len(MALFORMED) + 1} in, {len(MALFORMED) + 1} out, {len(MALFORMED)} rejected" in result.stderr


def test_pass_through_fields_provenance_and_order(runner):
    result = runner.invoke(app, ["fuse"], input=jsonl(*[good(i) for i in range(5)]))
    out = read_jsonl(result.stdout)
    assert [r["id"] for r in out] == [f"q{i}" for i in range(5)]
    assert out[3]["extra"] == {"keep": [3, "é"]} and "é" in result.stdout  # not \u-escaped
    assert out[0]["_provenance"][-1]["stage"] == "fuse"
    assert out[0]["positive_is_seed"] is False  # b wins both scorers


def test_fuse_reads_the_seed_id_as_rerank_does(runner):
    # A seed spelled {"_id"} (a BEIR passage) is still the seed; the stale value is replaced.
    record = {**good(1), "seed": {"_id": "b"}, "positive_is_seed": False}
    out = read_jsonl(runner.invoke(app, ["fuse"], input=jsonl(record)).stdout)
    assert out[0]["candidates"][0]["id"] == "b" and out[0]["positive_is_seed"] is True


def test_bom_input_file_and_output_file(runner, tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + jsonl(good(1)).encode())
    result = runner.invoke(app, ["fuse", "-i", str(src), "-o", str(dst)])
    assert result.exit_code == 0 and result.stdout == ""
    assert read_jsonl(dst.read_text())[0]["id"] == "q1"


def test_error_names_the_file(runner, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(jsonl(good(1), "{oops"))
    result = runner.invoke(app, ["fuse", "--input", str(src)])
    assert result.exit_code == 1 and f"gecko fuse: {src}:2: not valid JSON" in result.stderr


def test_usage_errors_exit_2(runner):
    assert runner.invoke(app, ["fuse", "--shard", "3/2"], input="").exit_code == 2
    assert runner.invoke(app, ["fuse", "--weights", "1"], input="").exit_code == 2
    assert runner.invoke(app, ["fuse", "--no-such-flag"], input="").exit_code == 2
    unreadable = runner.invoke(app, ["fuse", "--weights", "1,x"], input="")
    assert unreadable.exit_code == 2 and unreadable.stderr == "gecko fuse: --weights: cannot read '1,x'\n"
    dtype = runner.invoke(app, ["generate", "--llm-dtype", "half"], input="")
    assert dtype.exit_code == 2
    assert dtype.stderr == "gecko generate: --llm-dtype takes auto, float32 or bfloat16, not 'half'\n"


def test_real_pipe_and_closed_pipe():
    data = jsonl(*[good(i) for i in range(2000)]).encode()
    gecko = [sys.executable, "-m", "gecko_cli"]
    proc = subprocess.run(gecko + ["fuse", "--k", "60"], input=data, capture_output=True)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2000
    # `gecko fuse | head -1`: the reader leaves early; gecko ends quietly. The exit status checked is
    # gecko's own (PIPESTATUS[0]), not head's, which a pipeline reports by default.
    pipe = subprocess.run(["bash", "-c", " ".join(gecko) + " fuse | head -1; exit ${PIPESTATUS[0]}"], input=data,
                          capture_output=True)
    assert pipe.returncode == 0 and len(pipe.stdout.splitlines()) == 1
    assert b"Traceback" not in pipe.stderr and pipe.stderr == b"", pipe.stderr
