"""Bidirectional attention for a decoder LM: NV-Embed's first change (Lee et al., 2024, §3.1).

A decoder attends causally so that it can generate; an embedder has the whole text at once, and
NV-Embed removes the causal mask during contrastive training, which let every token see the words
after it and beat the causal model on retrieval and on MTEB as a whole.

How: transformers reads `config.is_causal` (huggingface/transformers#43705, from 5.2). When it is
False, every layer's mask is a padding-only (bidirectional) one and SDPA is told not to add its own
causal mask, in every model built on transformers' shared masking utilities (Llama, Qwen2, Mistral,
…). The switch is a field of config.json, so it is saved and loaded with the weights, and
sentence-transformers' own Transformer module loads such a model with no custom code (it warns when
the installed transformers is too old to honour the field, which it would otherwise ignore).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gecko_cli.contract.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

ATTENTIONS = ("bidirectional", "causal")


def is_decoder(model: "nn.Module") -> bool:
    """Whether the model's self-attention is causal by construction (a decoder LM, not an encoder),
    read off its attention layers: transformers marks them `is_causal = True` (Llama) or False (BERT).
    The config switch does not change that mark, so a decoder made bidirectional is still one."""
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


def set_attention(model: "nn.Module", attention: str) -> None:
    """Make a decoder attend `"bidirectional"` or `"causal"`; an encoder is left as it is.

    An encoder already attends both ways, and giving it a causal mask is not a choice any
    transformers encoder offers, so asking for one is a usage error.
    """
    if attention not in ATTENTIONS:
        raise UsageError(f"attention takes {' or '.join(ATTENTIONS)}, got {attention!r}")
    if not is_decoder(model):
        if attention == "causal":
            raise UsageError(f"{type(model).__name__} is an encoder: its attention is bidirectional and stays so")
        return
    model.config.is_causal = attention == "causal"


def attention_of(model: "nn.Module") -> str:
    """`"causal"` or `"bidirectional"`: how the model attends now."""
    causal = is_decoder(model) and getattr(model.config, "is_causal", True) is not False
    return "causal" if causal else "bidirectional"
