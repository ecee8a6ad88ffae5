"""Bad input over the wire: each gets an LSP error or an empty result, and the server keeps serving."""

from __future__ import annotations

import time

import pytest

from lsp.client import ResponseError, encode
from tests.lsp.harness import ROOT_URI, URI, pos, assert_inline_matches, inline, opened


def still_serving(client):
    """A well-formed request right after the bad one is answered."""
    with opened(client, "total = ", f"{ROOT_URI}/alive.py"):
        assert isinstance(inline(client, pos(0, 8), f"{ROOT_URI}/alive.py").result(timeout=60)["items"], list)


def _error_reply(client, code, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in client.unmatched:
            if message.get("error", {}).get("code") == code:
                return message
        time.sleep(0.02)
    raise AssertionError(f"no error {code} from the server")


def test_malformed_json_gets_a_parse_error_and_the_server_keeps_serving(lsp_server):
    lsp_server.send_raw(b"Content-Length: 14\r\n\r\n{not json at }")
    reply = _error_reply(lsp_server, -32700)
    assert reply["id"] is None and reply["error"]["message"].startswith("parse error: ")
    still_serving(lsp_server)


def test_json_that_is_not_a_request_gets_invalid_request(lsp_server):
    lsp_server.send_raw(encode({"jsonrpc": "2.0", "params": 3}))  # no method, no id
    lsp_server.send_raw(b'Content-Length: 6\r\n\r\n[1, 2]')
    _error_reply(lsp_server, -32600)
    still_serving(lsp_server)


def test_request_with_invalid_params_gets_invalid_params(lsp_server):
    with pytest.raises(ResponseError) as error:
        lsp_server.call("textDocument/inlineCompletion", {"textDocument": {"uri": URI}, "position": {"line": -1}})
    assert error.value.code == -32602 and "textDocument/inlineCompletion" in error.value.message
    still_serving(lsp_server)


def test_unknown_method_gets_method_not_found(lsp_server):
    with pytest.raises(ResponseError) as error:
        lsp_server.call("codegemma/noSuchThing", {})
    assert error.value.code == -32601
    still_serving(lsp_server)


def test_request_for_an_unopened_document_is_an_error(lsp_server):
    for method, extra in (("textDocument/inlineCompletion", {"context": {"triggerKind": 1}}),
                          ("textDocument/completion", {})):
        with pytest.raises(ResponseError) as error:
            lsp_server.call(method, {"textDocument": {"uri": f"{ROOT_URI}/never.py"}, "position": pos(0, 0), **extra})
        assert error.value.code == -32602 and "document is not open" in error.value.message
    still_serving(lsp_server)


def test_positions_past_the_end_of_a_line_or_the_file_clamp(lsp_server):
    text = "items = [1, 2]\nfor item in "
    with opened(lsp_server, text):
        past_line = inline(lsp_server, pos(0, 500)).result()
        past_file = inline(lsp_server, pos(40, 3)).result()
    assert_inline_matches(past_line, text, text.index("\n"))
    assert_inline_matches(past_file, text, len(text))


def test_stale_or_unknown_did_change_is_refused_with_a_log_line(lsp_server):
    text = "name = "
    with opened(lsp_server, text):
        lsp_server.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": 1},
                                                     "contentChanges": [{"text": "garbage(((("}]})
        warning = lsp_server.wait_for(lambda m: m["method"] == "window/logMessage"
                                      and "stale change ignored" in m["params"]["message"], timeout=10)
        assert warning["params"]["type"] == 2
        assert_inline_matches(inline(lsp_server, pos(0, 7)).result(), text, len(text))
    lsp_server.notify("textDocument/didChange", {"textDocument": {"uri": f"{ROOT_URI}/ghost.py", "version": 2},
                                                 "contentChanges": [{"text": "x"}]})
    lsp_server.wait_for(lambda m: "document is not open" in m["params"].get("message", ""), timeout=10)
    still_serving(lsp_server)


def test_five_megabyte_document(lsp_server):
    line = "values.append(compute(index, scale=2.5))  # keep going\n"
    text = "values = []\n" + line * (5_000_000 // len(line))
    middle = text.count("\n") // 2
    with opened(lsp_server, text):
        lsp_server.notify("textDocument/didChange", {
            "textDocument": {"uri": URI, "version": 2},
            "contentChanges": [{"range": {"start": pos(middle, 0), "end": pos(middle, 0)}, "text": "result = "}]})
        pending = inline(lsp_server, pos(middle, 9))
        result = pending.result(timeout=120)
        assert isinstance(result["items"], list)
        for item in result["items"]:
            assert item["range"]["start"] == pos(middle, 9)
    assert pending.latency_ms < 30_000
    still_serving(lsp_server)
