"""ASGI middleware: request metrics, bearer-token auth, the request body size limit, JSON bodies.

Written as plain ASGI (not BaseHTTPMiddleware) so that streaming responses and client disconnects pass
through untouched.
"""
from __future__ import annotations

import hmac
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fim.http.errors import error_response
from fim.http.metrics import Metrics

PUBLIC_PATHS = frozenset({"/health", "/v1/health"})  # health checks never need the key


class MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                route = scope.get("route")
                # Unknown paths share one label so that a scanner cannot blow up the number of series.
                label = getattr(route, "path", None) or "other"
                self.metrics.observe_request(label, scope["method"], status, time.monotonic() - start)

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Count before the last byte leaves, so that a client's next request already sees it.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            record()


class AuthMiddleware:
    """With an API key set, every route but the health checks needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics: Metrics) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        # compare_digest takes the same time wherever the first differing byte is.
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected("auth")
        message = ("invalid API key" if scheme.lower() == b"bearer"
                   else "this server needs an API key: send the header 'Authorization: Bearer <key>'")
        await error_response(401, message, {"WWW-Authenticate": "Bearer"})(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, by Content-Length up front or while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _message(self, size: str) -> str:
        return (f"request body of {size} is over this server's limit of {self.max_bytes} bytes "
                f"(max_body_bytes; start the server with a higher --max-body-bytes to allow it)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            self.metrics.rejected("too_large")
            await error_response(413, self._message(f"{int(length)} bytes"))(scope, receive, send)
            return
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    self.metrics.rejected("too_large")
                    # FastAPI passes HTTPException from body reading through to the JSON error handler.
                    raise HTTPException(413, self._message(f"more than {self.max_bytes} bytes"))
            return message

        await self.app(scope, receive_limited, send)


class JsonBodyMiddleware:
    """Reads every POST body as JSON whatever its Content-Type, as llama.cpp's server does.

    `curl -d '{...}'` without a header sends application/x-www-form-urlencoded; none of our routes takes
    a form, so the body is meant as JSON.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            # In place: outer middleware reads what the router writes into this same scope (the route).
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*headers, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)
