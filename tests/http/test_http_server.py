"""Cross-route behaviour: auth, the bounded queue, cancellation on disconnect, metrics, the CLI."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from fim.http import ServerSettings
from fim.http.cli import main
from fim.http.settings import is_loopback
from fim.request import CompletionOptions, CompletionRequest
from fim.service import CompletionService
from tests.http.http_harness import API_KEY, serving, start_server
from tests.tiny import tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# With this seed the tiny engine samples past 150 tokens after "x = [" (no end token, no block end), so the
# generation is still running when the test's client leaves.
LONG = {"input_prefix": "x = [", "input_suffix": "", "n_predict": 1000, "temperature": 1.0, "top_k": 0,
        "seed": 2, "cache_prompt": False}


# --- auth -------------------------------------------------------------------------------------------------

def test_auth_required_when_a_key_is_set(secured):
    with secured.client() as c:
        r = c.post("/infill", json={"input_prefix": "x"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["error"]["message"]
        r = c.post("/infill", json={"input_prefix": "x"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
        for path in ("/metrics", "/v1beta/server_setting", "/openai/v1/models", "/openapi.json"):
            assert c.get(path).status_code == 401, path


def test_auth_accepts_the_key_and_leaves_health_open(secured):
    with secured.client() as c:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert c.post("/infill", json={"input_prefix": "x", "n_predict": 2}, headers=auth).status_code == 200
        assert c.post("/v1/completions", json={"segments": {"prefix": "x"}}, headers=auth).status_code == 200
        assert c.get("/metrics", headers=auth).status_code == 200
        assert c.get("/health").status_code == 200
        assert c.get("/v1/health").status_code == 200


def test_no_auth_without_a_key(client):
    assert client.get("/metrics").status_code == 200
    assert client.post("/infill", json={"input_prefix": "x", "n_predict": 1}).status_code == 200


# --- queue and cancellation ------------------------------------------------------------------------------

CANCELLED = 'codegemma_completions_total{route="/infill",stop_reason="cancelled"}'


@pytest.fixture(scope="module")
def single():
    """A worker with room for one waiting request, and a high token limit for long generations."""
    server = start_server(CompletionService(tiny_checkpoint(), max_queue=1), ServerSettings(max_new_tokens=5000))
    yield server
    server.stop()


@contextmanager
def worker_held(service: CompletionService) -> Iterator[None]:
    """Keeps the worker busy on a request of its own until the block ends (its should_stop waits)."""
    release = threading.Event()
    busy = threading.Event()

    def hold() -> bool:
        busy.set()
        release.wait(30)
        return False

    request = CompletionRequest("untitled", "x = [", 5, options=CompletionOptions(max_tokens=2, reuse_prompt=False))
    future = service.submit(request, should_stop=hold)
    assert busy.wait(30), "the worker did not pick up the holding request"
    try:
        yield
    finally:
        release.set()
        future.result(30)


def _metrics_when(client: httpx.Client, ready, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if ready(text):
            return text
        assert time.monotonic() < deadline, "the metrics did not reach the expected state"
        time.sleep(0.05)


def _first_event(response: httpx.Response) -> str:
    for line in response.iter_lines():
        if line.startswith("data: "):
            return line
    raise AssertionError("no event")


def test_full_queue_is_503_with_retry_after(single, metric):
    with single.client() as c, single.client() as waiting_client:
        before = c.get("/metrics").text
        with worker_held(single.service), \
                waiting_client.stream("POST", "/infill", json={**LONG, "stream": True}) as waiting:
            assert waiting.status_code == 200                      # submitted: the one waiting slot
            r = c.post("/infill", json={"input_prefix": "y"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "busy" in r.json()["error"]["message"]
        # The waiting client left before its turn: it is dropped without running.
        after = _metrics_when(c, lambda t: metric(t, "codegemma_completions_in_flight") == 0)
        assert metric(after, "codegemma_cancelled_total") == metric(before, "codegemma_cancelled_total") + 1
        assert metric(after, 'codegemma_rejected_requests_total{reason="queue_full"}') == \
            metric(before, 'codegemma_rejected_requests_total{reason="queue_full"}') + 1
        assert c.post("/infill", json={"input_prefix": "z", "n_predict": 2}).status_code == 200


def test_streaming_client_that_leaves_stops_its_generation(single, metric):
    with single.client() as c:
        before = metric(c.get("/metrics").text, CANCELLED)
        with single.client() as leaving, leaving.stream("POST", "/infill", json={**LONG, "stream": True}) as r:
            _first_event(r)                                        # generating
        after = _metrics_when(c, lambda t: metric(t, "codegemma_completions_in_flight") == 0)
        assert metric(after, CANCELLED) == before + 1              # stopped mid-generation, not finished
        start = time.monotonic()
        assert c.post("/infill", json={"input_prefix": "z", "n_predict": 2}).status_code == 200
        assert time.monotonic() - start < 10


def test_non_streaming_client_that_leaves_is_cancelled(single, metric):
    with single.client() as c:
        before = metric(c.get("/metrics").text, "codegemma_cancelled_total")
        with worker_held(single.service):
            with single.client(timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
                impatient.post("/infill", json=LONG)
            # The server notices the closed connection while the request waits, before the worker is free.
            _metrics_when(c, lambda t: metric(t, "codegemma_cancelled_total") == before + 1)
        _metrics_when(c, lambda t: metric(t, "codegemma_completions_in_flight") == 0)


def test_tokens_beyond_the_model_context_are_422(single):
    with single.client() as c:
        r = c.post("/infill", json={"input_prefix": "x", "n_predict": 3000, "stream": True})
    assert r.status_code == 422
    assert "no room for a prompt" in r.json()["error"]["message"]


# --- metrics ---------------------------------------------------------------------------------------------

def test_metrics_in_prometheus_text(client, metric):
    client.post("/infill", json={"input_prefix": "a = ", "n_predict": 3})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name, kind in (("codegemma_http_requests_total", "counter"),
                       ("codegemma_http_request_duration_seconds", "histogram"),
                       ("codegemma_completion_stage_seconds", "histogram"), ("codegemma_tokens_total", "counter"),
                       ("codegemma_draft_acceptance_rate", "gauge"), ("codegemma_model_ready", "gauge")):
        assert f"# TYPE {name} {kind}" in text
    assert metric(text, 'codegemma_http_requests_total{route="/infill",method="POST",status="200"}') >= 1
    for stage in ("queue", "prefill", "decode", "total"):
        assert metric(text, f'codegemma_completion_stage_seconds_count{{stage="{stage}"}}') >= 1
        assert metric(text, f'codegemma_completion_stage_seconds_bucket{{stage="{stage}",le="+Inf"}}') >= 1
    assert metric(text, 'codegemma_tokens_total{kind="generated"}') >= 1
    assert metric(text, 'codegemma_tokens_total{kind="prompt"}') >= 1
    assert 0 <= metric(text, "codegemma_draft_acceptance_rate") <= 1
    assert metric(text, "codegemma_model_ready") == 1
    # unknown paths share one label
    client.get("/scan/me/1")
    assert 'route="/scan/me/1"' not in client.get("/metrics").text


# --- CLI -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True),
                                           ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                           ("192.168.1.10", False), ("example.com", False)])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_cli_refuses_a_public_bind_without_a_key(capsys, monkeypatch):
    monkeypatch.delenv("CODEGEMMA_API_KEY", raising=False)
    assert main(["--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_cli_reports_a_busy_port(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_cli_rejects_bad_limits(capsys):
    assert main(["--max-tokens", "0"]) == 2
    assert "--max-tokens" in capsys.readouterr().err


def _serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "fim.http.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_cli_serves_with_an_api_key_end_to_end():
    proc = _serve("--port", "0", "--model", tiny_checkpoint(), "--api-key", API_KEY, "--log-level", "warning")
    with serving(proc) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/infill", json={"input_prefix": "x"}).status_code == 401
        r = c.post("/infill", json={"input_prefix": "x", "n_predict": 2},
                   headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200 and isinstance(r.json()["content"], str)


def test_cli_exits_when_the_model_cannot_load():
    proc = _serve("--port", "0", "--model", "/nonexistent/model.gguf")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "failed to load" in err and "Traceback" not in err
