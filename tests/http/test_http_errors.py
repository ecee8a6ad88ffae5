"""Every error path answers JSON {"error": {"code", "message", "type"}} with the right status, never a 500."""
from __future__ import annotations

import json

import pytest

from fim.errors import BadRequestError, QueueFullError
from fim.http import ServerSettings
from fim.http.sse import error_event
from fim.service import CompletionService
from tests.http.http_harness import error_message, start_server
from tests.tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def limited():
    server = start_server(CompletionService(tiny_checkpoint()), ServerSettings(max_body_bytes=2000, max_new_tokens=16,
                                                                        default_new_tokens=4))
    yield server
    server.stop()


def test_body_over_the_limit_by_content_length(limited):
    with limited.client() as c:
        message = error_message(c.post("/infill", json={"input_prefix": "x" * 5000}), 413)
    assert "2000 bytes" in message and "--max-body-bytes" in message


def test_chunked_body_over_the_limit(limited):
    def chunks():
        for _ in range(10):
            yield b" " * 500
        yield b"{}"
    with limited.client() as c:
        message = error_message(c.post("/infill", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert "2000 bytes" in message


@pytest.mark.parametrize("path,field,body", [
    ("/infill", "n_predict", {"n_predict": 17}),
    ("/openai/v1/completions", "max_tokens", {"prompt": "x", "max_tokens": 1000}),
])
def test_token_requests_above_the_limit_are_capped_as_llama_cpp_does(limited, path, field, body):
    with limited.client() as c:
        r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    generated = answer["usage"]["completion_tokens"] if "usage" in answer else answer["tokens_predicted"]
    assert generated <= 16
    if "generation_settings" in answer:
        assert answer["generation_settings"]["n_predict"] == 16


@pytest.mark.parametrize("raw,status,words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"n_predict": "many"}', 422, "n_predict"),
    (b'{"temperature": NaN}', 422, "temperature"),
    (b'{"top_p": 0}', 422, "top_p"),
    (b'{"seed": 36893488147419103232}', 422, "seed"),
    (b'{"t_max_predict_ms": 99999999999}', 422, "t_max_predict_ms"),
    (b'{"input_prefix": "\\ud800"}', 422, "lone surrogate"),
    (b'{"input_extra": [{"filename": 3}]}', 422, "input_extra.0.filename"),
])
def test_bad_infill_bodies(client, raw, status, words):
    message = error_message(client.post("/infill", content=raw, headers={"content-type": "application/json"}), status)
    assert words in message


def test_json_without_content_type_is_read_as_json(client):
    # curl -d '{...}' sends application/x-www-form-urlencoded; llama.cpp reads the body as JSON anyway
    r = client.post("/infill", content=b'{"input_prefix": "a = ", "n_predict": 1}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text


def test_tabby_request_without_segments(client):
    assert "segments" in error_message(client.post("/v1/completions", json={"language": "python"}), 422)


def test_unknown_route_and_wrong_method(client):
    assert "/nowhere" in error_message(client.get("/nowhere"), 404)
    assert "GET" in error_message(client.get("/infill"), 405)


def test_model_loading_answers_503_with_retry_after():
    server = start_server(CompletionService(tiny_checkpoint()), ServerSettings(), start_service=False)
    try:
        with server.client() as c:
            r = c.get("/health")
            assert error_message(r, 503) == "Loading model" and r.headers["retry-after"] == "1"
            r = c.post("/infill", json={"input_prefix": "x"})
            assert "loading" in error_message(r, 503) and r.headers["retry-after"] == "1"
            health = c.get("/v1/health")
            assert health.status_code == 200 and health.json()["ready"] is False and health.json()["model"]
    finally:
        server.stop()


def test_model_that_failed_to_load_is_reported():
    service = CompletionService("/nonexistent/model.gguf")
    service.start()
    service.wait_ready(60)
    server = start_server(service, ServerSettings(), start_service=False)
    try:
        with server.client() as c:
            assert "failed to load" in error_message(c.get("/health"), 503)
            assert "failed to load" in error_message(c.post("/openai/v1/completions", json={"prompt": "x"}), 503)
    finally:
        server.stop()


@pytest.mark.parametrize("error,status", [(BadRequestError("cursor 9 is outside the text"), 422),
                                          (QueueFullError("8 waiting"), 503), (RuntimeError("boom"), 500)])
def test_an_error_after_streaming_started_is_a_last_event(error, status):
    # Once the 200 and the first events are out, a failure can only be reported in-band.
    line = error_event(error)
    assert line.startswith("data: ") and line.endswith("\n\n")
    body = json.loads(line[len("data: "):])["error"]
    assert body["code"] == status
    assert "Traceback" not in body["message"] and "\n" not in body["message"]
