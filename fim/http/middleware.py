"""ASGI middleware: request metrics, cross-site refusal, bearer-token auth, the request body size and time
limits, JSON bodies.

Written as plain ASGI (not BaseHTTPMiddleware) so that streaming responses and client disconnects pass
through untouched.
"""
from __future__ import annotations

import asyncio
import hmac
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fim.http.errors import error_response
from fim.http.metrics import Metrics
from fim.http.settings import is_loopback

PUBLIC_PATHS = frozenset({"/health", "/v1/health"})  # health checks never need the key (they show less without)
AUTHENTICATED = "codegemma.authenticated"  # scope["state"] key: False for a public path reached without the key
FORM = b"application/x-www-form-urlencoded"


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
        if scope["type"] != "http" or self.key is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        # compare_digest takes the same time wherever the first differing byte is.
        valid = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        if valid or scope["path"] in PUBLIC_PATHS:
            scope.setdefault("state", {})[AUTHENTICATED] = valid
            await self.app(scope, receive, send)
            return
        self.metrics.rejected("auth")
        message = ("invalid API key" if scheme.lower() == b"bearer"
                   else "this server needs an API key: send the header 'Authorization: Bearer <key>'")
        await error_response(401, message, {"WWW-Authenticate": "Bearer"})(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, by Content-Length up front or while reading,
    bodies that take longer than `timeout_s` to arrive with 408 (a client trickling its body), and headers
    over `max_header_bytes` with 431 (uvicorn bounds only headers that arrive in pieces)."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics, timeout_s: float = 30.0,
                 max_header_bytes: int = 16 * 1024) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_header_bytes = max_header_bytes

    def _message(self, size: str) -> str:
        return (f"request body of {size} is over this server's limit of {self.max_bytes} bytes "
                f"(max_body_bytes; start the server with a higher --max-body-bytes to allow it)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            self.metrics.rejected("too_large")
            message = f"request headers of {header_bytes} bytes are over this server's limit of {self.max_header_bytes}"
            await error_response(431, message)(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            self.metrics.rejected("too_large")
            await error_response(413, self._message(f"{int(length)} bytes"))(scope, receive, send)
            return
        seen = 0
        deadline = time.monotonic() + self.timeout_s

        async def receive_limited() -> Message:
            nonlocal seen
            if seen > self.max_bytes or time.monotonic() > deadline:
                return await receive()  # after the error: only the disconnect is left to read
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.metrics.rejected("too_slow")
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    self.metrics.rejected("too_large")
                    # FastAPI passes HTTPException from body reading through to the JSON error handler.
                    raise HTTPException(413, self._message(f"more than {self.max_bytes} bytes"))
            return message

        await self.app(scope, receive_limited, send)


class OriginMiddleware:
    """Refuses what a web page could make a browser send to this server.

    - An `Origin` header (browsers send one with every cross-origin request and every POST) must be this
      server's own origin or one of `allowed_origins` ("*" allows any): else 403. Allowed origins get CORS
      headers and answers to preflight requests, as llama.cpp's server gives them.
    - A server bound to a loopback address answers only requests whose `Host` is a loopback name, so that a
      page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) is not "same origin": else 403.
    """

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...], loopback: bool, metrics: Metrics) -> None:
        self.app = app
        self.origins = frozenset(allowed_origins)
        self.loopback = loopback
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback and host and not is_loopback(_hostname(host)):
            await self._refuse(f"Host {host!r} is not a name of this machine; this server is bound to a loopback "
                               "address and answers only 'localhost', '127.0.0.1' or '[::1]'", scope, receive, send)
            return
        origin = headers.get(b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        origin_text = origin.decode("latin-1")
        listed = "*" in self.origins or origin_text in self.origins
        if not listed and origin_text != f"{scope.get('scheme', 'http')}://{host}":
            await self._refuse(f"cross-site request from origin {origin_text!r} refused: start the server with "
                               f"--allow-origin {origin_text} to allow that site", scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")] if listed else []
        if listed and scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await send({"type": "http.response.start", "status": 204, "headers": [
                *cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", b"Authorization, Content-Type"),
                (b"access-control-max-age", b"600")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and cors:
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _refuse(self, message: str, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.rejected("cross_site")
        await error_response(403, message)(scope, receive, send)


def _hostname(host: str) -> str:
    """The name in a Host header without its port ("[::1]:8012" -> "::1")."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


class JsonBodyMiddleware:
    """Reads every POST body as JSON; refuses (415) content types a browser can send cross-site unasked.

    A body labelled JSON (application/json, anything +json) or not labelled is read as JSON. `curl -d
    '{...}'` without a header sends application/x-www-form-urlencoded; none of our routes takes a form, so
    such a body is read as JSON too, as llama.cpp's server does, but only without an `Origin` header
    (browsers send one with every POST). text/plain, multipart and other types get 415.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            json_like = kind in (b"", b"application/json") or kind.endswith(b"+json")
            if not json_like and not (kind == FORM and b"origin" not in headers):
                if self.metrics is not None:
                    self.metrics.rejected("content_type")
                message = (f"Content-Type {kind.decode('latin-1')!r} is not accepted: send the body as JSON with "
                           "'Content-Type: application/json'")
                await error_response(415, message)(scope, receive, send)
                return
            # In place: outer middleware reads what the router writes into this same scope (the route).
            rest = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*rest, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)
