"""The `codegemma` extension object (suffix-aware reranking) in all three API formats, on the real server."""
from __future__ import annotations

import pytest

PREFIX, SUFFIX = "def area(w, h):\n    result = ", "\n    return result\n"
REQUESTS = {
    "/infill": {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 4},
    "/completion": {"prompt": PREFIX, "n_predict": 4},
    "/v1/completions": {"segments": {"prefix": PREFIX, "suffix": SUFFIX}},
    "/openai/v1/completions": {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 4},
}


@pytest.mark.parametrize("route", REQUESTS)
def test_extension_object_is_accepted(client, route):
    r = client.post(route, json={**REQUESTS[route], "codegemma": {"candidates": 3, "rerank_budget_ms": 60000}})
    assert r.status_code == 200, r.text


def test_llamacpp_shows_the_candidates_used(client):
    asked = client.post("/infill", json={**REQUESTS["/infill"], "codegemma": {"candidates": 3}}).json()
    assert asked["generation_settings"]["candidates"] == 3 and not asked["generation_settings"]["rerank_lines"]
    lines = client.post("/infill", json={**REQUESTS["/infill"], "codegemma": {"rerank_lines": True}}).json()
    assert lines["generation_settings"]["rerank_lines"] and lines["generation_settings"]["candidates"] == 1
    plain = client.post("/infill", json=REQUESTS["/infill"]).json()
    assert plain["generation_settings"]["candidates"] == 1 and plain["generation_settings"]["rerank_budget_ms"] is None


@pytest.mark.parametrize("route", REQUESTS)
@pytest.mark.parametrize("extension, field", [({"candidates": 0}, "candidates"), ({"candidates": 99}, "candidates"),
                                              ({"rerank_budget_ms": 0}, "rerank_budget_ms"),
                                              ({"candidate": 2}, "candidate"), ({"rerank_lines": "maybe"}, "rerank_lines")])
def test_bad_extension_values_are_422(client, route, extension, field):
    r = client.post(route, json={**REQUESTS[route], "codegemma": extension})
    assert r.status_code == 422 and field in r.text and "codegemma" in r.text
