"""Tabby's API as tabby-agent uses it: health, server settings, completions and telemetry events."""
from __future__ import annotations

# tabby-agent's completion request (Tabby's CompletionRequest schema): segments from the editor with
# declarations of symbols near the cursor and snippets from changed and recently opened files.
TABBY_AGENT_REQUEST = {
    "language": "python",
    "segments": {
        "prefix": "from shapes import area\n\ndef describe(r):\n    return ",
        "suffix": "\n",
        "filepath": "src/describe.py",
        "git_url": "https://example.com/team/shapes.git",
        "declarations": [{"filepath": "src/shapes.py", "body": "def area(r):\n    return 3.14159 * r * r\n"}],
        "relevant_snippets_from_changed_files": [
            {"filepath": "src/units.py", "body": "def cm(x):\n    return x / 100\n", "score": 0.4}],
        "relevant_snippets_from_recently_opened_files": [
            {"filepath": "src/main.py", "body": "print(describe(2))\n", "score": 0.2}],
        "clipboard": "area(",
    },
    "user": "someone@example.com",
    "temperature": 0.0,
    "seed": 7,
    "mode": "standard",
}


def test_tabby_agent_completion_shape(client):
    r = client.post("/v1/completions", json=TABBY_AGENT_REQUEST)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-")
    assert len(body["choices"]) == 1
    assert body["choices"][0]["index"] == 0 and isinstance(body["choices"][0]["text"], str)


def test_tabby_minimal_request(client):
    r = client.post("/v1/completions", json={"segments": {"prefix": "import os\n"}})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["choices"][0]["text"], str)


def test_tabby_ids_differ_between_requests(client):
    request = {"language": "python", "segments": {"prefix": "x = ", "suffix": ""}}
    ids = {client.post("/v1/completions", json=request).json()["id"] for _ in range(2)}
    assert len(ids) == 2


def test_tabby_health_has_the_fields_tabby_agent_reads(client):
    r = client.get("/v1/health")
    assert r.status_code == 200
    health = r.json()
    assert isinstance(health["model"], str) and health["model"]
    assert health["device"] == "cpu" and health["arch"]
    assert isinstance(health["cpu_info"], str) and isinstance(health["cpu_count"], int)
    assert health["cuda_devices"] == []
    assert {"build_date", "git_sha", "git_describe"} <= set(health["version"])


def test_tabby_server_setting(client):
    r = client.get("/v1beta/server_setting")
    assert r.status_code == 200
    assert isinstance(r.json()["disable_client_side_telemetry"], bool)


def test_tabby_events_are_accepted_and_counted(client, metric):
    before = metric(client.get("/metrics").text, 'codegemma_client_events_total{type="select"}')
    event = {"type": "select", "completion_id": "cmpl-1", "choice_index": 0, "view_id": "view-1", "elapsed": 120}
    r = client.post("/v1/events", params={"select_kind": "line"}, json=event)
    assert r.status_code == 200
    after = metric(client.get("/metrics").text, 'codegemma_client_events_total{type="select"}')
    assert after == before + 1


def test_tabby_event_must_be_a_json_object(client):
    r = client.post("/v1/events", json=["view"])
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "request body must be a JSON object"
