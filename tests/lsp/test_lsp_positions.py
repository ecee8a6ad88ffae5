"""LSP positions in UTF-16 (the default), UTF-8 and UTF-32, with emoji, CJK and every line ending."""

import pytest
from lsprotocol.types import Position

from lsp.positions import UTF8, UTF16, UTF32, offset_at, position_at

TEXT = "a = '😀'  # 日本\nb\r\nc\rd\x0ce"  # form feed is not a line break in LSP


@pytest.mark.parametrize("encoding, character, expected", [
    (UTF16, 5, 5),    # just after the opening quote
    (UTF16, 7, 6),    # the emoji is two UTF-16 units
    (UTF16, 12, 11),  # at "日"
    (UTF8, 9, 6),     # the emoji is four UTF-8 bytes
    (UTF8, 17, 12),   # after "日": each CJK character is three bytes
    (UTF32, 6, 6),
])
def test_offset_of_position_after_wide_characters(encoding, character, expected):
    assert offset_at(TEXT, Position(0, character), encoding) == expected


def test_round_trip_every_offset_in_every_encoding():
    for encoding in (UTF8, UTF16, UTF32):
        for offset in range(len(TEXT) + 1):
            if TEXT[offset - 1:offset + 1] == "\r\n":
                continue  # between \r and \n is not a position
            assert offset_at(TEXT, position_at(TEXT, offset, encoding), encoding) == offset


def test_lines_split_on_lf_crlf_and_cr_only():
    assert offset_at(TEXT, Position(1, 0)) == TEXT.index("b")
    assert offset_at(TEXT, Position(2, 0)) == TEXT.index("c")
    assert offset_at(TEXT, Position(3, 0)) == TEXT.index("d")
    assert offset_at(TEXT, Position(3, 2)) == TEXT.index("e")


def test_positions_past_the_end_clamp():
    assert offset_at(TEXT, Position(1, 99)) == TEXT.index("\r\n")  # end of line 1, before its break
    assert offset_at(TEXT, Position(0, 999), UTF8) == TEXT.index("\n")
    assert offset_at(TEXT, Position(99, 0)) == len(TEXT)
    assert offset_at("abc", Position(0, 7)) == 3
    assert position_at("abc", 99) == Position(0, 3)


def test_position_after_final_newline_is_the_empty_last_line():
    assert offset_at("x\n", Position(1, 0)) == 2
    assert position_at("x\n", 2) == Position(1, 0)
    assert offset_at("x\n", Position(2, 0)) == 2
