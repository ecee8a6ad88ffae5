"""Reuse the KV cache of recent prompts between keystrokes.

The model's cache holds one "live" sequence. A new prompt that shares a token prefix with it computes only
the rest. Requests for other documents (another `key`) would overwrite it, so the live prefix is saved into
a small LRU of per-key copies first, bounded in slots and bytes, and restored when that key comes back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from codegemma.model import Transformer


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def resume_point(model: Transformer, common: int, length: int, block: int) -> int:
    """Where the prefill of a prompt of `length` tokens starts after a cached prefix of `common` tokens equal
    to its own: its last token is always recomputed (its logits are needed). A model that computes rows
    apart (`Transformer.rows_apart`) starts right there; another goes back to the last multiple of `block`
    (prefill's, generate.PREFILL_BLOCK), so that reuse stays bit-identical to a fresh prefill."""
    n = min(common, length - 1)
    return n if model.rows_apart() else n // block * block


@dataclass
class _Saved:
    tokens: list[int]
    kv: list[tuple[Tensor, Tensor]]  # per layer, [1, KV, n, D]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv)


class PromptCache:
    def __init__(self, model: Transformer, block: int, max_slots: int = 4, max_bytes: int = 256 << 20):
        """`block`: reuse ends on a multiple of this (prefill's block size, see generate.PREFILL_BLOCK) unless the
        model computes rows apart (`resume_point`)."""
        self.model, self.block = model, block
        self.max_slots, self.max_bytes = max_slots, max_bytes
        self.live: list[int] = []          # tokens whose KV occupy the model cache at [0, len)
        self.live_key: str | None = None
        self.saved: OrderedDict[str, _Saved] = OrderedDict()

    def prepare(self, prompt: Sequence[int], key: str | None) -> int:
        """Arrange the model cache for `prompt`; return how many leading tokens need no recomputation."""
        best, source = common_prefix(self.live, prompt), None
        for k, saved in self.saved.items():
            n = common_prefix(saved.tokens, prompt)
            if n > best:
                best, source = n, k
        if source is not None or key != self.live_key:
            restore = self.saved.get(source) if source is not None else None
            self._save_live()  # the live sequence is about to be overwritten: keep it for its own key
            if restore is not None:
                self._restore(restore, best)
        best = resume_point(self.model, best, len(prompt), self.block)
        self.live = list(prompt[:best])
        self.live_key = key
        return best

    def commit(self, tokens: Sequence[int], key: str | None) -> None:
        """Record that the cache now holds KV for `tokens`, as computed by `prefill` (not decode steps)."""
        self.live = list(tokens)
        self.live_key = key

    def clear(self) -> None:
        self.live, self.live_key = [], None
        self.saved.clear()

    def _layers(self):
        return [layer.self_attn.kv_cache for layer in self.model.model.layers]

    def _save_live(self) -> None:
        if self.live_key is None or not self.live or self.max_slots == 0:
            return
        n = len(self.live)
        kv = [(c.k[:, :, :n].clone(), c.v[:, :, :n].clone()) for c in self._layers()]
        self.saved.pop(self.live_key, None)
        self.saved[self.live_key] = _Saved(list(self.live), kv)
        while len(self.saved) > self.max_slots or sum(s.nbytes for s in self.saved.values()) > self.max_bytes:
            self.saved.popitem(last=False)

    def _restore(self, saved: _Saved, n: int) -> None:
        for cache, (k, v) in zip(self._layers(), saved.kv):
            cache.k[:, :, :n] = k[:, :, :n]
            cache.v[:, :, :n] = v[:, :, :n]
