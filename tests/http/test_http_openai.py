"""The OpenAI-style legacy completions route under /openai/v1 as Continue uses it."""
from __future__ import annotations

import json

from fim.http.templates import split_prompt

# Continue's OpenAI provider with a FIM-capable model posts prompt + suffix to {apiBase}completions.
CONTINUE_REQUEST = {"model": "codegemma", "prompt": "def square(x):\n    return ", "suffix": "\n",
                    "max_tokens": 6, "temperature": 0.01, "top_p": 0.95, "stop": ["\n\n", "</s>"],
                    "stream": False}


def test_continue_completion_shape(client):
    r = client.post("/openai/v1/completions", json=CONTINUE_REQUEST)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "codegemma" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str)
    assert choice["finish_reason"] in {"stop", "length"} and choice["logprobs"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_continue_streaming(client):
    with client.stream("POST", "/openai/v1/completions", json={**CONTINUE_REQUEST, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_fim_template_prompt_is_split_like_prompt_and_suffix(client):
    prefix, suffix = "values = [1, 2, 3]\ntotal = ", "\nprint(total)\n"
    plain = {"prompt": prefix, "suffix": suffix, "max_tokens": 4}
    templated = {"prompt": f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>", "max_tokens": 4}
    a = client.post("/openai/v1/completions", json=plain).json()
    b = client.post("/openai/v1/completions", json=templated).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]


def test_split_fim_prompt():
    split = split_prompt("<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>")
    assert (split.prefix, split.suffix) == ("a", "b")
    assert split_prompt("plain text") is None
    assert split_prompt("<|fim_prefix|>a<|fim_middle|>") is None
    assert split_prompt("<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>extra") is None


def test_models(client):
    data = client.get("/openai/v1/models").json()["data"]
    assert len(data) == 1 and data[0]["id"]


def test_unsupported_options_are_422_with_reason(client):
    for body, words in (({"prompt": "x", "n": 0}, "n:"), ({"prompt": "x", "n": 9}, "n:"),
                        ({"prompt": "x", "echo": True}, "echo"),
                        ({"prompt": ["a", "b"]}, "one string"), ({"prompt": "x", "max_tokens": 0}, "at least 1"),
                        ({"suffix": "x"}, "prompt")):
        r = client.post("/openai/v1/completions", json=body)
        assert r.status_code == 422, body
        assert words in r.json()["error"]["message"], r.json()
