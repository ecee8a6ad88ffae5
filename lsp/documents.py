"""The open documents: full and incremental sync, versions, and the other files as context.

A change the server cannot apply (a range that ends before it starts or lies past the end of the text,
or a change for a document it does not hold) means the client's text and ours differ: the document is
marked out of step, no completion is computed on it, incremental changes are refused, and the server asks
the client for the whole text (`OutOfStep`); a full-text change or a new didOpen brings it back in step.
The store is bounded: past `max_documents` or `max_chars` in all, the least recently used documents other
than the one being opened are dropped (a later change to one of them asks for its whole text).

The server keeps its own store instead of pygls' workspace because pygls splits lines with
`str.splitlines` (form feed and U+2028 start a new line there, not in LSP) and clamps positions past
the end of a line one character short; `lsp.positions` follows the protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lsprotocol import types

from lsp.positions import UTF16, offset_at, position_at

MAX_DOCUMENTS = 1000
MAX_CHARS = 64 * 1024 * 1024  # characters held in all documents together


class DocumentError(Exception):
    """A notification or request about a document the server cannot honour (one-line message)."""


class OutOfStep(DocumentError):
    """The client's text of `uri` and the server's differ: the server needs the whole text again."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(message)
        self.uri = uri


@dataclass
class Document:
    uri: str
    language_id: str
    version: int
    text: str
    out_of_step: bool = field(default=False)


class Documents:
    """Text of every document the client has open, keyed by URI, least recently used first."""

    def __init__(self, max_documents: int = MAX_DOCUMENTS, max_chars: int = MAX_CHARS) -> None:
        self._open: dict[str, Document] = {}
        self.max_documents = max_documents
        self.max_chars = max_chars
        self._chars = 0

    def open(self, item: types.TextDocumentItem) -> list[str]:
        """Hold the document (a new didOpen of a held one replaces it); returns the URIs dropped to make room."""
        self.close(item.uri)
        self._open[item.uri] = Document(item.uri, item.language_id, item.version, item.text)
        self._chars += len(item.text)
        dropped = []
        while len(self._open) > 1 and (len(self._open) > self.max_documents or self._chars > self.max_chars):
            oldest = next(iter(self._open))
            self.close(oldest)
            dropped.append(oldest)
        return dropped

    def close(self, uri: str) -> None:
        document = self._open.pop(uri, None)
        if document is not None:
            self._chars -= len(document.text)

    def get(self, uri: str) -> Document:
        """The open document at `uri`; DocumentError when the client never opened it."""
        document = self._open.get(uri)
        if document is None:
            raise DocumentError(f"document is not open: {uri}")
        self._open[uri] = self._open.pop(uri)  # most recently used last
        return document

    def others(self, uri: str) -> Iterator[Document]:
        """Every open document except `uri`, most recently opened first."""
        return (doc for doc in reversed(list(self._open.values())) if doc.uri != uri)

    def change(
        self,
        identifier: types.VersionedTextDocumentIdentifier,
        changes: Sequence[types.TextDocumentContentChangeEvent],
        encoding: str = UTF16,
    ) -> None:
        """Apply a didChange. A version not newer than the one held is a replay: refused (DocumentError),
        the text kept. A change that cannot apply marks the document out of step (OutOfStep)."""
        uri = identifier.uri
        if uri not in self._open:
            raise OutOfStep(uri, f"document is not open: {uri} (change ignored; asking for its whole text)")
        document = self.get(uri)
        if identifier.version <= document.version and not document.out_of_step:
            raise DocumentError(
                f"stale change ignored for {uri}: version {identifier.version}, "
                f"server has {document.version}"
            )
        if document.out_of_step:
            whole = [i for i, c in enumerate(changes) if isinstance(c, types.TextDocumentContentChangeWholeDocument)]
            if not whole:
                raise OutOfStep(uri, f"change ignored for {uri}: the document is out of step, waiting for its "
                                     "whole text")
            changes = changes[whole[-1]:]
        text = document.text
        try:
            for change in changes:
                text = _apply(text, change, encoding)
        except DocumentError as error:
            document.out_of_step = True
            raise OutOfStep(uri, f"{error}; {uri} is out of step: asking for its whole text") from None
        self._chars += len(text) - len(document.text)
        document.text, document.version, document.out_of_step = text, identifier.version, False


def _apply(text: str, change: types.TextDocumentContentChangeEvent, encoding: str) -> str:
    if isinstance(change, types.TextDocumentContentChangeWholeDocument):
        return change.text
    last_line = position_at(text, len(text), encoding).line
    end_of_text = change.range.end.line == last_line + 1 and change.range.end.character == 0  # a common spelling
    if change.range.end.line > last_line and not end_of_text:
        raise DocumentError(f"change range ends on line {change.range.end.line}, past the text's last line {last_line}")
    start = offset_at(text, change.range.start, encoding)
    end = offset_at(text, change.range.end, encoding)
    if end < start:
        raise DocumentError(f"change range ends before it starts: {change.range}")
    return text[:start] + change.text + text[end:]
