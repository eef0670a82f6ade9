"""Pictures a person would rather look at than read: metric against dimension, and the seed's
fused-rank histogram. matplotlib (Agg: no display needed) is imported only when a plot is asked for.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from gecko_cli.contract.paths import writing

# The headline metric of each kind of row, in the order they are looked for.
HEADLINE = ("ndcg@10", "spearman", "accuracy@1")


def headline(row: Mapping[str, Any]) -> str | None:
    """The metric a row is plotted by: nDCG@10 for retrieval, Spearman for STS.

    >>> headline({"ndcg@10": 0.6, "recall@100": 0.9}), headline({"spearman": 0.8})
    ('ndcg@10', 'spearman')
    """
    return next((k for k in HEADLINE if k in row), None)


def series(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, list[tuple[int, float]]]]:
    """(dataset, metric) -> model -> [(dim, value)] sorted by dim, from `gecko evaluate` rows.

    >>> series([{"model": "m", "dataset": "scifact", "dim": 64, "ndcg@10": 0.5},
    ...         {"model": "m", "dataset": "scifact", "dim": 384, "ndcg@10": 0.6}])
    {('scifact', 'ndcg@10'): {'m': [(64, 0.5), (384, 0.6)]}}
    """
    out: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        metric = headline(row)
        if metric is not None:
            out[(str(row["dataset"]), metric)][str(row["model"])].append((int(row["dim"]), float(row[metric])))
    return {key: {model: sorted(points) for model, points in models.items()} for key, models in out.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One panel per (dataset, metric): the metric (×100) against dimension, a line per model."""
    panels = series(rows)
    if not panels:
        raise ValueError("no metric rows to plot")
    plt = _pyplot()
    # At most three panels a row, in the order the rows came (the datasets as given on the command
    # line), and one legend for all: six panels in a row with six legends are unreadable.
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.4 * nrows), squeeze=False)
    for ax, ((dataset, metric), models) in zip(axes.flat, panels.items()):
        for model, points in models.items():
            dims, values = zip(*points)
            ax.plot(dims, [100 * v for v in values], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({d for points in models.values() for d, _ in points}))
        ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
        ax.set_xlabel("embedding dimension")
        ax.set_ylabel(f"{metric} (×100)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * ((len(labels) - 1) // 4), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seed_rank(histogram: Mapping[str, int], path: Path) -> None:
    """Bar chart of the seed passage's fused rank (1 = the LLM kept the seed as the positive)."""
    if not histogram:
        raise ValueError("no records to plot")
    plt = _pyplot()
    ranks = [int(k) for k in histogram if str(k).isdigit()]
    # every rank from 1 to the largest seen, empty ones too, then "absent" (the seed was not a candidate)
    keys = [str(r) for r in range(1, max(ranks, default=0) + 1)] + [k for k in histogram if not str(k).isdigit()]
    histogram = {str(k): v for k, v in histogram.items()}
    total = sum(histogram.values())
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    counts = [histogram.get(k, 0) for k in keys]
    bars = ax.bar(keys, counts, color=["#2a7" if k == "1" else "#58a" for k in keys])
    ax.bar_label(bars, labels=[f"{100 * c / total:.0f}%" if c else "" for c in counts], fontsize=7)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("fused rank of the seed passage")
    ax.set_ylabel("records")
    ax.set_title(f"Seed passage's rank after LLM re-ranking ({total} records)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fig.savefig(path, dpi=120)
    plt.close(fig)
