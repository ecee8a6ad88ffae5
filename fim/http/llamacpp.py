"""llama.cpp server compatibility: POST /infill, POST /completion and GET /health, as llama.vim, llama.vscode and
Continue's llama.cpp provider use them.

Field names, defaults and response keys follow llama.cpp's server so that those plugins work unchanged:
the text before the cursor is `input_prefix` + `prompt` (clients keep the big prefix separate so it stays
cacheable), `input_extra` chunks become other-file context, `response_fields` picks response keys by path
("timings/prompt_n" becomes a top-level key of that name), and `stream` switches to server-sent events.
`/completion` takes one `prompt`; one written in a FIM template (what Continue sends) is split back into
prefix and suffix (`fim.http.templates`), anything else is completed left to right.

Time limits as llama.cpp defines them: `t_max_predict_ms` is counted from the first generated token and ends
generation only after a newline (so a suggestion is whole lines); `t_max_prompt_ms` is accepted and reported
but, as in llama.cpp, not enforced (llama.vim's cache warm-ups send 1 ms and must still fill the cache).
`n_cmpl` asks for several completions: the answer is then a list, one object per completion with its
`index`. The current file's language comes from a `filename` field when the client sends one, else from the
files in `input_extra`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from codegemma import GenStats

from fim.http import fields
from fim.http.errors import error_response
from fim.http.runner import MAX_COMPLETIONS, Completion, CompletionGroup, Finished, variants
from fim.http.sse import event, stream, unsent
from fim.http.state import AppState, State
from fim.http.templates import split_prompt
from fim.languages import TEXT, language_from_path
from fim.request import CompletionOptions, CompletionRequest, FileContext

router = APIRouter(tags=["llama.cpp"])

CURRENT_FILE = "untitled"  # when the request does not name the file being edited

# engine / fim stop reasons -> llama.cpp's stop_type
_STOP_TYPES = {"eos": "eos", "stop_token": "eos", "block_end": "eos", "stop_string": "word",
               "max_tokens": "limit", "context": "limit", "deadline": "limit", "cancelled": "none"}


class ExtraChunk(BaseModel):
    filename: fields.Text = ""
    text: fields.Text = ""


class LlamaOptions(BaseModel):
    """The generation fields /infill and /completion share."""

    n_predict: int = Field(-1, description="tokens to generate; -1 = the server default; 0 = only warm the cache; "
                                           "more than the server's --max-tokens is capped to it")
    temperature: fields.FiniteFloat = Field(0.0, description="0 or less = greedy")
    top_k: int = Field(40, description="0 or less = off")
    top_p: fields.TopP = 0.95
    seed: fields.Seed = -1
    stop: list[fields.Text] = Field(default_factory=list)
    stream: bool = False
    cache_prompt: bool = True
    t_max_predict_ms: fields.TimeBudgetMs = Field(
        0, description="ms counted from the first generated token; then generation ends after the next newline")
    t_max_prompt_ms: fields.TimeBudgetMs = Field(0, description="accepted and reported; not enforced (as llama.cpp)")
    n_indent: int = Field(0, description="stop at a line indented less than this many whitespace characters")
    n_cmpl: int = Field(1, ge=1, le=MAX_COMPLETIONS, description="completions to generate; more than 1 answers a list")
    filename: fields.Text = Field("", description="the file being edited (sets the language); not sent by llama.cpp "
                                                  "clients, which name other files in input_extra")
    response_fields: list[str] = Field(default_factory=list)
    codegemma: fields.Extension | None = Field(None, description="codegemma's own fields (reranking)")


class InfillRequest(LlamaOptions):
    input_prefix: fields.Text = ""
    input_suffix: fields.Text = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list)
    prompt: fields.Text = Field("", description="text after input_prefix, right before the cursor")


class CompletionRouteRequest(LlamaOptions):
    prompt: fields.Text = Field(..., description="text to continue, or a FIM prompt in a known template")
    max_tokens: int | None = Field(None, description="alias of n_predict (OpenAI name)")


def context_language(files: tuple[FileContext, ...]) -> str | None:
    """The language most of the context files are in (llama.vim's ring chunks come mostly from the buffer
    being edited and its neighbours), or None when none has a known one."""
    languages = Counter(lang for f in files if (lang := language_from_path(f.path)) != TEXT)
    return languages.most_common(1)[0][0] if languages else None


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


class LlamaJob:
    """One /infill or /completion request: its fim requests (n_cmpl of them), its generations and its
    llama.cpp-shaped answer."""

    def __init__(self, state: AppState, body: LlamaOptions, route: str, prefix: str, suffix: str,
                 other_files: tuple[FileContext, ...], path: str | None) -> None:
        self.state = state
        self.body = body
        requested = body.n_predict
        if isinstance(body, CompletionRouteRequest) and body.max_tokens is not None and requested < 0:
            requested = body.max_tokens
        self.n_predict = state.new_tokens(requested)
        options = CompletionOptions(
            # n_predict 0 is a cache warm-up (llama.vim sends them): prefill and one token, shown as none.
            max_tokens=max(self.n_predict, 1), temperature=fields.temperature(body.temperature),
            top_k=fields.top_k(body.top_k), top_p=fields.top_p(body.top_p), seed=fields.seed(body.seed),
            predict_budget_ms=fields.time_budget(body.t_max_predict_ms), stop=fields.stop_strings(body.stop),
            reuse_prompt=body.cache_prompt, **fields.rerank(body.codegemma))
        path = body.filename or path
        self.request = CompletionRequest(
            path=path or CURRENT_FILE, text=prefix + suffix, cursor=len(prefix),
            language=None if path else context_language(other_files), other_files=other_files,
            options=options, cache_key=f"llama.cpp{route}")
        watch = self._dedented if body.n_indent > 0 else None
        count = body.n_cmpl if self.n_predict else 1
        self.group = CompletionGroup([
            Completion(state, r, route, stream=body.stream, watch=watch, watch_reason="n_indent")
            for r in variants(self.request, count)])

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

    def final(self, index: int, finished: Finished) -> dict:
        content, stop_type = self.content(finished)
        return self.final_body(index, finished, content, stop_type)

    def final_body(self, index: int, finished: Finished, content: str, stop_type: str) -> dict:
        stats = finished.stats
        b = self.body
        options = self.group.members[index].request.options
        answer = {
            "index": index,
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
                "model": self.state.model_name, "temperature": options.temperature,
                "top_k": options.top_k, "top_p": options.top_p,
                "seed": options.seed, "stop": list(options.stop),
                "n_indent": b.n_indent, "t_max_predict_ms": b.t_max_predict_ms,
                "t_max_prompt_ms": b.t_max_prompt_ms, "n_cmpl": len(self.group.members),
                "cache_prompt": b.cache_prompt, "speculative": options.speculative,
                "candidates": options.candidates, "rerank_budget_ms": options.rerank_budget_ms,
                "rerank_lines": options.rerank_lines,
                "language": finished.response.debug.get("language"),
            },
            "timings": timings(stats),
        }
        return select_fields(answer, b.response_fields)

    async def answer(self, http_request: Request) -> dict | list[dict]:
        results = await self.group.results(http_request)
        answers = [self.final(i, finished) for i, finished in enumerate(results)]
        return answers[0] if len(answers) == 1 else answers

    async def events(self) -> AsyncIterator[str]:
        for index in range(len(self.group.members)):
            completion = self.group.started(index)
            sent = ""
            async for piece in completion.pieces():
                # Stream only what the n_indent rule keeps; the worker stops on the step that broke it.
                allowed = sent + piece
                cut = dedent_cut(allowed, self.body.n_indent)
                if cut is not None:
                    allowed = allowed[:cut]
                if len(allowed) > len(sent) and self.n_predict:
                    yield event({"index": index, "content": allowed[len(sent):], "stop": False, "id_slot": 0})
                    sent = allowed
            finished = completion.finished()
            content, stop_type = self.content(finished)
            yield event(self.final_body(index, finished, unsent(content, sent), stop_type))


async def _serve(job: LlamaJob, request: Request):
    job.group.submit()
    if job.body.stream:
        return stream(job.events)
    return await job.answer(request)


@router.post("/infill", summary="Fill in the middle (llama.cpp server format)")
async def infill(body: InfillRequest, request: Request, state: State):
    extra = tuple(FileContext(c.filename or f"extra-{i}", c.text) for i, c in enumerate(body.input_extra) if c.text)
    job = LlamaJob(state, body, "/infill", body.input_prefix + body.prompt, body.input_suffix, extra, None)
    return await _serve(job, request)


@router.post("/completion", summary="Complete a prompt, plain or in a FIM template (llama.cpp server format)")
@router.post("/completions", include_in_schema=False)
async def completion(body: CompletionRouteRequest, request: Request, state: State):
    split = split_prompt(body.prompt)
    if split is None:
        job = LlamaJob(state, body, "/completion", body.prompt, "", (), None)
    else:
        job = LlamaJob(state, body, "/completion", split.prefix, split.suffix, split.other_files, split.path)
    return await _serve(job, request)


@router.get("/health", summary="Readiness (llama.cpp server format)")
async def health(state: State, request: Request) -> JSONResponse:
    if state.service.ready:
        return JSONResponse({"status": "ok"})
    if state.service.error is not None:
        return error_response(503, state.load_failure(request))
    return error_response(503, "Loading model", {"Retry-After": str(state.settings.retry_after_s)})

