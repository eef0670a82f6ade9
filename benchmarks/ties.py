"""Fused-tie helpers shared by rerank_quality.py and relabel_share.py (benchmarks only)."""

from __future__ import annotations

from gecko_cli.search.fusion import rank_by, rrf


def fused_scores(cands: list[dict], fields: list[str], k: float = 0.0) -> tuple[list[str], list[float]]:
    """(ids, RRF scores rounded to 12 decimals, as gecko compares them)."""
    ids = [str(c["id"]) for c in cands]
    return ids, [round(x, 12) for x in rrf([rank_by([float(c[f]) for c in cands], ids) for f in fields], k)]


def by_id_ties(cands: list[dict], fields: list[str], k: float = 0.0) -> list[str]:
    """The ordering gecko used before 2026-12-03: RRF with fused ties broken by candidate id."""
    ids, fused = fused_scores(cands, fields, k)
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-fused[i], ids[i]))]


def top_is_tied(cands: list[dict], fields: list[str], k: float = 0.0) -> bool:
    """Is the best fused score shared by two or more candidates?"""
    _, fused = fused_scores(cands, fields, k)
    return fused.count(max(fused)) > 1
