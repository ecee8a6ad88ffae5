"""Newest request per document wins: superseding cancels the older task and sets its stop flag."""

import asyncio

import pytest

from lsp.inflight import InFlight, debounce


def test_newer_request_cancels_the_older_task_and_stops_its_worker():
    async def scenario():
        inflight = InFlight()
        started = asyncio.Event()
        tickets = []

        async def request(key):
            ticket = inflight.begin(key)
            tickets.append(ticket)
            started.set()
            try:
                await asyncio.sleep(10)  # stands for waiting on the model worker
            finally:
                inflight.finish(key, ticket)

        older = asyncio.ensure_future(request("a.py"))
        other = asyncio.ensure_future(request("b.py"))
        await started.wait()
        await asyncio.sleep(0)
        newer = asyncio.ensure_future(request("a.py"))
        await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await older
        assert tickets[0].should_stop() and not tickets[1].should_stop() and not tickets[2].should_stop()
        inflight.cancel("b.py")
        with pytest.raises(asyncio.CancelledError):
            await other
        inflight.cancel_all()
        with pytest.raises(asyncio.CancelledError):
            await newer
        assert all(t.should_stop() for t in tickets)

    asyncio.run(scenario())


def test_debounce_lets_only_the_last_request_of_a_burst_run():
    async def scenario():
        inflight = InFlight()

        async def request():
            ticket = inflight.begin("a.py")
            await debounce(ticket, 0.05)
            return "ran"

        tasks = [asyncio.ensure_future(request()) for _ in range(5)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [isinstance(r, asyncio.CancelledError) for r in results] == [True] * 4 + [False]
        assert results[-1] == "ran"

    asyncio.run(scenario())
