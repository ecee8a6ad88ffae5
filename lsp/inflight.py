"""Newest request per document wins: supersede, cancel and debounce completion requests.

Editors ask again on every keystroke, and some (Neovim 0.12) never send `$/cancelRequest` for the
request they no longer want. So a new request for a document cancels the older one server-side:
its asyncio task is cancelled (pygls answers it with RequestCancelled at once) and its completion on
the model worker is cancelled, which frees the worker within one decoding step.
"""

from __future__ import annotations

import asyncio

from fim import CompletionRequest, CompletionResponse, CompletionService
from fim.bridge import AsyncCompletion


class Ticket:
    """One completion request's cancellation handle: its task and its completion on the worker."""

    def __init__(self, task: asyncio.Task | None) -> None:
        self._task = task
        self._job: AsyncCompletion | None = None
        self._cancelled = False

    async def complete(self, service: CompletionService, request: CompletionRequest) -> CompletionResponse | None:
        """Run `request` on the worker; None when the ticket was cancelled meanwhile. Raises fim's errors."""
        self._job = AsyncCompletion(service, request)
        self._job.submit()
        return await self._job.result()

    def cancel(self) -> None:
        self._cancelled = True
        if self._job is not None:
            self._job.cancel()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def should_stop(self) -> bool:
        return self._cancelled


class InFlight:
    """The live ticket of each document; must be used from the event loop thread."""

    def __init__(self) -> None:
        self._latest: dict[str, Ticket] = {}

    def begin(self, key: str) -> Ticket:
        """A ticket for a new request on `key`, cancelling the one it supersedes."""
        older = self._latest.get(key)
        if older is not None:
            older.cancel()
        ticket = Ticket(asyncio.current_task())
        self._latest[key] = ticket
        return ticket

    def cancel(self, key: str) -> None:
        """Cancel the live request on `key`, if any (its document was closed)."""
        ticket = self._latest.pop(key, None)
        if ticket is not None:
            ticket.cancel()

    def finish(self, key: str, ticket: Ticket) -> None:
        if self._latest.get(key) is ticket:
            del self._latest[key]

    def cancel_all(self) -> None:
        for ticket in self._latest.values():
            ticket.cancel()
        self._latest.clear()


async def debounce(ticket: Ticket, delay_s: float) -> None:
    """Wait `delay_s` so a burst of requests costs one model run: a newer request cancels this
    task during the sleep (CancelledError) and only the last of the burst goes on."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    if ticket.should_stop():
        raise asyncio.CancelledError
