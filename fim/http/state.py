"""What every route shares: the one completion worker, the settings and the metrics."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from fim.http.errors import ApiError, unavailable
from fim.http.metrics import Metrics
from fim.http.middleware import AUTHENTICATED
from fim.http.settings import ServerSettings
from fim.service import CompletionService


@dataclass
class AppState:
    service: CompletionService
    settings: ServerSettings
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)

    @property
    def model_name(self) -> str:
        engine = self.service.engine
        return engine.name if engine is not None else self.settings.model_label

    def public_model_name(self, request: Request) -> str:
        """The model's name for the health checks: without its directories unless the client sent the key."""
        name = self.model_name
        return name if authenticated(request) else os.path.basename(name.rstrip("/\\")) or name

    def load_failure(self, request: Request) -> str:
        """Why the model failed to load, for the health checks: the reason (it may hold paths) needs the key."""
        if authenticated(request):
            return f"the model failed to load: {self.service.error}"
        return "the model failed to load (the reason is in the server log, and shown with the API key)"

    def require_ready(self) -> None:
        """503 (with Retry-After) unless the model has loaded; a failed load is reported as such."""
        if self.service.error is not None:
            raise ApiError(503, f"the model failed to load: {self.service.error}")
        if not self.service.ready:
            self.metrics.rejected("loading")
            raise unavailable("the model is still loading; retry shortly", self.settings.retry_after_s)

    def new_tokens(self, requested: int) -> int:
        """The number of tokens to generate for a request: llama.cpp's rules. A negative request (its -1)
        means "as many as you like": the server default. A request above the server's limit is capped to
        it, as llama.cpp caps n_predict to its --n-predict (Continue asks for its model's whole max_tokens,
        4096 by default), and to half the model's context so that the prompt keeps room."""
        if requested < 0:
            return self.settings.default_new_tokens
        limit = self.settings.max_new_tokens
        engine = self.service.engine
        if engine is not None:
            limit = min(limit, max(1, engine.max_seq_len // 2))
        return min(requested, limit)


def authenticated(request: Request) -> bool:
    """False only for a public route reached without the API key of a server that has one."""
    return request.scope.get("state", {}).get(AUTHENTICATED, True)


def app_state(request: Request) -> AppState:
    """FastAPI dependency: the state the app was created with."""
    return request.app.state.codegemma


State = Annotated[AppState, Depends(app_state)]  # a route parameter typed State receives the app's state
