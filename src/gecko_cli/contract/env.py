"""What gecko reads from the machine: the cache directory and the device to compute on.

One home for both, so the embedder, the LLM, the index and training agree on them.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`GECKO_CACHE_DIR`, default `~/.cache/gecko`.

    >>> os.environ["GECKO_CACHE_DIR"] = "/tmp/x"; str(cache_dir())
    '/tmp/x'
    >>> del os.environ["GECKO_CACHE_DIR"]
    """
    return Path(os.environ.get("GECKO_CACHE_DIR") or Path.home() / ".cache" / "gecko")


def best_device() -> str:
    """CUDA when torch sees a GPU, else the CPU (torch is imported only when asked)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
