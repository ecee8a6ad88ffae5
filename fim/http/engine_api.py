"""The engine itself as an OpenAI-compatible API, under /engine/v1/: what `fim --server`, `codegemma lsp
--server` and `codegemma serve --engine` (`fim.remote`) talk to when the engine is another `codegemma serve`.

Unlike /openai/v1/completions (a completion at a cursor, with context, FIM template and post-processing done
here), the prompt is taken as the client built it: text parsed as an OpenAI-compatible engine does
(`<bos>`, special-token strings as their ids; `fim.prompt_text`) or a list of token ids, and the answer is
the engine's raw text. Many clients share this one engine and its prompt cache; `user` picks the cache slot.
Tabby owns /v1/completions on this server, hence the prefix.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from codegemma import EngineProtocol, GenerateOptions, Generation

from fim.bridge import AsyncEngineCall
from fim.engine import engine_errors
from fim.http import fields
from fim.http.errors import ApiError
from fim.http.runner import CLIENT_GONE
from fim.http.sse import event, stream
from fim.http.state import AppState, State
from fim.prompt_text import text_to_ids

router = APIRouter(prefix="/engine/v1", tags=["Engine"])

_LENGTH_REASONS = frozenset({"max_tokens", "context"})


class EngineCompletionRequest(BaseModel):
    model: str | None = None
    prompt: fields.Text | list[int] = Field(..., description="the whole prompt: text, or token ids")
    max_tokens: int = Field(16, ge=1)
    temperature: fields.FiniteFloat | None = None
    top_p: fields.TopP | None = None
    top_k: int | None = None
    seed: fields.Seed | None = None
    stop: fields.Text | list[fields.Text] | None = None
    stream: bool = False
    user: str | None = Field(None, max_length=256, description="the prompt-cache slot (a client or file key)")


class EngineCompletion:
    def __init__(self, state: AppState, body: EngineCompletionRequest) -> None:
        state.require_ready()
        engine = state.service.engine
        if isinstance(body.prompt, str):
            ids = text_to_ids(engine.tokenizer, body.prompt)
        else:
            ids = list(body.prompt)
            if not ids:
                raise ApiError(422, "prompt must hold at least one token id")
        options = GenerateOptions(
            max_new_tokens=state.new_tokens(body.max_tokens), temperature=fields.temperature(body.temperature or 0.0),
            top_k=fields.top_k(body.top_k or 0), top_p=fields.top_p(body.top_p or 1.0), seed=fields.seed(body.seed),
            stop_strings=fields.stop_strings(body.stop), cache_key=f"engine:{body.user or ''}")
        self.state = state
        self.prompt_tokens = len(ids)
        self.model = body.model or state.model_name
        self.id = f"cmpl-{uuid.uuid4()}"
        self.created = int(time.time())
        self.call = AsyncEngineCall(state.service, self._job(ids, options), stream=body.stream)

    @staticmethod
    def _job(ids: list[int], options: GenerateOptions) -> Callable[..., Generation]:
        def run(engine: EngineProtocol, on_text: Callable[[str], None], should_stop: Callable[[], bool]) -> Generation:
            with engine_errors():
                return engine.generate(ids, options, on_text=on_text, should_stop=should_stop)
        return run

    def _chunk(self, text: str, finish_reason: str | None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}

    @staticmethod
    def finish_reason(generation: Generation) -> str:
        return "length" if generation.stop_reason in _LENGTH_REASONS else "stop"

    def body(self, generation: Generation) -> dict:
        new_tokens = generation.stats.new_tokens
        return {**self._chunk(generation.text, self.finish_reason(generation)),
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": new_tokens,
                          "total_tokens": self.prompt_tokens + new_tokens}}

    async def events(self, request: Request) -> AsyncIterator[str]:
        watcher = asyncio.ensure_future(self._cancel_when_gone(request))
        try:
            async for piece in self.call.pieces():
                yield event(self._chunk(piece, None))
        finally:
            watcher.cancel()
        generation = self.call.response()
        if generation is not None:
            yield event(self._chunk("", self.finish_reason(generation)))
        yield event("[DONE]")

    async def _cancel_when_gone(self, request: Request) -> None:
        # A client cancels by closing the stream. Writing a piece would notice, but none is written during a
        # long prefill, and the one worker would go on computing a prompt nobody waits for: poll instead.
        while not await request.is_disconnected():
            await asyncio.sleep(self.state.settings.disconnect_poll_s)
        self.call.cancel()


@router.post("/completions", summary="Raw completion of a whole prompt (OpenAI format; for fim --server)")
async def completions(body: EngineCompletionRequest, request: Request, state: State):
    job = EngineCompletion(state, body)
    job.call.submit()
    if body.stream:
        return stream(lambda: job.events(request))
    poll = state.settings.disconnect_poll_s
    while not await job.call.wait(poll):
        if await request.is_disconnected():
            job.call.cancel()
            raise ApiError(CLIENT_GONE, "client disconnected; completion cancelled")
    generation = job.call.response()
    if generation is None:
        raise ApiError(CLIENT_GONE, "completion cancelled")
    return job.body(generation)


@router.get("/models", summary="The model this server runs, with its context (OpenAI format, vLLM's max_model_len)")
async def models(state: State) -> dict:
    engine = state.service.engine
    entry = {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "codegemma"}
    if engine is not None:
        entry["max_model_len"] = engine.max_seq_len
    return {"object": "list", "data": [entry]}
