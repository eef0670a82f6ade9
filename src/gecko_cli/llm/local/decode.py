"""Generation over shared prompt prefixes: each distinct prefix runs once, each row stops early.

`gecko generate` sends prompts that differ only late: the system text and one-shot example are
the same for every passage, and the K examples of one passage share everything up to their task
line. `PrefixStore` keeps the KV caches of recent prompts; a new prompt starts from the longest
token prefix it shares with any of them (keys and values at positions < n depend only on the
first n ids, so a stored cache sliced to n serves any prompt that agrees on those n ids). Only
the new tail runs, and only the new tail is stored again: a shared prefix is held once, and the
store is sized to a call's prompts (`PrefixDecoder.hold`), so a retried prompt finds itself. The
rows are then decoded together in one batch — their caches left-padded to one width, masked —
and each row leaves the batch when its answer is complete: its end-of-text token, or the JSON
object it was asked for has closed (`answer_complete`), so a batch no longer
decodes until its slowest row's `max_new_tokens`.

The ids fed are those of the naive full prompt (tokenized whole), the sampling noise of a row
comes from its own generator in the same order as `model.generate` draws it, so the texts equal
the naive path's (up to float rounding in the logits; benchmarks/results/generate_local.json
reports how often a query differs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from gecko_cli.llm.local.kv import KV, cache_kwarg
from gecko_cli.llm.local.plan import _lcp


def answer_complete(text: str) -> bool:
    """Whether a completion asked to be one JSON object is finished: the object has closed
    (strings and escapes respected), or — the model did not start an object — its first
    non-empty line has ended (all a lenient reader takes from such an answer).

    >>> answer_complete('{"query": "a {b} \\\\" c"'), answer_complete('{"query": "a {b} \\\\" c"}')
    (False, True)
    >>> answer_complete("Query: sky colour"), answer_complete("\\nQuery: sky colour\\n")
    (False, True)
    """
    text = text.lstrip()
    if not text.startswith("{"):
        return "\n" in text.rstrip(" \t")
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{}":
            depth += 1 if ch == "{" else -1
            if depth == 0:
                return True
    return False


Segment = tuple[KV, int]
"""Part of a stored prompt's KV cache: a stored cache (per layer keys, values) and how many of its
first positions the prompt uses. A prompt's segments, in order, hold its positions."""

MAX_SEGMENTS = 8  # a prompt stored in more pieces is copied into one, so gathering stays cheap


def distinct_tokens(seqs: Sequence[Sequence[int]]) -> int:
    """Positions in the prefix tree of `seqs`: what `PrefixStore` holds to keep them all (a
    shared prefix once), so the store can be sized to keep a whole call for its retry.

    >>> distinct_tokens([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]])
    5
    """
    ordered = sorted(tuple(s) for s in seqs)  # a sequence shares the most with its predecessor
    return sum(len(s) - _lcp(s, before) for before, s in zip([()] + ordered, ordered))


def gather(segments: list[Segment]) -> KV:
    """The KV cache the segments hold, one (keys, values) per layer: views of a single stored
    cache, a copy when it is in pieces."""
    layers = range(len(segments[0][0]))
    if len(segments) == 1:
        kv, n = segments[0]
        return [(kv[i][0][:, :, :n], kv[i][1][:, :, :n]) for i in layers]
    return [(torch.cat([kv[i][0][:, :, :n] for kv, n in segments], dim=2),
             torch.cat([kv[i][1][:, :, :n] for kv, n in segments], dim=2)) for i in layers]


def _first(segments: list[Segment], n: int) -> list[Segment]:
    """The segments that hold the first `n` positions (the last one cut short)."""
    out, left = [], n
    for kv, used in segments:
        if left <= 0:
            break
        out.append((kv, min(used, left)))
        left -= used
    return out


class PrefixStore:
    """The KV caches of recent prompts, least recently used evicted beyond `max_tokens`.

    A prompt that started from a stored one keeps the shared positions as that prompt's segments
    (views, no copy) and only its own tail as new: the K prompts of a passage hold the passage
    once, so a whole window fits where full copies would evict its first prompts before their
    retry. `max_tokens` bounds the positions of the distinct caches the entries refer to — what
    the store keeps alive.

    >>> kv = lambda n: [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]  # one layer, n positions
    >>> store = PrefixStore(max_tokens=5)
    >>> store.put([1, 2, 3], kv(3), []); n, shared = store.best([1, 2, 9]); n
    2
    >>> store.put([1, 2, 9], kv(3), shared); store.size()  # [1, 2, 3]'s 3 positions + its own 1
    4
    >>> store.put([7, 8, 9], kv(3), []); store.best([1, 2])[0], store.size()  # both older ones evicted
    (0, 3)
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self._entries: list[tuple[list[int], list[Segment]]] = []  # most recently used last

    def best(self, ids: list[int]) -> tuple[int, list[Segment]]:
        """(n, segments): the longest prefix of `ids` a stored prompt holds, and the segments
        that hold it (n = 0: none)."""
        found, at = 0, -1
        for k, (seq, _) in enumerate(self._entries):
            n = _lcp(seq, ids)
            if n > found:
                found, at = n, k
        if at < 0:
            return 0, []
        self._entries.append(self._entries.pop(at))
        return found, _first(self._entries[-1][1], found)

    def put(self, ids: list[int], kv: KV, shared: list[Segment]) -> None:
        """Store the prompt `ids` with its whole cache `kv`, whose first positions are those
        `shared` holds (from `best`): only the rest is kept, as a copy of its own."""
        keep = sum(n for _, n in shared)
        tail = [(k[:, :, keep:].clone(), v[:, :, keep:].clone()) for k, v in kv] if keep else kv
        segments = [*shared, (tail, len(ids) - keep)]
        if len(segments) > MAX_SEGMENTS:
            segments = [(gather(segments), len(ids))]
        self._entries.append((ids, segments))
        while len(self._entries) > 1 and self.size() > self.max_tokens:
            self._entries.pop(0)

    def size(self) -> int:
        """Positions of the distinct caches the entries refer to."""
        held = {id(kv): kv[0][0].shape[-2] for _, segments in self._entries for kv, _ in segments}
        return sum(held.values())

    def reserve(self, tokens: int) -> None:
        """Room for at least `tokens` positions from now on (never less than before)."""
        self.max_tokens = max(self.max_tokens, tokens)


class GrowingLayer(DynamicLayer):
    """A cache layer with room reserved for the tokens still to come: a decoding step writes its
    keys and values in place instead of concatenating (copying) the whole cache once per layer
    and step, which dominated a batched step on a CPU. Attention sees the same tensors."""

    def reserve(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_empty(batch, heads, length + extra, dim)
        self._values = values.new_empty(batch, heads, length + extra, dim)
        self._keys[:, :, :length], self._values[:, :, :length] = keys, values
        self._length, self.is_initialized = length, True
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._length + key_states.shape[-2]
        self._keys[:, :, self._length:end], self._values[:, :, self._length:end] = key_states, value_states
        self._length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def keep_rows(self, order: list[int]) -> None:
        """Only the batch rows in `order` go on, row `order[j]` becoming row j (a finished row leaves
        the batch). `order` is `fill_holes`': every moved row comes from beyond the rows that stay,
        so the moves are done in place, each copying one row's used positions — not the whole
        reserved cache, which a gather would copy at every finish."""
        for j, i in enumerate(order):
            if i != j:
                self._keys[j, :, :self._length] = self._keys[i, :, :self._length]
                self._values[j, :, :self._length] = self._values[i, :, :self._length]
        self._keys, self._values = self._keys[:len(order)], self._values[:len(order)]
        self.keys, self.values = self._keys[:, :, :self._length], self._values[:, :, :self._length]


def fill_holes(rows: int, keep: list[int]) -> list[int]:
    """The new order of a batch whose rows `keep` (ascending) go on: rows already among the first
    len(keep) stay where they are, and each hole left by a finished row there is filled by a kept
    row from beyond, so the fewest rows move and none is overwritten before it has moved.

    >>> fill_holes(5, [0, 2, 3, 4]), fill_holes(4, [1, 3]), fill_holes(3, [0, 1])
    ([0, 4, 2, 3], [3, 1], [0, 1])
    """
    count = len(keep)
    stay = [i for i in keep if i < count]
    movers = iter(i for i in keep if i >= count)
    kept = set(stay)
    return [j if j in kept else next(movers) for j in range(count)]


@dataclass
class Row:
    """One prompt being answered: its ids, KV cache, next-token logits and what it generated."""

    ids: list[int]
    kv: KV
    logits: torch.Tensor
    generator: torch.Generator | None
    head: str = ""  # text the prompt already put in the answer (an assistant prefix)
    out: list[int] = field(default_factory=list)
    done: bool = False


class PrefixDecoder:
    """Prefill over `PrefixStore`, then batched decoding with per-row early stop.

    `fed` and `decoded` count token positions run through the model (the benchmark's floor);
    `seconds` splits the wall time into prefill, decoding (the batch cache's assembly, the
    forwards and finished rows leaving) and the per-row sampling and stop checks between forwards
    (where benchmarks/generate_local.py looks for waste).
    """

    def __init__(self, model: Any, tokenizer: Any, *, store_tokens: int = 16384, batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.store = PrefixStore(store_tokens)
        self.batch = batch
        self.stop_ids = {tokenizer.eos_token_id}
        self.fed = 0
        self.decoded = 0
        self.seconds = {"prefill": 0.0, "decode": 0.0, "sample": 0.0}

    def hold(self, prompts: list[list[int]]) -> None:
        """Size the store so the prompts of one call stay stored until its retry (a retried
        prompt then runs one token, not its passage), plus one older cache the call may start
        from; never beyond what one decoding batch of them holds anyway, so memory stays bounded
        by the batch, not by the window."""
        longest = max((len(ids) for ids in prompts), default=0)
        self.store.reserve(min(distinct_tokens(prompts) + longest, self.batch * longest))

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> tuple[KV, torch.Tensor]:
        """(KV cache of ids, logits of the token after them), running only what no stored prompt shares."""
        started = time.perf_counter()
        found, stored = self.store.best(ids)
        keep = min(found, len(ids) - 1)  # at least one token runs: its logits are needed
        shared = _first(stored, keep)
        data = gather(shared) if keep > 0 else None
        cache = DynamicCache(ddp_cache_data=data, config=self.model.config) if data else \
            DynamicCache(config=self.model.config)
        self.fed += len(ids) - keep
        out = self.model(input_ids=torch.tensor([ids[keep:]], device=self.model.device), use_cache=True, logits_to_keep=1,
                         **{cache_kwarg(type(self.model)): cache})
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if found < len(ids):  # else a stored prompt already holds all of it
            self.store.put(ids, kv, shared)
        logits = out.logits[0, -1].float().cpu()
        self.seconds["prefill"] += time.perf_counter() - started
        return kv, logits

    def generate(self, rows: list[Row], temperature: float, max_new_tokens: int,
                 done: Callable[[int, str], None]) -> None:
        """Decode `rows` in batches of `self.batch`; `done(i, text)` hears each row's answer."""
        for start in range(0, len(rows), self.batch):
            chunk = rows[start:start + self.batch]
            self._decode(chunk, temperature, max_new_tokens)
            for k, row in enumerate(chunk):
                done(start + k, self.tokenizer.decode(row.out, skip_special_tokens=True))

    @torch.inference_mode()
    def _decode(self, rows: list[Row], temperature: float, max_new_tokens: int) -> None:
        for row in rows:
            self._take(row, self._pick(row, row.logits, temperature), max_new_tokens)
        live = [row for row in rows if not row.done]
        if not live:
            return
        clock = time.perf_counter()
        cache, mask, position = self._batch_cache(live, max_new_tokens)
        while live:
            mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype, device=mask.device)], dim=1)
            out = self.model(input_ids=torch.tensor([[row.out[-1]] for row in live], device=mask.device), attention_mask=mask,
                             position_ids=position[:, None], use_cache=True,
                             **{cache_kwarg(type(self.model)): cache})
            self.decoded += len(live)
            logits = out.logits[:, -1].float().cpu()  # sampling draws on the CPU, as the naive path
            clock = self._lap("decode", clock)
            for i, row in enumerate(live):
                self._take(row, self._pick(row, logits[i], temperature), max_new_tokens)
            clock = self._lap("sample", clock)
            position = position + 1
            keep = [i for i, row in enumerate(live) if not row.done]
            if len(keep) < len(live) and keep:  # finished rows leave the batch
                keep = fill_holes(len(live), keep)
                for layer in cache.layers:
                    layer.keep_rows(keep)
                index = torch.tensor(keep, device=mask.device)
                mask, position = mask[index], position[index]
            live = [live[i] for i in keep]
            clock = self._lap("decode", clock)

    def _lap(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now

    def _batch_cache(self, rows: list[Row], room: int) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """One cache for the rows, each left-padded to the longest (the padding masked out), with
        `room` tokens reserved: (cache, attention mask over it, each row's next position)."""
        lengths = [len(row.ids) for row in rows]
        width = max(lengths)
        layers = []
        for layer in range(len(rows[0].kv)):
            keys, values = [], []
            for row, n in zip(rows, lengths):
                k, v = row.kv[layer]
                keys.append(torch.nn.functional.pad(k, (0, 0, width - n, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, width - n, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        cache = DynamicCache(config=self.model.config)
        cache.layers = []
        for keys_, values_ in layers:
            layer = GrowingLayer()
            layer.reserve(keys_, values_, room)
            cache.layers.append(layer)
        on = self.model.device
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=on)
        return cache, mask, torch.tensor(lengths, device=on)

    @staticmethod
    def _pick(row: Row, logits: torch.Tensor, temperature: float) -> int:
        """Greedy, or the Gumbel-max draw `GumbelSampler` makes (same generator, same order)."""
        if temperature <= 0:
            return int(torch.argmax(logits))
        uniform = torch.rand(logits.shape[-1], generator=row.generator)
        gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))
        return int(torch.argmax(logits / temperature + gumbel))

    def _take(self, row: Row, token: int, max_new_tokens: int) -> None:
        if token in self.stop_ids:
            row.done = True
            return
        row.out.append(token)
        text = row.head + self.tokenizer.decode(row.out, skip_special_tokens=True)
        row.done = len(row.out) >= max_new_tokens or answer_complete(text)
