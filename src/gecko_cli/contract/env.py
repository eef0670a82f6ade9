"""What gecko reads from the machine: the cache directory and the device to compute on.

One home for both, so the embedder, the LLM, the index and training agree on them.
"""

from __future__ import annotations

import os
from pathlib import Path

from gecko_cli.contract.paths import WRITE_DIR, require


def cache_dir() -> Path:
    """`GECKO_CACHE_DIR`, default `~/.cache/gecko`: a directory gecko can create and write, else a
    PathError naming it (exit 2), before any cache is opened in it.

    >>> os.environ["GECKO_CACHE_DIR"] = "/tmp/x"; str(cache_dir())
    '/tmp/x'
    >>> os.environ["GECKO_CACHE_DIR"] = "/dev/null/x"; cache_dir()
    Traceback (most recent call last):
    gecko_cli.contract.errors.PathError: /dev/null/x: Not a directory (GECKO_CACHE_DIR)
    >>> del os.environ["GECKO_CACHE_DIR"]
    """
    path = Path(os.environ.get("GECKO_CACHE_DIR") or Path.home() / ".cache" / "gecko")
    require(WRITE_DIR, path, hint="GECKO_CACHE_DIR")
    return path


def best_device() -> str:
    """CUDA when torch sees a GPU, else the CPU (torch is imported only when asked)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
