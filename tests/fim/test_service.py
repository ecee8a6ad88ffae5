"""CompletionService: background load, a Future per request, bounded queue, cancellation, load failure."""

from __future__ import annotations

import threading

import pytest

from fim import CompletionOptions, CompletionRequest, CompletionService, QueueFullError, ServiceNotReadyError
from fim.errors import BadRequestError
from tests.tiny import tiny_engine

TEXT = "def add(a, b):\n    return a + b\n\nresult = add(1, "
REQUEST = CompletionRequest("calc.py", TEXT, len(TEXT), options=CompletionOptions(max_tokens=3))


def test_requests_are_served_in_order_with_progress(fim_engine):
    progress = []
    service = CompletionService(engine=fim_engine)
    service.start(on_progress=lambda message, fraction: progress.append((message, fraction)))
    try:
        futures = [service.submit(REQUEST) for _ in range(3)]
        responses = [f.result(timeout=60) for f in futures]
        assert service.ready and service.error is None
        assert progress[-1] == (f"model ready: {fim_engine.name}", 1.0)
        assert ("warming up", 0.9) in progress
        assert len({r.text for r in responses}) == 1  # greedy: the same request gives the same completion
    finally:
        service.close()


def test_the_engine_is_warmed_while_loading():
    """The one-off costs (first native calls, measuring the verification cost) are paid before the service
    says it is ready, not by the first completion."""
    engine = tiny_engine(fim=True)
    assert engine.verify_measurements == 0
    service = CompletionService(engine=engine)
    service.start()
    try:
        assert service.wait_ready(timeout=60) and engine.verify_measurements == 1
        service.submit(REQUEST).result(timeout=60)
        assert engine.verify_measurements == 1
    finally:
        service.close()


def test_queue_is_bounded(fim_engine):
    service = CompletionService(engine=fim_engine, max_queue=2)  # not started: requests wait
    first, second = service.submit(REQUEST), service.submit(REQUEST)
    with pytest.raises(QueueFullError, match="2 completion requests are already waiting"):
        service.submit(REQUEST)
    first.cancel()  # a cancelled request gives its place back at once
    superseded = threading.Event()
    third = service.submit(REQUEST, should_stop=superseded.is_set)
    with pytest.raises(QueueFullError):
        service.submit(REQUEST)
    superseded.set()  # a request whose should_stop is true holds no place either
    fourth = service.submit(REQUEST)
    service.start()
    try:
        assert second.result(timeout=60).stop_reason and fourth.result(timeout=60).stop_reason
        assert first.cancelled() and third.cancelled()  # skipped without running the model
        assert service.submit(REQUEST).result(timeout=60)  # room again once the queue drained
    finally:
        service.close()


def test_should_stop_cancels_a_running_request(fim_engine):
    service = CompletionService(engine=fim_engine)
    service.start()
    try:
        polls = iter([False])  # still wanted when the worker picks it up, superseded right after
        response = service.submit(REQUEST, should_stop=lambda: next(polls, True)).result(timeout=60)
        assert response.stop_reason == "cancelled"
    finally:
        service.close()


def test_on_text_streams_the_raw_completion(fim_engine):
    pieces = []
    service = CompletionService(engine=fim_engine)
    service.start()
    try:
        response = service.submit(REQUEST, on_text=pieces.append).result(timeout=60)
        assert "".join(pieces) == response.debug["raw"]
    finally:
        service.close()


def test_bad_request_is_rejected_at_submit(fim_engine):
    service = CompletionService(engine=fim_engine)
    with pytest.raises(BadRequestError, match="outside the text"):
        service.submit(CompletionRequest("a.py", "x", 5))


def test_load_failure_is_reported_not_raised(tmp_path):
    done = threading.Event()
    messages = []

    def progress(message, fraction):
        messages.append(message)
        if fraction == 1.0:
            done.set()

    service = CompletionService(model=str(tmp_path / "missing-model"))
    waiting = service.submit(REQUEST)  # submitted while loading: fails with the load error
    service.start(on_progress=progress)
    assert done.wait(60) and not service.wait_ready(1)
    assert "missing-model" in service.error and "\n" not in service.error
    assert messages[-1].startswith("model failed to load:")
    with pytest.raises(ServiceNotReadyError, match="failed to load"):
        waiting.result(timeout=10)
    with pytest.raises(ServiceNotReadyError, match="failed to load"):
        service.submit(REQUEST)
    service.close()


def test_close_cancels_waiting_requests(fim_engine):
    service = CompletionService(engine=fim_engine)
    future = service.submit(REQUEST)
    service.close()
    assert future.cancelled()
    with pytest.raises(ServiceNotReadyError, match="closed"):
        service.submit(REQUEST)
