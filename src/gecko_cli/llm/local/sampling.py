"""Seeded sampling for the embedded LLM: what a prompt samples depends on (prompt, seed) only.

The result cache keys a generation by (prompt, parameters), which is only sound when a prompt's
text does not depend on the other prompts that happened to share its batch.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor


def row_generator(seed: int, prompt: str) -> torch.Generator:
    """A generator seeded by (seed, prompt): a prompt samples the same text in any batch.

    (0, "hi") -> torch.Generator (same state every call)
    """
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class GumbelSampler(LogitsProcessor):
    """Temperature sampling as greedy decoding over logits/T + Gumbel noise (Gumbel-max trick).

    Each row draws its noise from its own generator, so what a prompt samples depends on the
    prompt and seed only, not on which other prompts share its batch — what a cache keyed by
    (prompt, parameters) assumes.
    """

    def __init__(self, temperature: float, generators: list[torch.Generator]):
        self.temperature = temperature
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))
        return scores.float() / self.temperature + gumbel.to(scores.device)
