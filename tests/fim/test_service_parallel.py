"""CompletionService with `parallel` > 1: a local engine's requests decode together (codegemma.batch) and
answer exactly what one worker answers; cancellation still ends one request; the bound is checked."""

from __future__ import annotations

import pytest

from codegemma import kernels
from codegemma.batch import BatchEngine
from fim import CompletionOptions, CompletionRequest, CompletionService
from fim.engine import load_engine
from tests.http.scripted import ScriptedEngine
from tests.tiny import tiny_checkpoint

TEXTS = ["def add(a, b):\n    return a + b\n\nresult = add(1, ",
         "import os\n\n\ndef list_files(path):\n    for name in os.listdir(",
         "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
         "# parse the arguments\nimport argparse\nparser = argparse.ArgumentParser(description="]
REQUESTS = [CompletionRequest(f"f{i}.py", t, len(t), options=CompletionOptions(max_tokens=12))
            for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def engine():
    return load_engine(tiny_checkpoint(), dtype="fp32")  # the native products: rows computed apart


def _serve(service: CompletionService, requests, **submit) -> list:
    service.start()
    try:
        futures = [service.submit(r, **submit) for r in requests]
        return [f.result(timeout=120) for f in futures]
    finally:
        service.close()


@pytest.mark.skipif(not kernels.available(), reason="rows are bit-identical with the native products only")
def test_parallel_requests_answer_what_one_worker_answers(engine):
    serial = _serve(CompletionService(engine=engine), REQUESTS)
    service = CompletionService(engine=engine, parallel=4)
    parallel = _serve(service, REQUESTS * 2)
    assert isinstance(service.engine, BatchEngine) and service.engine.slots == 4
    assert [r.text for r in parallel] == [r.text for r in serial] * 2
    assert [r.stop_reason for r in parallel] == [r.stop_reason for r in serial] * 2


def test_should_stop_cancels_one_parallel_request(engine):
    service = CompletionService(engine=engine, parallel=2)
    service.start()
    try:
        assert service.wait_ready(60)
        scheduler = service.engine.scheduler
        superseded_at = scheduler.steps + 4  # a few steps into its 12 tokens
        cancelled = service.submit(REQUESTS[0], should_stop=lambda: scheduler.steps >= superseded_at)
        other = service.submit(REQUESTS[1])
        assert cancelled.result(timeout=120).stop_reason == "cancelled"
        assert other.result(timeout=120).stop_reason != "cancelled"
    finally:
        service.close()


def test_parallel_is_bounded_and_other_engines_keep_one_worker(fim_engine):
    with pytest.raises(ValueError, match="parallel must be 1..16"):
        CompletionService(engine=fim_engine, parallel=0)
    with pytest.raises(ValueError, match="parallel must be 1..16"):
        CompletionService(engine=fim_engine, parallel=17)
    scripted = ScriptedEngine(["x = 1\n"], prefill_s=0.0, step_s=0.0)
    service = CompletionService(engine=scripted, parallel=4)
    assert _serve(service, REQUESTS[:2])[0].text
    assert service.engine is scripted
