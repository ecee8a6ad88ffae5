"""Position helpers and request validation."""

from __future__ import annotations

import pytest

from fim.errors import BadRequestError
from fim.languages import language_from_path, normalize_language
from fim.request import (CompletionOptions, CompletionRequest, byte_offset_from_char_offset,
                         char_offset_from_byte_offset, line_col_from_offset, offset_from_line_col, validate_request)

TEXT = "héllo\nwörld 🙂\n\nend"


@pytest.mark.parametrize("offset", range(len(TEXT) + 1))
def test_line_col_round_trip(offset):
    line, col = line_col_from_offset(TEXT, offset)
    assert offset_from_line_col(TEXT, line, col) == offset


def test_line_col_is_one_based_in_characters():
    assert offset_from_line_col(TEXT, 1, 1) == 0
    assert offset_from_line_col(TEXT, 2, 7) == TEXT.index("🙂")
    assert offset_from_line_col(TEXT, 2, 8) == TEXT.index("\n\nend")  # one past the end of the line


@pytest.mark.parametrize("line, col, message", [
    (0, 1, "1-based"), (1, 0, "1-based"), (9, 1, "past the end of the file"), (2, 9, "past the end of line 2"),
])
def test_line_col_errors(line, col, message):
    with pytest.raises(BadRequestError, match=message):
        offset_from_line_col(TEXT, line, col)


def test_byte_offsets():
    data = TEXT.encode("utf-8")
    for offset in range(len(TEXT) + 1):
        assert char_offset_from_byte_offset(data, byte_offset_from_char_offset(TEXT, offset)) == offset
    with pytest.raises(BadRequestError, match="inside a multi-byte UTF-8 character"):
        char_offset_from_byte_offset(data, 2)  # the second byte of "é"
    with pytest.raises(BadRequestError, match="past the end"):
        char_offset_from_byte_offset(data, len(data) + 1)
    with pytest.raises(BadRequestError, match="negative"):
        char_offset_from_byte_offset(data, -1)


@pytest.mark.parametrize("options, message", [
    (CompletionOptions(max_tokens=0), "max_tokens"),
    (CompletionOptions(temperature=-1), "temperature"),
    (CompletionOptions(mode="both"), "mode"),
    (CompletionOptions(time_budget_ms=0), "time_budget_ms"),
    (CompletionOptions(prompt_budget=4), "prompt_budget"),
    (CompletionOptions(top_p=0), "top_p"),
    (CompletionOptions(stop=("",)), "stop"),
])
def test_bad_options(options, message):
    with pytest.raises(BadRequestError, match=message):
        validate_request(CompletionRequest("a.py", "x", 0, options=options))


@pytest.mark.parametrize("cursor", [-1, 2])
def test_cursor_out_of_range(cursor):
    with pytest.raises(BadRequestError, match="outside the text"):
        validate_request(CompletionRequest("a.py", "x", cursor))


def test_languages():
    assert language_from_path("src/main.rs") == "rust"
    assert language_from_path("App.TSX") == "tsx"
    assert language_from_path("notes.xyz") == "text"
    assert normalize_language("typescriptreact", "a") == "tsx"
    assert normalize_language("cobol", "a.py") == "text"  # unknown names fall back to plain-text rules
    assert normalize_language(None, "a.hpp") == "cpp"
