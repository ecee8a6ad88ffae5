"""OpenAI-style legacy completions for clients such as Continue, under /openai/v1/.

Tabby owns /v1/completions, so the OpenAI layout lives under its own prefix: a client's base URL is
`http://HOST:PORT/openai/v1`, and it posts to `/openai/v1/completions` with `prompt` (text before the
cursor) and `suffix` (text after it), optionally streaming. A prompt written in a FIM template (Continue
renders one for its autocomplete, picked by model name: CodeGemma/Qwen, StarCoder, CodeLlama, DeepSeek,
Codestral; see `fim.http.templates`) is split back into prefix and suffix. `max_tokens` above the server's
limit is capped to it (Continue asks for its model's whole max_tokens); `n` asks for several completions.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fim.http import fields
from fim.http.errors import ApiError
from fim.http.runner import MAX_COMPLETIONS, Completion, CompletionGroup, Finished, variants
from fim.http.sse import event, stream, unsent
from fim.http.state import AppState, State
from fim.http.templates import header_path, split_prompt
from fim.request import CompletionOptions, CompletionRequest

router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

CURRENT_FILE = "untitled"
_LENGTH_REASONS = frozenset({"max_tokens", "context"})


class OpenAICompletionRequest(BaseModel):
    model: str | None = None
    prompt: fields.Text | list[fields.Text] = Field(..., description="text before the cursor (one prompt)")
    suffix: fields.Text | None = Field(None, description="text after the cursor")
    max_tokens: int | None = None
    temperature: fields.FiniteFloat | None = None
    top_p: fields.TopP | None = None
    n: int = Field(1, ge=1, le=MAX_COMPLETIONS, description="completions to generate, each a choice")
    stream: bool = False
    stop: fields.Text | list[fields.Text] | None = None
    seed: fields.Seed | None = None
    echo: bool = False
    user: str | None = None
    codegemma: fields.Extension | None = Field(None, description="codegemma's own fields (reranking)")


class OpenAICompletion:
    def __init__(self, state: AppState, body: OpenAICompletionRequest) -> None:
        if body.echo:
            raise ApiError(422, "echo is not supported: the answer is only the completion")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(422, f"prompt must be one string (batches are not supported), got {len(prompts)}")
        prefix, suffix, others, path = prompts[0], body.suffix, (), None
        if suffix is None:
            split = split_prompt(prefix)
            if split is None:
                suffix = ""
            else:
                prefix, suffix, others, path = split.prefix, split.suffix, split.other_files, split.path
        if body.max_tokens is not None and body.max_tokens < 1:
            raise ApiError(422, f"max_tokens must be at least 1, got {body.max_tokens}")
        max_tokens = state.new_tokens(body.max_tokens if body.max_tokens is not None else -1)
        options = CompletionOptions(
            max_tokens=max_tokens, temperature=fields.temperature(body.temperature or 0.0),
            top_p=fields.top_p(body.top_p or 1.0), seed=fields.seed(body.seed), stop=fields.stop_strings(body.stop),
            **fields.rerank(body.codegemma))
        self.state = state
        self.model = body.model or state.model_name
        self.id = f"cmpl-{uuid.uuid4()}"
        self.created = int(time.time())
        self.request = CompletionRequest(path=path or header_path(prefix) or CURRENT_FILE, text=prefix + suffix,
                                         cursor=len(prefix), other_files=others, options=options, cache_key="openai")
        self.group = CompletionGroup([Completion(state, r, "/openai/v1/completions", stream=body.stream)
                                      for r in variants(self.request, body.n)])

    def _chunk(self, index: int, text: str, finish_reason: str | None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}

    @staticmethod
    def finish_reason(finished: Finished) -> str:
        return "length" if finished.response.stop_reason in _LENGTH_REASONS else "stop"

    def body(self, results: list[Finished]) -> dict:
        prompt_tokens = results[0].stats.prompt_tokens
        new_tokens = sum(f.stats.new_tokens for f in results)
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": f.response.text, "index": i, "logprobs": None,
                             "finish_reason": self.finish_reason(f)} for i, f in enumerate(results)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                          "total_tokens": prompt_tokens + new_tokens}}

    async def events(self) -> AsyncIterator[str]:
        for index in range(len(self.group.members)):
            completion = self.group.started(index)
            sent = ""
            async for piece in completion.pieces():
                sent += piece
                yield event(self._chunk(index, piece, None))
            finished = completion.finished()
            yield event(self._chunk(index, unsent(finished.response.text, sent), self.finish_reason(finished)))
        yield event("[DONE]")


@router.post("/completions", summary="Legacy completions with prompt and suffix (OpenAI format)")
async def completions(body: OpenAICompletionRequest, request: Request, state: State):
    job = OpenAICompletion(state, body)
    job.group.submit()
    if body.stream:
        return stream(job.events)
    return job.body(await job.group.results(request))


@router.get("/models", summary="The one model this server serves (OpenAI format)")
async def models(state: State) -> dict:
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": int(state.started),
                                        "owned_by": "codegemma"}]}
