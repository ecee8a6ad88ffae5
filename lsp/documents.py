"""The open documents: full and incremental sync, versions, and the other files as context.

The server keeps its own store instead of pygls' workspace because pygls splits lines with
`str.splitlines` (form feed and U+2028 start a new line there, not in LSP) and clamps positions past
the end of a line one character short; `lsp.positions` follows the protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lsprotocol import types

from lsp.positions import UTF16, offset_at


class DocumentError(Exception):
    """A notification or request about a document the server cannot honour (one-line message)."""


@dataclass
class Document:
    uri: str
    language_id: str
    version: int
    text: str


class Documents:
    """Text of every document the client has open, keyed by URI."""

    def __init__(self) -> None:
        self._open: dict[str, Document] = {}

    def open(self, item: types.TextDocumentItem) -> None:
        self._open[item.uri] = Document(item.uri, item.language_id, item.version, item.text)

    def close(self, uri: str) -> None:
        self._open.pop(uri, None)

    def get(self, uri: str) -> Document:
        """The open document at `uri`; DocumentError when the client never opened it."""
        document = self._open.get(uri)
        if document is None:
            raise DocumentError(f"document is not open: {uri}")
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
        """Apply a didChange; a version not newer than the one held means the client is out of step,
        so the change is refused (DocumentError) rather than applied to the wrong text."""
        document = self.get(identifier.uri)
        if identifier.version <= document.version:
            raise DocumentError(
                f"stale change ignored for {identifier.uri}: version {identifier.version}, "
                f"server has {document.version}"
            )
        text = document.text
        for change in changes:
            text = _apply(text, change, encoding)
        document.text, document.version = text, identifier.version


def _apply(text: str, change: types.TextDocumentContentChangeEvent, encoding: str) -> str:
    if isinstance(change, types.TextDocumentContentChangeWholeDocument):
        return change.text
    start = offset_at(text, change.range.start, encoding)
    end = offset_at(text, change.range.end, encoding)
    if end < start:
        raise DocumentError(f"change range ends before it starts: {change.range}")
    return text[:start] + change.text + text[end:]
