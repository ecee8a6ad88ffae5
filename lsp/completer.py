"""Between LSP and fim: what the model sees for a request, and the edit its answer becomes.

Pure functions over text and offsets, so the tricky parts (the selected completion menu item, huge
documents, replace ranges) are tested without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fim import CompletionOptions, CompletionRequest, CompletionResponse, FileContext
from lsp.settings import Settings

# The model sees a few thousand tokens at most, so a request carries a window of text around the
# cursor instead of a multi-megabyte file. The window starts on a fixed grid so that typing does not
# move it, which keeps the prompt prefix (and its KV cache) stable between keystrokes.
WINDOW_CHARS = 32_000
# Other open documents bigger than this are left out of the context: reading and tokenizing them on
# every keystroke would cost more than they add.
CONTEXT_FILE_CHARS = 100_000
CONTEXT_FILES = 16

_WORD_BEFORE = re.compile(r"\w*\Z")


@dataclass(frozen=True)
class Snapshot:
    """The text the model completes: the document with the selected menu item applied, windowed."""
    text: str          # window of the document with the selection applied
    cursor: int        # cursor in `text`
    window_start: int  # offset of `text` in the document with the selection applied
    sel_start: int     # document offsets the selected menu item replaces (both = cursor without one)
    sel_end: int
    sel_text: str


@dataclass(frozen=True)
class Edit:
    """Replace document[start:end] (character offsets) with `text`."""
    start: int
    end: int
    text: str


def snapshot(text: str, cursor: int, selected: tuple[int, int, str] | None = None) -> Snapshot:
    """What the model sees for a request at `cursor`; `selected` is the completion menu item the
    client shows (start, end, text): the completion must continue after it (LSP 3.18)."""
    sel_start, sel_end, sel_text = selected if selected is not None else (cursor, cursor, "")
    if selected is not None:
        text = text[:sel_start] + sel_text + text[sel_end:]
        cursor = sel_start + len(sel_text)
    start = max(0, cursor - WINDOW_CHARS) // (WINDOW_CHARS // 2) * (WINDOW_CHARS // 2)
    if start > 0:
        start = text.find("\n", start, cursor) + 1 or start  # begin on a whole line
    end = min(len(text), cursor + WINDOW_CHARS)
    if end < len(text):
        newline = text.rfind("\n", cursor, end)
        end = newline + 1 if newline >= 0 else end
    return Snapshot(text[start:end], cursor - start, start, sel_start, sel_end, sel_text)


def request(snap: Snapshot, path: str, language: str | None, others: list[FileContext],
            settings: Settings, cache_key: str) -> CompletionRequest:
    options = CompletionOptions(
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        use_context=settings.context,
        speculative=settings.speculative,
        reuse_prompt=settings.reuse_prompt,
        candidates=settings.candidates if settings.rerank else 1,
        rerank_budget_ms=settings.rerank_budget_ms if settings.rerank else None,
        rerank_lines=settings.rerank and settings.rerank_lines,
    )
    return CompletionRequest(
        path=path, text=snap.text, cursor=snap.cursor, language=language,
        other_files=tuple(others) if settings.context else (), options=options, cache_key=cache_key,
    )


def context_files(documents: list[tuple[str, str]]) -> list[FileContext]:
    """The other open documents (path, text) worth sending as context, most recent first."""
    small = [FileContext(path, text) for path, text in documents if len(text) <= CONTEXT_FILE_CHARS]
    return small[:CONTEXT_FILES]


def edit(snap: Snapshot, response: CompletionResponse) -> Edit | None:
    """The document edit for fim's answer (text to insert at the cursor), or None when it adds nothing.

    With a selected menu item the edit starts where that item starts and includes its text, so the client
    shows it as the item's continuation."""
    if not response.text:
        return None
    return Edit(snap.sel_start, snap.sel_end, snap.sel_text + response.text)


def line_edit(document_text: str, cursor: int, full: Edit) -> Edit | None:
    """`full` cut down for textDocument/completion: one line, starting at the word before the cursor
    so that menus filter it by what was typed (Vim's omnifunc drops items that do not start with it)."""
    text = full.text
    end = full.end
    if "\n" in text:
        text, end = text.split("\n", 1)[0], cursor  # the suffix it replaced belonged to later lines
    if not text.strip():
        return None
    line_start = document_text.rfind("\n", 0, full.start) + 1
    word = _WORD_BEFORE.search(document_text, line_start, full.start).group()
    return Edit(full.start - len(word), max(end, full.start), word + text)

