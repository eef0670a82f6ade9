"""Exact cosine search (the reference every approximate index is measured against)."""

from __future__ import annotations

import numpy as np


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def exact_top_k(queries: np.ndarray, corpus: np.ndarray, k: int,
                chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the k nearest corpus rows for every query, best first.

    Queries go in chunks so the score matrix stays small for large corpora.

    >>> idx, _ = exact_top_k(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.1]]), 1)
    >>> idx.tolist()
    [[1]]
    """
    q, c = normalize(queries), normalize(corpus)
    k = min(k, len(c))
    all_idx = np.empty((len(q), k), dtype=np.int64)
    all_scores = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), chunk):
        scores = q[start:start + chunk] @ c.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(c) else np.tile(np.arange(len(c)), (len(scores), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        all_idx[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        all_scores[start:start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return all_idx, all_scores
