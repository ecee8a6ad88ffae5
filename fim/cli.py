"""The `fim` command: complete a file at a position and print only the completion.

    fim FILE --offset N              N: UTF-8 byte offset (as `wc -c`, `grep -bo` count)
    fim FILE --line L --col C        1-based line and 1-based column in characters, as editors show them
    fim - --offset N < file.py       read the file from stdin

Flags: --context FILE... (other files), --model PATH|PRESET, --server URL (a running `codegemma serve` or
another OpenAI-compatible engine instead of loading the model; --model then names its tokenizer), --max-tokens, --temperature,
--multiline/--single-line, --json (one object: text, range, debug), --show-prompt (on stderr).
With --json, `range` is where the text goes (the cursor, as an empty range) in the same unit as the input
position: bytes for --offset, characters otherwise (debug.char_range always has character offsets). Bad input: one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from codegemma import EngineProtocol

from fim.complete import complete, prepare
from fim.context import workspace_python_imports
from fim.engine import load_engine
from fim.errors import BadRequestError, FimError
from fim.languages import normalize_language
from fim.request import (CompletionOptions, CompletionRequest, FileContext, byte_offset_from_char_offset,
                         char_offset_from_byte_offset, offset_from_line_col, validate_request)

MAX_FILE_BYTES = 16 * 1024 * 1024  # larger files are almost certainly not source code
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and our exit status instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadRequestError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fim", description="Complete FILE at a position with a CodeGemma-family model; "
                                             "prints only the completion.")
    parser.add_argument("file", metavar="FILE", help="the file to complete, or - for stdin")
    parser.add_argument("--offset", type=int, help="cursor as a UTF-8 byte offset into FILE")
    parser.add_argument("--line", type=int, help="cursor line (1-based)")
    parser.add_argument("--col", type=int, help="cursor column (1-based, in characters)")
    parser.add_argument("--context", nargs="+", default=[], metavar="FILE", help="other files to draw context from")
    parser.add_argument("--no-context", action="store_true",
                        help="no multi-file context (also skips Python imports found next to FILE)")
    parser.add_argument("--language", help="override the language taken from FILE's extension")
    parser.add_argument("--path", help="file path to show the model (default: FILE, or stdin.txt for -)")
    parser.add_argument("--model", help="model: a checkpoint directory, a .gguf file or a preset name "
                                        "(default: the embedded Gemma 3 270M)")
    parser.add_argument("--server", metavar="URL",
                        help="complete on a running engine instead of loading the model: a `codegemma serve` "
                             "(http://HOST:PORT) or an OpenAI-compatible /v1/completions (vLLM, TGI, llama.cpp "
                             "server); --model then names its tokenizer. API key: $CODEGEMMA_ENGINE_API_KEY")
    parser.add_argument("--dtype", help="bf16 or fp32 (default: bf16 where the CPU supports it)")
    parser.add_argument("--int8", action="store_true", help="int8 weight-only quantisation")
    parser.add_argument("--adapter", help="FIM adapter: default (the one that ships, on the embedded model), on, off or an adapter file; also $CODEGEMMA_ADAPTER")
    parser.add_argument("--quant", choices=("int8", "q8_0", "q4"), help="weights quantized once and cached: int8, q8_0 or q4 (GGUF block formats on the native products)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--prompt-budget", type=int, help="prompt tokens (default 1024)")
    parser.add_argument("--time-budget-ms", type=int, help="stop generating after this many milliseconds")
    parser.add_argument("--candidates", type=int, default=1, metavar="N",
                        help="suffix-aware reranking: make up to N candidates and answer the one that makes the "
                        "code after the cursor most likely (1 = off; --json lists every candidate's scores)")
    parser.add_argument("--rerank-budget-ms", type=int, metavar="MS",
                        help="make another candidate only while the completion is expected within MS")
    parser.add_argument("--rerank-lines", action="store_true",
                        help="also rerank each candidate cut at its line ends (no extra generation; works with "
                        "one candidate too)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--multiline", dest="mode", action="store_const", const="multi")
    mode.add_argument("--single-line", dest="mode", action="store_const", const="single")
    parser.add_argument("--json", action="store_true", help="print one JSON object with text, range and debug")
    parser.add_argument("--show-prompt", action="store_true", help="print the prompt to stderr first")
    parser.set_defaults(mode="auto")
    return parser


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    if os.path.isdir(path):
        raise BadRequestError(f"{path}: is a directory")
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise BadRequestError(f"{path}: file too large ({size} bytes; at most {MAX_FILE_BYTES})")
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise BadRequestError(f"{path}: no such file") from None
    except OSError as error:
        raise BadRequestError(f"{path}: cannot read ({error.strerror})") from None


def _decode(path: str, data: bytes) -> str:
    # A NUL byte never occurs in source text; it is the usual sign of a binary file.
    if b"\0" in data[:8192]:
        raise BadRequestError(f"{path}: binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequestError(f"{path}: not UTF-8 text (invalid byte at offset {error.start})") from None


def read_text(path: str) -> tuple[str, bytes]:
    """The text of a file (or stdin for "-") and its bytes; BadRequestError when it is not UTF-8 text."""
    data = _read(path)
    return _decode(path, data), data


def _cursor(args: argparse.Namespace, text: str, data: bytes) -> int:
    if args.offset is not None:
        if args.line is not None or args.col is not None:
            raise BadRequestError("give either --offset or --line/--col, not both")
        return char_offset_from_byte_offset(data, args.offset)
    if args.line is None or args.col is None:
        raise BadRequestError("give the cursor as --offset N or as --line L --col C")
    return offset_from_line_col(text, args.line, args.col)


def build_request(args: argparse.Namespace) -> CompletionRequest:
    """The completion request the arguments describe (reads FILE and the context files)."""
    text, data = read_text(args.file)
    cursor = _cursor(args, text, data)
    path = args.path or ("stdin.txt" if args.file == "-" else args.file)
    others = [FileContext(p, read_text(p)[0]) for p in args.context]
    language = normalize_language(args.language, path)
    if language == "python" and args.file != "-" and not args.no_context:
        known = {os.path.abspath(f.path) for f in others} | {os.path.abspath(path)}
        others += [f for f in workspace_python_imports(path, text) if os.path.abspath(f.path) not in known]
    options = CompletionOptions(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                                mode=args.mode, time_budget_ms=args.time_budget_ms, use_context=not args.no_context,
                                prompt_budget=args.prompt_budget, candidates=args.candidates,
                                rerank_budget_ms=args.rerank_budget_ms, rerank_lines=args.rerank_lines)
    request = CompletionRequest(path=path, text=text, cursor=cursor, language=args.language,
                                other_files=tuple(others), options=options)
    validate_request(request)
    return request


def run(args: argparse.Namespace, request: CompletionRequest, engine: EngineProtocol) -> dict:
    """Complete with a loaded engine; returns the --json object."""
    if args.show_prompt:
        prompt = prepare(engine, request)[0]
        sys.stderr.write(prompt.render() + "\n")
    response = complete(engine, request)
    cursor = request.cursor
    if args.offset is not None:  # answer in the unit the position was given in
        cursor = byte_offset_from_char_offset(request.text, cursor)
    return {"text": response.text, "range": [cursor, cursor],
            "debug": {**response.debug, "char_range": [request.cursor, request.cursor]}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `fim`: 0 on success, 2 on bad input (one line on stderr), 1 on an internal error."""
    try:
        args = build_parser().parse_args(argv)
        request = build_request(args)  # bad input is reported before the model takes seconds to load
        result = run(args, request, load_engine(args.model, dtype=args.dtype, int8=args.int8, quant=args.quant,
                                                   server=args.server, adapter=args.adapter))
    except FimError as error:
        print(f"fim: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - never a traceback to the user
        print(f"fim: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write(result["text"])
        if sys.stdout.isatty():
            sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
