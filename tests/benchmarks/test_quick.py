"""The benchmark harness: every registered benchmark runs --quick (so none rots), every result file
has the one envelope and a writer in the repository, and the harness keeps its promises."""

from __future__ import annotations

import argparse
import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmarks.common
from benchmarks.common import RESULTS, ROOT
from benchmarks.registry import ENVELOPE, Skip, add_options, discover, field_comments, output_path, parameters, run

BENCHMARKS = discover()
# Result files written by a script that is not a registered benchmark (it needs a whole experiment).
OTHER_WRITERS = {"e2e_query_writer": "benchmarks/query_writer.py"}


@pytest.fixture
def torch_threads():
    """Benchmarks set torch's thread count; the tests that follow get it back."""
    import torch
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_quick_run_writes_the_envelope(name: str, tmp_path: Path, torch_threads: None) -> None:
    out = tmp_path / f"{name}.json"
    result = run(BENCHMARKS[name], quick=True, out=out)  # a quick run that cannot run (Skip) fails here
    assert list(result) == list(ENVELOPE)
    assert json.loads(out.read_text()) == result
    assert result["name"] == name and result["parameters"]["quick"] is True
    assert result["machine"]["cores"] and result["machine"]["load_average"]["after"]
    assert isinstance(result["results"], dict) and result["results"]


def test_every_committed_result_has_the_envelope_and_a_writer() -> None:
    for path in sorted(RESULTS.iterdir()):
        # e2e-dims.png: e2e's figure; fret_train.embedded-writer.json: a second reported run of fret_train
        name = path.stem.split("-")[0] if path.suffix == ".png" else path.stem.split(".")[0]
        assert name in BENCHMARKS or name in OTHER_WRITERS, f"{path.name}: no script writes it"
        if path.suffix == ".json":
            result = json.loads(path.read_text())
            assert set(ENVELOPE) <= set(result) and result["name"] == name, path.name
            assert set(result) - set(ENVELOPE) <= {"provenance"}, path.name


def test_a_quick_run_never_writes_over_the_committed_results() -> None:
    bench = BENCHMARKS["relabel_share"]
    with pytest.raises(SystemExit):
        output_path(bench, quick=True, out=RESULTS / "relabel_share.json")
    assert output_path(bench, quick=True, out=None) == (ROOT / "out" / "benchmarks" / "relabel_share.json").resolve()
    assert output_path(bench, quick=False, out=None) == bench.result.resolve()


def test_command_line_options_come_from_the_parameters() -> None:
    bench = BENCHMARKS["llm_local"]
    parser = argparse.ArgumentParser()
    add_options(parser, bench.params)
    args = vars(parser.parse_args(["--passages", "3", "--no-gguf"]))
    params = parameters(bench, quick=True, overrides=args)
    assert (params.passages, params.gguf, params.queries) == (3, False, bench.quick["queries"])
    assert parameters(bench, quick=False).passages == bench.params().passages
    assert field_comments(BENCHMARKS["rerank_speed"].params)["window"] == "records per (a) call (gecko rerank --window)"


def test_skip_says_why(tmp_path: Path) -> None:
    with pytest.raises(Skip, match="missing"):
        run(BENCHMARKS["relabel_share"], out=tmp_path / "x.json", overrides={"fret": "no/such/file.jsonl"})


def test_listing_imports_no_heavy_library() -> None:
    code = ("import sys; from benchmarks.__main__ import main; main(['list']); "
            "print([m for m in ('torch', 'transformers', 'sentence_transformers', 'llama_cpp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
    assert all(name in out for name in BENCHMARKS)


def test_common_examples() -> None:
    assert doctest.testmod(benchmarks.common).failed == 0


def test_fret_helpers_examples() -> None:
    import benchmarks.bootstrap
    import benchmarks.decoder_pooling
    import benchmarks.fret_data
    import benchmarks.fret_dev
    import benchmarks.fret_train

    for module in (benchmarks.bootstrap, benchmarks.fret_data, benchmarks.fret_dev, benchmarks.fret_train,
                   benchmarks.decoder_pooling):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_paired_bootstrap_separates_a_real_gain_from_noise() -> None:
    from benchmarks.bootstrap import paired_bootstrap

    rng = np.random.default_rng(1)
    base = {f"q{i}": float(x) for i, x in enumerate(rng.uniform(0, 1, 300))}
    noise = {q: v + float(rng.normal(0, 0.2)) for q, v in base.items()}
    gain = {q: v + 0.05 + float(rng.normal(0, 0.2)) for q, v in base.items()}
    same = paired_bootstrap(base, noise)
    better = paired_bootstrap(base, gain)
    assert same["low"] < 0 < same["high"]
    assert 0 < better["low"] < 0.05 < better["high"] and better["queries"] == 300
    only_common = paired_bootstrap(base, {"q0": base["q0"] + 1.0})
    assert only_common["queries"] == 1 and only_common["diff"] == only_common["low"] == 1.0


def test_fret_teacher_slices_cover_every_candidate_once_and_join_restores_the_query() -> None:
    from benchmarks.fret_data import hydrate, join, slim, slice_candidates

    corpus = {str(i): {"title": f"T{i}", "text": f"abstract {i}"} for i in range(30)}
    record = {"id": "q#0", "query": "q", "seed": {"id": "7", "title": "T7", "text": "abstract 7"},
              "candidates": [{"id": str(i), "title": f"T{i}", "text": f"abstract {i}", "retriever_score": 1 - i / 100}
                             for i in range(0, 30, 3)]}
    slices = [s for j in range(4) if (s := slice_candidates(record, j, 4)) is not None]
    scored = [{**s, "candidates": [{**c, "ql": -float(c["id"]), "rank": n + 1} for n, c in enumerate(s["candidates"])]}
              for s in slices]
    (merged,) = join(slim(s) for s in scored)
    assert sorted(int(c["id"]) for c in merged["candidates"]) == list(range(0, 30, 3))
    assert all("rank" not in c and c["ql"] == -float(c["id"]) for c in merged["candidates"])
    back = hydrate(merged, corpus)
    assert back["seed"] == record["seed"]
    assert {c["id"]: c["text"] for c in back["candidates"]} == {c["id"]: c["text"] for c in record["candidates"]}


def test_fret_dev_halves_split_the_train_claims(tmp_path: Path) -> None:
    from benchmarks.fret_dev import read_qrels, write_split

    counts = write_split(tmp_path / "dev")
    a, b = (read_qrels(tmp_path / "dev/qrels" / f"half-{x}.tsv") for x in "ab")
    claims_a, claims_b = {q for q, _, _ in a}, {q for q, _, _ in b}
    assert not claims_a & claims_b and (len(claims_a), len(claims_b)) == (counts["a"], counts["b"])
    assert len(a) + len(b) == len(read_qrels(ROOT / "examples/data/scifact/qrels/train.tsv"))
    assert sum(1 for _ in (tmp_path / "dev/gold-half-a.jsonl").open()) == len(a)


def test_decoder_pooling_eval_config_sets_the_limit_and_dtype_and_leaves_the_rest(tmp_path: Path) -> None:
    from benchmarks.decoder_pooling import eval_config

    config = tmp_path / "sentence_bert_config.json"
    config.write_text(json.dumps({"transformer_task": "feature-extraction", "model_kwargs": {"attn": "sdpa"}}))
    eval_config(tmp_path, 128, "bfloat16")
    assert json.loads(config.read_text()) == {"transformer_task": "feature-extraction", "max_seq_length": 128,
                                              "model_kwargs": {"attn": "sdpa", "dtype": "bfloat16"}}
    written = config.stat().st_mtime_ns
    eval_config(tmp_path, 128, "bfloat16")  # unchanged: not rewritten, so the fingerprint stays
    assert config.stat().st_mtime_ns == written
    eval_config(tmp_path, 0, "float32")
    assert json.loads(config.read_text()) == {"transformer_task": "feature-extraction", "model_kwargs": {"attn": "sdpa"}}


def test_filter_jsonl_keeps_lines_byte_for_byte(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": "a", "x": 1.50}\n\n{"id":"b"}\n')
    assert benchmarks.common.filter_jsonl(src, dst, lambda r: r["id"] == "a") == 1
    assert dst.read_text() == '{"id": "a", "x": 1.50}\n'
    src.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="in.jsonl:2"):
        benchmarks.common.read_jsonl(src)


def _trec(path: Path, rankings: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{q} Q0 {d} {r} {1 / r:.4f} run\n" for q, docs in rankings.items()
                            for r, d in enumerate(docs, 1)))


def test_query_writer_report_on_a_toy_experiment(tmp_path: Path) -> None:
    """The report of `make query-writer` (no quick run covers it): the other writer's models rank
    the cited abstract first, the embedded writer's third, so the paired bootstrap must say other > smol."""
    from benchmarks import query_writer
    from benchmarks.common import SCIFACT, read_jsonl, write_jsonl
    from benchmarks.rerank_tokens import build_records
    from gecko_cli.eval.data import read_qrels
    from gecko_cli.eval.metrics import ndcg_at

    out = tmp_path / "qw"
    records = build_records(3)
    write_jsonl(out / "queries.jsonl", [{k: v for k, v in r.items() if k != "candidates"} for r in records])
    write_jsonl(out / "passages.jsonl", [r["seed"] for r in records])
    write_jsonl(out / "timings.jsonl", [{"stage": "generate", "seconds": 1}])
    qrels = read_qrels(SCIFACT / "qrels" / "train.tsv")
    queries = list(qrels)[:5]
    rows = []
    for who in ("smol", "other"):
        write_jsonl(out / f"{who}-fret.jsonl", records)
        (out / f"audit-{who}-fused.json").write_text(json.dumps({"positive_not_seed_share": 0.5}))
        for p in ("fused", "seed"):
            (out / f"finetune-{who}-{p}.json").write_text(json.dumps({"steps": 1}))
    for model in ("all-MiniLM-L6-v2", "model-smol-fused", "model-smol-seed", "model-other-fused", "model-other-seed"):
        at = 0 if "other" in model else 2  # where the cited abstract lands
        rankings = {q: ["x1", "x2", "x3"][:at] + [next(iter(qrels[q]))] + ["x4"] for q in queries}
        for dim in (384, 128):
            _trec(out / "runs" / f"{model}-{dim}.trec", rankings)
            score = sum(ndcg_at(qrels[q], r, 10) for q, r in rankings.items()) / len(rankings)
            shown = model if model.startswith("all") else f"out/qw/{model}"  # evaluate names a path as given
            rows.append({"model": shown, "dim": dim, "ndcg@10": score})
    write_jsonl(out / "dev-metrics.jsonl", rows)

    report = query_writer.report(out, "http://127.0.0.1:1/v1")
    assert report["writers"]["smol"]["records"] == 3 and report["other_llm"]["model"]
    first = report["paired_bootstrap"][0]
    assert (first["a"], first["b"], first["queries"]) == ("model-other-fused", "model-smol-fused", 5)
    assert first["mean_diff"] > 0 and first["ci95"][0] > 0
    assert read_jsonl(out / "timings.jsonl") == report["timings"]


def test_query_writer_same_seeds(tmp_path: Path) -> None:
    from benchmarks import query_writer

    out, e2e = tmp_path / "qw", tmp_path / "e2e"
    out.mkdir(), e2e.mkdir()
    (out / "queries.jsonl").write_text('{"seed": {"id": "a"}}\n')
    (out / "generate-rejects.jsonl").write_text(json.dumps({"line": 2, "error": "x", "raw": '{"id": "b"}'}) + "\n")
    (e2e / "fret.jsonl").write_text('{"seed": {"id": "a"}, "n": 1}\n{"seed": {"id": "c"}}\n{"seed":{"id":"b"}}\n')
    query_writer.same_seeds(out, e2e)
    assert (out / "smol-fret.jsonl").read_text() == '{"seed": {"id": "a"}, "n": 1}\n{"seed":{"id":"b"}}\n'


def test_run_all_leaves_out_experiment_reports_and_goes_on_after_a_skip(tmp_path: Path, monkeypatch) -> None:
    from dataclasses import dataclass

    import benchmarks.registry
    from benchmarks.__main__ import run_all
    from benchmarks.registry import Benchmark

    @dataclass
    class Params:
        n: int = 1

    ran: list[str] = []

    def bench(name: str, **kwargs) -> Benchmark:
        def run_it(params: Params, context: object) -> dict:
            ran.append(name)
            return {"n": params.n}
        return Benchmark(name=name, summary="", params=Params, run=run_it, **kwargs)

    monkeypatch.setattr(benchmarks.registry, "QUICK_OUT", tmp_path)
    benches = {"a": bench("a", needs=lambda p: "no data"), "b": bench("b", after="make e2e"),
               "c": bench("c", quick={"n": 2})}
    assert run_all(benches, quick=True) == 0
    assert ran == ["c"]
    assert json.loads((tmp_path / "c.json").read_text())["results"] == {"n": 2}


def test_fret_train_pools_teacher_sets_without_merging_their_queries(tmp_path: Path) -> None:
    """Two writers' queries of one abstract share an id; pooled, each stays its own record."""
    import gzip

    from benchmarks.fret_train import Params, teacher_records

    def shard(name: str, query: str) -> None:
        record = {"id": "7#0", "query": query, "seed": {"id": "7"}, "candidates": [{"id": "7", "ql": -1.0, "rank": 1}]}
        with gzip.open(tmp_path / f"{name}-shard0of1.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    shard("teacher-a", "first writer")
    shard("teacher-b", "second writer")
    corpus = {"7": {"title": "T", "text": "x"}}
    one, _ = teacher_records(Params(data=str(tmp_path), teacher="teacher-a"), corpus)
    both, files = teacher_records(Params(data=str(tmp_path), teacher="teacher-a,teacher-b"), corpus)
    assert [r["id"] for r in one] == ["7#0"]
    assert [(r["id"], r["query"], len(r["candidates"])) for r in both] == [
        ("teacher-a/7#0", "first writer", 1), ("teacher-b/7#0", "second writer", 1)]
    assert len(files) == 2
    with pytest.raises(Skip):
        teacher_records(Params(data=str(tmp_path), teacher="teacher-a,teacher-c"), corpus)


def test_bootstrap_command_compares_runs_of_different_experiments(tmp_path: Path, capsys) -> None:
    from benchmarks.bootstrap import main

    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    (tmp_path / "a.trec").write_text("q1 Q0 d9 1 0.9 a\nq1 Q0 d1 2 0.8 a\nq2 Q0 d2 1 0.9 a\n")
    (tmp_path / "b.trec").write_text("q1 Q0 d1 1 0.9 b\nq2 Q0 d2 1 0.9 b\n")
    assert main([str(tmp_path / "qrels.tsv"), f"old={tmp_path / 'a.trec'}", f"new={tmp_path / 'b.trec'}"]) == 0
    old, new = capsys.readouterr().out.splitlines()
    assert old.split() == ["old", "81.55"]  # q1: 1/log2(3) = 0.631, q2: 1
    assert new.split()[:3] == ["new", "100.00", "+18.45"] and new.endswith("vs old")
    assert main([str(tmp_path / "qrels.tsv"), f"x={tmp_path / 'missing.trec'}"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_fret_train_acceptance_sets_are_the_ones_present(tmp_path: Path) -> None:
    """`fret_train --test` reports base and each model on the acceptance sets it finds (here only a
    30-pair cut of STS Benchmark test), through the real `gecko evaluate`."""
    from benchmarks.fret_train import acceptance, acceptance_table

    sts = tmp_path / "stsbenchmark"
    sts.mkdir()
    lines = (ROOT / "examples/data/stsbenchmark/test.tsv").read_text(encoding="utf-8").splitlines()[:31]
    (sts / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = acceptance(tmp_path, {}, "384")
    assert [(r["model"], r["dataset"], r["dim"], r["metric"]) for r in rows] == [("base", "stsbenchmark", 384, "spearman")]
    assert 0.5 < rows[0]["value"] <= 1.0
    assert acceptance_table(rows)[1].split()[:3] == ["base", "stsbenchmark", "384"]
    assert acceptance(tmp_path / "nothing", {}, "384") == []
