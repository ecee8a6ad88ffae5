"""Batched decoding: concurrent requests decode together, one forward pass per step for all of them.

A `Scheduler` owns `slots` KV caches of the model (`Transformer.setup_slots`), one per active sequence, so
memory is bounded by the number of slots. Each `step()`:
1. admits waiting requests into free slots, each into the slot whose last prompt shares the longest prefix
   with it (that prefix's KV is reused as far as `resume_point` allows, as `PromptCache` does);
2. runs one prefill chunk of one sequence, the oldest still prefilling: up to `PREFILL_CHUNK` blocks of
   `PREFILL_BLOCK` tokens through the layers together, as many as take about `CHUNK_SECONDS` (one at
   least), or up to `PREFILL_GROUP` while no other sequence decodes;
3. runs one decode pass carrying the next token of every decoding sequence (`Transformer.step`).
A long prompt therefore delays the others' next tokens by one chunk at most. Each sequence keeps its
own sampler, stop rules, token budget, cancellation (`should_stop`) and deadline.

A row's greedy tokens are the same alone as in a batch, and the same as `Engine.generate`'s: prefill runs
in the same 64-aligned blocks (or each row as it would be alone, where the model computes rows apart), and
the native products compute each row on its own. Greedy requests draft
as `Engine.generate` does where speculation is on (n-gram drafts over the prompt, `draft_sources` and the
text so far, sized by the engine's measured verification cost): a request's draft tokens ride in the same
decode pass as further rows of its sequence, within the products' row limit, and the longest prefix that
the model's own argmax confirms is taken.

`BatchEngine` runs a scheduler in a background thread behind the engine contract (`EngineProtocol`), so
callers on many threads (fim's CompletionService workers) call `generate` at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from codegemma import kernels
from codegemma.contract import GenerateOptions
from codegemma.drafters import Drafter
from codegemma.engine import Engine
from codegemma.generate import (PREFILL_BLOCK, PREFILL_GROUP, Generation, GenStats, TextStream, greedy_accepted,
                                prefill_block, take_token)
from codegemma.memory import release_freed_memory
from codegemma.prompt_cache import common_prefix, resume_point
from codegemma.sampling import Sampler
from codegemma.tokenizer import Tokenizer

# Prefill blocks per step while other sequences decode: their next token waits for them. Measured with
# `codegemma bench http --clients 4` (embedded model): 1, 2, 4 and 8 blocks gave 0.73-0.76, 0.80, 0.86 and
# 0.93 completions/s; 4 (256 tokens, ~0.3 s here) keeps most of the gain at half the wait of 8. A bigger
# model takes fewer, so that the wait stays near CHUNK_SECONDS (one block at least: ~1 s for CodeGemma 2B).
PREFILL_CHUNK = 4
CHUNK_SECONDS = 0.35
MAX_SLOTS = kernels.MAX_ROWS  # one decode pass carries a row per slot; the native products take this many


@dataclass(eq=False)
class Request:
    """One request in the scheduler; `done` is set once `result` or `error` is."""

    id: int
    prompt: list[int]
    options: GenerateOptions
    sampler: Sampler
    stream: TextStream
    stop_ids: frozenset[int]
    should_stop: Callable[[], bool] | None
    stats: GenStats
    t0: float = field(default_factory=time.perf_counter)
    slot: int = -1
    pos: int = 0                 # positions [0, pos) of the slot hold this sequence's KV
    budget: int = 0
    next_token: int | None = None  # sampled, fed by the next decode pass
    drafter: Drafter | None = None  # n-gram drafts of greedy requests where speculation is on
    history: list[int] = field(default_factory=list)  # prompt + tokens taken, for the drafter
    result: Generation | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def interrupted(self) -> str | None:
        if self.should_stop is not None and self.should_stop():
            return "cancelled"
        deadline = self.options.deadline
        if deadline is not None and self.next_token is not None and time.monotonic() > deadline:
            return "deadline"
        return None


@dataclass
class _Slot:
    tokens: list[int] = field(default_factory=list)  # a prompt whose KV (from prefill blocks) the slot holds
    seq: Request | None = None
    used: int = 0                                    # scheduler step of its last admission, for LRU


class Scheduler:
    """Steps every active sequence of `engine`'s model together; not thread-safe except `submit`."""

    def __init__(self, engine: Engine, slots: int = 4):
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be 1..{MAX_SLOTS}, got {slots}")
        self.engine = engine
        self.model = engine.model
        self.model.setup_slots(slots)
        # decided here, in the thread that steps the model: measuring the verification cost runs passes on it
        self.speculative = engine.speculative_default
        self.slots = [_Slot() for _ in range(slots)]
        self.waiting: deque[Request] = deque()
        self.active: list[Request] = []   # in admission order
        self.steps = 0
        self.block_s: float | None = None  # seconds per prefill block, a moving average, for the chunk size
        # what each forward pass carried, oldest first: ("prefill", (id,)) or ("decode", ids)
        self.passes: deque[tuple[str, tuple[int, ...]]] = deque(maxlen=4096)
        self._lock = threading.Lock()
        self._ids = 0

    def submit(self, prompt: Sequence[int], options: GenerateOptions = GenerateOptions(), *,
               on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
               draft_sources: Sequence[Sequence[int]] = ()) -> Request:
        """Queue a generation (checked as `Engine.generate` checks it); its result comes on the handle.
        `draft_sources`: extra token sequences the drafter may copy from, as for `Engine.generate`."""
        prompt = self.engine.check(prompt, options)
        tokenizer = self.engine.tokenizer
        with self._lock:
            seq = Request(self._ids, prompt, options,
                          Sampler(options.temperature, options.top_k, options.top_p, options.seed),
                          TextStream(tokenizer.decode, options.stop_strings, on_text),
                          tokenizer.stop_ids if options.stop_ids is None else options.stop_ids, should_stop,
                          GenStats(prompt_tokens=len(prompt)))
            self._ids += 1
            speculative = self.speculative if options.speculative is None else options.speculative
            if speculative and seq.sampler.greedy and self.engine.draft_model is None:  # n-gram drafts only
                seq.drafter = self.engine.drafter(seq.sampler, forced=options.speculative is True)
                seq.drafter.reset(prompt, draft_sources)
                seq.history = list(prompt)
            self.waiting.append(seq)
        return seq

    def pending(self) -> bool:
        return bool(self.active or self.waiting)

    def end_all(self, error: BaseException | None = None) -> None:
        """End every request, active or waiting: cancelled, or failed with `error`."""
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        for request in [*self.active, *waiting]:
            if error is None:
                self._finish(request, "cancelled")
            else:
                self._fail(request, error)

    @torch.inference_mode()
    def step(self) -> None:
        """Admit, one prefill chunk, one decode pass (see the module docstring)."""
        self.steps += 1
        # while nothing decodes, nobody's next token waits for a re-measurement of the verification cost (it
        # runs on the model's own cache, not the slots')
        if not self.active and self.engine.recheck_speculation():
            self.speculative = self.engine.speculative_default
        self._admit()
        prefilling = next((s for s in self.active if s.pos < len(s.prompt)), None)
        if prefilling is not None:
            self._prefill(prefilling)
        self._decode()

    def _admit(self) -> None:
        with self._lock:
            waiting, self.waiting = list(self.waiting), deque()
        later: list[Request] = []
        for seq in waiting:
            if seq.interrupted():  # superseded while it waited: no prefill for an answer nobody reads
                self._finish(seq, "cancelled")
                continue
            free = [i for i, slot in enumerate(self.slots) if slot.seq is None]
            if not free:
                later.append(seq)
                continue
            reuse = seq.options.reuse_prompt
            best = max(free, key=lambda i: ((common_prefix(self.slots[i].tokens, seq.prompt) if reuse else 0),
                                            -self.slots[i].used))
            slot = self.slots[best]
            cached = resume_point(self.model, common_prefix(slot.tokens, seq.prompt), len(seq.prompt),
                                  PREFILL_BLOCK) if reuse else 0
            slot.tokens, slot.seq, slot.used = seq.prompt[:cached], seq, self.steps
            seq.slot, seq.pos, seq.stats.cached_tokens = best, cached, cached
            seq.budget = min(seq.options.max_new_tokens, self.model.max_len - len(seq.prompt))
            self.active.append(seq)
        with self._lock:  # ahead of anything submitted meanwhile: first come, first admitted
            self.waiting.extendleft(reversed(later))

    def _prefill(self, seq: Request) -> None:
        if seq.pos > seq.stats.cached_tokens and seq.interrupted():  # polled between blocks, as prefill() does
            self._finish(seq, "cancelled")
            return
        # while no other sequence decodes, nobody's next token waits: up to PREFILL_GROUP blocks, as
        # Engine.generate's prefill takes them; else a chunk (module docstring)
        alone = all(s is seq or s.pos < len(s.prompt) for s in self.active)
        fit = PREFILL_CHUNK if self.block_s is None else int(CHUNK_SECONDS / self.block_s)
        blocks = PREFILL_GROUP if alone else max(1, min(PREFILL_CHUNK, fit))
        t0 = time.perf_counter()
        try:
            logits = prefill_block(self.model, seq.prompt, seq.pos, seq.slot, blocks,
                                   lambda: seq.interrupted() is not None)
        except Exception as error:  # noqa: BLE001 - the error belongs to this request's caller
            self._fail(seq, error)
            return
        reason = seq.interrupted() if blocks > 1 else None  # polled inside the pass too: its KV may be partial
        if reason:
            self._finish(seq, reason)
            return
        self.passes.append(("prefill", (seq.id,)))
        done = min(seq.pos + blocks * PREFILL_BLOCK, len(seq.prompt))
        if logits is None:  # whole blocks, no output layer: a fair sample of a block's time
            per_block = (time.perf_counter() - t0) * PREFILL_BLOCK / (done - seq.pos)
            self.block_s = per_block if self.block_s is None else 0.8 * self.block_s + 0.2 * per_block
        seq.pos = done
        if logits is None:
            return
        seq.stats.forward_passes = 1
        release_freed_memory()  # the prompt's blocks' activations
        seq.stats.prefill_s = time.perf_counter() - seq.t0
        if seq.options.reuse_prompt:
            self.slots[seq.slot].tokens = list(seq.prompt)  # prefill's KV, reusable by the slot's next prompt
        self._take(seq, logits)

    def _decode(self) -> None:
        for seq in [s for s in self.active if s.next_token is not None]:
            reason = seq.interrupted()
            if reason:
                self._finish(seq, reason)
        batch = [s for s in self.active if s.next_token is not None]
        if not batch:
            return
        drafts = self._drafts(batch)
        tokens, rows = [], []
        for seq, draft in zip(batch, drafts):
            tokens += [seq.next_token, *draft]
            rows += [(seq.slot, seq.pos + j) for j in range(1 + len(draft))]
        started = time.perf_counter()
        try:
            logits = self.model.step(tokens, rows)  # [N, V]
        except Exception as error:  # noqa: BLE001 - every request in the pass gets the error
            for seq in batch:
                self._fail(seq, error)
            return
        self.passes.append(("decode", tuple(s.id for s in batch)))
        elapsed = time.perf_counter() - started
        first = 0
        for seq, draft in zip(batch, drafts):
            seq.stats.forward_passes += 1
            seq.stats.verify_s += elapsed  # the pass it shared
            own = logits[first:first + 1 + len(draft)]
            first += 1 + len(draft)
            if not draft:
                seq.pos += 1
                self._take(seq, own[0])
                continue
            n = greedy_accepted(draft, own)
            seq.stats.drafted += len(draft)
            seq.stats.accepted += n
            seq.drafter.feedback(len(draft), n)
            seq.pos += 1 + n  # the pass wrote KV for the token and every accepted draft token
            self._take_confirmed(seq, [*draft[:n], int(own[n].argmax())])

    def _drafts(self, batch: list[Request]) -> list[list[int]]:
        """Each sequence's draft for this pass (empty without a drafter), all rows within the products'
        limit: a sequence may add rows while the others keep one each."""
        room = kernels.MAX_ROWS - len(batch)
        out = []
        for seq in batch:
            draft: list[int] = []
            if seq.drafter is not None and room > 0:
                k = min(self.engine.max_draft, room, seq.budget - seq.stats.new_tokens - 1,
                        self.model.max_len - 1 - seq.pos)
                if k > 0:
                    td = time.perf_counter()
                    draft = seq.drafter.propose(seq.history, k)[0][:k]
                    seq.stats.draft_s += time.perf_counter() - td
            room -= len(draft)
            out.append(draft)
        return out

    def _take_confirmed(self, seq: Request, tokens: list[int]) -> None:
        """Take accepted draft tokens and the model's next choice after them, in order, until one ends the
        sequence; the last one is fed by the next pass."""
        for token in tokens[:-1]:
            self._take(seq, token, feed=False)
            if seq.done.is_set():
                return
        self._take(seq, tokens[-1])

    def _take(self, seq: Request, choice: torch.Tensor | int, feed: bool = True) -> None:
        """Take the sequence's next token (sampled from logits [V], or already chosen) and apply its stop
        rules; `feed`: the next pass feeds it (an accepted draft token has its KV already)."""
        seq.next_token = None
        try:
            token = choice if isinstance(choice, int) else seq.sampler.sample(choice)
            if seq.drafter is not None:
                seq.history.append(token)
            if seq.stats.new_tokens == 0:
                seq.stats.ttft_s = time.perf_counter() - seq.t0
            reason = take_token(token, seq.stream, seq.stats, seq.stop_ids, self.engine.tokenizer.eos_id)
        except Exception as error:  # noqa: BLE001 - e.g. the caller's on_text raised: its request fails
            self._fail(seq, error)
            return
        if reason is None and seq.stats.new_tokens >= seq.budget:
            reason = "max_tokens" if seq.budget == seq.options.max_new_tokens else "context"
        if reason:
            self._finish(seq, reason)
        elif feed:
            seq.next_token = token

    def _release(self, seq: Request) -> None:
        if seq in self.active:
            self.active.remove(seq)
            self.slots[seq.slot].seq = None

    def _finish(self, seq: Request, reason: str) -> None:
        self._release(seq)
        try:
            seq.stream.flush()
        except Exception as error:  # noqa: BLE001 - the caller's on_text raised on the last piece
            seq.error = error
        stats = seq.stats
        stats.total_s = time.perf_counter() - seq.t0
        stats.decode_s = stats.total_s - stats.prefill_s if stats.forward_passes else 0.0
        if stats.forward_passes == 0:
            stats.prefill_s = stats.total_s
        seq.result = Generation(seq.stream.tokens, seq.stream.text, reason, stats)
        seq.done.set()

    def _fail(self, seq: Request, error: BaseException) -> None:
        self._release(seq)
        if seq.slot >= 0:
            self.slots[seq.slot].tokens = []  # the slot's cache content is unknown after a failed pass
        seq.error = error
        seq.done.set()


class BatchEngine:
    """The engine contract over a `Scheduler` stepped by one background thread: `generate` may be called
    from many threads at once, and their requests decode together."""

    def __init__(self, engine: Engine, slots: int = 4):
        self.engine = engine
        self.name = engine.name
        self.tokenizer: Tokenizer = engine.tokenizer
        self.scheduler = Scheduler(engine, slots)
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="codegemma-batch", daemon=True)
        self._thread.start()

    @property
    def supports_fim(self) -> bool:
        return self.engine.supports_fim

    @property
    def max_seq_len(self) -> int:
        return self.engine.max_seq_len

    @property
    def slots(self) -> int:
        return len(self.scheduler.slots)

    def generate(self, prompt: Sequence[int], options: GenerateOptions = GenerateOptions(), *,
                 on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 draft_sources: Sequence[Sequence[int]] = ()) -> Generation:
        """As `Engine.generate`, decoded in a batch with the other callers' requests (greedy ones draft
        where speculation is on, from the prompt, `draft_sources` and their own text)."""
        with self._wake:  # a request is either refused here or ended by the thread, never left waiting
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            seq = self.scheduler.submit(prompt, options, on_text=on_text, should_stop=should_stop,
                                        draft_sources=draft_sources)
            self._wake.notify()
        seq.done.wait()
        if seq.error is not None:
            raise seq.error
        return seq.result

    def close(self) -> None:
        """Stop the thread after its current step; requests still in it are cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        scheduler = self.scheduler
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or scheduler.pending())
                if self._closed:
                    scheduler.end_all()
                    return
            try:
                scheduler.step()
            except Exception as error:  # noqa: BLE001 - a fault outside one request's pass: no caller waits forever
                scheduler.end_all(error)
