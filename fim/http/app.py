"""The FastAPI app: llama.cpp, Tabby and OpenAI-style routes over one shared completion worker.

Routes (see each module): llama.cpp `POST /infill`, `GET /health`; Tabby `POST /v1/completions`,
`GET /v1/health`, `POST /v1/events`, `GET /v1beta/server_setting`; OpenAI-style
`POST /openai/v1/completions`, `GET /openai/v1/models`; the engine itself for other servers' `--server` /
`--engine` (`POST /engine/v1/completions`, `GET /engine/v1/models`); Prometheus `GET /metrics`.
The caller owns the service (starts and closes it); the app only submits to it.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from fim.http import engine_api, llamacpp, openai, tabby
from fim.http.errors import install_error_handlers
from fim.http.middleware import (AuthMiddleware, BodyLimitMiddleware, JsonBodyMiddleware, MetricsMiddleware,
                                 OriginMiddleware)
from fim.http.settings import ServerSettings, is_loopback
from fim.http.state import AppState, State
from fim.service import CompletionService

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(service: CompletionService, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    state = AppState(service, settings)
    app = FastAPI(title="codegemma completion server", version=tabby.VERSION,
                  description="Code completion for llama.cpp, Tabby and OpenAI-style clients.")
    app.state.codegemma = state
    install_error_handlers(app, settings.retry_after_s)
    for router in (llamacpp.router, tabby.router, openai.router, engine_api.router):
        app.include_router(router)

    @app.get("/metrics", tags=["metrics"], response_class=PlainTextResponse,
             summary="Prometheus metrics: requests, stage latencies, tokens, draft acceptance")
    async def metrics(s: State) -> PlainTextResponse:
        return PlainTextResponse(s.metrics.render(s.service.ready), media_type=PROMETHEUS_TEXT)

    # Added innermost first: the body limit sees the raw request, metrics see every answer, 401s and 403s included.
    app.add_middleware(JsonBodyMiddleware, metrics=state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=state.metrics,
                       timeout_s=settings.body_timeout_s, max_header_bytes=settings.max_header_bytes)
    app.add_middleware(AuthMiddleware, api_key=settings.api_key, metrics=state.metrics)
    app.add_middleware(OriginMiddleware, allowed_origins=settings.allowed_origins,
                       loopback=is_loopback(settings.host), metrics=state.metrics)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
