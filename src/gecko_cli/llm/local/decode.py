"""Generation over shared prompt prefixes: each distinct prefix runs once, each row stops early.

`gecko generate` sends prompts that differ only late: the system text and one-shot example are
the same for every passage, and the K examples of one passage share everything up to their task
line. `PrefixStore` keeps the KV caches of recent prompts; a new prompt starts from the longest
token prefix it shares with any of them (keys and values at positions < n depend only on the
first n ids, so a stored cache sliced to n serves any prompt that agrees on those n ids). Only
the new tail runs, and only the new tail is stored again: a shared prefix is held once, and the
store is sized to a call's prompts (`PrefixDecoder.hold`), so a retried prompt finds itself. The
rows are decoded together (batch.py: their caches right-aligned in one, the padding masked); each
row leaves when its answer is complete — its end-of-text token, or the JSON object it was asked
for has closed (`answer_complete`) — and the call's next prompt takes its place, so a step is
never spent on a few slow rows while prompts wait.

The ids fed are those of the naive full prompt (tokenized whole), the sampling noise of a row
comes from its own generator in the same order as `model.generate` draws it, so the texts equal
the naive path's (up to float rounding in the logits; benchmarks/results/generate_local.json
reports how often a query differs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache

from gecko_cli.llm.local.batch import DecodeBatch
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
SHORT_TAIL = 48  # new tokens beyond which a prompt's prefill runs alone (a passage), not padded with others


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
        self.put_tail(ids, [(k[:, :, keep:].clone(), v[:, :, keep:].clone()) for k, v in kv] if keep else kv, shared)

    def put_tail(self, ids: list[int], tail: KV, shared: list[Segment]) -> None:
        """Store the prompt `ids` as the positions `shared` holds followed by `tail`, a cache of
        its own (kept as it is: not a view of anything that changes)."""
        keep = sum(n for _, n in shared)
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

    `fed` and `decoded` count token positions run through the model (the benchmark's floor),
    `steps` the decoding forwards;
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
        self.steps = 0  # decoding forwards: decoded / steps is how full the batch ran
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
        return self._prefill_from(ids, *self.store.best(ids))

    def _prefill_from(self, ids: list[int], found: int, stored: list[Segment]) -> tuple[KV, torch.Tensor]:
        """`prefill` once the store's longest match (`found` positions in `stored`) is known."""
        started = time.perf_counter()
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

    @torch.inference_mode()
    def prefill_many(self, prompts: list[list[int]]) -> list[tuple[KV, torch.Tensor]]:
        """`prefill` of each prompt, in order, the short tails run together: a prompt that needs more
        than `SHORT_TAIL` new tokens (its passage) runs alone, as `prefill`; the others — the
        K - 1 siblings of a passage just stored, whose task lines are all that differ, and retries,
        which run one token — in one padded forward over their stored prefixes, where one each
        would read every weight for a dozen tokens."""
        results: list[tuple[KV, torch.Tensor] | None] = [None] * len(prompts)
        short: list[tuple[int, int, list[Segment], bool]] = []  # (index, positions stored, segments, all stored)
        for j, ids in enumerate(prompts):
            found, stored = self.store.best(ids)
            keep = min(found, len(ids) - 1)
            if keep == 0 or len(ids) - keep > SHORT_TAIL:
                results[j] = self._prefill_from(ids, found, stored)
            else:
                short.append((j, keep, _first(stored, keep), found == len(ids)))
        if len(short) == 1:  # alone, it runs as any prompt does (looked up again: a passage after it may have run)
            results[short[0][0]] = self.prefill(prompts[short[0][0]])
        elif short:
            done = self._prefill_tails([prompts[j] for j, *_ in short], [item[1:] for item in short])
            for (j, *_), item in zip(short, done):
                results[j] = item
        return [r for r in results if r is not None]

    def _prefill_tails(self, prompts: list[list[int]],
                       stored: list[tuple[int, list[Segment], bool]]) -> list[tuple[KV, torch.Tensor]]:
        """Each prompt's tail after its stored prefix (positions, segments, whether the store
        holds the whole prompt already), all in one forward."""
        started = time.perf_counter()
        prefixes = [gather(segments) for _, segments, _ in stored]
        tails = [len(ids) - n for ids, (n, _, _) in zip(prompts, stored)]
        batch = DecodeBatch(len(prompts), self.model.device, room=max(tails))
        batch.join(prefixes)
        mask, position = batch.feed_inputs(tails)
        width = max(tails)
        ids = [[0] * (width - t) + p[len(p) - t:] for p, t in zip(prompts, tails)]
        out = self.model(input_ids=torch.tensor(ids, device=mask.device), attention_mask=mask, position_ids=position,
                         use_cache=True, logits_to_keep=1, **{cache_kwarg(type(self.model)): batch.cache})
        self.fed += sum(tails)
        results, seen = [], set()
        for r, (p, (_, segments, whole), prefix, t) in enumerate(zip(prompts, stored, prefixes, tails)):
            tail = [(k.clone(), v.clone()) for k, v in batch.last(r, t)]
            if not whole and tuple(p) not in seen:  # the same prompt twice (two samples of one task) is stored once
                self.store.put_tail(p, tail, segments)
                seen.add(tuple(p))
            kv = [(torch.cat([pk, tk], dim=2), torch.cat([pv, tv], dim=2)) for (pk, pv), (tk, tv) in zip(prefix, tail)]
            results.append((kv, out.logits[r, -1].float().cpu()))
        self.seconds["prefill"] += time.perf_counter() - started
        return results

    def generate(self, prompts: list[list[int]], make: Callable[[int, KV, torch.Tensor], Row], temperature: float,
                 max_new_tokens: int, done: Callable[[int, str], None]) -> None:
        """Answer `prompts`; `make(i, kv, logits)` turns prompt i's prefill into its `Row`, `done(i,
        text)` hears its answer when it is complete. At most `self.batch` rows decode together; as
        rows finish, the next prompts take their places (`DecodeBatch`), a few at a time so their
        short tails are prefilled together (`prefill_many`)."""
        waiting = iter(range(len(prompts)))
        refill = max(1, self.batch // 8)
        batch: DecodeBatch | None = None
        live: list[tuple[int, Row]] = []
        with torch.inference_mode():
            while True:
                free = self.batch - len(live)
                if free >= refill or not live:
                    joining = self._admit(prompts, waiting, free, make, temperature, max_new_tokens, done)
                    if joining:
                        clock = time.perf_counter()
                        if batch is None:
                            batch = DecodeBatch(min(self.batch, len(prompts)), self.model.device)
                        batch.join([row.kv for _, row in joining])
                        for _, row in joining:
                            row.kv = []  # the batch holds it now; the store keeps what it shares
                        live += joining
                        self._lap("decode", clock)
                if not live:
                    return
                live = self._step(batch, live, temperature, max_new_tokens, done)

    def _admit(self, prompts: list[list[int]], waiting: Iterator[int], free: int,
               make: Callable[[int, KV, torch.Tensor], Row], temperature: float, max_new_tokens: int,
               done: Callable[[int, str], None]) -> list[tuple[int, Row]]:
        """Up to `free` rows from the waiting prompts, prefilled and their first tokens drawn; a
        row answered by that token alone is reported, and its place goes to the next prompt."""
        joining: list[tuple[int, Row]] = []
        while len(joining) < free:
            chosen = list(islice(waiting, free - len(joining)))
            if not chosen:
                break
            for i, (kv, logits) in zip(chosen, self.prefill_many([prompts[i] for i in chosen])):
                row = make(i, kv, logits)
                self._take(row, self._pick(row, row.logits, temperature), max_new_tokens)
                if row.done:
                    done(i, self._text(row))
                else:
                    joining.append((i, row))
        return joining

    def _step(self, batch: DecodeBatch, live: list[tuple[int, Row]], temperature: float, max_new_tokens: int,
              done: Callable[[int, str], None]) -> list[tuple[int, Row]]:
        """One token for every live row; the rows that finished leave. Returns the rows going on."""
        clock = time.perf_counter()
        mask, position = batch.step_inputs()
        out = self.model(input_ids=torch.tensor([[row.out[-1]] for _, row in live], device=mask.device),
                         attention_mask=mask, position_ids=position, use_cache=True,
                         **{cache_kwarg(type(self.model)): batch.cache})
        self.decoded += len(live)
        self.steps += 1
        logits = out.logits[:, -1].float().cpu()  # sampling draws on the CPU, as the naive path
        clock = self._lap("decode", clock)
        for k, (_, row) in enumerate(live):
            self._take(row, self._pick(row, logits[k], temperature), max_new_tokens)
        clock = self._lap("sample", clock)
        keep = [k for k, (_, row) in enumerate(live) if not row.done]
        for i, row in (item for item in live if item[1].done):
            done(i, self._text(row))
        if len(keep) < len(live):
            order = batch.leave(keep)
            live = [live[k] for k in order]
        self._lap("decode", clock)
        return live

    def _text(self, row: Row) -> str:
        return self.tokenizer.decode(row.out, skip_special_tokens=True)

    def _lap(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now

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
