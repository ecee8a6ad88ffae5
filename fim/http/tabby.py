"""Tabby compatibility: POST /v1/completions, GET /v1/health, POST /v1/events, GET /v1beta/server_setting.

Enough of Tabby's server API for tabby-agent based plugins (VS Code, JetBrains, Vim) to connect and
complete: the health answer names the model and the machine, completion segments become the file text
and other-file context, and telemetry events are accepted and counted.
"""
from __future__ import annotations

import os
import platform
import uuid
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from fim.http import fields
from fim.http.errors import error_response
from fim.http.runner import Completion
from fim.http.state import State
from fim.request import CompletionOptions, CompletionRequest, FileContext

router = APIRouter(tags=["Tabby"])

VERSION = "0.1.0"
BUILD_DATE = datetime.now(timezone.utc).date().isoformat()


class Declaration(BaseModel):
    filepath: fields.Text = ""
    body: fields.Text = ""


class Snippet(Declaration):
    score: fields.FiniteFloat = 0.0


class Segments(BaseModel):
    prefix: fields.Text = ""
    suffix: fields.Text | None = None
    filepath: fields.Text | None = None
    git_url: fields.Text | None = None
    declarations: list[Declaration] | None = None
    relevant_snippets_from_changed_files: list[Snippet] | None = None
    relevant_snippets_from_recently_opened_files: list[Snippet] | None = None
    clipboard: fields.Text | None = None


class TabbyCompletionRequest(BaseModel):
    language: fields.Text | None = Field(None, description="editor language id, e.g. python, typescriptreact")
    segments: Segments
    user: str | None = None
    temperature: fields.FiniteFloat | None = None
    seed: fields.Seed | None = None
    mode: str | None = Field(None, description="accepted for compatibility; completions are always standard")
    codegemma: fields.Extension | None = Field(None, description="codegemma's own fields (reranking)")


class Choice(BaseModel):
    index: int
    text: str


class TabbyCompletionResponse(BaseModel):
    id: str
    choices: list[Choice]


def other_files(segments: Segments) -> tuple[FileContext, ...]:
    """Declarations first, then snippets by score: the order Tabby ranks them in its own prompt."""
    snippets = sorted((segments.relevant_snippets_from_changed_files or [])
                      + (segments.relevant_snippets_from_recently_opened_files or []),
                      key=lambda s: -s.score)
    files = [FileContext(d.filepath, d.body) for d in segments.declarations or []]
    files += [FileContext(s.filepath, s.body) for s in snippets]
    return tuple(f for f in files if f.text)


@router.post("/v1/completions", summary="Code completion (Tabby format)", response_model=TabbyCompletionResponse)
async def completions(body: TabbyCompletionRequest, request: Request, state: State):
    seg = body.segments
    path = seg.filepath or "untitled"
    options = CompletionOptions(max_tokens=state.settings.default_new_tokens,
                                temperature=fields.temperature(body.temperature or 0.0), seed=fields.seed(body.seed),
                                **fields.rerank(body.codegemma))
    completion_request = CompletionRequest(
        path=path, text=seg.prefix + (seg.suffix or ""), cursor=len(seg.prefix),
        language=fields.language(body.language), other_files=other_files(seg), options=options,
        cache_key=f"tabby/{path}")
    job = Completion(state, completion_request, "/v1/completions")
    job.submit()
    finished = await job.result(request)
    return {"id": f"cmpl-{uuid.uuid4()}", "choices": [{"index": 0, "text": finished.response.text}]}


def _cpu_info() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@router.get("/v1/health", summary="Server and model description (Tabby format)")
async def health(state: State, request: Request) -> JSONResponse:
    if state.service.error is not None:
        return error_response(503, state.load_failure(request))
    return JSONResponse({
        "model": state.public_model_name(request),
        "device": "cpu",
        "arch": platform.machine(),
        "cpu_info": _cpu_info(),
        "cpu_count": os.cpu_count() or 1,
        "cuda_devices": [],
        "accelerators": [],
        "version": {"build_date": BUILD_DATE, "build_timestamp": BUILD_DATE, "git_sha": "unknown",
                    "git_describe": f"codegemma-{VERSION}"},
        "webserver": False,
        "ready": state.service.ready,
    })


@router.post("/v1/events", summary="Editor telemetry (Tabby format): accepted and counted")
async def events(payload: Annotated[dict, Body()], state: State) -> Response:
    kind = payload.get("type")
    state.metrics.client_event(kind if isinstance(kind, str) else "other")
    return Response(status_code=200)


@router.get("/v1beta/server_setting", summary="Client settings (Tabby format)")
async def server_setting() -> dict:
    return {"disable_client_side_telemetry": False}
