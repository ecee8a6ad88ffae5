"""Request and response types of the completion service, and the position helpers that go with them.

Positions inside the service are character (code point) offsets into the text. Editors and shells speak
other units, so this module converts: 1-based line and column (as editors show them) and UTF-8 byte
offsets (as `wc -c` and `grep -bo` count), each with a clear error for a position that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegemma import GenStats

from fim.errors import BadRequestError

MODES = ("auto", "single", "multi")
MIN_PROMPT_BUDGET = 32
MAX_CANDIDATES = 16  # candidates for suffix-aware reranking (fim.rerank)


@dataclass(frozen=True)
class FileContext:
    """Another file the completion may draw context from (an open editor tab, a workspace file)."""

    path: str
    text: str


@dataclass(frozen=True)
class CompletionOptions:
    """How to complete: generation settings, line mode, time and prompt budgets."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    mode: str = "auto"  # "auto" | "single" | "multi"
    time_budget_ms: int | None = None  # wall-clock limit from the start of the request (prefill included)
    # llama.cpp's t_max_predict_ms: counted from the first generated text; once spent, generation ends with
    # the next piece that contains a newline, so a suggestion is whole lines rather than a cut-off one
    predict_budget_ms: int | None = None
    stop: tuple[str, ...] = ()
    use_context: bool = True  # multi-file context on/off
    speculative: bool | None = None  # None: the engine's choice (on where it pays, codegemma.engine)
    reuse_prompt: bool = True
    prompt_budget: int | None = None  # total prompt tokens; None = the default budget
    # suffix-aware reranking (fim.rerank): up to this many candidates, within rerank_budget_ms of the request
    candidates: int = 1
    rerank_budget_ms: int | None = None  # None = no limit: all `candidates` are made
    rerank_lines: bool = False  # also rerank each candidate cut at its line ends (scoring only, no generation)


@dataclass(frozen=True)
class CompletionRequest:
    """Complete `text` at `cursor` (a character offset) in the file `path`."""

    path: str
    text: str
    cursor: int
    language: str | None = None  # None = from the extension
    other_files: tuple[FileContext, ...] = ()
    options: CompletionOptions = field(default_factory=CompletionOptions)
    cache_key: str | None = None  # defaults to path


@dataclass(frozen=True)
class CompletionResponse:
    """The text to insert at the request's cursor, how the engine produced it, and why it came out this way.

    `stats` and `window` are what front ends report (token counts, timings, a truncated prompt); `debug` is
    the full record for people reading it (`fim --json`), not a contract."""

    text: str
    stop_reason: str  # eos | stop_token | stop_string | max_tokens | cancelled | deadline | context | block_end
    stats: GenStats  # the engine's generation statistics
    elapsed_s: float  # the service's own time on the request: context, prompt, engine, post-processing
    window: tuple[int, int]  # character range of the text the prompt kept: [first prefix char, suffix end)
    debug: dict


def validate_request(request: CompletionRequest) -> None:
    """Raise BadRequestError (one line) for a request that cannot be served as given."""
    if not isinstance(request.text, str):
        raise BadRequestError("text must be a string")
    if not 0 <= request.cursor <= len(request.text):
        raise BadRequestError(f"cursor {request.cursor} is outside the text (0..{len(request.text)} characters)")
    options = request.options
    if options.max_tokens < 1:
        raise BadRequestError(f"max_tokens must be at least 1, got {options.max_tokens}")
    if options.temperature < 0:
        raise BadRequestError(f"temperature must not be negative, got {options.temperature}")
    if not 0 < options.top_p <= 1:
        raise BadRequestError(f"top_p must be in (0, 1], got {options.top_p}")
    if options.top_k < 0:
        raise BadRequestError(f"top_k must not be negative, got {options.top_k}")
    if options.mode not in MODES:
        raise BadRequestError(f"mode must be one of {', '.join(MODES)}, got {options.mode!r}")
    if options.time_budget_ms is not None and options.time_budget_ms <= 0:
        raise BadRequestError(f"time_budget_ms must be positive, got {options.time_budget_ms}")
    if options.predict_budget_ms is not None and options.predict_budget_ms <= 0:
        raise BadRequestError(f"predict_budget_ms must be positive, got {options.predict_budget_ms}")
    if options.prompt_budget is not None and options.prompt_budget < MIN_PROMPT_BUDGET:
        raise BadRequestError(f"prompt_budget must be at least {MIN_PROMPT_BUDGET} tokens, got {options.prompt_budget}")
    if not 1 <= options.candidates <= MAX_CANDIDATES:
        raise BadRequestError(f"candidates must be from 1 to {MAX_CANDIDATES}, got {options.candidates}")
    if options.rerank_budget_ms is not None and options.rerank_budget_ms <= 0:
        raise BadRequestError(f"rerank_budget_ms must be positive, got {options.rerank_budget_ms}")
    if any(not s for s in options.stop):
        raise BadRequestError("stop strings must not be empty")


def offset_from_line_col(text: str, line: int, col: int) -> int:
    """Character offset of a 1-based line and 1-based column (column len(line)+1 is the end of the line)."""
    if line < 1 or col < 1:
        raise BadRequestError(f"line and column are 1-based, got {line}:{col}")
    lines = text.split("\n")
    if line > len(lines):
        raise BadRequestError(f"line {line} is past the end of the file ({len(lines)} lines)")
    length = len(lines[line - 1])
    if col > length + 1:
        raise BadRequestError(f"column {col} is past the end of line {line} ({length} characters)")
    return sum(len(s) + 1 for s in lines[: line - 1]) + col - 1


def line_col_from_offset(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    if not 0 <= offset <= len(text):
        raise BadRequestError(f"offset {offset} is outside the text (0..{len(text)} characters)")
    before = text[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


def char_offset_from_byte_offset(data: bytes, byte_offset: int) -> int:
    """Character offset of a UTF-8 byte offset; errors for an offset past the end or inside a character."""
    if byte_offset < 0:
        raise BadRequestError(f"offset must not be negative, got {byte_offset}")
    if byte_offset > len(data):
        raise BadRequestError(f"offset {byte_offset} is past the end of the file ({len(data)} bytes)")
    # UTF-8 continuation bytes are 10xxxxxx: an offset pointing at one splits a character.
    if byte_offset < len(data) and data[byte_offset] & 0xC0 == 0x80:
        raise BadRequestError(f"offset {byte_offset} is inside a multi-byte UTF-8 character")
    return len(data[:byte_offset].decode("utf-8"))


def byte_offset_from_char_offset(text: str, offset: int) -> int:
    """UTF-8 byte offset of a character offset."""
    return len(text[:offset].encode("utf-8"))
