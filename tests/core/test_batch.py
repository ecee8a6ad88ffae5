"""Batched decoding (codegemma.batch): a request's greedy tokens are the same alone, inside a batch of four
different prompts and through `Engine.generate`, in every weight format (float32, bfloat16, int8, GGUF
blocks); cancelling one request leaves the others' tokens unchanged; a long prefill delays another request's
next token by one prefill chunk at most (counted in forward passes); a slot reuses its last prompt's KV
bit-identically; the threaded BatchEngine serves concurrent callers."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import pytest
from gguf import GGMLQuantizationType as Q

import codegemma
from codegemma import kernels
from codegemma.batch import CHUNK_SECONDS, PREFILL_CHUNK, BatchEngine, Scheduler
from codegemma.contract import GenerateOptions
from codegemma.generate import PREFILL_BLOCK
from tests.core.test_gguf_native import write_tiny
from tests.tiny import tiny_checkpoint

pytestmark = pytest.mark.skipif(not kernels.available(), reason="batched rows are bit-identical with the native "
                                "products only: " + kernels.unavailable_reason())

GREEDY = GenerateOptions(max_new_tokens=16, stop_ids=frozenset(), reuse_prompt=False)


def _prompts(vocab: int, lengths=(5, 70, 131, 200), seed: int = 0) -> list[list[int]]:
    """Different prompts; lengths cross prefill blocks and the tiny models' sliding windows."""
    rng = random.Random(seed)
    return [[2] + [rng.randrange(6, vocab) for _ in range(n)] for n in lengths]


def _run(scheduler: Scheduler, requests) -> list[list[int]]:
    while scheduler.pending():
        scheduler.step()
    assert all(r.error is None for r in requests), [r.error for r in requests]
    return [r.result.tokens for r in requests]


@pytest.fixture(params=["fp32", "bf16", "int8", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"])
def engine(request, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path_factory.mktemp("cache")))
    if request.param in ("fp32", "bf16"):
        return codegemma.load(tiny_checkpoint(), dtype=request.param)
    if request.param == "int8":
        return codegemma.load(tiny_checkpoint(), dtype="fp32", int8=True)
    path = tmp_path_factory.mktemp("gguf") / f"tiny-{request.param}.gguf"
    write_tiny(path, Q[request.param])
    return codegemma.load(str(path))


def test_greedy_tokens_are_the_same_alone_and_in_a_batch_of_four(engine):
    prompts = _prompts(engine.tokenizer.vocab_size)
    plain = replace(GREEDY, speculative=False)
    single = [engine.generate(p, plain).tokens for p in prompts]  # the single-request path
    scheduler = Scheduler(engine, slots=4)
    alone = [_run(scheduler, [scheduler.submit(p, plain)])[0] for p in prompts]
    requests = [scheduler.submit(p, plain) for p in prompts]
    together = _run(scheduler, requests)
    assert ("decode", tuple(r.id for r in requests)) in scheduler.passes  # four rows in one forward pass
    assert all(len(t) == GREEDY.max_new_tokens for t in together)
    assert together == alone == single
    # drafting (forced on): each request's drafts ride as further rows of the shared passes, and what the
    # model confirms is exactly what plain greedy decoding gives
    drafting = replace(GREEDY, speculative=True)
    sources = [p[1:] * 2 for p in prompts]  # copies to draft from: some drafts are accepted
    requests = [scheduler.submit(p, drafting, draft_sources=[s]) for p, s in zip(prompts, sources)]
    assert _run(scheduler, requests) == single
    assert sum(r.result.stats.drafted for r in requests) > 0
    assert any(kind == "decode" and len(ids) > 1 for kind, ids in list(scheduler.passes)[-64:])


def test_cancelling_one_request_leaves_the_others_unchanged():
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    prompts = _prompts(engine.tokenizer.vocab_size, seed=1)
    scheduler = Scheduler(engine, slots=4)
    solo = [_run(scheduler, [scheduler.submit(p, GREEDY)])[0] for p in prompts]
    cancel_at = scheduler.steps + 9  # while all four decode
    requests = [scheduler.submit(p, GREEDY, should_stop=(lambda: scheduler.steps >= cancel_at) if i == 2 else None)
                for i, p in enumerate(prompts)]
    together = _run(scheduler, requests)
    assert requests[2].result.stop_reason == "cancelled"
    assert 0 < len(together[2]) < GREEDY.max_new_tokens and together[2] == solo[2][:len(together[2])]
    assert [t for i, t in enumerate(together) if i != 2] == [t for i, t in enumerate(solo) if i != 2]
    assert all(scheduler.slots[r.slot].seq is None for r in requests)  # every slot freed


def test_a_lone_long_prompt_prefills_in_groups_and_cancels_inside_one():
    """With nobody else decoding a long prompt's blocks go through the layers together (fewer prefill passes,
    the same tokens as Engine.generate); a cancel that arrives inside such a pass ends the request there, and
    the slot then serves the next request correctly."""
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    long, other = _prompts(engine.tokenizer.vocab_size, lengths=(10 * PREFILL_BLOCK, 90), seed=3)
    scheduler = Scheduler(engine, slots=1)
    options = replace(GREEDY, speculative=False)
    (tokens,) = _run(scheduler, [scheduler.submit(long, options)])
    assert tokens == engine.generate(long, options).tokens
    assert len([p for p in scheduler.passes if p[0] == "prefill"]) < -(-len(long) // PREFILL_BLOCK)
    polls = []  # the cancel comes on the third poll (admission, then between layers): inside the first pass
    request = scheduler.submit(long, options, should_stop=lambda: polls.append(1) or len(polls) >= 3)
    _run(scheduler, [request])
    assert request.result.stop_reason == "cancelled" and request.result.tokens == []
    (after,) = _run(scheduler, [scheduler.submit(other, options)])
    assert after == engine.generate(other, options).tokens


def test_each_request_keeps_its_own_stop_rules_budget_and_deadline():
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    prompts = _prompts(engine.tokenizer.vocab_size, seed=5)
    text = engine.generate(prompts[0], GREEDY).text
    options = [GenerateOptions(max_new_tokens=16, stop_ids=frozenset(), stop_strings=(text[6:9],), reuse_prompt=False),
               GenerateOptions(max_new_tokens=3, stop_ids=frozenset(), reuse_prompt=False),
               GenerateOptions(max_new_tokens=16, stop_ids=frozenset(), deadline=time.monotonic() - 1,
                               reuse_prompt=False),
               GenerateOptions(max_new_tokens=16, reuse_prompt=False)]  # the tokenizer's stop tokens
    single = [engine.generate(p, o) for p, o in zip(prompts, options)]
    scheduler = Scheduler(engine, slots=4)
    requests = [scheduler.submit(p, o) for p, o in zip(prompts, options)]
    _run(scheduler, requests)
    got = [(r.result.tokens, r.result.text, r.result.stop_reason) for r in requests]
    assert got == [(g.tokens, g.text, g.stop_reason) for g in single]
    assert [g[2] for g in got[:3]] == ["stop_string", "max_tokens", "deadline"]


@pytest.mark.parametrize("block_s,per_pass", [(None, PREFILL_CHUNK), (10 * CHUNK_SECONDS, 1)])
def test_a_long_prefill_delays_another_request_by_one_chunk_at_most(block_s, per_pass):
    """A prompt that arrives while another request decodes is prefilled a chunk a pass between its decode
    steps: PREFILL_CHUNK blocks, or one where a block takes longer than the chunk's time budget (here as if
    measured on a model ten times slower than the budget)."""
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    short, long = _prompts(engine.tokenizer.vocab_size, lengths=(10, 10 * PREFILL_BLOCK), seed=2)
    scheduler = Scheduler(engine, slots=2)
    # one pass per token (no drafts), so that passes count tokens
    options = GenerateOptions(max_new_tokens=30, stop_ids=frozenset(), reuse_prompt=False, speculative=False)
    a = scheduler.submit(short, options)
    while a.stats.new_tokens == 0:
        scheduler.step()
    scheduler.block_s = block_s
    b = scheduler.submit(long, options)  # arrives while `a` decodes
    _run(scheduler, [a, b])
    passes = list(scheduler.passes)
    a_steps = [i for i, (kind, ids) in enumerate(passes) if kind == "decode" and a.id in ids]
    assert len(a_steps) == len(a.result.tokens) - 1  # the first token came from a's prefill
    b_prefills = [i for i, (kind, ids) in enumerate(passes) if kind == "prefill" and ids == (b.id,)]
    assert len(b_prefills) == -(-len(long) // (per_pass * PREFILL_BLOCK))
    assert a_steps[0] < b_prefills[0] < b_prefills[-1] < a_steps[-1]  # b's prefill ran while a decoded
    for before, after in zip(a_steps, a_steps[1:]):
        between = [kind for kind, _ in passes[before + 1:after]]
        assert between.count("prefill") <= 1 and "decode" not in between
    assert b.result.tokens == engine.generate(long, options).tokens


def test_a_slot_reuses_its_last_prompt_bit_identically():
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    base, other = _prompts(engine.tokenizer.vocab_size, lengths=(150, 90), seed=3)
    edited = base + [7, 8, 9]
    reuse = GenerateOptions(max_new_tokens=8, stop_ids=frozenset())
    scheduler = Scheduler(engine, slots=2)
    _run(scheduler, [scheduler.submit(base, reuse), scheduler.submit(other, reuse)])
    again = scheduler.submit(edited, reuse)
    got = _run(scheduler, [again])[0]
    assert again.stats.cached_tokens == 2 * PREFILL_BLOCK  # found the slot that holds `base`
    fresh = GenerateOptions(max_new_tokens=8, stop_ids=frozenset(), reuse_prompt=False)
    assert got == engine.generate(edited, fresh).tokens


def test_batch_engine_serves_concurrent_callers_and_reports_bad_requests():
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    prompts = _prompts(engine.tokenizer.vocab_size, seed=4)
    single = [engine.generate(p, GREEDY).tokens for p in prompts]
    batch = BatchEngine(engine, slots=4)
    try:
        results: list = [None] * len(prompts)
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batch.generate(prompts[i], GREEDY)))
                   for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [r.tokens for r in results] == single
        assert all(r.stop_reason == "max_tokens" for r in results)
        with pytest.raises(ValueError, match="empty prompt"):
            batch.generate([], GREEDY)
        streamed: list[str] = []
        gen = batch.generate(prompts[0], GREEDY, on_text=streamed.append)
        assert "".join(streamed) == gen.text

        def broken(text: str) -> None:
            raise RuntimeError("the client's callback failed")

        with pytest.raises(RuntimeError, match="callback failed"):  # its own request fails, nothing else
            batch.generate(prompts[1], GREEDY, on_text=broken)
        assert batch.generate(prompts[1], GREEDY).tokens == single[1]
    finally:
        batch.close()
    with pytest.raises(RuntimeError, match="closed"):
        batch.generate(prompts[0], GREEDY)


def test_slots_are_bounded():
    engine = codegemma.load(tiny_checkpoint(), dtype="fp32")
    with pytest.raises(ValueError, match="slots must be"):
        Scheduler(engine, slots=0)
    with pytest.raises(ValueError, match="slots must be"):
        Scheduler(engine, slots=kernels.MAX_ROWS + 1)
