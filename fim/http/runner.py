"""Run one completion on the shared worker from route code: submit, stream, cancel, record metrics.

`fim.bridge.AsyncCompletion` carries the request to the worker thread and back; a `Completion` adds what
HTTP needs around it: 503 while the model loads, 499 when the client goes away, and the metrics sample.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from fastapi import Request

from codegemma import GenStats

from fim.bridge import AsyncCompletion
from fim.errors import QueueFullError
from fim.http.errors import ApiError
from fim.http.metrics import CompletionSample
from fim.http.state import AppState
from fim.request import CompletionRequest, CompletionResponse

CLIENT_GONE = 499  # nginx's "client closed request": only ever seen in logs and metrics
MAX_COMPLETIONS = 8  # n_cmpl / n above this is a mistake (llama.cpp caps it at its number of slots)
ALT_TEMPERATURE = 0.8  # llama.cpp's default: what the extra completions of a greedy request sample at


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
        self.job = AsyncCompletion(state.service, request, stream=stream, watch=watch)
        self._watch_reason = watch_reason

    def submit(self) -> None:
        """Queue the request: 503 while the model loads or when the queue is full."""
        self.state.require_ready()
        try:
            self.job.submit()
        except QueueFullError:
            self.state.metrics.rejected("queue_full")
            raise
        self.state.metrics.completion_started()
        self.job.future.add_done_callback(self._record)

    async def result(self, http_request: Request) -> Finished:
        """Wait for the answer, checking that the client is still connected; 499 when it left."""
        poll = self.state.settings.disconnect_poll_s
        while not await self.job.wait(poll):
            if await http_request.is_disconnected():
                self.job.cancel()
                raise ApiError(CLIENT_GONE, "client disconnected; completion cancelled")
        return self.finished()

    def pieces(self) -> AsyncIterator[str]:
        """Text pieces as the engine makes them; ends when the completion is done (then call finished())."""
        return self.job.pieces()

    def finished(self) -> Finished:
        """The result of a completion that is done; raises what the worker raised, 499 when cancelled."""
        response = self.job.response()
        if response is None:
            raise ApiError(CLIENT_GONE, "completion cancelled")
        return self._finished(response)

    def _finished(self, response: CompletionResponse) -> Finished:
        wall = time.monotonic() - self.job.submitted_at
        # fim times its own work (prompt, engine, post-processing); the rest of the wall time was waiting.
        return Finished(response, wall, max(0.0, wall - response.elapsed_s))

    def _record(self, future: Future) -> None:
        sample = None
        cancelled = self.job.cancelled
        if not future.cancelled() and future.exception() is None:
            finished = self._finished(future.result())
            stats, response = finished.stats, finished.response
            stopped_by_watch = self.job.watch_stopped and not cancelled and response.stop_reason == "cancelled"
            sample = CompletionSample(
                route=self.route, stop_reason=self._watch_reason if stopped_by_watch else response.stop_reason,
                queue_s=finished.queue_s, prefill_s=stats.prefill_s, decode_s=stats.decode_s,
                total_s=finished.wall_s, prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
                new_tokens=stats.new_tokens, drafted=stats.drafted, accepted=stats.accepted)
        self.state.metrics.completion_finished(sample, cancelled)


def variants(request: CompletionRequest, n: int) -> list[CompletionRequest]:
    """`n` requests for `n` completions (llama.cpp's n_cmpl, OpenAI's n): the first as asked, the others
    sampled, at the request's temperature or at ALT_TEMPERATURE when it asked for greedy (n greedy copies
    would all be the same), each with its own seed. They share the first one's prompt cache slot."""
    options = request.options
    temperature = options.temperature or ALT_TEMPERATURE
    return [request] + [
        replace(request, options=replace(options, temperature=temperature,
                                         seed=None if options.seed is None else (options.seed + i) % 2**64))
        for i in range(1, n)]


class CompletionGroup:
    """The completions of one request that asked for several, run one after the other: a request holds one
    place in the worker's queue however many completions it asked for."""

    def __init__(self, members: list[Completion]) -> None:
        self.members = members

    def submit(self) -> None:
        """Queue the first completion (503 while the model loads or the queue is full); the others are queued
        by `started` as their turn comes."""
        self.members[0].submit()

    def started(self, index: int) -> Completion:
        """Member `index`, queued now unless it is the first (which `submit` queued)."""
        member = self.members[index]
        if index:
            member.submit()
        return member

    async def results(self, http_request: Request) -> list[Finished]:
        try:
            return [await self.started(i).result(http_request) for i in range(len(self.members))]
        finally:
            for member in self.members:
                member.job.cancel()  # a no-op for those done or never queued; frees the worker when the client left
