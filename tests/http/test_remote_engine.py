"""The remote engine (`fim.remote`) against real servers on loopback: a `codegemma serve` (its /engine/v1
routes), `codegemma serve --engine` in front of it, and small socket engines that fail on purpose."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import httpx
import pytest

import codegemma
from codegemma import GenerateOptions
from codegemma.loader import load_info
from fim import CompletionOptions, CompletionRequest, FileContext, RemoteEngineError, complete
from fim.context import rank_snippets
from fim.prompt import build_prompt
from fim.prompt_text import ids_to_text, text_to_ids
from fim.remote import API_KEY_ENV, RemoteEngine, RemoteSettings
from tests.http.engine_servers import TEXT, EngineServer
from tests.http.http_harness import serving
from tests.tiny import tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = [("pkg/util.py", "def add(a, b):\n    return a + b\n\n\ndef scale(xs, k):\n    return [x * k for x in xs]\n"),
         ("pkg/main.py", "from pkg.util import add\n\n\ndef total(items):\n    s = 0\n    for i in items:\n"
                         "        s = add(s, i)\n    return s\n\n\nprint(total([1, 2, 3]))\n")]


@functools.cache
def local() -> codegemma.Engine:
    return codegemma.load(tiny_checkpoint())


def remote(url: str, **settings) -> RemoteEngine:
    info = load_info(tiny_checkpoint())
    return RemoteEngine(RemoteSettings(url=url, **settings), info.tokenizer, info.name, info.max_seq_len)


def requests() -> list[CompletionRequest]:
    """Completions at several cursors of the main file, with the other file as context, multi-line."""
    path, text = FILES[1]
    others = (FileContext(*FILES[0]),)
    cursors = [text.index("s = 0"), text.index("return s"), text.index("print("), len("from pkg.")]
    return [CompletionRequest(path=path, text=text, cursor=c, language="python", other_files=others,
                              options=CompletionOptions(max_tokens=12, mode="multi")) for c in cursors]


def test_prompt_text_round_trips_to_the_same_ids():
    tokenizer = local().tokenizer
    for request in requests():
        snippets, _ = rank_snippets(request.path, request.text, request.cursor, "python", request.other_files)
        prompt = build_prompt(tokenizer, True, request.path, request.text, request.cursor, "python", snippets, 512)
        text = ids_to_text(tokenizer, prompt.ids)
        assert "<|fim_middle|>" in text and "<bos>" not in text
        assert text_to_ids(tokenizer, text) == prompt.ids


@pytest.mark.parametrize("prompt_format", ["text", "tokens"])
def test_remote_completion_equals_the_local_one(live, prompt_format):
    engine = remote(live.url + "/engine/v1", prompt_format=prompt_format)
    for request in requests():
        here, there = complete(local(), request), complete(engine, request)
        assert there.debug["raw"] == here.debug["raw"]
        assert (there.text, there.stop_reason) == (here.text, here.stop_reason)
        assert there.debug["prompt"] == here.debug["prompt"]


def test_a_server_url_finds_the_engine_routes_and_the_context(live):
    engine = remote(live.url)
    engine.probe()
    assert engine.max_seq_len == live.service.engine.max_seq_len
    generation = engine.generate(local().tokenizer.encode("def f(x):", bos=True), GenerateOptions(max_new_tokens=4))
    expected = local().generate(local().tokenizer.encode("def f(x):", bos=True), GenerateOptions(max_new_tokens=4))
    assert generation.text == expected.text and generation.stop_reason == expected.stop_reason == "max_tokens"


def test_cancelling_closes_the_stream_stops_the_served_generation_and_the_engine_serves_on(live, monkeypatch):
    served = []  # the server's worker Futures, to see how its generation ended
    submit_call = live.service.submit_call
    monkeypatch.setattr(live.service, "submit_call",
                        lambda job, should_stop=None: served.append(submit_call(job, should_stop=should_stop))
                        or served[-1])
    engine = remote(live.url)
    pieces: list[str] = []
    ids = local().tokenizer.encode("x = [", bos=True)
    options = GenerateOptions(max_new_tokens=200, temperature=1.0, seed=2, stop_ids=frozenset())
    cancelled = engine.generate(ids, options, on_text=pieces.append, should_stop=lambda: bool(pieces))
    assert cancelled.stop_reason == "cancelled" and cancelled.text == "".join(pieces)
    there = served[-1].result(30)
    assert there.stop_reason == "cancelled" and there.stats.new_tokens < 200  # stopped, not run to the end
    assert engine.generate(ids, GenerateOptions(max_new_tokens=3)).stop_reason == "max_tokens"


@pytest.fixture
def engine_server():
    servers: list[EngineServer] = []

    def make(behaviour: str) -> EngineServer:
        servers.append(EngineServer(behaviour))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def _generate(engine: RemoteEngine, **kwargs):
    return engine.generate(local().tokenizer.encode("def add(a, b):\n", bos=True), GenerateOptions(max_new_tokens=8),
                           **kwargs)


def test_an_engine_that_is_down_is_retried_then_reported(engine_server):
    server = engine_server("down")
    with pytest.raises(RemoteEngineError, match=r"unavailable after 3 attempts: HTTP 503: overloaded"):
        _generate(remote(server.url, backoff_s=0.01))
    assert len(server.requests) == 3  # each attempt stopped at the engine's model list (GET /v1/models)


def test_a_failure_before_any_text_is_retried(engine_server):
    server = engine_server("flaky")
    assert _generate(remote(server.url, backoff_s=0.01)).text == "".join(TEXT)


def test_an_engine_that_never_answers_times_out(engine_server):
    server = engine_server("silent")
    engine = remote(server.url, connect_timeout_s=0.5, first_event_timeout_s=0.5, retries=1, backoff_s=0.01)
    with pytest.raises(RemoteEngineError, match="unavailable after 2 attempts"):
        _generate(engine)


def test_an_engine_that_dies_mid_stream_is_an_error_not_a_short_completion(engine_server):
    server = engine_server("dies")
    pieces: list[str] = []
    with pytest.raises(RemoteEngineError, match="mid-completion|closed the stream"):
        _generate(remote(server.url, backoff_s=0.01), on_text=pieces.append)
    assert pieces == [TEXT[0]]  # what was streamed stays streamed; no retry repeats it


def test_garbage_is_a_one_line_error(engine_server):
    server = engine_server("garbage")
    with pytest.raises(RemoteEngineError, match="not JSON: <html>not json</html>"):
        _generate(remote(server.url))


def test_the_api_key_comes_from_the_environment_and_never_into_messages(engine_server, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv(API_KEY_ENV, secret)
    server = engine_server("unauthorized")
    with pytest.raises(RemoteEngineError) as raised:
        _generate(remote(server.url))
    assert API_KEY_ENV in str(raised.value) and secret not in str(raised.value)
    assert f"Authorization: Bearer {secret}".encode() in server.requests[-1]


def test_a_refused_connection_is_reported(engine_server):
    server = engine_server("ok")
    server.close()
    with pytest.raises(RemoteEngineError, match=r"unavailable after 3 attempts: .*Connection refused"):
        _generate(remote(server.url, backoff_s=0.01))


def _serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "fim.http.cli", "--port", "0", "--log-level", "warning", *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_serve_engine_fronts_another_server_and_survives_its_failure(live, engine_server):
    body = {"prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 8}
    direct = httpx.post(live.url + "/openai/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    down = engine_server("down")
    with serving(_serve("--engine", live.url, "--model", tiny_checkpoint())) as front, \
            serving(_serve("--engine", down.url, "--model", tiny_checkpoint())) as broken, \
            httpx.Client(timeout=60) as client:
        answer = client.post(front + "/openai/v1/completions", json=body).json()
        assert answer["choices"][0]["text"] == direct
        streamed = client.post(front + "/infill", json={"input_prefix": "x = ", "n_predict": 4, "stream": True})
        assert streamed.status_code == 200 and streamed.text.startswith("data: ")
        failed = client.post(broken + "/infill", json={"input_prefix": "x = ", "n_predict": 4})
        assert failed.status_code == 502
        message = failed.json()["error"]["message"]
        assert "\n" not in message and "unavailable" in message and "Traceback" not in failed.text
        assert client.get(broken + "/health").status_code == 200  # the server keeps running
        assert json.loads(client.get(front + "/engine/v1/models").text)["data"][0]["max_model_len"] > 0
