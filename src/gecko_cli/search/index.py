"""A persisted hnswlib index over a corpus, rebuilt only when its manifest changes.

The manifest (embedder fingerprint, dimension, space, M, ef_construction, seed, corpus
hash) is the index's identity: the same corpus with the same embedder re-uses the
index on disk; any change builds a new one. `exact=True` searches by brute force
instead — the reference the approximate index is measured against.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from gecko_cli.contract.paths import disk_refusal, writing
from gecko_cli.contract.quarantine import Damaged, identity, move_aside
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

        folder = root / self.manifest.key() if root else None
        if folder is not None and (index := self._load(folder)) is not None:
            return index
        index = hnswlib.Index(space=self.manifest.space, dim=self.manifest.dim)
        index.init_index(max_elements=max(self.manifest.count, 1), M=self.manifest.M,
                         ef_construction=self.manifest.ef_construction, random_seed=self.manifest.seed)
        index.add_items(self.vectors, np.arange(len(self.vectors)))
        self.built = True
        if folder:
            _save_atomically(index, self.manifest, folder)
        return index

    def _load(self, folder: Path):
        """The index saved in `folder`, or None: absent, or damaged and moved aside to be rebuilt."""
        seen = identity(folder)
        if seen is None:
            return None
        try:
            return load_saved(folder, self.manifest)
        except Damaged as damage:
            move_aside(folder, seen, str(damage), "rebuilding the index")
            return None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine scores), best first, shape [n, min(k, corpus size)]."""
        k = min(k, len(self.vectors))
        if self.index is None:
            return exact_top_k(queries, self.vectors, k)
        self.index.set_ef(max(self.ef, k))
        labels, distances = self.index.knn_query(normalize(queries), k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)


def load_saved(folder: Path, manifest: Manifest):
    """The hnswlib index in `folder` (saved by `_save_atomically`), or `Damaged` saying what is wrong.

    The folder is written whole or not at all, so a missing file, a manifest that is not this
    folder's, or an index hnswlib rejects (it checks the file's length against its header: a
    truncated or garbled file fails) is damage, never a half-finished save.
    """
    import hnswlib

    try:
        stored = json.loads((folder / "manifest.json").read_text())
    except OSError as exc:
        raise Damaged(f"manifest.json: {exc.strerror or exc}") from None
    except ValueError:
        raise Damaged("manifest.json is not JSON") from None
    if stored != asdict(manifest):
        raise Damaged("manifest.json does not describe this index")
    index = hnswlib.Index(space=manifest.space, dim=manifest.dim)
    try:
        index.load_index(str(folder / "index.bin"), max_elements=manifest.count)
    except (RuntimeError, MemoryError) as exc:
        raise Damaged(f"index.bin: {exc}") from None
    if index.element_count != manifest.count:
        raise Damaged(f"index.bin holds {index.element_count} vectors, expected {manifest.count}")
    return index


def _save_atomically(index, manifest: Manifest, folder: Path) -> None:
    """Write index and manifest to a temp dir, then rename: a crash never leaves half an index.

    A write that fails (a full disk) removes the temp dir and raises an OSError naming `folder`.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        with writing(folder, (RuntimeError,)):  # hnswlib raises RuntimeError when it cannot open the file
            _save_index(index, tmp / "index.bin")
            (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            exc.filename = os.fspath(folder)  # not the temp dir: it is gone
        raise
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its index is the same one
        shutil.rmtree(tmp, ignore_errors=True)


def _save_index(index, path: Path) -> None:
    """`index.save_index(path)`, checked: hnswlib does not check its writes, so a full disk leaves
    a short file and no error."""
    index.save_index(str(path))
    if path.stat().st_size != index.index_file_size():
        code = disk_refusal(path) or errno.EIO
        raise OSError(code, os.strerror(code))
