"""`--plot` / `--audit-plot` write real PNG images through the real commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from gecko_cli.cli import app
from gecko_cli.eval.plots import plot_seed_rank, series

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def test_mine_negatives_audit_plot(runner, tmp_path):
    image = tmp_path / "seed.png"
    result = runner.invoke(app, ["mine-negatives", "--strategy", "rank:3", "--audit-plot", str(image),
                                 "-i", str(ROOT / "tests/data/fret_scored.jsonl")])
    assert result.exit_code == 0, result.output
    assert image.read_bytes().startswith(PNG)


@pytest.mark.slow
def test_evaluate_plot_compares_models_across_dimensions(runner, tmp_path):
    sts = tmp_path / "sts.tsv"
    lines = (ROOT / "examples/data/stsbenchmark/dev.tsv").read_text(encoding="utf-8").splitlines()
    sts.write_text("\n".join(lines[:41]) + "\n", encoding="utf-8")
    image = tmp_path / "dims.png"
    result = runner.invoke(app, ["evaluate", "--sts", str(sts), "--dims", "384,128,64", "--plot", str(image)])
    assert result.exit_code == 0, result.output
    assert image.read_bytes().startswith(PNG) and image.stat().st_size > 10_000


def test_series_and_empty_inputs(tmp_path):
    rows = [{"model": m, "dataset": "d", "dim": dim, "spearman": v}
            for m, pts in {"a": [(384, 0.8), (64, 0.7)], "b": [(64, 0.6)]}.items() for dim, v in pts]
    assert series(rows) == {("d", "spearman"): {"a": [(64, 0.7), (384, 0.8)], "b": [(64, 0.6)]}}
    with pytest.raises(ValueError):
        plot_seed_rank({}, tmp_path / "x.png")
    plot_seed_rank({"1": 5, "3": 2, "absent": 1}, tmp_path / "x.png")  # rank 2 drawn empty
    assert (tmp_path / "x.png").read_bytes().startswith(PNG)
