"""Schema fuzzing: schemathesis generates requests from the server's own OpenAPI spec, valid and invalid.

Every answer must be a deliberate one (2xx, or a 4xx with a JSON error), never a 5xx. Bounded: a few
dozen examples per route and mode and a small token limit, so that the whole run takes well under a minute.
(schemathesis' own pytest plugin does not run under pytest 9, so hypothesis drives its strategies here.)
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from fim.http import ServerSettings, create_app
from fim.service import CompletionService
from tests.http.http_harness import start_server
from tests.tiny import tiny_checkpoint

EXAMPLES = 30  # per route and generation mode

# The spec as the app publishes it at /openapi.json (built without a model: the routes do not need one).
SCHEMA = schemathesis.openapi.from_dict(create_app(CompletionService(tiny_checkpoint())).openapi())
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
# Invalid data exists only where there is input: the POST bodies.
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + \
        [(label, GenerationMode.NEGATIVE) for label in sorted(OPERATIONS) if label.startswith("POST ")]


@pytest.fixture(scope="module")
def fuzz_server():
    # Small limits keep each generated completion short; bigger requests get their 413/422.
    server = start_server(CompletionService(tiny_checkpoint(), max_queue=4),
                          ServerSettings(max_new_tokens=4, default_new_tokens=2, max_body_bytes=4096))
    yield server
    server.stop()


def test_the_spec_is_served(fuzz_server):
    with fuzz_server.client() as c:
        assert c.get("/openapi.json").json()["paths"].keys() == SCHEMA.raw_schema["paths"].keys()


@pytest.mark.parametrize("label,mode", CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_no_server_errors(fuzz_server, label, mode):
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=fuzz_server.url, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"] == response.status_code and error["message"], response.text

    check()


def test_fuzzing_reached_the_model(fuzz_server, metric):
    # Runs after the fuzz cases (file order): valid generated requests were served, not only rejected.
    with fuzz_server.client() as c:
        text = c.get("/metrics").text
    for route in ("/infill", "/v1/completions", "/openai/v1/completions"):
        assert metric(text, f'codegemma_http_requests_total{{route="{route}",method="POST",status="200"}}') > 0, route
        assert metric(text, f'codegemma_http_requests_total{{route="{route}",method="POST",status="422"}}') > 0, route
