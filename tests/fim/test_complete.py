"""complete(): the whole path with tiny engines, and what the debug record explains."""

from __future__ import annotations

import pytest

from codegemma import GenerateOptions, PromptTooLongError
from codegemma.generate import PREFILL_BLOCK

from fim import CompletionOptions, CompletionRequest, EngineError, FileContext, FimError, complete
from fim.complete import prepare
from fim.engine import load_engine

TEXT = "from .shapes import circle_area\n\n\ndef ring_area(outer, inner):\n    "
SHAPES = FileContext("pkg/shapes.py", "import math\n\n\ndef circle_area(radius):\n    return math.pi * radius ** 2\n")
UNRELATED = FileContext("pkg/net.py", "import socket\n\n\ndef connect(host, port):\n    return socket.create_connection((host, port))\n")


def _request(**options):
    return CompletionRequest("pkg/rings.py", TEXT, len(TEXT), other_files=(UNRELATED, SHAPES),
                             options=CompletionOptions(**{"max_tokens": 4, **options}))


def test_debug_record_explains_every_decision(fim_engine):
    response = complete(fim_engine, _request())
    debug = response.debug
    assert set(debug) >= {"language", "mode", "prompt", "context", "timings", "raw", "postprocess", "stop_reason", "engine"}
    assert debug["mode"] == {"multiline": True, "reason": "at the start of an empty line"}
    snippets = {(s["path"], s["source"]): s for s in debug["context"]["snippets"]}
    imported = snippets[("pkg/shapes.py", "import")]
    assert imported["status"] == "used" and imported["reason"] == "definition of circle_area imported by the current file"
    unrelated = snippets[("pkg/net.py", "similar")]
    assert unrelated["status"] == "dropped" and "below" in unrelated["reason"]
    tokens = debug["prompt"]["tokens"]
    assert tokens["context"] == imported["tokens"] and tokens["total"] == debug["engine"]["prompt_tokens"]
    assert response.stop_reason == debug["stop_reason"]
    assert debug["postprocess"][-1]["rule"] == "syntax"


def test_context_can_be_switched_off(fim_engine):
    debug = complete(fim_engine, _request(use_context=False)).debug
    assert debug["prompt"]["tokens"]["context"] == 0 and debug["context"]["disabled"]


def test_left_to_right_engine(plain_engine):
    response = complete(plain_engine, _request())
    assert response.debug["prompt"]["format"] == "left-to-right"
    assert response.debug["prompt"]["tokens"]["suffix"] == 0


def test_unchanged_prompt_prefix_is_reused_between_keystrokes(fim_engine):
    typed = CompletionRequest("pkg/rings.py", TEXT + "re", len(TEXT) + 2, other_files=(UNRELATED, SHAPES),
                              options=CompletionOptions(max_tokens=4))
    before, after = prepare(fim_engine, _request())[0].ids, prepare(fim_engine, typed)[0].ids
    common = next(i for i, (a, b) in enumerate(zip(before, after)) if a != b)
    assert common >= len(before) - 5  # only the last prefix tokens and the two FIM tokens after them change
    complete(fim_engine, _request())
    cached = complete(fim_engine, typed).debug["engine"]["cached_tokens"]
    assert common - PREFILL_BLOCK < cached <= common  # the engine reuses whole prefill blocks of the common part


def test_time_budget_sets_a_deadline(fim_engine):
    request = CompletionRequest("pkg/rings.py", TEXT, len(TEXT), options=CompletionOptions(max_tokens=64, time_budget_ms=1))
    response = complete(fim_engine, request)
    assert response.stop_reason == "deadline"


def test_single_line_mode_stops_at_the_newline(fim_engine):
    response = complete(fim_engine, _request(mode="single", max_tokens=8))
    assert "\n" not in response.text and response.debug["mode"]["reason"] == "single-line requested"


def test_response_carries_typed_engine_statistics_and_the_prompt_window(fim_engine):
    response = complete(fim_engine, _request())
    engine = response.debug["engine"]
    assert response.stats.prompt_tokens == engine["prompt_tokens"] > 0
    assert response.stats.new_tokens == engine["new_tokens"] >= 1
    assert response.elapsed_s >= response.stats.total_s > 0
    assert response.window == (0, len(TEXT))  # the whole small file fits the prompt


def test_engine_errors_reach_the_caller_as_fim_errors(fim_engine):
    with pytest.raises(EngineError, match="no such file or directory"):
        load_engine("/no/such/model.gguf")

    class Refusing(type(fim_engine)):
        """The tiny engine, refusing every prompt the way the core refuses one past its context."""

        def generate(self, prompt, options=GenerateOptions(), **callbacks):
            raise PromptTooLongError(f"prompt has {len(prompt)} tokens; this engine's context is 8")

    refusing = Refusing(fim_engine.model, fim_engine.tokenizer, fim_engine.name)
    with pytest.raises(EngineError, match="this engine's context is 8") as caught:
        complete(refusing, _request())
    assert isinstance(caught.value, FimError) and "\n" not in str(caught.value)
