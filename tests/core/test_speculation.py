"""Speculation sized by the measured cost of verification: the policy's arithmetic, the measurement on a
real (tiny) model, and greedy equality for every draft length the engine may choose."""

from __future__ import annotations

import pytest

from codegemma import GenerateOptions, engine as engine_module
from codegemma.batch import BatchEngine
from codegemma.drafters import AcceptanceHistory, AdaptiveLength, NGramDrafter
from codegemma.engine import RECHECKS, Engine
from codegemma.speculation import VerifyCost, cost_from_times, expected_tokens, measure_pass_times
from tests.tiny import random_model, tiny_config, tiny_engine

CHEAP = VerifyCost(((0, 1.0), (1, 1.02), (4, 1.08), (8, 1.15), (16, 1.4)))  # memory-bound verification
DEAR = VerifyCost(((0, 1.0), (1, 1.5), (4, 3.0), (8, 5.0), (16, 9.0)))    # compute-bound: k rows ~ k steps


def test_expected_tokens_of_a_draft():
    assert expected_tokens(0.0, 8) == 1.0  # only the target's own token
    assert expected_tokens(1.0, 8) == 9.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_cost_interpolates_and_extrapolates():
    assert CHEAP(0) == 1.0 and CHEAP(4) == pytest.approx(1.08)
    assert CHEAP(2) == pytest.approx(1.04)  # between the measured 1 and 4
    assert CHEAP(20) > CHEAP(16)


def test_best_draft_follows_acceptance_and_cost():
    assert CHEAP.best_draft(0.9, 16) >= 8  # cheap verification, drafts usually right: long drafts
    assert 0 < CHEAP.best_draft(0.3, 16) < CHEAP.best_draft(0.9, 16)
    assert DEAR.best_draft(0.5, 16) == 0  # 1.5 tokens for 1.5 steps: never better than a plain step
    assert DEAR.best_draft(0.95, 16) > 0
    assert CHEAP.pays() and not DEAR.pays()


def test_draft_length_policy_uses_the_cost():
    length = AdaptiveLength(16, cost=CHEAP)
    for _ in range(6):
        length.update(length.k, length.k)  # every draft wholly accepted
    assert length.k >= 8 and not length.paused()
    dear = AdaptiveLength(16, cost=DEAR)
    dear.update(4, 1)  # acceptance well below what would pay here: drafting pauses
    assert dear.paused()


def test_a_new_request_starts_from_the_recent_requests_acceptance():
    MID = VerifyCost(((0, 1.0), (1, 1.3), (4, 1.6), (8, 2.0), (16, 3.5)))  # this machine's order of magnitude
    fresh = AdaptiveLength(16, cost=MID)
    assert fresh.acceptance == 0.5 and fresh.k > 0  # nothing seen yet: the fixed prior, which drafts

    seldom = AcceptanceHistory()
    for _ in range(4):  # single-line requests: each draft rejected at once
        AdaptiveLength(16, cost=MID, history=seldom).update(2, 0)
    single = AdaptiveLength(16, cost=MID, history=seldom)
    assert single.acceptance < 0.35 and MID.best_draft(single.acceptance, 16) == 0  # no draft pays at that rate

    often = AcceptanceHistory()
    for _ in range(4):  # multi-line requests copying lines: drafts taken whole
        AdaptiveLength(16, cost=MID, history=often).update(6, 6)
    multi = AdaptiveLength(16, cost=MID, history=often)
    assert multi.acceptance > 0.7 and multi.k > fresh.k  # long drafts from the first step

    drafter = NGramDrafter(max_k=16, cost=MID, history=seldom)
    drafter.reset([5, 6, 7, 5, 6, 7])  # every request's drafter starts from the history as it is then
    assert drafter.length.acceptance == single.acceptance


def test_measured_cost_on_a_model():
    model = random_model(tiny_config("gemma3", 256), seed=1)
    model.setup_cache(512)
    cost = cost_from_times(measure_pass_times(model, ks=(1, 4, 16), depth=64, reps=2))
    ks = [k for k, _ in cost.points]
    ratios = [c for _, c in cost.points]
    assert ks == [0, 1, 4, 16] and ratios[0] == 1.0
    assert ratios == sorted(ratios)  # never cheaper with more positions


def test_cost_from_best_pass_times():
    cost = cost_from_times({1: 0.010, 2: 0.012, 5: 0.011, 9: 0.020})
    assert cost.points == ((0, 1.0), (1, pytest.approx(1.2)), (4, pytest.approx(1.2)), (8, pytest.approx(2.0)))
    assert cost_from_times({}) is not None and cost_from_times({1: 0.01}).pays()


def _loaded_then_quiet(loaded_measurements: int):
    """measure_pass_times as a machine gives it while something else runs (the first `loaded_measurements`
    times: several rows cost as much as that many steps) and then when it is quiet; and the calls made."""
    calls: list[tuple[int, ...]] = []

    def measure(model, ks):
        calls.append(ks)
        slow = len(calls) <= loaded_measurements
        return {1: 0.010, **{1 + k: 0.010 * ((1 + k) if slow else 1.0 + 0.01 * k) for k in ks}}
    return measure, calls


def test_speculation_measured_under_load_is_measured_again(monkeypatch):
    """A verification cost measured while the machine was busy said drafts never pay; the engine looks
    again later instead of keeping speculation off for the life of the process, and stops looking after
    RECHECKS more measurements."""
    measure, calls = _loaded_then_quiet(loaded_measurements=2)
    monkeypatch.setattr(engine_module, "measure_pass_times", measure)
    base = tiny_engine(seed=3)
    engine = Engine(base.model, base.tokenizer, base.name, recheck_after_s=0.0)
    reference = tiny_engine(seed=3)
    prompt = engine.tokenizer.encode("for i in range(10):\n    print(i)\n" * 6, bos=True)
    options = GenerateOptions(max_new_tokens=32, stop_ids=frozenset())
    assert not engine.speculative_default and len(calls) == 1
    engine.generate(prompt, options)  # looks again: still loaded
    assert len(calls) == 2 and not engine.speculative_default
    gen = engine.generate(prompt, options)  # quiet now: drafts pay
    assert len(calls) == 3 and engine.speculative_default and gen.stats.drafted > 0
    plain = reference.generate(prompt, GenerateOptions(max_new_tokens=32, stop_ids=frozenset(), speculative=False))
    assert gen.tokens == plain.tokens
    engine.generate(prompt, options)  # it pays: no more measuring
    assert len(calls) == 3

    always, calls = _loaded_then_quiet(loaded_measurements=100)
    monkeypatch.setattr(engine_module, "measure_pass_times", always)
    engine = Engine(base.model, base.tokenizer, base.name, recheck_after_s=0.0)
    for _ in range(RECHECKS + 3):
        engine.generate(prompt, GenerateOptions(max_new_tokens=2, stop_ids=frozenset()))
    assert len(calls) == 1 + RECHECKS and not engine.speculative_default


def test_batched_engine_turns_speculation_on_after_a_loaded_measurement(monkeypatch):
    measure, calls = _loaded_then_quiet(loaded_measurements=1)
    monkeypatch.setattr(engine_module, "measure_pass_times", measure)
    base = tiny_engine(seed=4)
    batch = BatchEngine(Engine(base.model, base.tokenizer, base.name, recheck_after_s=0.0), slots=2)
    try:
        assert not batch.scheduler.speculative
        prompt = base.tokenizer.encode("x = 1\ny = 2\n" * 8, bos=True)
        batch.generate(prompt, GenerateOptions(max_new_tokens=4, stop_ids=frozenset()))
        assert len(calls) == 2 and batch.scheduler.speculative
    finally:
        batch.close()


def test_first_measurement_keeps_prompt_reuse_right():
    """The engine measures on the first generation that may draft, which overwrites the model's KV cache;
    a prompt cached before that must not be reused afterwards as if it were still there."""
    engine = tiny_engine(seed=5)
    reference = tiny_engine(seed=5)
    prompt = engine.tokenizer.encode("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n" * 3, bos=True)
    options = GenerateOptions(max_new_tokens=24, stop_ids=frozenset(), cache_key="doc", speculative=False)
    engine.generate(prompt, options)
    assert engine._verify_cost is None
    again = engine.generate(prompt, GenerateOptions(max_new_tokens=24, stop_ids=frozenset(), cache_key="doc"))
    assert engine._verify_cost is not None
    plain = reference.generate(prompt, GenerateOptions(max_new_tokens=24, stop_ids=frozenset(), speculative=False,
                                                       reuse_prompt=False))
    assert again.tokens == plain.tokens


@pytest.mark.parametrize("max_draft", [1, 2, 3, 5, 8, 12, 16])
def test_speculative_greedy_equals_plain_for_every_draft_length(max_draft):
    base = tiny_engine(seed=3)
    engine = Engine(base.model, base.tokenizer, base.name, max_draft=max_draft)
    text = "for i in range(10):\n    print(i)\nfor j in range(10):\n    print(j)\n" * 3
    prompt = engine.tokenizer.encode(text, bos=True)
    for cut in (len(prompt) // 2, len(prompt)):
        plain = engine.generate(prompt[:cut], GenerateOptions(max_new_tokens=48, stop_ids=frozenset(),
                                                              speculative=False, reuse_prompt=False))
        spec = engine.generate(prompt[:cut], GenerateOptions(max_new_tokens=48, stop_ids=frozenset(),
                                                             speculative=True, reuse_prompt=False),
                               draft_sources=[prompt])
        assert spec.tokens == plain.tokens
        assert spec.stats.drafted > 0
        assert max(spec.stats.drafted, 1) <= max_draft * spec.stats.forward_passes


def test_bench_runs_every_case_in_both_modes():
    """`codegemma bench speculative` times each case plain and speculative; greedy, both make the same text."""
    from codegemma.bench.speculative import run_completions

    engine = tiny_engine(seed=3)
    cases = [{"prompt": "for i in range(10):\n    print(i)\n" * 3, "suffix": "\nprint(i)\n"}] * 3
    out = run_completions(engine, cases, 12, single=False)
    assert out["plain"]["tokens"] == out["speculative"]["tokens"] > 0
    assert out["plain"]["drafted"] == 0 and out["speedup"] > 0
