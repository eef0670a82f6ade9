"""A persisted hnswlib index over a corpus, rebuilt only when its manifest changes.

The manifest (embedder fingerprint, dimension, space, M, ef_construction, seed, corpus
hash) is the index's identity: the same corpus with the same embedder re-uses the
index on disk; any change builds a new one. `exact=True` searches by brute force
instead — the reference the approximate index is measured against.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from gecko_cli.search.vectors import exact_top_k, normalize


@dataclass(frozen=True)
class Manifest:
    """Everything that decides what an index contains."""

    embedder: str
    dim: int
    corpus_hash: str
    count: int
    space: str = "cosine"
    M: int = 16
    ef_construction: int = 200
    seed: int = 0

    def key(self) -> str:
        """A short stable name for the index directory."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def corpus_hash(ids: Sequence[str], texts: Sequence[str]) -> str:
    """Hash of the (id, text) pairs in order: any edit, addition or reordering changes it."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts):
        digest.update(doc_id.encode() + b"\0" + text.encode() + b"\1")
    return digest.hexdigest()


class Searcher:
    """k-nearest-neighbour search over unit vectors, by hnswlib or exactly."""

    def __init__(self, vectors: np.ndarray, manifest: Manifest, root: Path | None, exact: bool = False,
                 ef: int = 100):
        self.vectors = normalize(vectors)
        self.manifest = manifest
        self.exact = exact
        self.ef = ef
        self.built = False  # True when this run built the index (False: loaded or exact)
        self.index = None if exact else self._load_or_build(root)

    def _load_or_build(self, root: Path | None):
        import hnswlib

        index = hnswlib.Index(space=self.manifest.space, dim=self.manifest.dim)
        folder = root / self.manifest.key() if root else None
        if folder and (folder / "manifest.json").is_file() and \
                json.loads((folder / "manifest.json").read_text()) == asdict(self.manifest):
            index.load_index(str(folder / "index.bin"), max_elements=self.manifest.count)
            return index
        index.init_index(max_elements=max(self.manifest.count, 1), M=self.manifest.M,
                         ef_construction=self.manifest.ef_construction, random_seed=self.manifest.seed)
        index.add_items(self.vectors, np.arange(len(self.vectors)))
        self.built = True
        if folder:
            _save_atomically(index, self.manifest, folder)
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine scores), best first, shape [n, min(k, corpus size)]."""
        k = min(k, len(self.vectors))
        if self.index is None:
            return exact_top_k(queries, self.vectors, k)
        self.index.set_ef(max(self.ef, k))
        labels, distances = self.index.knn_query(normalize(queries), k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)


def _save_atomically(index, manifest: Manifest, folder: Path) -> None:
    """Write index and manifest to a temp dir, then rename: a crash never leaves half an index."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    index.save_index(str(tmp / "index.bin"))
    (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its index is the same one
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
