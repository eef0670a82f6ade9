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


DTYPES = ("auto", "float32", "bfloat16")


def check_dtype(choice: str) -> None:
    """A ValueError unless `choice` is one of DTYPES (the one place the rule and its words live).

    >>> check_dtype("half")
    Traceback (most recent call last):
    ValueError: --llm-dtype takes auto, float32 or bfloat16, not 'half'
    """
    if choice not in DTYPES:
        raise ValueError(f"--llm-dtype takes auto, float32 or bfloat16, not {choice!r}")


def choose_dtype(choice: str, native_bf16: bool) -> str:
    """The dtype an in-process LLM runs in: `choice` unless it is "auto", which takes bfloat16
    where the device computes it natively (`native_bf16`: a CUDA GPU with bf16, a CPU with AMX
    tiles or AVX512-BF16 — see has_native_bf16) and float32 elsewhere, where bf16 is emulated and
    slower.

    >>> choose_dtype("auto", True), choose_dtype("auto", False), choose_dtype("float32", True)
    ('bfloat16', 'float32', 'float32')
    """
    check_dtype(choice)
    if choice != "auto":
        return choice
    return "bfloat16" if native_bf16 else "float32"


def has_native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AMX
    tiles (Intel Sapphire Rapids and later) or AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake)
    — on both kinds of CPU generation ran faster in bf16, one thread (docs/llm-servers.md); without
    them bf16 is emulated. torch is imported only when asked."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # torch's CPU probes are private, so looked up defensively: a torch without one says "no".
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(probe and probe()) for probe in probes)
