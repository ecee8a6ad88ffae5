"""LSP positions <-> character offsets, in the position encoding negotiated with the client.

LSP counts lines by "\\n", "\\r\\n" and "\\r" only (not by every separator `str.splitlines` knows, such
as form feed or U+2028) and columns in UTF-16 code units unless the client and server agreed on UTF-8
or UTF-32. Positions past the end of a line clamp to the line's end and lines past the end of the
text clamp to the end of the text, as the protocol asks.
"""

from __future__ import annotations

import re

from lsprotocol import types

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

UTF8 = types.PositionEncodingKind.Utf8.value
UTF16 = types.PositionEncodingKind.Utf16.value
UTF32 = types.PositionEncodingKind.Utf32.value


def _units(char: str, encoding: str) -> int:
    """Code units one character takes in `encoding`."""
    if encoding == UTF32:
        return 1
    code = ord(char)
    if encoding == UTF8:
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 2 if code > 0xFFFF else 1


def _line_bounds(text: str, line: int) -> tuple[int, int] | None:
    """[start, end) of line `line` without its terminator, or None when the text has fewer lines."""
    start, count = 0, 0
    for match in _LINE_BREAK.finditer(text):
        if count == line:
            return start, match.start()
        start, count = match.end(), count + 1
    return (start, len(text)) if line == count else None


def _column_offset(line_text: str, character: int, encoding: str) -> int:
    """Characters of `line_text` covered by `character` code units (clamped to the line)."""
    if encoding == UTF32 or line_text.isascii():
        return min(character, len(line_text))
    units = 0
    for index, char in enumerate(line_text):
        if units >= character:
            return index
        units += _units(char, encoding)
    return len(line_text)


def offset_at(text: str, position: types.Position, encoding: str = UTF16) -> int:
    """Character (code point) offset of an LSP position in `text`."""
    bounds = _line_bounds(text, position.line)
    if bounds is None:
        return len(text)
    start, end = bounds
    return start + _column_offset(text[start:end], position.character, encoding)


def position_at(text: str, offset: int, encoding: str = UTF16) -> types.Position:
    """LSP position of a character offset in `text` (offsets past the end clamp to the end)."""
    offset = max(0, min(offset, len(text)))
    line, line_start = 0, 0
    for match in _LINE_BREAK.finditer(text, 0, offset):
        line, line_start = line + 1, match.end()
    before = text[line_start:offset]
    units = len(before) if encoding == UTF32 or before.isascii() else sum(_units(c, encoding) for c in before)
    return types.Position(line=line, character=units)
