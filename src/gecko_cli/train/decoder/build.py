"""An embedder grown from a decoder LM the NV-Embed way (Lee et al., 2024, arXiv 2405.17428):
bidirectional attention and latent-attention pooling, as a plain sentence-transformers model.

`build_decoder_embedder(source, pooling=..., attention=...)` -> SentenceTransformer, untrained:
sentence-transformers' own Transformer module around the LM (its last hidden states are the token
states), then the pooler. `gecko pretrain`/`finetune` train it like any other embedder, and saving
it is `model.save(path)` (gecko's `train/save.py` does that), after which it loads anywhere:

- `mean` or `last` pooling: `SentenceTransformer(path)`. Only library modules; bidirectional
  attention is `"is_causal": false` in the LM's config.json (`bidirectional.py`), which needs
  transformers >= 5.2 where the model is loaded (an older one ignores it and attends causally;
  sentence-transformers warns).
- `latent-attention` pooling: `SentenceTransformer(path, trust_remote_code=True)`. The pooler's code
  is `latent_attention.py` in the model's root (torch and sentence-transformers only, no gecko), and
  sentence-transformers 6 runs a module class from outside its own package only when trusted, local
  directories included. gecko trusts it only when it is gecko's own file (`contract/model_trust.py`).

`source` is a transformers model directory, a GGUF file, or None / "embedded-llm" for the embedded
SmolLM2-135M-Instruct. A GGUF file is dequantized once into gecko's cache by the same loader the
embedded LLM uses (`llm/local/model.py`), and the model is built from that copy.

torch and sentence-transformers are imported inside the functions: the commands import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gecko_cli.contract.errors import BackendError, UsageError
from gecko_cli.train.decoder.bidirectional import ATTENTIONS, is_decoder, set_attention

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Module, Transformer
    from transformers import PreTrainedTokenizerBase

EMBEDDED_LLM = "embedded-llm"
POOLINGS = ("mean", "last", "latent-attention")
PADDING_SIDES = ("right", "left")
TEXT_ONLY = {"method": "forward", "method_output_name": "last_hidden_state"}  # the LM's last hidden states


def build_decoder_embedder(
    source: str | Path | None = None,
    *,
    pooling: str = "latent-attention",
    attention: str = "bidirectional",
    num_latents: int = 512,
    num_heads: int = 8,
    padding_side: str | None = None,
    max_seq_length: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> "SentenceTransformer":
    """A sentence-transformers model from an LM: NV-Embed's defaults, or any other combination.

    pooling: "latent-attention" (NV-Embed: `num_latents` latents, `num_heads` heads, the LM's hidden
    size; its weights are drawn from `seed`), "mean" over non-pad tokens, or "last" (the state of the
    last non-pad token, an EOS the tokenizer is made to append, wherever the padding is).
    attention: "bidirectional" (NV-Embed) or "causal" for a decoder; an encoder is left as it is.
    padding_side: "right" or "left" (default: the tokenizer's); every pooling reads the mask, and a
    rotary-position LM (Llama, Qwen2, Mistral) sees only relative positions, so either side gives the
    same embeddings. max_seq_length: texts are cut to it (default: the LM's own limit).
    device: where the model goes (default: sentence-transformers' choice).

    build_decoder_embedder() -> SentenceTransformer(Transformer(LlamaModel, is_causal=False), LatentAttentionPooling)
    """
    _check_choice("pooling", pooling, POOLINGS)
    _check_choice("attention", attention, ATTENTIONS)
    if padding_side is not None:
        _check_choice("padding side", padding_side, PADDING_SIDES)
    from sentence_transformers import SentenceTransformer

    transformer = _transformer(transformers_directory(source), max_seq_length)
    set_attention(transformer.auto_model, attention)
    decoder = is_decoder(transformer.auto_model)
    _prepare_tokenizer(transformer.tokenizer, padding_side, append_eos=decoder and pooling == "last")
    pooler = _pooler(pooling, transformer.get_embedding_dimension(), num_latents, num_heads, seed)
    return SentenceTransformer(modules=[transformer, pooler], device=device)


def is_lm_source(init: str | None) -> bool:
    """Whether `--init` names a language model to grow into an embedder rather than an embedder: the
    embedded LLM, a GGUF file, or a transformers directory of a `...ForCausalLM` with no
    sentence-transformers modules.json.

    >>> is_lm_source("embedded-llm"), is_lm_source("models/q.gguf"), is_lm_source(None)
    (True, True, False)
    """
    if init is None:
        return False
    if init == EMBEDDED_LLM or init.lower().endswith(".gguf"):
        return True
    path = Path(init)
    if not path.is_dir() or (path / "modules.json").exists():
        return False
    try:
        import json

        architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in architectures)


class Start(NamedTuple):
    """What a training run starts from: the model to load or grow, and how to grow it (both None:
    `init` is an embedder, loaded as it is)."""

    init: str
    pooling: str | None
    attention: str | None


def starting_point(init: str | None, pooling: str | None, attention: str | None) -> Start:
    """`--init`, `--pooling`, `--attention` of pretrain/finetune, checked and resolved once: a language
    model is kept as named and grown with NV-Embed's defaults filled in (also when either choice is
    given for an embedder); anything else is an embedder (`resolve_embedder`: the flag, GECKO_EMBEDDER
    or the embedded all-MiniLM-L6-v2).

    >>> starting_point("embedded-llm", None, None), starting_point("embedded-llm", "mean", None)[1:]
    (Start(init='embedded-llm', pooling='latent-attention', attention='bidirectional'), ('mean', 'bidirectional'))
    >>> starting_point("models/mine", None, None)
    Start(init='models/mine', pooling=None, attention=None)
    """
    from gecko_cli.search.embed import resolve_embedder

    if pooling is not None:
        _check_choice("--pooling", pooling, POOLINGS)
    if attention is not None:
        _check_choice("--attention", attention, ATTENTIONS)
    if is_lm_source(init):
        return Start(str(init), pooling or "latent-attention", attention or "bidirectional")
    if pooling or attention:
        return Start(resolve_embedder(init), pooling or "latent-attention", attention or "bidirectional")
    return Start(resolve_embedder(init), None, None)


def transformers_directory(source: str | Path | None) -> str:
    """What the Transformer module loads: a directory (or a name in the local hub cache) as given,
    the dequantized copy for a GGUF file or the embedded LLM.

    transformers_directory(None) -> "$GECKO_CACHE_DIR/models/smollm2-135m-instruct"
    """
    if source is None or str(source) == EMBEDDED_LLM:
        return str(dequantized_copy(None))
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"{path}: give a GGUF file or a transformers model directory")
        return str(dequantized_copy(path))
    return str(source)


def dequantized_copy(gguf: Path | None) -> Path:
    """The fp32 transformers copy of a GGUF file (None: the embedded one), made on first use by
    gecko's LLM loader and kept in `$GECKO_CACHE_DIR/models/`."""
    from gecko_cli.llm.local.model import copy_dir, default_model_dir, load_model

    load_model(gguf=gguf)  # makes (or checks) the copy; the model it returns is not needed here
    directory = copy_dir(gguf) if gguf else default_model_dir()
    if not (directory / "config.json").is_file():
        raise BackendError(f"could not keep the dequantized copy of {gguf or 'the embedded LLM'} under "
                           f"{directory}: building an embedder from a GGUF file needs a writable GECKO_CACHE_DIR")
    return directory


def _transformer(directory: str, max_seq_length: int | None) -> "Transformer":
    """sentence-transformers' Transformer module around the LM's base model, fp32 (gecko trains in fp32),
    reading plain text.

    Text only, pinned in sentence_bert_config.json: given a tokenizer with a chat template (an
    instruct LM's), sentence-transformers 6 otherwise renders every text as a chat message, so each
    one would arrive wrapped in the template's system prompt and turn markers, which the pooling
    would then average in or end on. gecko's texts carry their task in their own words instead.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Transformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on stderr (as in search/embed.py)
    try:
        return Transformer(directory, max_seq_length=max_seq_length, model_kwargs={"dtype": torch.float32},
                           modality_config={"text": TEXT_ONLY}, module_output_name="token_embeddings")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the LM {directory!r}: {str(exc).splitlines()[0]}") from None


def _prepare_tokenizer(tokenizer: "PreTrainedTokenizerBase", padding_side: str | None, append_eos: bool) -> None:
    """A pad token (an LM often has none: its EOS then pads, masked out everywhere), the padding side,
    and for last-token pooling an EOS after every text, as E5-Mistral and NV-Embed's EOS baseline do:
    without it the "last token" is whatever word the text ends with."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError("the tokenizer has neither a pad nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if append_eos and not _ends_with_eos(tokenizer):
        tokenizer.add_eos_token = True  # rewrites the post-processor, which tokenizer.json then keeps
        if not _ends_with_eos(tokenizer):
            raise UsageError(f"cannot make {type(tokenizer).__name__} append an EOS token for last pooling; "
                             "use mean or latent-attention pooling")


def _ends_with_eos(tokenizer: "PreTrainedTokenizerBase") -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id


def _pooler(pooling: str, dimension: int, num_latents: int, num_heads: int, seed: int) -> "Module":
    """The pooling module; the latent-attention one draws its weights from a generator seeded with `seed`."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    if pooling != "latent-attention":
        return Pooling(dimension, pooling_mode="lasttoken" if pooling == "last" else "mean")
    from gecko_cli.train.decoder.latent_attention import LatentAttentionPooling

    try:
        pooler = LatentAttentionPooling(dimension, num_latents=num_latents, num_heads=num_heads)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    pooler.reset_parameters(torch.Generator().manual_seed(seed))
    return pooler


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{what} takes {', '.join(choices)}; got {value!r}")
