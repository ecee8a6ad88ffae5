"""complete(): one completion request through context, prompt, engine and post-processing.

Every decision lands in the response's debug record, so a user can see why the completion is what it is.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace

from codegemma import EngineProtocol, GenerateOptions, ScoringEngine

from fim.context import debug_snippets, rank_snippets
from fim.engine import engine_errors
from fim.errors import BadRequestError
from fim.languages import normalize_language
from fim.postprocess import BlockEndWatcher, decide_mode, postprocess
from fim.prompt import DEFAULT_PROMPT_BUDGET, SUFFIX_SHARE, Prompt, build_prompt, fit_suffix
from fim.rerank import rerank
from fim.request import CompletionOptions, CompletionRequest, CompletionResponse, validate_request


def prompt_budget(engine: EngineProtocol, request: CompletionRequest) -> int:
    """Prompt tokens for this request: the option or the default, within the engine's context."""
    options = request.options
    budget = options.prompt_budget or DEFAULT_PROMPT_BUDGET
    room = engine.max_seq_len - options.max_tokens
    if room < 1:
        raise BadRequestError(f"max_tokens {options.max_tokens} leaves no room for a prompt "
                              f"(the model's context is {engine.max_seq_len} tokens)")
    return min(budget, room)


def prepare(engine: EngineProtocol, request: CompletionRequest) -> tuple[Prompt, str, bool, dict]:
    """Validate, pick the line mode, rank context and build the prompt: (prompt, language, multiline, debug)."""
    validate_request(request)
    language = normalize_language(request.language, request.path)
    multiline, mode_reason = decide_mode(request.text, request.cursor, language, request.options.mode)
    started = time.perf_counter()
    if request.options.use_context and request.other_files:
        snippets, summary = rank_snippets(request.path, request.text, request.cursor, language, request.other_files)
    else:
        snippets, summary = [], {"files": len(request.other_files), "candidates": 0,
                                 "disabled": not request.options.use_context}
    context_s = time.perf_counter() - started
    with engine_errors():
        prompt = build_prompt(engine.tokenizer, engine.supports_fim, request.path, request.text, request.cursor,
                              language, snippets, prompt_budget(engine, request))
    shown, left_out = debug_snippets(prompt.snippets)
    debug = {
        "language": language,
        "mode": {"multiline": multiline, "reason": mode_reason},
        "prompt": {"format": "fim" if prompt.fim else "left-to-right", "budget": prompt.budget,
                   "tokens": prompt.token_counts(), "prefix_chars": [prompt.prefix_start, request.cursor],
                   "suffix_chars": [request.cursor, prompt.suffix_end]},
        "context": {**summary, "snippets": shown, "not_shown": left_out},
        "timings": {"context_s": round(context_s, 6), "prompt_s": round(time.perf_counter() - started - context_s, 6)},
    }
    return prompt, language, multiline, debug


class NewlineDeadline:
    """llama.cpp's t_max_predict_ms: the time is counted from the first generated text, and once it is spent
    generation ends with the next piece that contains a newline, never in the middle of a line."""

    def __init__(self, budget_ms: int | None) -> None:
        self.budget_s = budget_ms / 1000 if budget_ms else None
        self.started: float | None = None
        self.ended = False

    def feed(self, piece: str) -> None:
        if self.budget_s is None:
            return
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if "\n" in piece and now - self.started > self.budget_s:
            self.ended = True


def complete(engine: EngineProtocol, request: CompletionRequest, *, should_stop: Callable[[], bool] | None = None,
             on_text: Callable[[str], None] | None = None) -> CompletionResponse:
    """Complete the request with the engine (one call at a time per engine).

    `on_text` receives the raw streamed text before post-processing; `should_stop` cancels (polled every
    decode step). Raises BadRequestError for an invalid request, EngineError when the engine refuses it.
    """
    started = time.perf_counter()
    prompt, language, multiline, debug = prepare(engine, request)
    if (request.options.candidates > 1 or request.options.rerank_lines) and isinstance(engine, ScoringEngine):
        # the chosen candidate is known only at the end: it is streamed then, as one piece
        def run_one(options: CompletionOptions) -> CompletionResponse:
            one = replace(request, options=options)
            return _complete_prepared(engine, one, prompt, language, multiline, copy.deepcopy(debug), started,
                                      should_stop, None)

        response = rerank(engine, prompt.ids, prompt.fim, request.text, request.cursor,
                          request.cache_key or request.path, request.options, run_one,
                          lambda: should_stop is not None and should_stop())
        if on_text is not None and response.debug.get("raw"):
            on_text(response.debug["raw"])
        return response
    return _complete_prepared(engine, request, prompt, language, multiline, debug, started, should_stop, on_text)


def _complete_prepared(engine: EngineProtocol, request: CompletionRequest, prompt: Prompt, language: str,
                       multiline: bool, debug: dict, started: float, should_stop: Callable[[], bool] | None,
                       on_text: Callable[[str], None] | None) -> CompletionResponse:
    """Generate and post-process one completion of a prepared request."""
    options = request.options
    watcher = BlockEndWatcher(request.text, request.cursor, language, multiline)
    line_deadline = NewlineDeadline(options.predict_budget_ms)

    def streamed(piece: str) -> None:
        watcher.feed(piece)
        line_deadline.feed(piece)
        if on_text is not None:
            on_text(piece)

    def cancelled() -> bool:
        return should_stop is not None and should_stop()

    def stop_now() -> bool:
        return watcher.ended or line_deadline.ended or cancelled()

    # Without FIM the suffix is not in the prompt, but the model often writes code it contains: let the
    # drafter copy from it.
    sources = [] if prompt.fim else [fit_suffix(engine.tokenizer, request.text, request.cursor,
                                                int(prompt.budget * SUFFIX_SHARE))[1]]
    generate_options = GenerateOptions(
        max_new_tokens=options.max_tokens, temperature=options.temperature, top_k=options.top_k,
        top_p=options.top_p, seed=options.seed, stop_strings=tuple(options.stop) + (() if multiline else ("\n",)),
        deadline=time.monotonic() + options.time_budget_ms / 1000 if options.time_budget_ms else None,
        speculative=options.speculative, cache_key=request.cache_key or request.path,
        reuse_prompt=options.reuse_prompt)
    with engine_errors():
        generation = engine.generate(prompt.ids, generate_options, on_text=streamed, should_stop=stop_now,
                                     draft_sources=sources)
    stop_reason = generation.stop_reason
    if stop_reason == "cancelled" and not cancelled():
        if watcher.ended:
            stop_reason = "block_end"
        elif line_deadline.ended:
            stop_reason = "deadline"
    post_started = time.perf_counter()
    text, steps = postprocess(generation.text, request.text, request.cursor, language, multiline)
    debug["raw"] = generation.text
    debug["postprocess"] = steps
    debug["stop_reason"] = stop_reason
    debug["engine"] = {"name": engine.name, **generation.stats.to_dict()}
    elapsed = time.perf_counter() - started
    debug["timings"]["postprocess_s"] = round(time.perf_counter() - post_started, 6)
    debug["timings"]["total_s"] = round(elapsed, 6)
    return CompletionResponse(text=text, stop_reason=stop_reason, stats=generation.stats, elapsed_s=elapsed,
                              window=(prompt.prefix_start, prompt.suffix_end), debug=debug)
