"""A small LSP client over a server subprocess's stdio, for the benchmark and the end-to-end tests.

Requests return a `Pending` (a Future plus send and receive times); notifications from the server
are kept in order; requests from the server (progress tokens, configuration) get plain answers.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class ResponseError(Exception):
    """The server answered a request with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


REQUEST_CANCELLED = -32800


@dataclass
class Pending:
    id: int
    method: str
    sent_at: float
    future: Future = field(default_factory=Future)
    received_at: float | None = None

    def result(self, timeout: float = 60.0) -> Any:
        return self.future.result(timeout)

    @property
    def latency_ms(self) -> float | None:
        return None if self.received_at is None else 1000 * (self.received_at - self.sent_at)


def encode(message: dict) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class LspClient:
    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.notifications: list[dict] = []
        self.stderr_lines: list[str] = []
        self.unmatched: list[dict] = []  # responses whose id is no request of ours (e.g. id null)
        self.server_capabilities: dict = {}
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._changed = threading.Condition()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    # --- sending ----------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        with self._write_lock:
            self.process.stdin.write(data)
            self.process.stdin.flush()

    def notify(self, method: str, params: Any = None) -> None:
        self.send_raw(encode({"jsonrpc": "2.0", "method": method, "params": params}))

    def request(self, method: str, params: Any = None) -> Pending:
        pending = Pending(next(self._ids), method, 0.0)
        with self._changed:
            self._pending[pending.id] = pending
        message = encode({"jsonrpc": "2.0", "id": pending.id, "method": method, "params": params})
        pending.sent_at = time.perf_counter()
        self.send_raw(message)
        return pending

    def call(self, method: str, params: Any = None, timeout: float = 60.0) -> Any:
        return self.request(method, params).result(timeout)

    def cancel(self, pending: Pending) -> None:
        self.notify("$/cancelRequest", {"id": pending.id})

    # --- receiving --------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
        """The first notification (so far or to come) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.notifications:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise TimeoutError("no matching notification from the server")
                self._changed.wait(min(left, 0.5))

    def _read_stdout(self) -> None:
        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return self._fail_pending()
                if not line.strip():
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self._dispatch(json.loads(stream.read(length)))

    def _dispatch(self, message: dict) -> None:
        received = time.perf_counter()
        if "method" in message and "id" in message:
            self._answer_server_request(message)
            return
        with self._changed:
            if "method" in message:
                self.notifications.append(message)
            else:
                pending = self._pending.pop(message.get("id"), None)
                if pending is None:
                    self.unmatched.append(message)
                else:
                    pending.received_at = received
                    if "error" in message:
                        error = message["error"]
                        pending.future.set_exception(ResponseError(error["code"], error["message"]))
                    else:
                        pending.future.set_result(message.get("result"))
            self._changed.notify_all()

    def _answer_server_request(self, message: dict) -> None:
        method = message["method"]
        if method == "workspace/configuration":
            reply: dict = {"result": [None for _ in message["params"]["items"]]}
        elif method in ("window/workDoneProgress/create", "client/registerCapability"):
            reply = {"result": None}
        else:
            reply = {"error": {"code": -32601, "message": f"client does not handle {method}"}}
        self.send_raw(encode({"jsonrpc": "2.0", "id": message["id"], **reply}))

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def _fail_pending(self) -> None:
        with self._changed:
            for pending in self._pending.values():
                pending.future.set_exception(ConnectionError("the server closed its output"))
            self._pending.clear()
            self._changed.notify_all()

    # --- lifecycle --------------------------------------------------------------------------------

    def initialize(self, root_uri: str | None = None, options: dict | None = None,
                   encodings: Sequence[str] | None = None, inline: bool = True) -> dict:
        text_document: dict = {"completion": {}, "synchronization": {}}
        if inline:
            text_document["inlineCompletion"] = {}
        capabilities: dict = {"window": {"workDoneProgress": True}, "textDocument": text_document}
        if encodings is not None:
            capabilities["general"] = {"positionEncodings": list(encodings)}
        result = self.call("initialize", {"processId": None, "rootUri": root_uri, "capabilities": capabilities,
                                          "initializationOptions": options})
        self.server_capabilities = result["capabilities"]
        self.notify("initialized", {})
        return result

    def wait_model_ready(self, timeout: float = 300.0) -> dict:
        """Wait for the end of the model-loading progress; returns its $/progress notification."""
        return self.wait_for(lambda m: m.get("method") == "$/progress"
                             and m["params"]["value"].get("kind") == "end", timeout)

    def close(self, timeout: float = 10.0) -> int:
        """shutdown + exit, then the server's exit code (killed if it does not exit in time)."""
        try:
            if self.process.poll() is None:
                self.call("shutdown", None, timeout)
                self.notify("exit")
                self.process.stdin.close()
            return self.process.wait(timeout)
        except (subprocess.TimeoutExpired, TimeoutError, BrokenPipeError, ConnectionError):
            self.process.kill()
            self.process.wait()
            return -9
