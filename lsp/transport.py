"""How the language server meets its client: stdio, or TCP with an optional token; bounded messages.

pygls reads a message's body whatever its Content-Length says; `BoundedReader` reads an oversized body in
pieces, throws it away (the stream stays in step) and answers a JSON-RPC error instead. Over TCP the server
serves one client, as pygls does, but only one at a time, and with a token the client's first message must
be `initialize` carrying `initializationOptions.token`, within `AUTH_TIMEOUT_S`; any other client is
answered with an error and disconnected, and the server keeps listening for the right one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from pygls.io_ import StdinAsyncReader, StdoutWriter, run_async

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
AUTH_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
# What an oversized body is replaced with: a response to no request, which pygls drops quietly.
IGNORED = b'{"jsonrpc": "2.0", "id": null, "result": null}'
CONTENT_LENGTH = re.compile(rb"^Content-Length: *(\d+)\r?\n$", re.IGNORECASE)

log = logging.getLogger("lsp.transport")


class BoundedReader:
    """pygls' reader interface over another reader, with message bodies limited to `max_bytes`."""

    def __init__(self, reader: Any, max_bytes: int, on_oversized: Callable[[int], None]) -> None:
        self.reader = reader
        self.max_bytes = max_bytes
        self.on_oversized = on_oversized

    def readline(self) -> Awaitable[bytes]:
        return self.reader.readline()

    async def readexactly(self, n: int) -> bytes:
        if n <= self.max_bytes:
            return await self.reader.readexactly(n)
        left = n
        while left:
            chunk = await self.reader.readexactly(min(left, CHUNK))
            if not chunk:
                return b""
            left -= len(chunk)
        self.on_oversized(n)
        return IGNORED


def oversized_handler(server: Any, max_bytes: int) -> Callable[[int], None]:
    def report(size: int) -> None:
        message = f"message of {size} bytes is over this server's limit of {max_bytes} bytes: ignored"
        server.protocol._send_data({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}})
        server.warn(message)
    return report


def serve_io(server: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Serve the client on stdin/stdout (pygls' start_io, with bounded messages)."""
    server._stop_event = threading.Event()
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    reader = BoundedReader(StdinAsyncReader(sys.stdin.buffer, server.thread_pool), max_bytes,
                           oversized_handler(server, max_bytes))
    try:
        asyncio.run(run_async(stop_event=server._stop_event, reader=reader, protocol=server.protocol,
                              logger=log, error_handler=server.report_server_error))
    except BrokenPipeError:
        log.error("the client closed the connection")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def serve_tcp(server: Any, host: str, port: int, token: str | None,
              max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Serve one client over TCP; with `token`, only one whose initialize carries it."""
    server._stop_event = threading.Event()
    try:
        asyncio.run(_serve_tcp(server, host, port, token, max_bytes))
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


async def _serve_tcp(server: Any, host: str, port: int, token: str | None, max_bytes: int) -> None:
    served = asyncio.Event()
    busy = asyncio.Lock()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if busy.locked() or served.is_set():
            writer.close()
            return
        async with busy:
            first = None
            if token is not None:
                first = await _admit(reader, writer, token, max_bytes)
                if first is None:
                    writer.close()
                    return
            server.protocol.set_writer(writer)
            if first is not None:
                server.protocol.handle_message(json.loads(json.dumps(first),
                                                          object_hook=server.protocol.structure_message))
            served.set()
            try:
                await run_async(stop_event=server._stop_event,
                                reader=BoundedReader(reader, max_bytes, oversized_handler(server, max_bytes)),
                                protocol=server.protocol, logger=log, error_handler=server.report_server_error)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
                log.warning("client connection ended: %s", error)
            finally:
                server.shutdown()
                listener.close()

    listener = await asyncio.start_server(connection, host, port, limit=CHUNK)
    server._server = listener
    async with listener:
        try:
            await listener.serve_forever()
        except asyncio.CancelledError:
            pass


async def _admit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str,
                 max_bytes: int) -> dict | None:
    """The client's first message if it is initialize with the right token (the token removed), else None
    (after an error response when the message could be read)."""
    try:
        message = await asyncio.wait_for(_read_message(reader, max_bytes), AUTH_TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    params = message.get("params")
    options = params.get("initializationOptions") if isinstance(params, dict) else None
    given = options.pop("token", None) if isinstance(options, dict) else None
    if (message.get("method") == "initialize" and isinstance(given, str)
            and hmac.compare_digest(given.encode(), token.encode())):
        return message
    error = {"code": -32600, "message": "this server needs a token: send initializationOptions.token in initialize"}
    body = json.dumps({"jsonrpc": "2.0", "id": message.get("id"), "error": error}).encode()
    writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    try:
        await writer.drain()
    except ConnectionError:
        pass
    log.warning("refused a TCP client without the token")
    return None


async def _read_message(reader: asyncio.StreamReader, max_bytes: int) -> Any:
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        if match := CONTENT_LENGTH.match(line):
            length = int(match.group(1))
    if length is None or length > max_bytes:
        raise ValueError("no or too large Content-Length")
    return json.loads(await reader.readexactly(length))
