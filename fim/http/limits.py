"""Connection limits for the uvicorn server: a deadline for request headers, keep-alive and concurrency.

uvicorn bounds the idle time between requests (keep-alive) and, optionally, the number of connections,
but a client that opens a connection and sends its headers a byte at a time (slowloris) holds it forever.
`GuardedH11Protocol` closes a connection whose request line and headers are not complete within
`header_timeout_s`; the body has its own deadline in `BodyLimitMiddleware`.
"""
from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fim.http.settings import ServerSettings


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (set by `uvicorn_config`)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm()
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app, settings: ServerSettings, **kwargs) -> uvicorn.Config:
    """The uvicorn configuration every server of ours uses (the `serve` command and the tests)."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": settings.header_timeout_s})
    return uvicorn.Config(app, http=protocol, timeout_keep_alive=settings.keep_alive_s,
                          limit_concurrency=settings.max_connections,
                          h11_max_incomplete_event_size=settings.max_header_bytes, **kwargs)
