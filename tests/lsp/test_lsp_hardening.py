"""Hostile or broken LSP clients (issue 18): a didChange that cannot apply (the server asks for the whole
text and completes nothing meanwhile), an unbounded number of documents, oversized messages, and --tcp on a
network address or with a token."""

from __future__ import annotations

import json
import subprocess

import pytest
from lsprotocol import types

from lsp.cli import main
from lsp.client import LspClient, encode
from lsp.documents import DocumentError, Documents, OutOfStep
from tests.lsp.harness import REPO, ROOT_URI, TEST_OPTIONS, URI, inline, opened, pos, server_command, server_env
from tests.lsp.test_lsp_bad_input import _error_reply, still_serving
from tests.lsp.test_lsp_cli import _connect, _free_port, _read_message, _shut_down
from tests.tiny import tiny_checkpoint

TOKEN = "lsp-token-0123456789"


def _open(docs: Documents, uri: str, text: str) -> list[str]:
    return docs.open(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))


def _change(version: int, start=None, end=None, text="") -> tuple:
    identifier = types.VersionedTextDocumentIdentifier(uri=URI, version=version)
    if start is None:
        return identifier, [types.TextDocumentContentChangeWholeDocument(text=text)]
    change = types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text)
    return identifier, [change]


def test_a_change_that_cannot_apply_puts_the_document_out_of_step_until_the_whole_text_comes():
    docs = Documents()
    _open(docs, URI, "abc\ndef\n")
    with pytest.raises(OutOfStep, match="past the text's last line"):
        docs.change(*_change(2, (7, 0), (7, 1), "x"))
    assert docs.get(URI).out_of_step and docs.get(URI).text == "abc\ndef\n"
    with pytest.raises(OutOfStep, match="waiting for its whole text"):
        docs.change(*_change(3, (0, 0), (0, 0), "y"))  # later edits never land on the stale text
    docs.change(*_change(4, text="fresh\n"))
    assert not docs.get(URI).out_of_step and docs.get(URI).text == "fresh\n"
    docs.change(*_change(5, (0, 5), (0, 5), "!"))
    assert docs.get(URI).text == "fresh!\n"


def test_end_of_text_spelled_as_the_next_line_still_applies():
    docs = Documents()
    _open(docs, URI, "abc")
    docs.change(*_change(2, (0, 0), (1, 0), "xyz"))
    assert docs.get(URI).text == "xyz"


def test_the_store_is_bounded_and_drops_the_least_recently_used():
    docs = Documents(max_documents=3, max_chars=100)
    for i in range(3):
        assert _open(docs, f"file:///d{i}.py", "x") == []
    docs.get("file:///d0.py")  # used: d1 is now the least recently used
    assert _open(docs, "file:///d3.py", "x") == ["file:///d1.py"]
    assert _open(docs, "file:///big.py", "y" * 100) == ["file:///d2.py", "file:///d0.py", "file:///d3.py"]
    with pytest.raises(DocumentError):
        docs.get("file:///d1.py")
    with pytest.raises(OutOfStep, match="asking for its whole text"):
        docs.change(types.VersionedTextDocumentIdentifier(uri="file:///d1.py", version=2),
                    [types.TextDocumentContentChangeWholeDocument(text="z")])


def test_server_asks_for_a_resync_and_completes_nothing_on_stale_text(lsp_server):
    text = "name = "
    with opened(lsp_server, text):
        lsp_server.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [
            {"range": {"start": pos(40, 0), "end": pos(41, 0)}, "text": "x"}]})
        resync = lsp_server.wait_for(lambda m: m.get("method") == "codegemma/resync", timeout=10)
        assert resync["params"]["uri"] == URI
        assert inline(lsp_server, pos(0, 7)).result(timeout=60)["items"] == []
        lsp_server.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": 3},
                                                     "contentChanges": [{"text": text}]})
        assert isinstance(inline(lsp_server, pos(0, 7)).result(timeout=60)["items"], list)
    still_serving(lsp_server)


def test_oversized_message_is_dropped_with_an_error_and_the_server_keeps_serving():
    client = LspClient(server_command("--model", tiny_checkpoint(), "--max-message-bytes", "100000"), env=server_env(),
                       cwd=str(REPO))
    try:
        client.initialize(ROOT_URI, TEST_OPTIONS, None, True)
        client.wait_model_ready(timeout=120)
        body = json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": f"{ROOT_URI}/huge.py", "languageId": "python", "version": 1, "text": "x" * 300_000}}}).encode()
        client.send_raw(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert "over this server's limit" in _error_reply(client, -32600)["error"]["message"]
        still_serving(client)
    finally:
        assert client.close() == 0


def test_tcp_on_a_network_address_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("CODEGEMMA_LSP_TOKEN", raising=False)
    assert main(["--tcp", "0.0.0.0:2087"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--token" in err


def _no_setting_warning(message: dict) -> None:
    assert "unknown setting" not in json.dumps(message)  # the token is not a setting


def _initialize(options: dict) -> bytes:
    return encode({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": options}})


def test_tcp_token_refuses_other_clients_and_serves_the_right_one():
    port = _free_port()
    process = subprocess.Popen(server_command("--model", tiny_checkpoint(), "--tcp", f"127.0.0.1:{port}", "--token", TOKEN),
                               env=server_env(), cwd=str(REPO), stderr=subprocess.PIPE)
    try:
        for options in ({}, {"token": "wrong"}):
            with _connect(port) as connection, connection.makefile("rb") as replies:
                connection.sendall(_initialize(options))
                reply = _read_message(replies)
                assert reply["id"] == 1 and "needs a token" in reply["error"]["message"]
                assert replies.read() == b""  # then disconnected
        with _connect(port) as connection, connection.makefile("rb") as replies:
            connection.sendall(_initialize({"token": TOKEN, **TEST_OPTIONS}))
            reply = _read_message(replies)
            assert reply["id"] == 1 and "inlineCompletionProvider" in reply["result"]["capabilities"]
            _shut_down(connection, replies, lambda message: _no_setting_warning(message))
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
