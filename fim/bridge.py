"""One completion on the service's worker thread, driven from an asyncio event loop (the LSP and HTTP servers).

The worker is a thread (`CompletionService`); the servers are coroutines. An `AsyncCompletion` bridges the
two: text pieces cross over with `call_soon_threadsafe`, cancellation crosses back through a flag the
engine polls every step, so a cancelled request frees the worker within one decode step. Awaiting the
result from a task that is cancelled (a superseded keystroke, a client that went away) cancels the
completion too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future

from codegemma import EngineProtocol, Generation

from fim.request import CompletionRequest, CompletionResponse
from fim.service import CompletionService


class AsyncCompletion:
    """One request on the worker. With `stream`, `pieces()` yields the raw text as the engine makes it.
    `watch` sees the raw text so far on the worker and may ask the engine to stop (`watch_stopped`)."""

    def __init__(self, service: CompletionService, request: CompletionRequest, *, stream: bool = False,
                 watch: Callable[[str], bool] | None = None) -> None:
        self.service = service
        self.request = request
        self.cancelled = False  # by cancel(): nobody will read the answer
        self.watch_stopped = False
        self.submitted_at = 0.0  # time.monotonic() of submit()
        self._stream = stream
        self._watch = watch
        self._stop = threading.Event()
        self._raw = ""
        self._loop = asyncio.get_running_loop()
        self._pieces: asyncio.Queue[str] = asyncio.Queue()
        self._future: Future | None = None

    @property
    def future(self) -> Future:
        """The worker's Future (resolves to a CompletionResponse); for done callbacks."""
        assert self._future is not None, "submit() first"
        return self._future

    def submit(self) -> None:
        """Queue the request; raises fim's errors (bad request, queue full, no model) at once."""
        wants_text = self._stream or self._watch is not None
        self.submitted_at = time.monotonic()
        self._future = self._enqueue(self._on_text if wants_text else None)

    def _enqueue(self, on_text: Callable[[str], None] | None) -> Future:
        return self.service.submit(self.request, should_stop=self._should_stop, on_text=on_text)

    def cancel(self) -> None:
        """Stop the generation, or drop the request from the queue while it waits."""
        if self._future is None or self._future.done():
            return
        self.cancelled = True
        self._stop.set()
        self._future.cancel()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the worker; True when it is done. A cancelled caller cancels
        the completion."""
        waiter = _wrap(self.future)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        except asyncio.CancelledError:
            self.cancel()
            raise
        return waiter.done()

    async def result(self) -> CompletionResponse | None:
        """The response, or None when the completion was cancelled; raises what the worker raised."""
        await self.wait()
        return self.response()

    def response(self) -> CompletionResponse | None:
        """The response of a completion that is done (None when cancelled); raises what the worker raised."""
        assert self.future.done(), "wait() first"
        return None if self.future.cancelled() else self.future.result()

    async def pieces(self) -> AsyncIterator[str]:
        """Text pieces as the engine makes them; ends when the completion is done (then call response())."""
        waiter = _wrap(self.future)
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(self._pieces.get())
                done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    break
                yield getter.result()
            # Pieces are queued before the future resolves (both go through call_soon_threadsafe, in order).
            while not self._pieces.empty():
                yield self._pieces.get_nowait()
        finally:
            if getter is not None:
                getter.cancel()
            # Runs when the reader goes away mid-stream too (its task is cancelled).
            if not waiter.done():
                self.cancel()

    def _should_stop(self) -> bool:
        return self._stop.is_set() or self.watch_stopped

    def _on_text(self, piece: str) -> None:
        # Worker thread: watch first, so that the engine stops on the very step that crossed the line.
        self._raw += piece
        if self._watch is not None and self._watch(self._raw):
            self.watch_stopped = True
        if self._stream:
            try:
                self._loop.call_soon_threadsafe(self._pieces.put_nowait, piece)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody to stream to
                self._stop.set()


def _wrap(future: Future) -> asyncio.Future:
    """An asyncio view of the worker's Future. Callers read the outcome from the worker's Future itself, and
    a view may be dropped while the worker still runs (a timed-out `wait`), so the view marks its exception
    read when it settles: otherwise its garbage collection would log "Future exception was never retrieved"
    with a traceback, at whatever moment the collector runs."""
    waiter = asyncio.wrap_future(future)
    waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
    return waiter


EngineJob = Callable[[EngineProtocol, Callable[[str], None], Callable[[], bool]], Generation]


class AsyncEngineCall(AsyncCompletion):
    """A raw generation on the worker, `job(engine, on_text, should_stop)`, bridged like a completion: the
    engine routes of `codegemma serve` stream and cancel through it. Its Future resolves to the job's result."""

    def __init__(self, service: CompletionService, job: EngineJob, *, stream: bool = False) -> None:
        super().__init__(service, CompletionRequest(path="", text="", cursor=0), stream=stream)
        self._job = job

    def _enqueue(self, on_text: Callable[[str], None] | None) -> Future:
        job, should_stop = self._job, self._should_stop

        def run(engine: EngineProtocol) -> Generation:
            return job(engine, on_text or (lambda piece: None), should_stop)
        return self.service.submit_call(run, should_stop=should_stop)
