"""Requests shaped as the editor clients send them, from each client's source, and the llama.cpp rules they rely on.

- Continue, OpenAI provider (core/llm/llms/OpenAI.ts, `_legacystreamComplete`): autocomplete posts the
  template-rendered prompt to `{apiBase}completions` with `max_tokens` = the model's max tokens (4096 by
  default), `stop` from the template and `stream: true`.
- Continue, llama.cpp provider (core/llm/llms/LlamaCpp.ts): posts `{prompt, stream: true, n_predict, stop,
  temperature, ...}` to `{apiBase}completion`.
- Continue's templates (core/autocomplete/templating/AutocompleteTemplate.ts): StarCoder/StableCode (its
  default), Qwen/CodeGemma, CodeLlama, DeepSeek, Codestral; its prefix starts with the `# path` comment of
  the current file (templating/formatting.ts).
- llama.vim (autoload/llama.vim): its first request of a session allows t_max_predict_ms 250.
- llama.vscode (src/llama-server.ts, src/completion.ts): n_cmpl 3 by default, n_indent = the current line's
  indentation; it reads one object or a list of them.
"""
from __future__ import annotations

import json

import pytest
from tests.http.http_harness import start_server
from scripted import ScriptedEngine

from fim.http import ServerSettings
from fim.http.llamacpp import context_language
from fim.http.templates import header_path, split_prompt
from fim.request import FileContext
from fim.service import CompletionService

PREFIX = "# pkg/geometry.py\nimport math\n\n\ndef area(r):\n    "
SUFFIX = "\n\nprint(area(2))\n"
STARCODER_STOPS = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>",
                   "</fim_middle>", "</code>", "\n\n"]

# Continue, OpenAI provider, model "starcoder2:3b" (its default template), autocomplete defaults.
CONTINUE_OPENAI = {"model": "starcoder2:3b", "max_tokens": 4096, "temperature": 0.01,
                   "stream": True, "stop": STARCODER_STOPS,
                   "prompt": f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"}
# Continue, llama.cpp provider: the same rendered prompt, posted to /completion.
CONTINUE_LLAMACPP = {"prompt": CONTINUE_OPENAI["prompt"], "stream": True, "n_predict": 4096,
                     "stop": STARCODER_STOPS, "temperature": 0.01}

FAMILIES = {
    "codegemma": f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
    "starcoder": f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
    "codellama": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>",
    "deepseek": f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
    "codestral": f"[SUFFIX]{SUFFIX}[PREFIX]{PREFIX}",
}


def _events(response) -> list[dict | str]:
    return [line[len("data: "):] if line == "data: [DONE]" else json.loads(line[len("data: "):])
            for line in response.iter_lines() if line]


def test_continue_openai_provider_with_max_tokens_4096_gets_a_completion(client):
    with client.stream("POST", "/openai/v1/completions", json=CONTINUE_OPENAI) as r:
        assert r.status_code == 200, r.read()
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert isinstance(text, str) and all(c["model"] == "starcoder2:3b" for c in chunks)


def test_continue_openai_provider_non_streaming_is_capped_not_refused(client):
    r = client.post("/openai/v1/completions", json={**CONTINUE_OPENAI, "stream": False})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 256  # the test server's --max-tokens


def test_continue_llamacpp_provider_posts_to_completion(client):
    with client.stream("POST", "/completion", json=CONTINUE_LLAMACPP) as r:
        assert r.status_code == 200, r.read()
        events = _events(r)
    assert events[-1]["stop"] is True and events[-1]["generation_settings"]["n_predict"] == 256
    assert all(e["stop"] is False and isinstance(e["content"], str) for e in events[:-1])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_continue_template_is_split_back(family):
    split = split_prompt(FAMILIES[family])
    assert split is not None and split.template == family
    assert (split.prefix, split.suffix) == (PREFIX, SUFFIX)
    assert split.path == "pkg/geometry.py"  # from Continue's comment header: the language is known


@pytest.mark.parametrize("family", ["starcoder", "codellama", "codestral"])
def test_a_template_prompt_completes_like_prompt_and_suffix(client, family):
    plain = client.post("/openai/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 4}).json()
    templated = client.post("/openai/v1/completions", json={"prompt": FAMILIES[family], "max_tokens": 4}).json()
    assert templated["choices"][0]["text"] == plain["choices"][0]["text"]
    assert templated["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def test_repository_level_context_and_codestral_headers_become_other_files():
    split = split_prompt("<|file_sep|>pkg/util.py\ndef helper():\n    pass\n"
                         "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>")
    assert split.other_files == (FileContext("pkg/util.py", "def helper():\n    pass\n"),)
    split = split_prompt("[SUFFIX]\n[PREFIX]+++++ pkg/util.go\nfunc helper() {}\n\n+++++ cmd/main.go\nx := ")
    assert (split.prefix, split.path) == ("x := ", "cmd/main.go")
    assert split.other_files == (FileContext("pkg/util.go", "func helper() {}"),)


def test_header_path_only_reads_the_leading_comment_block():
    assert header_path("\n// src/app.ts\nconst x = ") == "src/app.ts"
    assert header_path("# Path: a.py\n# def f(): pass\n# b/c.py\nimport os\n") == "b/c.py"
    assert header_path("import os\n# b/c.py\n") is None
    assert header_path("# notes.unknownext\nx") is None


def test_plain_completion_prompt_is_completed_left_to_right(client):
    r = client.post("/completion", json={"prompt": "def f():\n    return ", "n_predict": 3, "max_tokens": 99})
    assert r.status_code == 200, r.text
    assert r.json()["generation_settings"]["n_predict"] == 3  # n_predict wins over its max_tokens alias


def test_completion_prompt_must_be_text(client):
    r = client.post("/completion", json={"prompt": [1, 2, 3]})
    assert r.status_code == 422 and "prompt" in r.json()["error"]["message"]


# --- llama.vscode: n_cmpl, n_indent; the language from the files it names ------------------------------

# llama.vscode's createRequestPayload(false, ...) (src/llama-server.ts, 2026-08): n_cmpl is its
# max_parallel_completions setting (default 3); it reads either one object or a list of them (getComplFromContent).
# The seed is ours, to make the sampled completions reproducible.
LLAMA_VSCODE = {"id_slot": 0, "input_prefix": "def add(a, b):\n", "input_suffix": "\n", "prompt": "    ",
                "input_extra": [{"text": "def sub(a, b):\n    return a - b\n", "filename": "pkg/ops.py"}],
                "n_predict": 8, "n_cmpl": 1, "top_k": 40, "top_p": 0.99, "stream": False,
                "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 4, "t_max_prompt_ms": 500,
                "t_max_predict_ms": 2500, "seed": 7}


def test_n_cmpl_answers_one_completion_each(client):
    r = client.post("/infill", json={**LLAMA_VSCODE, "n_cmpl": 3})
    assert r.status_code == 200, r.text
    answers = r.json()
    assert isinstance(answers, list) and [a["index"] for a in answers] == [0, 1, 2]
    assert answers[0]["generation_settings"]["temperature"] == 0.0  # the first as asked (greedy) ...
    assert all(a["generation_settings"]["temperature"] == 0.8 for a in answers[1:])  # ... the others sampled
    assert len({a["generation_settings"]["seed"] for a in answers}) == 3
    assert len({a["content"] for a in answers}) >= 2, answers


def test_n_cmpl_streams_each_completion_with_its_index(client):
    with client.stream("POST", "/infill", json={**LLAMA_VSCODE, "n_cmpl": 2, "stream": True}) as r:
        events = _events(r)
    finals = [e for e in events if e["stop"]]
    assert [e["index"] for e in finals] == [0, 1]


def test_n_cmpl_out_of_range_is_one_line_422(client):
    for n in (0, 9):
        r = client.post("/infill", json={**LLAMA_VSCODE, "n_cmpl": n})
        assert r.status_code == 422 and "n_cmpl" in r.json()["error"]["message"]


def test_language_from_input_extra_or_filename(client):
    settings = client.post("/infill", json=LLAMA_VSCODE).json()["generation_settings"]
    assert settings["language"] == "python" and settings["t_max_prompt_ms"] == 500
    settings = client.post("/infill", json={**LLAMA_VSCODE, "filename": "cmd/main.go"}).json()["generation_settings"]
    assert settings["language"] == "go"
    assert context_language((FileContext("a.txt", "x"), FileContext("b.rs", "y"), FileContext("c.rs", "z"))) == "rust"
    assert context_language((FileContext("extra-0", "x"),)) is None


# --- llama.vim: t_max_predict_ms counted from the first token, ended only after a newline ----------------

# One piece each 100 ms after the first: newlines at +100 ms (inside a 250 ms budget, with a wide margin for
# a slow machine) and at +500 ms (past it); a line never ends at +250 ms.
BODY_LINES = ["    total = a", " + b\n", "    total", " *=", " 2", "\n", "    total", " -= 1", "\n",
              "    return", " total", "\n"]


@pytest.fixture(scope="module")
def slow_server():
    """A model that takes 400 ms to read the prompt and 100 ms a token."""
    server = start_server(CompletionService(engine=ScriptedEngine(BODY_LINES, prefill_s=0.4, step_s=0.1)),
                          ServerSettings())
    yield server
    server.stop()


def _llama_vim_first_request(t_max_predict_ms: int) -> dict:
    return {"input_prefix": "def add(a, b):\n", "input_suffix": "\n", "prompt": "", "n_predict": 128,
            "stop": [], "n_indent": 0, "top_k": 40, "top_p": 0.90, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": t_max_predict_ms, "response_fields": ["content", "stop_type"]}


def test_llama_vim_first_request_with_250_ms_returns_a_whole_line(slow_server):
    with slow_server.client() as c:
        answer = c.post("/infill", json=_llama_vim_first_request(250)).json()
    # 250 ms is spent before the prompt is even read; counted from the first token it ends after a newline
    assert answer["content"].split("\n")[0] == "    total = a + b", answer
    assert "total *= 2" in answer["content"] and "return" not in answer["content"]
    assert answer["stop_type"] == "limit"


def test_t_max_predict_ms_never_cuts_a_line(slow_server):
    with slow_server.client() as c:
        answer = c.post("/infill", json=_llama_vim_first_request(1)).json()
    assert answer["content"].rstrip("\n") == "    total = a + b" and answer["stop_type"] == "limit"


@pytest.mark.slow
def test_llama_vim_250_ms_with_the_default_model_returns_whole_lines():
    server = start_server(CompletionService(), ServerSettings())
    request = {**_llama_vim_first_request(250), "input_prefix": "def fizzbuzz(n):\n    for i in range(1, n + 1):\n",
               "prompt": "        "}
    try:
        with server.client(timeout=300) as c:
            limited = c.post("/infill", json=request).json()
            unlimited = c.post("/infill", json={**request, "t_max_predict_ms": 0}).json()["content"]
    finally:
        server.stop()
    content = limited["content"]
    # Greedy both times: the limited answer is the unlimited one's first whole lines, never a cut line.
    assert content.strip() and unlimited.startswith(content), (limited, unlimited)
    assert len(content) == len(unlimited) or unlimited[len(content)] == "\n", (limited, unlimited)
