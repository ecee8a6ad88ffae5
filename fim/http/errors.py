"""Every failure as JSON: {"error": {"code", "message", "type"}} (the shape llama.cpp and OpenAI use).

Handlers for our own ApiError, request validation, unknown routes, fim's errors, and a last
resort for anything else so that a client never sees a traceback.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fim.errors import FimError, QueueFullError, RemoteEngineError, ServiceNotReadyError

log = logging.getLogger("fim.http")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    502: "server_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """An error we answer on purpose, with its status code and one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "type": _TYPES.get(status, "server_error")}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def unavailable(message: str, retry_after_s: int) -> ApiError:
    return ApiError(503, message, {"Retry-After": str(retry_after_s)})


def validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """The first problem in a request, named by its field: (status, message)."""
    errors = exc.errors()
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return 400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        return 422, "request body must be a JSON object"
    where = ".".join(loc) if loc else "request body"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return 422, f"{where}: {message}{more}"


def status_for(error: FimError) -> int:
    """The HTTP status of a completion-service error: 503 for capacity, 502 for a remote engine that failed
    (`codegemma serve --engine`), 422 for the request."""
    if isinstance(error, (QueueFullError, ServiceNotReadyError)):
        return 503
    if isinstance(error, RemoteEngineError):
        return 502
    return 422


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = validation_message(exc)
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(QueueFullError)
    async def _queue_full(_: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(503, f"server busy: {exc}", {"Retry-After": str(retry_after_s)})

    @app.exception_handler(FimError)
    async def _service(_: Request, exc: FimError) -> JSONResponse:
        return error_response(status_for(exc), str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only; the client gets one line.
        log.exception("unexpected error while serving a request")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
