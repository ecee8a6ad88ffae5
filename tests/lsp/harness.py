"""Start real language server subprocesses over stdio for the tests (tiny model by default)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import codegemma
from fim import CompletionOptions, CompletionRequest, FileContext, complete
from lsp.client import LspClient, Pending
from lsp.positions import UTF16, position_at
from tests.tiny import tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
ROOT_URI = "file:///work/project"
# Short generations keep the suite fast on 2 cores; the tiny random model is deterministic (greedy).
TEST_OPTIONS = {"maxTokens": 8, "debounceMs": 0}


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lsp.cli", *args]


def server_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start(model: str | None = tiny_checkpoint(), options: dict | None = None, encodings=None, inline: bool = True,
          wait_ready: bool = True) -> LspClient:
    """A server subprocess, initialized (and, by default, with its model loaded)."""
    client = LspClient(server_command(*(["--model", model] if model else [])), env=server_env(), cwd=str(REPO))
    client.initialize(ROOT_URI, options, encodings, inline)
    if wait_ready:
        client.wait_model_ready(timeout=120)
    return client


URI = f"{ROOT_URI}/pkg/a.py"


@functools.cache
def _engine():
    return codegemma.load(tiny_checkpoint())


def expected_text(text: str, cursor: int, path: str = "pkg/a.py", others: tuple[FileContext, ...] = ()) -> str:
    """What the server must answer: fim on the same text and cursor, with the same other files."""
    request = CompletionRequest(path=path, text=text, cursor=cursor, language="python", other_files=others,
                                options=CompletionOptions(max_tokens=TEST_OPTIONS["maxTokens"]))
    return complete(_engine(), request).text


def pos(line, character):
    return {"line": line, "character": character}


@contextlib.contextmanager
def opened(client, text, uri=URI, language="python"):
    """The document open in the server for the block (closed after, so tests do not share context)."""
    client.notify("textDocument/didOpen",
                  {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}})
    try:
        yield
    finally:
        client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def inline(client, position, uri=URI, selected=None) -> Pending:
    context = {"triggerKind": 2}
    if selected is not None:
        context["selectedCompletionInfo"] = selected
    return client.request("textDocument/inlineCompletion",
                          {"textDocument": {"uri": uri}, "position": position, "context": context})


def assert_inline_matches(result, text, cursor, encoding=UTF16, path="pkg/a.py", others=()):
    expected = expected_text(text, cursor, path, others)
    assert expected, "the tiny model should complete something here (pick another test text)"
    here = position_at(text, cursor, encoding)
    point = {"line": here.line, "character": here.character}
    assert result == {"items": [{"insertText": expected, "range": {"start": point, "end": point}}]}
