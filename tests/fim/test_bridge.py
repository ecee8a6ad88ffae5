"""AsyncCompletion: the one bridge from an event loop to the worker (streaming, watching, cancelling)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest

from fim import CompletionOptions, CompletionRequest, CompletionService
from fim.bridge import AsyncCompletion, AsyncEngineCall

TEXT = "def add(a, b):\n    return a + b\n\n\ndef main():\n    "


def _request(max_tokens: int) -> CompletionRequest:
    # single-line mode off and no time budget: the tiny model writes until max_tokens
    return CompletionRequest("calc.py", TEXT, len(TEXT), options=CompletionOptions(max_tokens=max_tokens, mode="multi"))


@pytest.fixture
def service(fim_engine):
    service = CompletionService(engine=fim_engine, max_queue=1)
    service.start()
    assert service.wait_ready(60)
    yield service
    service.close()


def test_streamed_pieces_are_the_raw_text_and_the_result_follows(service):
    async def scenario():
        job = AsyncCompletion(service, _request(12), stream=True)
        job.submit()
        pieces = [piece async for piece in job.pieces()]
        response = job.response()
        assert response is not None and "".join(pieces) == response.debug["raw"]
        assert response.stats.new_tokens >= 1 and not job.cancelled

    asyncio.run(scenario())


def test_watch_stops_the_engine_on_the_step_it_returns_true(service):
    async def scenario():
        job = AsyncCompletion(service, _request(40), watch=lambda raw: len(raw) > 0)
        job.submit()
        response = await job.result()
        assert job.watch_stopped and response.stop_reason == "cancelled" and response.stats.new_tokens <= 2

    asyncio.run(scenario())


def test_a_cancelled_waiter_cancels_the_completion_and_frees_the_worker(service):
    generating, release = threading.Event(), threading.Event()

    def hold(raw: str) -> bool:
        # runs on the worker after each decoded piece: keeps the generation in flight until the test lets go
        generating.set()
        release.wait(10)
        return False

    async def scenario():
        job = AsyncCompletion(service, _request(200), watch=hold)
        job.submit()
        waiter = asyncio.ensure_future(job.result())
        assert await asyncio.to_thread(generating.wait, 10)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        assert job.cancelled
        response = await asyncio.wait_for(asyncio.wrap_future(job.future), 30)
        assert response.stop_reason == "cancelled" and response.stats.new_tokens <= 2
        nxt = AsyncCompletion(service, _request(2))  # the worker is free for the next request
        nxt.submit()
        assert (await asyncio.wait_for(nxt.result(), 30)).stats.new_tokens <= 2

    asyncio.run(scenario())


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_call_raises_once_and_logs_nothing_when_collected(service, caplog, stream):
    # A failure must reach the caller through response() and nowhere else: an unread asyncio copy of it
    # would log a traceback from the garbage collector at some later, arbitrary moment.
    started, release = threading.Event(), threading.Event()

    def job(engine, on_text, should_stop):
        started.set()
        release.wait(10)
        raise ValueError("the engine failed")

    async def scenario():
        call = AsyncEngineCall(service, job, stream=stream)
        call.submit()
        assert await asyncio.to_thread(started.wait, 10)
        assert not await call.wait(0.01)  # a timed-out wait leaves its view behind while the job runs
        release.set()
        if stream:
            assert [piece async for piece in call.pieces()] == []
        else:
            assert await call.wait(10)
        with pytest.raises(ValueError, match="the engine failed"):
            call.response()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    assert "never retrieved" not in caplog.text
