"""Drafters propose the next few tokens cheaply; the verifier in `generate.py` decides what to keep.

A drafter never touches the target model's cache. `propose` returns draft ids and, for drafters that sample,
their probabilities (None means each draft token was proposed with certainty, a point mass).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from codegemma.model import Transformer
from codegemma.prompt_cache import common_prefix
from codegemma.sampling import Sampler
from codegemma.speculation import VerifyCost


class Drafter(Protocol):
    def reset(self, prompt: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None: ...
    def propose(self, tokens: Sequence[int], k: int) -> tuple[list[int], Tensor | None]: ...
    def feedback(self, drafted: int, accepted: int) -> None: ...


class AcceptanceHistory:
    """Draft acceptance over the recent requests of an engine, where each request's drafts start from
    (`AdaptiveLength`'s prior): a workload whose drafts are seldom taken (single lines: 18-25% of n-gram
    draft tokens) then stops paying a failed verification in every request to learn it again, and one
    whose drafts are taken drafts at length from its first step. Updated by every verified draft."""

    DECAY = 0.9    # weight of the earlier drafts: about the last ten count
    WEIGHT = 4.0   # draft tokens' worth of evidence that a new request starts with (the fixed prior: 2)

    def __init__(self) -> None:
        self.accepted, self.tried = 0.0, 0.0

    def add(self, accepted: int, decided: int) -> None:
        self.accepted = self.DECAY * self.accepted + accepted
        self.tried = self.DECAY * self.tried + decided

    def prior(self) -> tuple[float, float]:
        """(accepted, tried) for a new request: the recent rate with WEIGHT tokens of evidence, or
        AdaptiveLength's fixed prior before any draft was verified."""
        if self.tried == 0.0:
            return AdaptiveLength.PRIOR
        rate = (self.accepted + AdaptiveLength.PRIOR[0]) / (self.tried + AdaptiveLength.PRIOR[1])
        return rate * self.WEIGHT, self.WEIGHT


class AdaptiveLength:
    """Draft length that follows the recent acceptance: long drafts only while they pay off, and none for a
    while after drafts were wholly rejected (a verification costs more than a plain step), the pause
    doubling while rejections go on. A request starts from PRIOR, or from the engine's recent requests
    (`AcceptanceHistory`).

    With a measured verification cost (`codegemma.speculation.VerifyCost`) the length is the one with the
    most tokens per unit of time at the estimated per-token acceptance, and none while no length beats a
    plain step; without one (a draft model, whose own time dominates) it doubles on full acceptance and
    shrinks to what was accepted on poor acceptance."""

    MAX_PAUSE = 16
    DECAY = 0.8  # weight of the earlier drafts in the acceptance estimate
    PRIOR = (1.0, 2.0)  # accepted, tried: a prior estimate of 0.5, worth two draft tokens

    def __init__(self, max_k: int, min_k: int = 1, cost: VerifyCost | None = None,
                 history: AcceptanceHistory | None = None):
        self.max_k, self.min_k, self.cost, self.history = max_k, min_k, cost, history
        self.prior = history.prior() if history is not None else self.PRIOR
        self.pause = 0      # proposals still to skip
        self.backoff = 1    # the next pause's length
        self.accepted, self.tried = 0.0, 0.0  # decayed counts of draft tokens accepted / decided
        self.k = max_k if cost is None else max(min_k, cost.best_draft(self.acceptance, max_k))

    @property
    def acceptance(self) -> float:
        """Estimated probability that a draft token is accepted, given the ones before it were."""
        return (self.accepted + self.prior[0]) / (self.tried + self.prior[1])

    def paused(self) -> bool:
        """True (and one step of the pause used up) while drafting is paused."""
        if self.pause > 0:
            self.pause -= 1
            return True
        return False

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted == 0:
            self.pause, self.backoff = self.backoff, min(self.MAX_PAUSE, self.backoff * 2)
        else:
            self.backoff = 1
        # tokens up to the first rejection were decided; the rest of the draft tells nothing
        decided = accepted + (accepted < drafted)
        self.accepted = self.DECAY * self.accepted + accepted
        self.tried = self.DECAY * self.tried + decided
        if self.history is not None:
            self.history.add(accepted, decided)
        if self.cost is not None:
            best = self.cost.best_draft(self.acceptance, self.max_k)
            if best == 0:  # no draft pays at this acceptance: a pause, then a short probe
                self.pause, self.backoff = max(self.pause, self.backoff), min(self.MAX_PAUSE, self.backoff * 2)
            self.k = max(self.min_k, best)
        elif accepted == drafted:
            self.k = min(self.max_k, self.k * 2)
        elif accepted * 2 < drafted:
            self.k = max(self.min_k, accepted + 1)


class NGramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the last n tokens and propose what followed it.

    Code completion copies: names, argument lists and whole lines from the prefix, the suffix, other files
    and what it wrote itself. Drafts only on a match of at least `min_n` tokens (a 1-token match over a
    262k vocabulary is noise) and adapts the draft length to how well the recent drafts were accepted.
    """

    def __init__(self, max_n: int = 4, min_n: int = 2, max_k: int = 8, cost: VerifyCost | None = None,
                 history: AcceptanceHistory | None = None):
        self.max_n, self.min_n = max_n, min_n
        self.length = AdaptiveLength(max_k, cost=cost, history=history)
        self.reset([])

    def reset(self, prompt: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        length = self.length
        self.length = AdaptiveLength(length.max_k, cost=length.cost, history=length.history)
        self.corpus: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> position just after its latest occurrence
        # extra sources (e.g. the suffix of a left-to-right prompt) go first, so the live text wins ties;
        # -1 separates them so that no n-gram spans two sources
        for src in sources:
            self._extend([*src, -1])
        self.base = len(self.corpus)
        self._extend(list(prompt))

    def _extend(self, tokens: list[int]) -> None:
        old = len(self.corpus)
        self.corpus.extend(tokens)
        # an n-gram ending at `end` is indexed once its continuation corpus[end] exists
        for end in range(max(old, 1), len(self.corpus)):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.index[tuple(self.corpus[end - n:end])] = end

    def propose(self, tokens: Sequence[int], k: int) -> tuple[list[int], Tensor | None]:
        """tokens: the whole sequence so far (prompt + generated); it only ever grows between resets."""
        known = len(self.corpus) - self.base
        if len(tokens) > known:
            self._extend(list(tokens[known:]))
        if self.length.paused():
            return [], None
        k = min(k, self.length.k)
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            end = self.index.get(tuple(tokens[-n:]))
            if end is None:
                continue
            draft = self.corpus[end:end + k]
            if -1 in draft:
                draft = draft[:draft.index(-1)]
            if draft:
                return draft, None
        return [], None

    def feedback(self, drafted: int, accepted: int) -> None:
        self.length.update(drafted, accepted)


class ModelDrafter:
    """A smaller model with the same tokenizer drafts k tokens (CodeGemma 2B for 7B; tiny models in tests).

    It keeps its own KV cache and the token list that cache holds; before drafting it recomputes only what
    differs from the verified sequence, so rejected drafts cost nothing to undo.
    """

    def __init__(self, model: Transformer, sampler: Sampler | None = None, max_k: int = 6):
        self.model = model
        self.sampler = sampler or Sampler()
        self.length = AdaptiveLength(max_k)
        self.cached: list[int] = []

    def reset(self, prompt: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        self.length = AdaptiveLength(self.length.max_k)
        # keep the cache: a new prompt usually shares a long prefix with the last one

    @torch.inference_mode()
    def propose(self, tokens: Sequence[int], k: int) -> tuple[list[int], Tensor | None]:
        k = min(k, self.length.k, self.model.max_len - len(tokens))
        if k <= 0:
            return [], None
        same = common_prefix(self.cached, tokens)
        same = min(same, len(tokens) - 1)  # recompute at least the last token to get its logits
        fresh = list(tokens[same:])
        logits = self.model(torch.tensor([fresh]), torch.arange(same, len(tokens)))[0, -1]
        self.cached = list(tokens)
        draft: list[int] = []
        probs: list[Tensor] = []
        for _ in range(k):
            if self.sampler.greedy:
                t = int(torch.argmax(logits))
            else:
                p = self.sampler.probs(logits)
                t = self.sampler.draw(p)
                probs.append(p)
            draft.append(t)
            if len(draft) == k:
                break
            pos = len(self.cached)
            logits = self.model(torch.tensor([[t]]), torch.tensor([pos]))[0, -1]
            self.cached.append(t)
        return draft, (torch.stack(probs) if probs else None)

    def feedback(self, drafted: int, accepted: int) -> None:
        self.length.update(drafted, accepted)

