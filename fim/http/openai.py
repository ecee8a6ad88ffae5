"""OpenAI-style legacy completions for clients such as Continue, under /openai/v1/.

Tabby owns /v1/completions, so the OpenAI layout lives under its own prefix: a client's base URL is
`http://HOST:PORT/openai/v1`, and it posts to `/openai/v1/completions` with `prompt` (text before the
cursor) and `suffix` (text after it), optionally streaming. A prompt written in CodeGemma's FIM template
(`<|fim_prefix|>...<|fim_suffix|>...<|fim_middle|>`, what Continue sends for codegemma models) is split
back into prefix and suffix.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fim.http import fields
from fim.http.errors import ApiError
from fim.http.runner import Completion, Finished
from fim.http.sse import event, stream, unsent
from fim.http.state import AppState, State
from fim.request import CompletionOptions, CompletionRequest

router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

CURRENT_FILE = "untitled"
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
_LENGTH_REASONS = frozenset({"max_tokens", "context"})


class OpenAICompletionRequest(BaseModel):
    model: str | None = None
    prompt: fields.Text | list[fields.Text] = Field(..., description="text before the cursor (one prompt)")
    suffix: fields.Text | None = Field(None, description="text after the cursor")
    max_tokens: int | None = None
    temperature: fields.FiniteFloat | None = None
    top_p: fields.TopP | None = None
    n: int = 1
    stream: bool = False
    stop: fields.Text | list[fields.Text] | None = None
    seed: fields.Seed | None = None
    echo: bool = False
    user: str | None = None


def split_fim_prompt(prompt: str) -> tuple[str, str] | None:
    """(prefix, suffix) of a prompt in CodeGemma's FIM template; None when it is not one."""
    head, sep, rest = prompt.partition(FIM_PREFIX)
    if not sep or head.strip():
        return None
    prefix, sep, rest = rest.partition(FIM_SUFFIX)
    suffix, sep2, tail = rest.partition(FIM_MIDDLE)
    if not sep or not sep2 or tail:
        return None
    return prefix, suffix


class OpenAICompletion:
    def __init__(self, state: AppState, body: OpenAICompletionRequest) -> None:
        if body.n != 1:
            raise ApiError(422, f"n must be 1 (this server returns one completion per request), got {body.n}")
        if body.echo:
            raise ApiError(422, "echo is not supported: the answer is only the completion")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(422, f"prompt must be one string (batches are not supported), got {len(prompts)}")
        prefix, suffix = prompts[0], body.suffix
        if suffix is None:
            prefix, suffix = split_fim_prompt(prefix) or (prefix, "")
        max_tokens = state.check_new_tokens(
            "max_tokens", body.max_tokens if body.max_tokens is not None else state.settings.default_new_tokens)
        if max_tokens == 0:
            raise ApiError(422, "max_tokens must be at least 1")
        options = CompletionOptions(
            max_tokens=max_tokens, temperature=fields.temperature(body.temperature or 0.0),
            top_p=fields.top_p(body.top_p or 1.0), seed=fields.seed(body.seed), stop=fields.stop_strings(body.stop))
        self.state = state
        self.model = body.model or state.model_name
        self.id = f"cmpl-{uuid.uuid4()}"
        self.created = int(time.time())
        self.request = CompletionRequest(path=CURRENT_FILE, text=prefix + suffix, cursor=len(prefix),
                                         options=options, cache_key="openai")
        self.completion = Completion(state, self.request, "/openai/v1/completions", stream=body.stream)

    def _chunk(self, text: str, finish_reason: str | None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}

    @staticmethod
    def finish_reason(finished: Finished) -> str:
        return "length" if finished.response.stop_reason in _LENGTH_REASONS else "stop"

    def body(self, finished: Finished) -> dict:
        text = finished.response.text
        prompt_tokens, new_tokens = finished.stats.prompt_tokens, finished.stats.new_tokens
        return {**self._chunk(text, self.finish_reason(finished)),
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                          "total_tokens": prompt_tokens + new_tokens}}

    async def events(self) -> AsyncIterator[str]:
        sent = ""
        async for piece in self.completion.pieces():
            sent += piece
            yield event(self._chunk(piece, None))
        finished = self.completion.finished()
        text = finished.response.text
        yield event(self._chunk(unsent(text, sent), self.finish_reason(finished)))
        yield event("[DONE]")


@router.post("/completions", summary="Legacy completions with prompt and suffix (OpenAI format)")
async def completions(body: OpenAICompletionRequest, request: Request, state: State):
    job = OpenAICompletion(state, body)
    job.completion.submit()
    if body.stream:
        return stream(job.events)
    return job.body(await job.completion.result(request))


@router.get("/models", summary="The one model this server serves (OpenAI format)")
async def models(state: State) -> dict:
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": int(state.started),
                                        "owned_by": "codegemma"}]}
