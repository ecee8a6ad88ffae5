"""llama.cpp server compatibility: POST /infill and GET /health, as llama.vim and llama.vscode use them.

Field names, defaults and response keys follow llama.cpp's server so that those plugins work unchanged:
the text before the cursor is `input_prefix` + `prompt` (clients keep the big prefix separate so it stays
cacheable), `input_extra` chunks become other-file context, `response_fields` picks response keys by path
("timings/prompt_n" becomes a top-level key of that name), and `stream` switches to server-sent events.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from codegemma import GenStats

from fim.http import fields
from fim.http.errors import error_response
from fim.http.runner import Completion, Finished
from fim.http.sse import event, stream, unsent
from fim.http.state import AppState, State
from fim.request import CompletionOptions, CompletionRequest, FileContext

router = APIRouter(tags=["llama.cpp"])

CURRENT_FILE = "untitled"  # /infill does not name the file being edited
CACHE_SLOT = "llama.cpp/infill"

# engine / fim stop reasons -> llama.cpp's stop_type
_STOP_TYPES = {"eos": "eos", "stop_token": "eos", "block_end": "eos", "stop_string": "word",
               "max_tokens": "limit", "context": "limit", "deadline": "limit", "cancelled": "none"}


class ExtraChunk(BaseModel):
    filename: fields.Text = ""
    text: fields.Text = ""


class InfillRequest(BaseModel):
    input_prefix: fields.Text = ""
    input_suffix: fields.Text = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list)
    prompt: fields.Text = Field("", description="text after input_prefix, right before the cursor")
    n_predict: int = Field(-1, description="tokens to generate; -1 = the server default; 0 = only warm the cache")
    temperature: fields.FiniteFloat = Field(0.0, description="0 or less = greedy")
    top_k: int = Field(40, description="0 or less = off")
    top_p: fields.TopP = 0.95
    seed: fields.Seed = -1
    stop: list[fields.Text] = Field(default_factory=list)
    stream: bool = False
    cache_prompt: bool = True
    t_max_predict_ms: fields.TimeBudgetMs = 0
    n_indent: int = Field(0, description="stop at a line indented less than this many whitespace characters")
    response_fields: list[str] = Field(default_factory=list)


def dedent_cut(text: str, n_indent: int) -> int | None:
    """Where to cut `text` under llama.cpp's n_indent rule: the newline before the first later line that
    has content and fewer than n_indent leading whitespace characters; None when no line breaks it."""
    if n_indent <= 0:
        return None
    start = text.find("\n")
    while start >= 0:
        end = text.find("\n", start + 1)
        line = text[start + 1:] if end < 0 else text[start + 1:end]
        body = line.lstrip(" \t")
        # An unfinished last line without content yet cannot be judged.
        if body and len(line) - len(body) < n_indent:
            return start
        start = end
    return None


def select_fields(body: dict, paths: list[str]) -> dict:
    """llama.cpp's response_fields: each path "a/b" found in `body` becomes a top-level key "a/b"."""
    if not paths:
        return body
    picked = {}
    for path in paths:
        node = body
        for part in path.split("/"):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            picked[path] = node
    return picked


def _per(n: float, ms: float) -> tuple[float, float]:
    """(ms per token, tokens per second), 0 where undefined."""
    return (ms / n if n else 0.0), (1000.0 * n / ms if ms else 0.0)


def timings(stats: GenStats) -> dict:
    prompt_n = stats.prompt_tokens - stats.cached_tokens
    prompt_ms = 1000.0 * stats.prefill_s
    predicted_n = stats.new_tokens
    predicted_ms = 1000.0 * stats.decode_s
    prompt_per_token_ms, prompt_per_second = _per(prompt_n, prompt_ms)
    predicted_per_token_ms, predicted_per_second = _per(predicted_n, predicted_ms)
    return {"prompt_n": prompt_n, "prompt_ms": prompt_ms, "prompt_per_token_ms": prompt_per_token_ms,
            "prompt_per_second": prompt_per_second, "predicted_n": predicted_n, "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_per_token_ms, "predicted_per_second": predicted_per_second,
            "draft_n": stats.drafted, "draft_n_accepted": stats.accepted}


class Infill:
    """One /infill request: its fim request, its generation and its llama.cpp-shaped answer."""

    def __init__(self, state: AppState, body: InfillRequest) -> None:
        self.state = state
        self.body = body
        self.n_predict = state.check_new_tokens("n_predict", body.n_predict)
        before = body.input_prefix + body.prompt
        options = CompletionOptions(
            # n_predict 0 is a cache warm-up (llama.vim sends them): prefill and one token, shown as none.
            max_tokens=max(self.n_predict, 1), temperature=fields.temperature(body.temperature),
            top_k=fields.top_k(body.top_k), top_p=fields.top_p(body.top_p), seed=fields.seed(body.seed),
            time_budget_ms=fields.time_budget(body.t_max_predict_ms), stop=fields.stop_strings(body.stop),
            reuse_prompt=body.cache_prompt)
        self.request = CompletionRequest(
            path=CURRENT_FILE, text=before + body.input_suffix, cursor=len(before),
            other_files=tuple(FileContext(c.filename or f"extra-{i}", c.text)
                              for i, c in enumerate(body.input_extra) if c.text),
            options=options, cache_key=CACHE_SLOT)
        self.completion = Completion(state, self.request, "/infill", stream=body.stream,
                                     watch=self._dedented if body.n_indent > 0 else None, watch_reason="n_indent")

    def _dedented(self, raw: str) -> bool:
        return dedent_cut(raw, self.body.n_indent) is not None

    def content(self, finished: Finished) -> tuple[str, str]:
        """(content, stop_type) of a finished completion."""
        text = finished.response.text
        stop_type = _STOP_TYPES.get(finished.response.stop_reason, "eos")
        cut = dedent_cut(text, self.body.n_indent)
        if cut is not None:
            text, stop_type = text[:cut], "limit"
        if self.n_predict == 0:
            text = ""
        return text, stop_type

    def truncated(self, finished: Finished) -> bool:
        """True when the prompt budget cut the text before or after the cursor (llama.cpp: context full)."""
        first, end = finished.response.window
        return first > 0 or end < len(self.request.text)

    def final(self, finished: Finished, content: str, stop_type: str) -> dict:
        stats = finished.stats
        b = self.body
        return {
            "index": 0,
            "content": content,
            "id_slot": 0,
            "stop": True,
            "model": self.state.model_name,
            "tokens_predicted": stats.new_tokens if self.n_predict else 0,
            "tokens_evaluated": stats.prompt_tokens,
            "tokens_cached": stats.cached_tokens,
            "truncated": self.truncated(finished),
            "stop_type": stop_type,
            "has_new_line": "\n" in content,
            "generation_settings": {
                "n_ctx": self.state.service.engine.max_seq_len, "n_predict": self.n_predict,
                "model": self.state.model_name, "temperature": self.request.options.temperature,
                "top_k": self.request.options.top_k, "top_p": self.request.options.top_p,
                "seed": self.request.options.seed, "stop": list(self.request.options.stop),
                "n_indent": b.n_indent, "t_max_predict_ms": b.t_max_predict_ms, "cache_prompt": b.cache_prompt,
                "speculative": self.request.options.speculative,
            },
            "timings": timings(stats),
        }

    async def events(self) -> AsyncIterator[str]:
        sent = ""
        async for piece in self.completion.pieces():
            # Stream only what the n_indent rule keeps; the worker stops on the step that broke it.
            allowed = sent + piece
            cut = dedent_cut(allowed, self.body.n_indent)
            if cut is not None:
                allowed = allowed[:cut]
            if len(allowed) > len(sent) and self.n_predict:
                yield event({"index": 0, "content": allowed[len(sent):], "stop": False, "id_slot": 0})
                sent = allowed
        finished = self.completion.finished()
        content, stop_type = self.content(finished)
        yield event(select_fields(self.final(finished, unsent(content, sent), stop_type), self.body.response_fields))


@router.post("/infill", summary="Fill in the middle (llama.cpp server format)")
async def infill(body: InfillRequest, request: Request, state: State):
    job = Infill(state, body)
    job.completion.submit()
    if body.stream:
        return stream(job.events)
    finished = await job.completion.result(request)
    content, stop_type = job.content(finished)
    return select_fields(job.final(finished, content, stop_type), body.response_fields)


@router.get("/health", summary="Readiness (llama.cpp server format)")
async def health(state: State, request: Request) -> JSONResponse:
    if state.service.ready:
        return JSONResponse({"status": "ok"})
    if state.service.error is not None:
        return error_response(503, state.load_failure(request))
    return error_response(503, "Loading model", {"Retry-After": str(state.settings.retry_after_s)})

