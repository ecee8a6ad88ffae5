"""Engine.score_continuation: log-probabilities of a continuation that reuse the prompt cache and keep later
generations bit-identical to a fresh prefill."""

from __future__ import annotations

import pytest
import torch

from codegemma import GenerateOptions, PromptTooLongError, ScoringEngine
from codegemma.generate import PREFILL_BLOCK
from tests.tiny import tiny_engine

CODE = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n" * 4


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(fim=False, arch="gemma3", seed=7)


def _reference(engine, prompt, continuation):
    """The same log-probabilities from one plain forward pass over the whole sequence."""
    ids = prompt + continuation
    engine.prompt_cache.commit([], None)
    with torch.inference_mode():
        logp = torch.log_softmax(engine.model(torch.tensor([ids]), torch.arange(len(ids)))[0].float(), dim=-1)
    engine.prompt_cache.commit([], None)
    return [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation)]


def test_matches_a_plain_forward_pass_across_blocks(engine):
    assert isinstance(engine, ScoringEngine)
    ids = engine.tokenizer.encode(CODE, bos=True)
    prompt, continuation = ids[:PREFILL_BLOCK + 20], ids[PREFILL_BLOCK + 20:PREFILL_BLOCK * 2 + 30]  # crosses a block
    scores = engine.score_continuation(prompt, continuation, "doc")
    assert len(scores) == len(continuation) and all(s <= 0 for s in scores)
    assert scores == pytest.approx(_reference(engine, prompt, continuation), abs=1e-4)


def test_reuses_the_prompt_cache_and_keeps_generation_bit_identical(engine):
    ids = engine.tokenizer.encode(CODE, bos=True)
    prompt = ids[:PREFILL_BLOCK * 2 + 5]
    options = GenerateOptions(max_new_tokens=8, stop_ids=frozenset(), speculative=False, cache_key="doc")
    fresh = engine.generate(prompt, GenerateOptions(max_new_tokens=8, stop_ids=frozenset(), speculative=False,
                                                    reuse_prompt=False))
    engine.generate(prompt, options)
    engine.score_continuation(prompt, engine.tokenizer.encode("    return a * b\n"), "doc")
    engine.score_continuation(prompt, engine.tokenizer.encode("pass\n"), "doc")
    again = engine.generate(prompt, options)
    assert again.stats.cached_tokens == 2 * PREFILL_BLOCK  # the prompt's whole blocks came from the cache
    assert again.tokens == fresh.tokens


def test_bad_inputs(engine):
    with pytest.raises(ValueError, match="non-empty"):
        engine.score_continuation([2, 5], [])
    with pytest.raises(PromptTooLongError):
        engine.score_continuation([2] * engine.max_seq_len, [5])
    assert len(engine.score_continuation([2, 5, 6], [7, 8])) == 2
