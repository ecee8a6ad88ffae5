"""`codegemma lsp` command line: --tcp serves one client over a socket; bad arguments are one line."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from lsp.cli import main
from lsp.client import encode
from tests.lsp.harness import REPO, server_command, server_env
from tests.tiny import tiny_checkpoint


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read_message(stream) -> dict:
    length = None
    while (line := stream.readline().strip()):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return json.loads(stream.read(length))


def _connect(port: int, deadline_s: float = 60.0) -> socket.socket:
    """A connection to a server on 127.0.0.1:port, retried until it listens."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the server did not listen"
            time.sleep(0.2)


def _shut_down(connection: socket.socket, replies, seen=lambda message: None) -> None:
    """shutdown, its reply awaited (`seen` checks every message before it: progress, log lines), then exit."""
    connection.sendall(encode({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
    while (message := _read_message(replies)).get("id") != 2:
        seen(message)
    connection.sendall(encode({"jsonrpc": "2.0", "method": "exit"}))


def test_tcp_server_answers_initialize_and_exits_after_shutdown():
    port = _free_port()
    process = subprocess.Popen(server_command("--model", tiny_checkpoint(), "--tcp", f"127.0.0.1:{port}"),
                               env=server_env(), cwd=str(REPO), stderr=subprocess.PIPE)
    try:
        with _connect(port) as connection, connection.makefile("rb") as replies:
            connection.sendall(encode({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                       "params": {"processId": None, "rootUri": None, "capabilities": {}}}))
            reply = _read_message(replies)
            assert reply["id"] == 1 and "inlineCompletionProvider" in reply["result"]["capabilities"]
            _shut_down(connection, replies)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_tcp_address_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--tcp", "localhost"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "expected HOST:PORT, e.g. 127.0.0.1:2087, got 'localhost'" in error and "Traceback" not in error


def test_stdio_flag_is_accepted_as_the_default_transport():
    # vscode-languageclient's TransportKind.stdio appends --stdio to the server command
    from lsp.cli import build_parser
    args = build_parser().parse_args(["--stdio", "--model", "tiny:fim"])
    assert args.stdio and args.tcp is None
