"""Generation behaviour: speculative == plain greedy, the sampling rule, stops, prompt reuse, errors."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import codegemma
import codegemma.generate as generate_module
from codegemma import GenerateOptions, kernels
from codegemma.drafters import ModelDrafter, NGramDrafter
from codegemma.errors import PromptTooLongError, TokenizerError
from codegemma.generate import PREFILL_BLOCK, TextStream, accept_or_resample, generate, prefill, prefill_block
from codegemma.prompt_cache import PromptCache
from codegemma.sampling import Sampler
from tests.tiny import random_model, tiny_config, tiny_engine, write_checkpoint

CODE = [
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "import json\n\nclass Config:\n    def __init__(self, path):\n        self.path = path\n",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n    print(j)\nfor k in range(",
    "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2,",
]


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(fim=True, arch="gemma3", seed=3)


def _prompts(engine, n=12):
    rng = random.Random(0)
    out = []
    for i in range(n):
        text = CODE[i % len(CODE)] * (1 + i % 3)
        ids = engine.tokenizer.encode(text, bos=True)
        out.append(ids[: rng.randint(max(2, len(ids) // 2), len(ids))])
    return out


def _plain(engine, prompt, **kw):
    return engine.generate(prompt, GenerateOptions(speculative=False, reuse_prompt=False, **kw))


@pytest.mark.parametrize("max_new", [1, 7, 40])
def test_ngram_speculative_greedy_equals_plain(engine, max_new):
    drafted = 0
    for prompt in _prompts(engine):
        plain = _plain(engine, prompt, max_new_tokens=max_new, stop_ids=frozenset())
        spec = engine.generate(prompt, GenerateOptions(max_new_tokens=max_new, stop_ids=frozenset(), reuse_prompt=False,
                                                       speculative=True))
        assert spec.tokens == plain.tokens
        assert spec.stop_reason == plain.stop_reason
        drafted += spec.stats.drafted
    if max_new > 1:
        assert drafted > 0, "the prompts repeat themselves: the n-gram drafter must have drafted"


def test_stop_token_inside_a_draft(engine):
    """Pick a stop token that the greedy output contains; both paths must stop at its first occurrence."""
    for prompt in _prompts(engine):
        free = _plain(engine, prompt, max_new_tokens=40, stop_ids=frozenset())
        if len(free.tokens) < 6:
            continue
        stop = free.tokens[5]
        plain = _plain(engine, prompt, max_new_tokens=40, stop_ids=frozenset({stop}))
        spec = engine.generate(prompt, GenerateOptions(max_new_tokens=40, stop_ids=frozenset({stop}), reuse_prompt=False))
        assert spec.tokens == plain.tokens == free.tokens[:free.tokens.index(stop)]
        assert spec.stop_reason == plain.stop_reason == "stop_token"


@pytest.mark.parametrize("same_weights", [True, False])
def test_model_drafter_greedy_equals_plain(engine, same_weights):
    cfg = engine.model.cfg
    draft = random_model(tiny_config("gemma", cfg.vocab_size), seed=0 if not same_weights else 3)
    if same_weights:
        draft = random_model(cfg, seed=3)
    draft.setup_cache(engine.max_seq_len)
    for prompt in _prompts(engine, 8):
        plain = _plain(engine, prompt, max_new_tokens=24, stop_ids=frozenset())
        gen, _ = generate(engine.model, prompt, 0, max_new_tokens=24, sampler=Sampler(), stop_ids=frozenset(),
                          eos_id=engine.tokenizer.eos_id, stream=TextStream(engine.tokenizer.decode, (), None),
                          drafter=ModelDrafter(draft, max_k=5))
        assert gen.tokens == plain.tokens
        if same_weights:
            assert gen.stats.accepted == gen.stats.drafted > 0


def test_rejection_rule_reproduces_target_distribution():
    """Many draws of one speculative step: the emitted token must follow p, whatever the draft's q.

    Tolerance: total variation distance below 0.02 with 40,000 draws over 6 outcomes (its standard error
    there is about 0.005), for a fixed seed."""
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=gen) * 1.5, 0)
    q = torch.softmax(torch.randn(6, generator=gen) * 1.5, 0)
    sampler = Sampler(temperature=1.0, seed=1)
    counts = torch.zeros(6)
    for _ in range(40_000):
        d = sampler.draw(q)
        forced = accept_or_resample(p, q, d, sampler)
        counts[d if forced is None else forced] += 1
    assert 0.5 * (counts / counts.sum() - p).abs().sum() < 0.02
    # a deterministic drafter (point mass) as the n-gram drafter is
    counts.zero_()
    for _ in range(40_000):
        forced = accept_or_resample(p, None, 2, sampler)
        counts[2 if forced is None else forced] += 1
    assert 0.5 * (counts / counts.sum() - p).abs().sum() < 0.02


def test_seeded_sampling_is_reproducible(engine):
    prompt = _prompts(engine)[0]
    a = engine.generate(prompt, GenerateOptions(max_new_tokens=20, temperature=0.8, top_k=50, top_p=0.9, seed=7, stop_ids=frozenset()))
    b = engine.generate(prompt, GenerateOptions(max_new_tokens=20, temperature=0.8, top_k=50, top_p=0.9, seed=7, stop_ids=frozenset()))
    assert a.tokens == b.tokens and len(a.tokens) == 20


def test_prefix_reuse_is_bit_identical_to_fresh_prefill():
    engine = tiny_engine(fim=True, arch="gemma3", seed=5)
    model = engine.model
    first = engine.tokenizer.encode(CODE[0] * 3, bos=True)
    second = first[:-7] + engine.tokenizer.encode("    return a * b\n")
    cache = PromptCache(model, PREFILL_BLOCK)
    n = cache.prepare(first, "doc")
    prefill(model, first, n)
    cache.commit(first, "doc")
    n = cache.prepare(second, "doc")
    assert len(first) > 2 * PREFILL_BLOCK and n == (len(first) - 7) // PREFILL_BLOCK * PREFILL_BLOCK
    reused = prefill(model, second, n)
    fresh = prefill(model, second, 0)
    assert torch.equal(reused, fresh)


def test_prompt_cache_restores_another_documents_prefix():
    engine = tiny_engine(fim=True, arch="gemma3", seed=5)
    a = engine.tokenizer.encode(CODE[0] * 3, bos=True)
    b = engine.tokenizer.encode(CODE[1] * 3, bos=True)
    ga = engine.generate(a, GenerateOptions(max_new_tokens=5, cache_key="a", stop_ids=frozenset()))
    engine.generate(b, GenerateOptions(max_new_tokens=5, cache_key="b", stop_ids=frozenset()))
    again = engine.generate(a, GenerateOptions(max_new_tokens=5, cache_key="a", stop_ids=frozenset()))
    assert again.stats.cached_tokens == (len(a) - 1) // PREFILL_BLOCK * PREFILL_BLOCK > 0
    assert again.tokens == ga.tokens


def test_stop_strings_and_streaming(engine):
    prompt = _prompts(engine)[1]
    free = _plain(engine, prompt, max_new_tokens=30, stop_ids=frozenset())
    stop = free.text[10:13]
    pieces = []
    gen = engine.generate(prompt, GenerateOptions(max_new_tokens=30, stop_ids=frozenset(), stop_strings=(stop,)), on_text=pieces.append)
    assert gen.stop_reason == "stop_string"
    assert gen.text == free.text[:free.text.index(stop)]
    assert "".join(pieces) == gen.text


def test_cancellation_and_deadline(engine):
    prompt = _prompts(engine)[0]
    assert engine.generate(prompt, GenerateOptions(max_new_tokens=50, stop_ids=frozenset()), should_stop=lambda: True).stop_reason == "cancelled"
    assert engine.generate(prompt, GenerateOptions(max_new_tokens=50, stop_ids=frozenset(), deadline=0.0)).stop_reason == "deadline"


def test_bad_inputs_leave_the_engine_usable(engine):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        engine.generate([2, 10**7])
    with pytest.raises(PromptTooLongError, match="context"):
        engine.generate([2] * (engine.max_seq_len + 5))
    with pytest.raises(TokenizerError):
        engine.tokenizer.decode([-1])
    assert len(engine.generate([2, 100, 101], GenerateOptions(max_new_tokens=3, stop_ids=frozenset())).tokens) == 3


def test_score_matches_forward(engine):
    scores = engine.score("def f(x): return x")
    ids = engine.tokenizer.encode("def f(x): return x", bos=True)
    assert [t for t, _ in scores] == ids[1:]
    assert all(s <= 0 for _, s in scores)


def test_special_token_text_is_not_injected(engine):
    ids = engine.tokenizer.encode("a <|fim_prefix|> b")
    assert engine.tokenizer.fim_prefix_id not in ids
    assert engine.tokenizer.decode(ids) == "a <|fim_prefix|> b"


def test_fim_aliases_give_a_plain_vocabulary_fim_ids():
    """A model without FIM tokens can have them mapped onto unused ids (what a FIM adapter does)."""
    from codegemma.tokenizer import FIM_TOKENS, Tokenizer

    plain = tiny_engine(fim=False).tokenizer
    assert not plain.has_fim and plain.fim_prefix_id is None
    aliased = Tokenizer(plain.sp, fim_aliases=dict(zip(FIM_TOKENS, (10, 11, 12, 13))))
    assert aliased.has_fim
    assert (aliased.fim_prefix_id, aliased.fim_suffix_id, aliased.fim_middle_id, aliased.file_separator_id) == (
        10, 11, 12, 13)
    assert {10, 11, 12, 13, plain.eos_id} <= aliased.stop_ids


def test_a_top_p_below_float32_range_keeps_the_most_likely_token():
    logits = torch.tensor([0.5, 3.0, -1.0, 2.9])
    sampler = Sampler(temperature=0.8, top_p=1e-300, seed=0)  # 0.0 once compared in float32
    probs = sampler.probs(logits)
    assert torch.equal(probs, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert sampler.sample(logits) == 1


@pytest.mark.parametrize("quant", [None, "q8_0"])
@pytest.mark.parametrize("extra", [40, 10])  # a last block of the PyTorch path, or of the native kernels
def test_prefill_in_groups_of_blocks_equals_block_by_block(tmp_path, monkeypatch, quant, extra):
    """prefill() takes several blocks through the layers together (GGUF blocks dequantized once for all):
    the logits and every layer's keys and values are those of a block-by-block prefill, bit for bit."""
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(generate_module, "PREFILL_GROUP", 2)  # three groups: 2 + 2 + the rest
    model = codegemma.load(str(write_checkpoint(tmp_path / "tiny", tiny_config("gemma3"), seed=4)), quant=quant).model
    tokens = [2, *[(7 * i) % 200 + 6 for i in range(4 * PREFILL_BLOCK + extra)]]

    def caches() -> torch.Tensor:
        n = len(tokens)
        return torch.cat([torch.cat([a.kv_cache.k[:, :, :n], a.kv_cache.v[:, :, :n]])
                          for a in (layer.self_attn for layer in model.model.layers)])

    # where the CPU has AMX tiles every row is computed as it would be alone (model.hidden_rows)
    assert model.rows_apart() == kernels.tile_gemm()
    grouped = prefill(model, tokens, 0)
    grouped_kv = caches().clone()
    for lo in range(0, len(tokens), PREFILL_BLOCK):
        alone = prefill_block(model, tokens, lo)
    assert torch.equal(grouped, alone) and torch.equal(grouped_kv, caches())


@pytest.mark.parametrize("quant", [None, "q8_0"])
@pytest.mark.parametrize("tail", [70, 9])
def test_prefix_reuse_on_loaded_weights_is_bit_identical(tmp_path, monkeypatch, quant, tail):
    """A prompt that reuses another's first blocks and recomputes the rest (with a block too short for the
    grouped pass, or one that joins it) gets the logits and KV of a fresh prefill, bit for bit."""
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    model = codegemma.load(str(write_checkpoint(tmp_path / "tiny", tiny_config("gemma3"), seed=6)), quant=quant).model
    first = [2, *[(5 * i) % 190 + 6 for i in range(3 * PREFILL_BLOCK + 20)]]
    second = first[:2 * PREFILL_BLOCK + 11] + [(3 * i) % 170 + 9 for i in range(PREFILL_BLOCK + tail)]

    def caches(n: int) -> torch.Tensor:
        return torch.cat([torch.cat([a.kv_cache.k[:, :, :n], a.kv_cache.v[:, :, :n]])
                          for a in (layer.self_attn for layer in model.model.layers)])

    prefill(model, first, 0)
    reused = prefill(model, second, 2 * PREFILL_BLOCK)
    reused_kv = caches(len(second)).clone()
    fresh = prefill(model, second, 0)
    assert torch.equal(reused, fresh) and torch.equal(reused_kv, caches(len(second)))


@pytest.mark.skipif(not kernels.tile_gemm(), reason="rows are computed apart on AMX tiles only")
@pytest.mark.parametrize("quant", [None, "q8_0"])
@pytest.mark.parametrize("head_dim", [16, 32])  # attention by the row kernel, or on tiles (a multiple of 32)
def test_where_rows_are_apart_prefill_resumes_anywhere_bit_identically(tmp_path, monkeypatch, quant, head_dim):
    """Where every product computes rows apart, a prefill computes each row as it would alone (tile products,
    PyTorch's norms, the native attention row by row): resuming after a cached prefix of any length, in
    passes of any size, gives the logits and KV of a fresh prefill bit for bit, so the prompt cache reuses
    the whole common prefix instead of going back to a block boundary."""
    monkeypatch.setenv("CODEGEMMA_CACHE", str(tmp_path / "cache"))
    cfg = dataclasses.replace(tiny_config("gemma3"), head_dim=head_dim)
    model = codegemma.load(str(write_checkpoint(tmp_path / "tiny", cfg, seed=8)), quant=quant).model
    assert model.rows_apart()
    tokens = [2, *[(11 * i) % 180 + 7 for i in range(3 * PREFILL_BLOCK + 30)]]
    layers = [layer.self_attn.kv_cache for layer in model.model.layers]

    def caches() -> torch.Tensor:
        return torch.cat([torch.cat([c.k[:, :, :len(tokens)], c.v[:, :, :len(tokens)]]) for c in layers])

    fresh = prefill(model, tokens, 0)
    fresh_kv = caches().clone()
    for group, start in [(8, 1), (8, 37), (1, PREFILL_BLOCK + 5), (1, 150), (2, len(tokens) - 3), (8, len(tokens) - 1)]:
        monkeypatch.setattr(generate_module, "PREFILL_GROUP", group)  # passes of 64 or 128 rows from `start`
        for c in layers:  # nothing after the prefix may survive from the fresh pass
            c.k[:, :, start:].fill_(float("nan"))
            c.v[:, :, start:].fill_(float("nan"))
        assert torch.equal(prefill(model, tokens, start), fresh), start
        assert torch.equal(caches(), fresh_kv), start

    cache = PromptCache(model, PREFILL_BLOCK)
    cache.commit(tokens, "doc")
    edited = tokens[:101] + [9, 10, 11]
    assert cache.prepare(edited, "doc") == 101  # the whole common prefix, not 64
    cache.commit(tokens, "doc")
    assert cache.prepare(tokens, "doc") == len(tokens) - 1  # the last token is recomputed for its logits
