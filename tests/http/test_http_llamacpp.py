"""POST /infill and GET /health as llama.vim and llama.vscode use them (fixtures from their request code)."""
from __future__ import annotations

import json

from fim.http import fields
from fim.http.llamacpp import dedent_cut, select_fields

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"

# What llama.vim's llama#fim() sends (autoload/llama.vim): local context, ring-buffer chunks, the typed
# "middle" as `prompt`, and response_fields naming the timings it shows in its status line.
LLAMA_VIM_REQUEST = {
    "input_prefix": PREFIX,
    "input_suffix": SUFFIX,
    "input_extra": [{"text": "def sub(a, b):\n    return a - b\n", "time": 1700000000.0, "filename": "ops.py"}],
    "prompt": "return ",
    "n_predict": 6,
    "stop": [],
    "n_indent": 4,
    "top_k": 40,
    "top_p": 0.90,
    "stream": False,
    "samplers": ["top_k", "top_p", "infill"],
    "cache_prompt": True,
    "t_max_prompt_ms": 500,
    "t_max_predict_ms": 1000,
    "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                        "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                        "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                        "tokens_cached"],
}

# llama.vim's ring-buffer warm-up: no prediction, only the extra context into the cache.
LLAMA_VIM_WARMUP = {"input_prefix": "", "input_suffix": "", "input_extra": LLAMA_VIM_REQUEST["input_extra"],
                    "prompt": "", "n_predict": 0, "temperature": 0.0, "stream": False, "samplers": [],
                    "cache_prompt": True, "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}

# llama.vscode's createRequestPayload(false, ...) (src/llama-server.ts): it reads the whole response.
LLAMA_VSCODE_REQUEST = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": [], "prompt": "",
                        "n_predict": 6, "top_k": 40, "top_p": 0.99, "stream": False,
                        "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 4,
                        "t_max_prompt_ms": 500, "t_max_predict_ms": 2500}

TIMING_KEYS = {"prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms",
               "predicted_per_token_ms", "predicted_per_second", "draft_n", "draft_n_accepted"}


def test_llama_vim_request_gets_exactly_its_response_fields(client):
    r = client.post("/infill", json=LLAMA_VIM_REQUEST)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(LLAMA_VIM_REQUEST["response_fields"])
    assert isinstance(body["content"], str)
    assert isinstance(body["truncated"], bool) and isinstance(body["tokens_cached"], int)
    assert body["timings/predicted_n"] <= 6 and body["timings/prompt_n"] >= 1
    assert body["timings/prompt_ms"] > 0 and body["timings/prompt_per_second"] > 0


def test_llama_vim_warmup_answers_empty_object(client):
    r = client.post("/infill", json=LLAMA_VIM_WARMUP)
    assert r.status_code == 200, r.text
    assert r.json() == {}


def test_llama_vscode_request_full_response_shape(client):
    r = client.post("/infill", json=LLAMA_VSCODE_REQUEST)
    assert r.status_code == 200, r.text
    body = r.json()
    for key, kind in (("content", str), ("stop", bool), ("stop_type", str), ("tokens_predicted", int),
                      ("tokens_evaluated", int), ("tokens_cached", int), ("truncated", bool),
                      ("generation_settings", dict), ("timings", dict)):
        assert isinstance(body[key], kind), key
    assert body["stop"] is True
    assert body["stop_type"] in {"eos", "limit", "word"}
    assert body["generation_settings"]["n_ctx"] > 0 and body["generation_settings"]["n_predict"] == 6
    assert set(body["timings"]) == TIMING_KEYS
    assert body["timings"]["predicted_n"] == body["tokens_predicted"] <= 6
    assert body["tokens_evaluated"] == body["timings"]["prompt_n"] + body["tokens_cached"]


def test_llama_vscode_warmup_with_empty_text(client):
    payload = {"input_prefix": "", "input_suffix": "", "input_extra": [{"text": "x = 1\n", "time": 0,
               "filename": "a.py"}], "prompt": "", "n_predict": 0, "samplers": [], "cache_prompt": True,
               "t_max_prompt_ms": 500, "t_max_predict_ms": 1}
    body = client.post("/infill", json=payload).json()
    assert body["content"] == "" and body["tokens_predicted"] == 0


def test_input_extra_reaches_the_prompt(client):
    base = {"input_prefix": "total = compute_total(items)\n", "input_suffix": "", "n_predict": 1,
            "cache_prompt": False}
    extra = {**base, "input_extra": [{"filename": "billing.py",
                                      "text": "def compute_total(items):\n    return sum(items)\n"}]}
    without = client.post("/infill", json=base).json()["tokens_evaluated"]
    with_extra = client.post("/infill", json=extra).json()["tokens_evaluated"]
    assert with_extra > without


def test_prompt_is_text_before_the_cursor(client):
    split = {"input_prefix": "x = ", "prompt": "1 + ", "input_suffix": "\n", "n_predict": 4, "cache_prompt": False}
    joined = {"input_prefix": "x = 1 + ", "input_suffix": "\n", "n_predict": 4, "cache_prompt": False}
    a, b = client.post("/infill", json=split).json(), client.post("/infill", json=joined).json()
    assert (a["content"], a["tokens_evaluated"]) == (b["content"], b["tokens_evaluated"])


def _events(response) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def test_stream_sends_pieces_then_a_final_event(client):
    payload = {"input_prefix": "x = [", "input_suffix": "", "n_predict": 12, "cache_prompt": False}
    plain = client.post("/infill", json=payload).json()
    with client.stream("POST", "/infill", json={**payload, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert all(e["stop"] is False for e in events[:-1])
    final = events[-1]
    assert final["stop"] is True and set(final["timings"]) == TIMING_KEYS
    assert final["tokens_predicted"] == plain["tokens_predicted"]
    streamed = "".join(e["content"] for e in events)
    assert streamed.startswith(plain["content"])


def test_stream_with_response_fields_filters_the_final_event(client):
    payload = {"input_prefix": "y = ", "n_predict": 3, "stream": True,
               "response_fields": ["content", "timings/draft_n"]}
    with client.stream("POST", "/infill", json=payload) as r:
        final = _events(r)[-1]
    assert set(final) == {"content", "timings/draft_n"}


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_select_fields_paths_become_top_level_keys():
    body = {"content": "x", "timings": {"prompt_n": 3, "nested": {"deep": 1}}, "truncated": False}
    assert select_fields(body, ["timings/prompt_n", "timings/nested/deep", "content", "missing", "timings/missing"]) \
        == {"timings/prompt_n": 3, "timings/nested/deep": 1, "content": "x"}
    assert select_fields(body, []) is body
    assert select_fields(body, [""]) == {}


def test_dedent_cut_follows_n_indent():
    text = "a + b\n        more()\n    return x\nprint(1)\n"
    assert dedent_cut(text, 0) is None
    assert dedent_cut(text, 8) == text.index("\n    return")
    assert dedent_cut(text, 4) == text.index("\nprint")
    # blank lines and an unfinished line with no content yet do not cut
    assert dedent_cut("x\n\n    y\n", 4) is None
    assert dedent_cut("x\n  ", 4) is None


def test_sampling_conventions():
    assert fields.temperature(-1.0) == 0.0 and fields.temperature(1e-300) == 0.0 and fields.temperature(0.7) == 0.7
    assert fields.top_p(5.0) == 1.0 and fields.top_k(-3) == 0
    assert fields.seed(-1) is None and fields.seed(42) == 42
    assert fields.time_budget(0) is None and fields.time_budget(250) == 250
    assert fields.stop_strings(["", "\n", "\n"]) == ("\n",) and fields.stop_strings("END") == ("END",)
    assert fields.language("typescriptreact") == "typescriptreact" and fields.language("cobol") is None
