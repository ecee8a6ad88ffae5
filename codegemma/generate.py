"""Generation as small functions: prefill, verify a draft, and the decode loop that ties them together.

One verifier (`verify`) is the only code that advances the cache position: a plain decode step is a
verification of an empty draft. Greedy verification keeps the longest run of draft tokens equal to the
target's argmax plus the target's own next token; sampling uses the rejection rule of speculative sampling
(accept with min(1, p/q), else resample from the normalised residual max(p - q, 0)), which leaves the output
distribution exactly the target's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from codegemma import kernels
from codegemma.drafters import Drafter
from codegemma.memory import release_freed_memory
from codegemma.model import Transformer
from codegemma.sampling import Sampler


@dataclass
class GenStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0       # prompt tokens whose KV came from an earlier request
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    forward_passes: int = 0      # target model calls, prefill included
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0        # target forward passes after prefill (plain decode steps included)
    decode_s: float = 0.0        # everything after prefill
    ttft_s: float = 0.0          # until the first new token is known
    total_s: float = 0.0

    def mean_accepted(self) -> float:
        """Tokens emitted per decode forward pass (1.0 = no gain from speculation)."""
        steps = self.forward_passes - 1
        return self.new_tokens / steps if steps > 0 else 0.0

    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean_accepted=round(self.mean_accepted(), 3), acceptance_rate=round(self.acceptance_rate(), 3))
        return d


@dataclass
class Generation:
    tokens: list[int]
    text: str
    stop_reason: str   # eos | stop_token | stop_string | max_tokens | cancelled | deadline | context
    stats: GenStats = field(default_factory=GenStats)


# Prefill runs in blocks aligned to multiples of this many positions. A position's KV then comes out of a
# matrix product of the same shape whether the prompt is computed fresh or after a reused prefix (which
# `PromptCache` rounds down to a block boundary), so prompt reuse is bit-identical to a fresh prefill. A
# model whose products compute rows apart (`Transformer.rows_apart`: AMX tiles) needs no alignment: its
# prefill computes every row as it would alone (`Transformer.hidden_rows`) and may start anywhere.
PREFILL_BLOCK = 64
# Blocks a prefill takes through the layers together: the weights prepared once for all of them; more would
# add little (dequantization is 18% of the time with one block) and hold more activations at once.
PREFILL_GROUP = 8


@torch.inference_mode()
def prefill(model: Transformer, tokens: Sequence[int], start: int,
            should_stop: Callable[[], bool] | None = None) -> Tensor | None:
    """Compute KV for tokens[start:] (positions start..) and return the logits [V] after the last one,
    or None when `should_stop` (polled between layers) asked to stop."""
    apart = model.rows_apart()
    if start % PREFILL_BLOCK and not apart:
        raise ValueError(f"prefill must start on a multiple of {PREFILL_BLOCK}, not {start}")
    # Blocks of more rows than the native kernels take go through the layers together, PREFILL_GROUP at a
    # time (each projection's weights prepared once for them); a last block of a few rows takes the native
    # path as it would alone. Rows apart: every row in passes of as many rows.
    tail = (len(tokens) - start) % PREFILL_BLOCK
    grouped = len(tokens) - (tail if 0 < tail <= kernels.MAX_ROWS and not apart else 0)
    logits = None
    for lo in range(start, grouped, PREFILL_GROUP * PREFILL_BLOCK):
        if should_stop is not None and lo > start and should_stop():
            return None
        hi = min(lo + PREFILL_GROUP * PREFILL_BLOCK, grouped)
        piece = torch.tensor([tokens[lo:hi]])
        h = (model.hidden_rows(piece, lo, None, should_stop) if apart
             else model.hidden_blocks(piece, lo, PREFILL_BLOCK, should_stop))
        if h is None:
            return None
        if hi == len(tokens):
            logits = _last_logits(model, h)
    if grouped < len(tokens):
        if should_stop is not None and grouped > start and should_stop():
            return None
        logits = prefill_block(model, tokens, grouped)
    release_freed_memory()  # the blocks' activations
    return logits


@torch.inference_mode()
def prefill_block(model: Transformer, tokens: Sequence[int], lo: int, slot: int | None = None,
                  blocks: int = 1, should_stop: Callable[[], bool] | None = None) -> Tensor | None:
    """Compute KV for `blocks` blocks tokens[lo:lo + blocks * PREFILL_BLOCK] (lo a multiple of PREFILL_BLOCK,
    unless the model computes rows apart) in the model's cache or batch slot `slot`, several through the
    layers together (the same KV as one at a time); the logits [V] after the last token when they end
    `tokens`, else None. With several blocks, `should_stop` is polled between layers: None then too, and the
    blocks' KV is not valid."""
    piece = torch.tensor([tokens[lo:lo + blocks * PREFILL_BLOCK]])
    if model.rows_apart():
        h = model.hidden_rows(piece, lo, slot, should_stop if blocks > 1 else None)
    elif blocks == 1:
        h = model.hidden(piece, lo, slot)
    else:
        h = model.hidden_blocks(piece, lo, PREFILL_BLOCK, should_stop, slot)
    if h is None or lo + piece.shape[1] < len(tokens):
        return None  # only the last position's logits are needed: skip the big output layer for the rest
    return _last_logits(model, h)


def _last_logits(model: Transformer, h: Tensor) -> Tensor:
    """The logits [V] after the last of hidden states h [1, S, D]."""
    return model.output(h[:, -1:]).float()[0, -1]


def take_token(token: int, stream: TextStream, stats: GenStats, stop_ids: frozenset[int], eos_id: int) -> str | None:
    """Take one verified token into `stream`; the stop reason when it ends the generation."""
    if token in stop_ids:
        return "eos" if token == eos_id else "stop_token"
    stats.new_tokens += 1
    return "stop_string" if stream.add(token) else None


def verify(model: Transformer, token: int, draft: list[int], draft_probs: Tensor | None, pos: int,
           sampler: Sampler) -> tuple[list[int], Tensor | None, int | None]:
    """Feed `token` + `draft` at `pos`; return (accepted draft tokens, logits for the next position, or a
    token already chosen by rejection sampling)."""
    with torch.inference_mode():
        logits = model(torch.tensor([[token, *draft]]), torch.arange(pos, pos + 1 + len(draft)))[0]  # [1+k, V]
    if sampler.greedy:
        n = greedy_accepted(draft, logits)
        return draft[:n], logits[n], None
    for i, d in enumerate(draft):
        forced = accept_or_resample(sampler.probs(logits[i]), draft_probs[i] if draft_probs is not None else None,
                                    d, sampler)
        if forced is not None:
            return draft[:i], None, forced
    return draft, logits[len(draft)], None


def greedy_accepted(draft: Sequence[int], logits: Tensor) -> int:
    """How many leading draft tokens greedy decoding confirms: draft[i] must be the argmax of logits[i], the
    logits [>= len(draft), V] after the token before it."""
    target = torch.argmax(logits[:len(draft)], dim=-1).tolist() if draft else []
    n = 0
    while n < len(draft) and draft[n] == target[n]:
        n += 1
    return n


def accept_or_resample(p: Tensor, q: Tensor | None, d: int, sampler: Sampler) -> int | None:
    """The speculative-sampling rule for one draft token d drawn from q (None = a point mass on d).

    Returns None when d is accepted (probability min(1, p[d] / q[d])), else a token drawn from the
    normalised residual max(p - q, 0). Together the two leave the token distributed exactly as p.
    """
    q_d = float(q[d]) if q is not None else 1.0
    if sampler.uniform() < min(1.0, float(p[d]) / q_d):
        return None
    if q is None:
        residual = p.clone()
        residual[d] = 0.0
    else:
        residual = (p - q).clamp_min(0)
    total = float(residual.sum())
    return sampler.draw(residual / total) if total > 0 else sampler.draw(p)


class TextStream:
    """Decodes tokens incrementally; finds stop strings; emits only text that can no longer change."""

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: Sequence[str],
                 on_text: Callable[[str], None] | None):
        self.decode, self.stops, self.on_text = decode, [s for s in stop_strings if s], on_text
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0

    def add(self, token: int) -> bool:
        """Append a token; True when a stop string has appeared (self.text is then cut before it)."""
        self.tokens.append(token)
        self.text = self.decode(self.tokens)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.flush()
            return True
        # hold back a partial UTF-8 character and anything that may turn out to start a stop string
        safe = len(self.text.rstrip("\ufffd"))
        for s in self.stops:
            for n in range(min(len(s) - 1, safe), 0, -1):
                if self.text[:safe].endswith(s[:n]):
                    safe -= n
                    break
        self._emit(safe)
        return False

    def flush(self) -> None:
        self._emit(len(self.text))

    def _emit(self, upto: int) -> None:
        if self.on_text and upto > self.emitted:
            self.on_text(self.text[self.emitted:upto])
        self.emitted = max(self.emitted, upto)


def generate(model: Transformer, prompt: Sequence[int], cached: int, *, max_new_tokens: int, sampler: Sampler,
             stop_ids: frozenset[int], eos_id: int, stream: TextStream, drafter: Drafter | None = None, max_draft: int = 8,
             should_stop: Callable[[], bool] | None = None, deadline: float | None = None,
             sources: Sequence[Sequence[int]] = ()) -> tuple[Generation, int]:
    """Decode after `prompt`, whose first `cached` tokens already have KV in the model's cache.

    Returns the generation and the number of leading positions of prompt + tokens whose KV is now valid.
    """
    stats = GenStats(prompt_tokens=len(prompt), cached_tokens=cached)
    t0 = time.perf_counter()
    logits = prefill(model, prompt, cached, should_stop)
    stats.forward_passes = 1
    stats.prefill_s = time.perf_counter() - t0
    if logits is None:
        stats.total_s = stats.prefill_s
        return Generation([], "", "cancelled", stats), cached
    pos = len(prompt)                      # positions [0, pos) hold valid KV
    room = model.max_len - pos
    budget = min(max_new_tokens, room)
    history = list(prompt)
    if drafter is not None:
        drafter.reset(prompt, sources)
    forced: int | None = None
    reason = "max_tokens" if budget == max_new_tokens else "context"

    def emit(t: int) -> str | None:
        history.append(t)  # for the drafter; a stop token it sees last does not matter
        return take_token(t, stream, stats, stop_ids, eos_id)

    while True:
        token = forced if forced is not None else sampler.sample(logits)
        if stats.new_tokens == 0:
            stats.ttft_s = time.perf_counter() - t0
        stop = emit(token)
        if stop is None:
            if stats.new_tokens >= budget:
                break
            if should_stop is not None and should_stop():
                stop = "cancelled"
            elif deadline is not None and time.monotonic() > deadline:
                stop = "deadline"
        if stop:
            reason = stop
            break
        draft, draft_probs = [], None
        if drafter is not None:
            k = min(max_draft, budget - stats.new_tokens - 1)
            if k > 0:
                td = time.perf_counter()
                draft, draft_probs = drafter.propose(history, k)
                stats.draft_s += time.perf_counter() - td
        tv = time.perf_counter()
        accepted, logits, forced = verify(model, token, draft, draft_probs, pos, sampler)
        stats.verify_s += time.perf_counter() - tv
        stats.forward_passes += 1
        pos += 1 + len(accepted)  # the verify pass wrote KV for the token and every accepted draft token
        if draft:
            stats.drafted += len(draft)
            stats.accepted += len(accepted)
            drafter.feedback(len(draft), len(accepted))
        stop = next((r for r in map(emit, accepted) if r), None)
        if stop:
            reason = stop
            break
    stream.flush()
    stats.total_s = time.perf_counter() - t0
    stats.decode_s = stats.total_s - stats.prefill_s
    return Generation(stream.tokens, stream.text, reason, stats), pos

