"""End to end: the real server as a subprocess over stdio, driven by a JSON-RPC client over pipes.

The tiny random model is deterministic, so every completion the server returns is checked against
`fim.complete` run in this process on the text and cursor the server should have seen: that proves
sync, position conversion and the request the server built, not just the shape of the answer.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from fim import CompletionOptions, CompletionRequest, FileContext, complete
from lsp.client import REQUEST_CANCELLED, ResponseError
from lsp.positions import UTF8, UTF16
from tests.lsp.harness import (ROOT_URI, TEST_OPTIONS, URI, _engine, pos, assert_inline_matches, expected_text,
                               inline, opened, start)
from tests.tiny import tiny_checkpoint

def test_capabilities_advertise_inline_completion_and_incremental_sync(lsp_server):
    capabilities = lsp_server.server_capabilities
    assert capabilities["inlineCompletionProvider"] == {}
    assert "completionProvider" not in capabilities  # the client has inline completion: no fallback needed
    assert capabilities["textDocumentSync"]["change"] == 2 and capabilities["textDocumentSync"]["openClose"]
    assert capabilities["positionEncoding"] == "utf-16"


def test_model_loading_is_reported_as_work_done_progress(lsp_server):
    kinds = [m["params"]["value"]["kind"] for m in lsp_server.notifications if m["method"] == "$/progress"]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds


def test_open_incremental_change_inline_completion_and_completion(lsp_server):
    text = "import os\n\ndef list_files(path):\n    return \n"
    with opened(lsp_server, text):
        # Type "os." after "return " in two incremental changes, then ask at the end of the line.
        lsp_server.notify("textDocument/didChange", {
            "textDocument": {"uri": URI, "version": 2},
            "contentChanges": [{"range": {"start": pos(3, 11), "end": pos(3, 11)}, "text": "os"},
                               {"range": {"start": pos(3, 13), "end": pos(3, 13)}, "text": ".l"}]})
        text = text.replace("return ", "return os.l")
        cursor = text.index("os.l") + 4
        assert_inline_matches(inline(lsp_server, pos(3, 15)).result(), text, cursor)

        completion = lsp_server.call("textDocument/completion",
                                     {"textDocument": {"uri": URI}, "position": pos(3, 15)})
    first_line = expected_text(text, cursor).split("\n")[0]
    assert completion["isIncomplete"] is True
    if first_line.strip():
        (item,) = completion["items"]
        # The menu item starts at the word before the cursor ("l") so that menus filter on it.
        assert item["textEdit"] == {"range": {"start": pos(3, 14), "end": pos(3, 15)}, "newText": "l" + first_line}
    else:
        assert completion["items"] == []


def test_emoji_and_cjk_before_the_cursor_in_utf16(lsp_server):
    text = 'greeting = "héllo 😀 世界"\nprint(greeting, '
    with opened(lsp_server, text):
        lsp_server.notify("textDocument/didChange", {
            "textDocument": {"uri": URI, "version": 2},
            "contentChanges": [{"range": {"start": pos(0, 20), "end": pos(0, 20)}, "text": "🎉"}]})  # after 😀
        text = text.replace("😀 ", "😀 🎉")
        assert_inline_matches(inline(lsp_server, pos(1, 16)).result(), text, len(text))


def test_other_open_documents_are_the_context(lsp_server):
    helper = "def parse_config(path):\n    with open(path) as f:\n        return json.load(f)\n"
    text = "config = parse_"
    with opened(lsp_server, helper, f"{ROOT_URI}/pkg/config.py"), opened(lsp_server, text):
        result = inline(lsp_server, pos(0, len(text))).result()
    assert_inline_matches(result, text, len(text), others=(FileContext("pkg/config.py", helper),))


def test_selected_completion_item_is_continued_with_its_range(lsp_server):
    selected = {"range": {"start": pos(1, 3), "end": pos(1, 5)}, "text": "path"}
    with opened(lsp_server, "import os\nos.pa\n"):
        result = inline(lsp_server, pos(1, 5), selected=selected).result()
    with_item = "import os\nos.path\n"
    expected = expected_text(with_item, with_item.index("path") + 4)
    assert result["items"] == ([{"insertText": "path" + expected, "range": selected["range"]}] if expected else [])


def test_burst_superseded_requests_come_back_cancelled_quickly(lsp_server):
    # The debounce holds each request briefly, as in an editor: the burst supersedes the first request while
    # it waits (or, on a slow machine, while it generates: after "# " the tiny model writes 100+ tokens).
    lsp_server.notify("workspace/didChangeConfiguration", {"settings": {"maxTokens": 256, "debounceMs": 200}})
    with opened(lsp_server, "# "), _restore_settings(lsp_server):
        first = inline(lsp_server, pos(0, 2))
        burst = [inline(lsp_server, pos(0, 2)) for _ in range(4)]
        last = burst[-1].result(timeout=120)
        for pending in [first, *burst[:-1]]:
            with pytest.raises(ResponseError) as cancelled:
                pending.result(timeout=5)
            assert cancelled.value.code == REQUEST_CANCELLED
            assert pending.received_at < burst[-1].received_at
        assert first.latency_ms < 2000  # answered as soon as the next request arrived, not after 256 tokens
        assert isinstance(last["items"], list)


def test_cancel_request_is_honoured(lsp_server):
    # a long debounce holds the request in the server, so the cancel surely arrives before any answer
    lsp_server.notify("workspace/didChangeConfiguration", {"settings": {"maxTokens": 256, "debounceMs": 1500}})
    with opened(lsp_server, "# "), _restore_settings(lsp_server):
        pending = inline(lsp_server, pos(0, 2))
        time.sleep(0.05)
        lsp_server.cancel(pending)
        with pytest.raises(ResponseError) as cancelled:
            pending.result(timeout=5)
        assert cancelled.value.code == REQUEST_CANCELLED
        assert pending.latency_ms < 2000
        # The worker stopped: the next request is served.
        assert isinstance(inline(lsp_server, pos(0, 2)).result(timeout=60)["items"], list)


def test_rerank_settings_answer_the_reranked_completion(lsp_server):
    text = "def f(a):\n    b = a * \n    return b\n"
    cursor = text.index("* ") + 2
    rerank = {"rerank": True, "candidates": 3, "rerankBudgetMs": 60000}
    lsp_server.notify("workspace/didChangeConfiguration", {"settings": {**TEST_OPTIONS, **rerank}})
    try:
        with opened(lsp_server, text):
            result = inline(lsp_server, pos(1, 12)).result(timeout=60)
    finally:
        lsp_server.notify("workspace/didChangeConfiguration", {"settings": {**TEST_OPTIONS, "rerank": False}})
    expected = complete(_engine(), CompletionRequest(path="pkg/a.py", text=text, cursor=cursor, language="python",
                                                     options=CompletionOptions(max_tokens=TEST_OPTIONS["maxTokens"],
                                                                               candidates=3, rerank_budget_ms=60000,
                                                                               rerank_lines=True)))
    assert len(expected.debug["rerank"]["candidates"]) == 3
    assert result["items"][0]["insertText"] == expected.text
    assert not any(m["method"] == "window/showMessage" and "rerank" in m["params"]["message"]
                   for m in lsp_server.notifications)


@contextlib.contextmanager
def _restore_settings(client):
    try:
        yield
    finally:
        client.notify("workspace/didChangeConfiguration", {"settings": TEST_OPTIONS})


def test_utf8_client_without_inline_completion_settings_problems_and_language_switch():
    client = start(options={**TEST_OPTIONS, "languages": {"markdown": False}, "colour": "blue"},
                   encodings=[UTF8, UTF16], inline=False)
    try:
        assert client.server_capabilities["positionEncoding"] == "utf-8"
        assert "completionProvider" in client.server_capabilities  # the fallback, for a client without inline
        warning = client.wait_for(lambda m: m["method"] == "window/showMessage", timeout=5)
        assert "unknown setting 'colour' ignored" in warning["params"]["message"]

        text = "name = '日本語'  # 😀\nvalue = name + "
        with opened(client, text):
            result = inline(client, pos(1, len("value = name + ".encode()))).result()
        assert_inline_matches(result, text, len(text), UTF8)

        with opened(client, "# Notes\n\nSome ", uri=f"{ROOT_URI}/notes.md", language="markdown"):
            assert inline(client, pos(2, 5), uri=f"{ROOT_URI}/notes.md").result() == {"items": []}

        client.notify("workspace/didChangeConfiguration", {"settings": {"codegemma": {"temperature": "hot"}}})
        problem = client.wait_for(lambda m: m["method"] == "window/showMessage"
                                  and "'temperature' = 'hot'" in m["params"]["message"])
        assert "expected a number from 0.0 to 2.0" in problem["params"]["message"]
    finally:
        assert client.close() == 0


def test_a_model_that_cannot_load_is_reported_and_another_can_be_loaded():
    client = start(model="/nonexistent/model.gguf", options=TEST_OPTIONS)
    try:
        error = client.wait_for(lambda m: m["method"] == "window/showMessage")
        assert error["params"]["type"] == 1 and "could not be loaded" in error["params"]["message"]
        with opened(client, "x = "):
            assert inline(client, pos(0, 4)).result() == {"items": []}
            # A working model from the settings is loaded in the background, with its own progress.
            client.notify("workspace/didChangeConfiguration", {"settings": {"model": tiny_checkpoint()}})
            client.wait_for(lambda m: m["method"] == "$/progress" and m["params"]["value"]["kind"] == "end"
                            and "ready" in m["params"]["value"].get("message", ""))
            assert_inline_matches(inline(client, pos(0, 4)).result(), "x = ", 4)
    finally:
        assert client.close() == 0
    assert not any("Traceback" in line for line in client.stderr_lines)
