"""Document sync: full and incremental changes, versions, unknown documents."""

import pytest
from lsprotocol import types

from lsp.documents import DocumentError, Documents
from lsp.positions import UTF8

URI = "file:///w/a.py"


def _change(start, end, text):
    return types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text)


def _open(text):
    docs = Documents()
    docs.open(types.TextDocumentItem(uri=URI, language_id="python", version=1, text=text))
    return docs


def _versioned(version):
    return types.VersionedTextDocumentIdentifier(uri=URI, version=version)


def test_incremental_changes_in_utf16_after_emoji_and_cjk():
    docs = _open("s = '😀日'\nx\n")
    docs.change(_versioned(2), [_change((0, 8), (0, 8), "本"), _change((1, 0), (1, 1), "y = 1")])
    assert docs.get(URI).text == "s = '😀日本'\ny = 1\n"
    assert docs.get(URI).version == 2


def test_incremental_change_in_utf8():
    docs = _open("s = '😀'\n")
    docs.change(_versioned(2), [_change((0, 9), (0, 10), '"')], UTF8)
    assert docs.get(URI).text == "s = '😀\"\n"


def test_form_feed_does_not_start_a_line():
    docs = _open("a\x0cb\nc\n")
    docs.change(_versioned(2), [_change((1, 0), (1, 0), "X")])
    assert docs.get(URI).text == "a\x0cb\nXc\n"


def test_full_change_replaces_text():
    docs = _open("old")
    docs.change(_versioned(5), [types.TextDocumentContentChangeWholeDocument(text="new")])
    assert docs.get(URI).text == "new"


def test_stale_version_is_refused_and_text_kept():
    docs = _open("keep")
    docs.change(_versioned(3), [_change((0, 4), (0, 4), "!")])
    with pytest.raises(DocumentError, match="stale change ignored .* version 2, server has 3"):
        docs.change(_versioned(2), [_change((0, 0), (0, 4), "lost")])
    assert docs.get(URI).text == "keep!"


def test_unknown_document_and_reversed_range():
    docs = _open("abc")
    with pytest.raises(DocumentError, match="document is not open: file:///nope.py"):
        docs.get("file:///nope.py")
    with pytest.raises(DocumentError, match="ends before it starts"):
        docs.change(_versioned(2), [_change((0, 2), (0, 1), "")])
    assert docs.get(URI).text == "abc"


def test_others_lists_other_documents_most_recent_first():
    docs = _open("a")
    for name in ("b", "c"):
        docs.open(types.TextDocumentItem(uri=f"file:///w/{name}.py", language_id="python", version=1, text=name))
    docs.close("file:///w/b.py")
    assert [d.uri for d in docs.others(URI)] == ["file:///w/c.py"]
