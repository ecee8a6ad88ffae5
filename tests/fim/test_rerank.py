"""Suffix-aware reranking (fim.rerank) on tiny real models: it picks the candidate that makes the suffix
likely, lists every candidate in the debug record, and one candidate is exactly the single-candidate path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from codegemma import EngineProtocol

from fim import BadRequestError, CompletionOptions, CompletionRequest, complete
from fim.rerank import line_prefixes, suffix_probe
from tests.tiny import tiny_engine

PREFIX = "width = 3\nheight = 4\narea = "


@pytest.fixture(scope="module")
def bigram_engine():
    """A tiny left-to-right model with a planted preference: attention and MLP outputs zeroed, so the next
    token depends on the current token only, and a sharpened output norm, so that a token strongly predicts
    itself. A suffix that starts with a candidate's last token is then likely after that candidate only."""
    engine = tiny_engine(fim=False, seed=1)
    with torch.no_grad():
        for layer in engine.model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        engine.model.model.norm.weight.fill_(3.0)
    return engine


def _request(suffix: str, candidates: int, **options) -> CompletionRequest:
    # a .txt file: no grammar, so the syntax guard leaves the random model's text as it is
    return CompletionRequest("notes.txt", PREFIX + suffix, len(PREFIX), options=CompletionOptions(
        **{"max_tokens": 4, "candidates": candidates, "seed": 1, "speculative": False, "mode": "single", **options}))


def test_picks_the_candidate_that_makes_the_suffix_likely(bigram_engine):
    tokenizer = bigram_engine.tokenizer
    made = complete(bigram_engine, _request(" end\n", 6)).debug["rerank"]["candidates"]
    texts = [c["text"] for c in made]
    encoded = [tokenizer.encode(t) for t in texts]
    planted = [k for k in range(1, len(texts)) if texts[k] and texts[k] != texts[0]
               and tokenizer.encode(tokenizer.decode(encoded[k][-1:])) == encoded[k][-1:]
               and all(encoded[k][-1] not in encoded[j] for j in range(len(texts)) if texts[j] != texts[k])]
    assert planted, f"no sampled candidate with a token of its own: {texts}"
    k = planted[0]
    suffix = tokenizer.decode(encoded[k][-1:]) * 3 + " end\n"  # starts with candidate k's last token

    response = complete(bigram_engine, _request(suffix, 6))
    rerank = response.debug["rerank"]
    assert [c["text"] for c in rerank["candidates"]] == texts  # the suffix is not in the prompt
    assert response.text == texts[k] and texts[rerank["chosen"]] == texts[k]
    scores = [c["score"] for c in rerank["candidates"]]
    assert max(s for t, s in zip(texts, scores) if t != texts[k]) < scores[rerank["chosen"]]
    single = complete(bigram_engine, _request(suffix, 1))
    assert single.text == texts[0] != response.text


def test_debug_record_lists_every_candidate_with_its_scores(plain_engine):
    text = "def area(width, height):\n    result = \n    return result\n"
    cursor = text.index("= \n") + 2
    request = CompletionRequest("a.py", text, cursor, options=CompletionOptions(max_tokens=5, candidates=3, seed=2))
    rerank = complete(plain_engine, request).debug["rerank"]
    assert rerank["made"] == rerank["asked"] == 3 and rerank["reason"] == "all candidates made"
    assert rerank["probe"] == "\n    return result\n" and rerank["probe_tokens"] > 0
    candidates = rerank["candidates"]
    assert [c["temperature"] for c in candidates] == [0.0, 0.7, 0.7]
    assert [c["seed"] for c in candidates] == [2, 3, 4]
    for c in candidates:
        assert c["probe_tokens"] == rerank["probe_tokens"] and c["probe_logp"] < 0
        assert c["score"] == pytest.approx(c["candidate_logp"] / max(c["candidate_tokens"], 1) * (c["candidate_tokens"] > 0)
                                           + c["probe_logp"], abs=1e-3)
    assert rerank["chosen"] == max(range(3), key=lambda i: (candidates[i]["score"], -i))


def _same_answer(a, b):
    assert (a.text, a.stop_reason, a.debug["raw"], a.stats.new_tokens) == (b.text, b.stop_reason, b.debug["raw"],
                                                                            b.stats.new_tokens)


def test_one_candidate_is_exactly_the_single_path(plain_engine):
    text = "def area(width, height):\n    result = \n    return result\n"
    cursor = text.index("= \n") + 2
    base = CompletionRequest("a.py", text, cursor, options=CompletionOptions(max_tokens=6))
    today = complete(plain_engine, base)
    assert "rerank" not in today.debug
    one = complete(plain_engine, CompletionRequest("a.py", text, cursor, options=CompletionOptions(
        max_tokens=6, candidates=1)))
    _same_answer(today, one)
    assert "rerank" not in one.debug
    # a budget that affords one candidate answers with the first candidate, which is today's completion
    budget = complete(plain_engine, CompletionRequest("a.py", text, cursor, options=CompletionOptions(
        max_tokens=6, candidates=4, rerank_budget_ms=1)))
    _same_answer(today, budget)
    assert budget.debug["rerank"]["made"] == 1 and "budget" in budget.debug["rerank"]["reason"]


class GenerateOnly:
    """The real tiny engine seen through the plain EngineProtocol (no score_continuation), as a remote engine
    without scoring would be."""

    def __init__(self, engine) -> None:
        self.name, self.tokenizer, self._engine = engine.name, engine.tokenizer, engine

    @property
    def supports_fim(self) -> bool:
        return self._engine.supports_fim

    @property
    def max_seq_len(self) -> int:
        return self._engine.max_seq_len

    def generate(self, prompt, options, **kw):
        return self._engine.generate(prompt, options, **kw)


def test_an_engine_without_scoring_takes_the_single_path(plain_engine):
    engine: EngineProtocol = GenerateOnly(plain_engine)
    text = "x = 1\ny = \nprint(x, y)\n"
    options = CompletionOptions(max_tokens=5)
    today = complete(engine, CompletionRequest("a.py", text, 10, options=options))
    asked = complete(engine, CompletionRequest("a.py", text, 10, options=CompletionOptions(max_tokens=5, candidates=4)))
    _same_answer(today, asked)
    assert "rerank" not in asked.debug


def test_blank_suffix_and_streaming(plain_engine):
    text = "def f(x):\n    return "
    pieces: list[str] = []
    response = complete(plain_engine, CompletionRequest("a.py", text, len(text), options=CompletionOptions(
        max_tokens=5, candidates=3)), on_text=pieces.append)
    assert response.debug["rerank"]["made"] == 1 and "blank" in response.debug["rerank"]["reason"]
    assert "".join(pieces) == response.debug["raw"]


def test_suffix_probe_takes_the_first_lines_with_content():
    text = "a = \n\n    b = 1\n    c = 2\n    d = 3\n"
    assert suffix_probe(text, 4) == "\n\n    b = 1\n    c = 2\n"
    assert suffix_probe(text, 4, lines=1) == "\n\n    b = 1\n"
    assert suffix_probe("x = 1 + ) * 2\nz\ny\n", 8) == ") * 2\nz\n"
    assert suffix_probe("x = \n\n  \n", 4) == ""


@pytest.mark.parametrize("options, message", [({"candidates": 0}, "candidates"), ({"candidates": 17}, "candidates"),
                                              ({"rerank_budget_ms": 0}, "rerank_budget_ms")])
def test_bad_options(plain_engine, options, message):
    with pytest.raises(BadRequestError, match=message):
        complete(plain_engine, CompletionRequest("a.py", "x = ", 4, options=CompletionOptions(**options)))


def test_line_prefixes_are_post_processed_shorter_candidates(plain_engine):
    text = "def f(a):\n    \n    return b\n"
    cursor = text.index("    \n") + 4
    response = complete(plain_engine, CompletionRequest("a.py", text, cursor, options=CompletionOptions(
        max_tokens=3, mode="multi")))
    raw = "b = a + 1\n    c = b * 2\n    d = c\n"
    made = replace(response, text=raw.rstrip(), debug={**response.debug, "raw": raw})
    shorter = line_prefixes(made, text, cursor)
    assert [r.text for r in shorter] == ["b = a + 1", "b = a + 1\n    c = b * 2"]
    assert all(r.debug["raw"].endswith(r.text) for r in shorter)
    single_line = replace(made, debug={**made.debug, "mode": {"multiline": False}})
    assert line_prefixes(single_line, text, cursor) == []



def test_cancelled_request_makes_no_more_candidates(plain_engine):
    text = "def area(width, height):\n    result = \n    return result\n"
    request = CompletionRequest("a.py", text, text.index("= \n") + 2, options=CompletionOptions(
        max_tokens=5, candidates=4))
    response = complete(plain_engine, request, should_stop=lambda: True)
    assert response.stop_reason == "cancelled" and response.debug["rerank"]["made"] == 1


def test_a_probe_past_the_context_is_cut_to_fit():
    engine = tiny_engine(fim=False, max_seq_len=160)
    text = "x = 1\n" * 60 + "y = \n" + "z = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n" * 20
    request = CompletionRequest("a.py", text, text.index("y = ") + 4, options=CompletionOptions(
        max_tokens=8, candidates=2, prompt_budget=140))
    response = complete(engine, request)
    rerank, prompt_tokens = response.debug["rerank"], response.debug["engine"]["prompt_tokens"]
    assert rerank["made"] == 2 and rerank["probe_tokens"] == 48
    assert all(prompt_tokens + c["candidate_tokens"] + c["probe_tokens"] == 160 for c in rerank["candidates"])
