"""What the model sees for a request and the edit its answer becomes (selected item, windows, ranges)."""

from codegemma import GenStats
from fim import CompletionResponse

from lsp.completer import WINDOW_CHARS, Edit, edit, line_edit, snapshot


def _response(text):
    return CompletionResponse(text=text, stop_reason="eos", stats=GenStats(), elapsed_s=0.0, window=(0, 0), debug={})


def test_plain_request_inserts_at_the_cursor():
    text = "def add(a, b):\n    return \n"
    cursor = text.index("return ") + 7
    snap = snapshot(text, cursor)
    assert (snap.text, snap.cursor) == (text, cursor)
    assert edit(snap, _response("a + b")) == Edit(cursor, cursor, "a + b")


def test_selected_menu_item_is_applied_and_the_edit_uses_its_range():
    text = "import os\nos.pa\n"
    start, end = text.index("pa"), text.index("pa") + 2
    snap = snapshot(text, end, (start, end, "path"))
    assert snap.text == "import os\nos.path\n" and snap.cursor == start + 4
    assert edit(snap, _response(".join(a, b)")) == Edit(start, end, "path.join(a, b)")


def test_empty_answer_is_no_edit():
    snap = snapshot("x = ", 4)
    assert edit(snap, _response("")) is None


def test_huge_document_is_windowed_and_the_window_is_stable_while_typing():
    text = "".join(f"line_{i} = {i}\n" for i in range(400_000))  # about 6 MB
    cursor = len(text) // 2
    snap = snapshot(text, cursor)
    assert snap.cursor <= 1.5 * WINDOW_CHARS and len(snap.text) - snap.cursor <= WINDOW_CHARS
    assert snap.text[snap.cursor - 20:snap.cursor] == text[cursor - 20:cursor]
    assert snap.text[snap.cursor:snap.cursor + 20] == text[cursor:cursor + 20]
    assert snap.window_start == 0 or text[snap.window_start - 1] == "\n"
    assert snapshot(text, cursor + 1).window_start == snap.window_start
    assert edit(snap, _response("# here")) == Edit(cursor, cursor, "# here")


def test_line_edit_keeps_the_first_line_and_starts_at_the_word_before_the_cursor():
    text = "value = compu\n"
    cursor = len("value = compu")
    assert line_edit(text, cursor, Edit(cursor, cursor, "te(x)\nmore()")) == Edit(8, cursor, "compute(x)")
    assert line_edit(text, cursor, Edit(cursor, cursor, "\n    return 1")) is None
