"""Run one completion on the shared worker from async route code: submit, stream, cancel, record.

The worker is a thread (fim.CompletionService); routes are coroutines. A `Completion` bridges the two:
text pieces cross over with `call_soon_threadsafe`, cancellation crosses back through a flag the engine
polls every step. A client that goes away sets that flag, so its generation stops and frees the worker.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass

from fastapi import Request

from codegemma import GenStats

from fim.errors import QueueFullError
from fim.http.errors import ApiError
from fim.http.metrics import CompletionSample
from fim.http.state import AppState
from fim.request import CompletionRequest, CompletionResponse

CLIENT_GONE = 499  # nginx's "client closed request": only ever seen in logs and metrics


@dataclass(frozen=True)
class Finished:
    """A completion's response with the numbers the API formats report."""
    response: CompletionResponse
    wall_s: float      # submit to result, queue wait included
    queue_s: float     # waiting for the worker

    @property
    def stats(self) -> GenStats:
        return self.response.stats


class Completion:
    """One request on the worker. `watch` sees the raw text so far and may ask the engine to stop; such a
    stop is recorded under `watch_reason`."""

    def __init__(self, state: AppState, request: CompletionRequest, route: str, *, stream: bool = False,
                 watch: Callable[[str], bool] | None = None, watch_reason: str = "watch") -> None:
        self.state = state
        self.request = request
        self.route = route
        self.cancelled = False
        self.watch_stopped = False
        self._stream = stream
        self._watch = watch
        self._watch_reason = watch_reason
        self._stop = threading.Event()
        self._raw = ""
        self._loop = asyncio.get_running_loop()
        self._pieces: asyncio.Queue[str] = asyncio.Queue()
        self._future: Future | None = None
        self._submitted = 0.0

    def submit(self) -> None:
        """Queue the request: 503 while the model loads or when the queue is full."""
        self.state.require_ready()
        self._submitted = time.monotonic()
        wants_text = self._stream or self._watch is not None
        try:
            self._future = self.state.service.submit(self.request, should_stop=self._should_stop,
                                                     on_text=self._on_text if wants_text else None)
        except QueueFullError:
            self.state.metrics.rejected("queue_full")
            raise
        self.state.metrics.completion_started()
        self._future.add_done_callback(self._record)

    def cancel(self) -> None:
        """Stop the generation (or drop it from the queue) because nobody will read the answer."""
        if self._future is None or self._future.done():
            return
        self.cancelled = True
        self._stop.set()
        self._future.cancel()

    async def result(self, http_request: Request) -> Finished:
        """Wait for the answer, checking that the client is still connected; 499 when it left."""
        assert self._future is not None, "submit() first"
        waiter = asyncio.wrap_future(self._future)
        poll = self.state.settings.disconnect_poll_s
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=poll)
                if not waiter.done() and await http_request.is_disconnected():
                    self.cancel()
                    raise ApiError(CLIENT_GONE, "client disconnected; completion cancelled")
            if waiter.cancelled():
                raise ApiError(CLIENT_GONE, "completion cancelled")
            return self._finished(waiter.result())
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def pieces(self) -> AsyncIterator[str]:
        """Text pieces as the engine makes them; ends when the completion is done (then call finished())."""
        assert self._future is not None, "submit() first"
        waiter = asyncio.wrap_future(self._future)
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
            # Runs when the client disconnects mid-stream too (the response task is cancelled).
            if not waiter.done():
                self.cancel()

    def finished(self) -> Finished:
        """The result of a completion whose pieces() ran to the end; raises what the worker raised."""
        assert self._future is not None and self._future.done()
        if self._future.cancelled():
            raise ApiError(CLIENT_GONE, "completion cancelled")
        return self._finished(self._future.result())

    def _finished(self, response: CompletionResponse) -> Finished:
        wall = time.monotonic() - self._submitted
        # fim times its own work (prompt, engine, post-processing); the rest of the wall time was waiting.
        return Finished(response, wall, max(0.0, wall - response.elapsed_s))

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

    def _record(self, future: Future) -> None:
        sample = None
        if not future.cancelled() and future.exception() is None:
            finished = self._finished(future.result())
            stats, response = finished.stats, finished.response
            stopped_by_watch = self.watch_stopped and not self.cancelled and response.stop_reason == "cancelled"
            sample = CompletionSample(
                route=self.route, stop_reason=self._watch_reason if stopped_by_watch else response.stop_reason,
                queue_s=finished.queue_s, prefill_s=stats.prefill_s, decode_s=stats.decode_s,
                total_s=finished.wall_s, prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
                new_tokens=stats.new_tokens, drafted=stats.drafted, accepted=stats.accepted)
        self.state.metrics.completion_finished(sample, self.cancelled)
