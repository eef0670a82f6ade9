"""Running planned jobs through the decoder: KV caches of shared prefixes, packed tails, readout.

`PrefixScorer._run` takes the jobs of one `score_shared` call (see plan.py), runs each group's
prefix once into a KV cache (starting from the previous group's cache where they agree), scores
the tails from it packed into one row with a block-diagonal mask, and reads out each job's QL sum
and label log-probs. The ids fed are exactly those of the naive full prompts, so the scores equal a
one-pass full-prompt computation to float rounding (benchmarks/results/rerank_speed.json has the
tokens fed against that floor).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterator

import torch
from transformers import DynamicCache

from gecko_cli.llm.local.plan import Job, _lcp, plan_groups, reusable
from gecko_cli.llm.tokens import TokenMeter

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), batch 1
Result = tuple[float | None, list[float] | None]  # (QL sum, label log-probs) of one job
MIN_REUSE = 16  # a lone sequence starts from the last cache only when they share this many tokens


@functools.lru_cache(maxsize=None)
def cache_kwarg(decoder_class: type) -> str:
    """The name the installed transformers gives a decoder's KV-cache argument: `cache` since
    5.24 (`past_key_values` still works there with a FutureWarning on every call, and goes in 5.40),
    `past_key_values` before. Looked up once per class."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


class PrefixScorer:
    """The forward passes behind `LocalBackend.score_shared` (a base class: the backend supplies the
    model, tokenizer, meter and batch settings)."""

    model: Any
    tokenizer: Any
    meter: TokenMeter
    share_prefixes: bool
    pack_tokens: int
    batch_tokens: int
    max_batch: int
    tokens_fed: int

    @torch.inference_mode()
    def _run(self, jobs: list[Job], label_ids: list[int],
             deliver: Callable[[int, Result], None] | None = None) -> list[Result]:
        """Plan shared prefixes, run every group; (QL sum or None, label log-probs or None) per
        job, in job order, each also handed to `deliver(j, result)` as soon as it exists."""
        for job in jobs:  # one "call" per naive scored sequence, as a server would count it
            for tokens in job.calls:
                self.meter.settle(0, tokens, 0)
        groups = plan_groups([j.ids for j in jobs], [j.cap for j in jobs]) if self.share_prefixes else []
        results: list[Any] = [None] * len(jobs)

        def done(i: int, result: Result) -> None:
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
            elif previous and _lcp(previous[0], jobs[members[0]].ids) >= MIN_REUSE:
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
        out = decoder(input_ids=torch.tensor([ids[keep:]], device=self.model.device), use_cache=True, **{cache_kwarg(type(decoder)): cache})
        return out.last_hidden_state[0], keep, (ids, [(layer.keys, layer.values) for layer in cache.layers])

    def _run_batches(self, jobs: list[Job], members: list[int], shared: int, prefix: KV | None,
                     label_ids: list[int], done: Callable[[int, Result], None]) -> None:
        """Score each batch of tails; flat hidden row offsets[r] + j predicts ids[shared + j]."""
        for batch in self._batches(members, jobs, shared, self.pack_tokens if prefix else self.batch_tokens):
            tails = [jobs[i].ids[shared - 1:] for i in batch]
            hidden = self._packed_hidden(tails, prefix) if prefix else self._padded_hidden(tails)
            offsets = [0]
            for tail in tails:
                offsets.append(offsets[-1] + len(tail))
            for i, result in zip(batch, self._readout(hidden, offsets, [jobs[i] for i in batch], shared, label_ids)):
                done(i, result)

    def _batches(self, members: list[int], jobs: list[Job], shared: int, budget: int) -> Iterator[list[int]]:
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
        on = self.model.device
        local = torch.cat([torch.arange(len(t), device=on) for t in tails])
        segment = torch.cat([torch.full((len(t),), k, device=on) for k, t in enumerate(tails)])
        own = (segment[:, None] == segment[None, :]) & (local[:, None] >= local[None, :])
        mask = torch.cat([torch.ones(len(local), cached, dtype=torch.bool, device=on), own], dim=1)
        cache = DynamicCache(ddp_cache_data=prefix, config=self.model.config)  # a fresh view each time
        decoder = self.model.get_decoder()
        out = decoder(input_ids=torch.tensor([[t for tail in tails for t in tail]], device=on), position_ids=(cached + local)[None],
                      attention_mask=mask[None, None], use_cache=True, **{cache_kwarg(type(decoder)): cache})
        return out.last_hidden_state[0]

    def _padded_hidden(self, tails: list[list[int]]) -> torch.Tensor:
        """Final hidden states (sum of tails, H) of right-padded full prompts, padding dropped."""
        width = max(map(len, tails))
        self.tokens_fed += width * len(tails)  # padding costs as much as tokens
        on = self.model.device
        input_ids = torch.tensor([t + [self.tokenizer.pad_token_id] * (width - len(t)) for t in tails], device=on)
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails], device=on)
        out = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state[mask.bool()]

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-softmax over the full vocabulary of the LM head's logits."""
        return torch.log_softmax(self.model.get_output_embeddings()(hidden).float(), dim=-1)

    def _readout(self, hidden: torch.Tensor, offsets: list[int], jobs: list[Job], shared: int,
                 label_ids: list[int]) -> list[Result]:
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
        logprobs = self._logprobs(hidden[torch.tensor(index, device=hidden.device)]).cpu()
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
