"""The rows decoded together: one KV cache that rows join and leave while it decodes.

A decoding step reads every weight once whatever the number of rows, so on a CPU one row's step
costs about what 16 rows' does. A batch that only shrinks as its rows finish spends most of its
steps on a few slow rows; here a finished row's place is taken by the next prompt of the call
(continuous batching, as vLLM does), so the steps stay full until the call runs out of prompts.

Rows are right-aligned: every row's last position is the cache's last column, its prompt
left-padded and the padding masked, so one step writes one column for all rows.
A joining row is written into the columns before that edge; when it is longer than the cache is
wide, or the reserved columns run out, the cache is laid out again (`DecodeBatch._relayout`): the
padding every row has in common is dropped and room reserved. That copy is rare (once per
`ROOM` steps), and costs about one step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from gecko_cli.llm.local.kv import KV

ROOM = 64  # columns reserved beyond the widest row: one relayout per ROOM steps at most


class GrowingLayer(DynamicLayer):
    """A cache layer with room reserved for the tokens still to come, and for rows still to join:
    a decoding step writes its keys and values in place instead of concatenating (copying) the
    whole cache once per layer and step, which dominated a batched step on a CPU. Attention sees
    the same tensors (`keys`, `values`: views of the rows and columns in use)."""

    def reserve(self, keys: torch.Tensor, values: torch.Tensor, extra: int, rows: int = 0) -> None:
        """Start from `keys`, `values` [batch, heads, length, dim], with `extra` columns and room
        for `rows` rows in all (at least the batch). Unused storage is zero: a masked position
        must still be finite, or attention's softmax turns it into NaN."""
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_zeros(max(rows, batch), heads, length + extra, dim)
        self._values = values.new_zeros(max(rows, batch), heads, length + extra, dim)
        self._keys[:batch, :, :length], self._values[:batch, :, :length] = keys, values
        self._rows, self._length, self.is_initialized = batch, length, True
        self._view()

    def _view(self) -> None:
        self.keys = self._keys[:self._rows, :, :self._length]
        self.values = self._values[:self._rows, :, :self._length]

    @property
    def room(self) -> int:
        """Columns still free."""
        return self._keys.shape[2] - self._length

    @property
    def free_rows(self) -> int:
        """Rows that can still join."""
        return self._keys.shape[0] - self._rows

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._length + key_states.shape[-2]
        self._keys[:self._rows, :, self._length:end] = key_states
        self._values[:self._rows, :, self._length:end] = value_states
        self._length = end
        self._view()
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
        self._rows = len(order)
        self._view()

    def join(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A new last row: its cache [1, heads, n, dim] ends at the last column, the columns
        before it zeroed (a finished row's values may be there: finite, but not its own)."""
        n, row = keys.shape[-2], self._rows
        self._keys[row, :, :self._length - n], self._values[row, :, :self._length - n] = 0, 0
        self._keys[row, :, self._length - n:self._length] = keys[0]
        self._values[row, :, self._length - n:self._length] = values[0]
        self._rows += 1
        self._view()

    def relayout(self, drop: int, width: int, room: int) -> None:
        """Lay the cache out again: the first `drop` columns (padding of every row) go, the rest
        is right-aligned in `width` columns (more padding on the left when wider), with `room`
        columns reserved after it."""
        kept = self._length - drop
        keys = self._keys.new_zeros(self._keys.shape[0], self._keys.shape[1], width + room, self._keys.shape[3])
        values = torch.zeros_like(keys)
        keys[:self._rows, :, width - kept:width] = self._keys[:self._rows, :, drop:self._length]
        values[:self._rows, :, width - kept:width] = self._values[:self._rows, :, drop:self._length]
        self._keys, self._values, self._length = keys, values, width
        self._view()


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


class DecodeBatch:
    """Up to `capacity` rows decoding together: their cache, attention mask and next positions.

    `join` adds rows (their prompts' caches), `step_inputs` gives a step's mask and positions,
    `leave` drops finished rows. Row j of the batch is always the j-th row of the cache, mask and
    positions.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu", room: int | None = None):
        self.capacity, self.device = capacity, device
        self.room = ROOM if room is None else room
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)  # [rows, columns]: 1 = a real position
        self.position = torch.zeros(0, dtype=torch.long, device=device)  # each row's next position
        self.relayouts = 0

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def join(self, caches: list[KV]) -> None:
        """Rows whose prompts' caches are `caches` (per layer keys, values [1, heads, n, dim])."""
        if not caches:
            return
        lengths = [kv[0][0].shape[-2] for kv in caches]
        if self.rows + len(caches) > self.capacity:
            raise ValueError(f"{self.rows} + {len(caches)} rows exceed the batch's {self.capacity}")
        if self.cache is None:
            self._start(max(lengths), caches[0][0][0], len(caches[0]))
        elif max(lengths) > self.width:
            self._relayout(max(lengths))
        for kv, n in zip(caches, lengths):
            for layer, (keys, values) in zip(self.cache.layers, kv):
                layer.join(keys, values)
        pad = torch.tensor([[0] * (self.width - n) + [1] * n for n in lengths], device=self.device)
        self.mask = torch.cat([self.mask, pad])
        self.position = torch.cat([self.position, torch.tensor(lengths, device=self.device)])

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask, position ids) of the next one-token step, a column made for it."""
        if self.cache.layers[0].room < 1:
            self._relayout(self.width)
        self.mask = torch.cat([self.mask, torch.ones(self.rows, 1, dtype=self.mask.dtype, device=self.device)], 1)
        position = self.position[:, None]
        self.position = self.position + 1
        return self.mask, position

    def feed_inputs(self, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask, position ids [rows, T]) of a forward that feeds row r `lengths[r]`
        tokens: T = max(lengths) new columns, a shorter input left-padded (its padding masked, its
        positions those of its first token)."""
        width = max(lengths)
        if self.cache.layers[0].room < width:
            self.room = max(self.room, width)
            self._relayout(self.width)
        new = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, new], 1)
        steps = torch.tensor([[max(0, j - (width - n)) for j in range(width)] for n in lengths], device=self.device)
        position = self.position[:, None] + steps
        self.position = self.position + torch.tensor(lengths, device=self.device)
        return self.mask, position

    def last(self, row: int, n: int) -> KV:
        """The cache of row `row`'s last `n` positions, per layer (keys, values) [1, heads, n, dim]:
        views, valid until the batch next changes."""
        return [(layer.keys[row:row + 1, :, -n:], layer.values[row:row + 1, :, -n:]) for layer in self.cache.layers]

    def leave(self, keep: list[int]) -> list[int]:
        """Only rows `keep` (ascending) go on; returns the new order (row order[j] is now row j)."""
        order = fill_holes(self.rows, keep)
        for layer in self.cache.layers:
            layer.keep_rows(order)
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        self.mask, self.position = self.mask[index], self.position[index]
        return order

    def _start(self, width: int, like: torch.Tensor, layers: int) -> None:
        """An empty cache of `layers` layers, `width` columns wide, shaped and typed like the keys
        `like` of a layer."""
        self.cache = DynamicCache()  # every layer a GrowingLayer: full attention, as the models gecko runs
        for _ in range(layers):
            layer = GrowingLayer()
            empty = like.new_zeros(0, like.shape[1], width, like.shape[3])
            layer.reserve(empty, empty, self.room, rows=self.capacity)
            self.cache.layers.append(layer)
        self.mask = torch.zeros(0, width, dtype=torch.long, device=self.device)

    def _relayout(self, width: int) -> None:
        """Drop the padding every row has in common, then right-align in at least `width` columns
        with `self.room` reserved: for a wider newcomer, or when the reserved columns ran out."""
        drop = int(self.mask.argmax(dim=1).min()) if self.rows else self.width  # first real column of each row
        kept = self.width - drop
        width = max(width, kept)
        for layer in self.cache.layers:
            layer.relayout(drop, width, self.room)
        mask = torch.zeros(self.rows, width, dtype=self.mask.dtype, device=self.device)
        mask[:, width - kept:] = self.mask[:, drop:]
        self.mask = mask
        self.relayouts += 1
