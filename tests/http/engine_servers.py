"""Small real engines on loopback sockets that misbehave on purpose: down (503), flaky (503 once), silent,
dying mid-stream,
answering garbage or refusing the key; or answering a fixed streamed completion. A remote engine
(`fim.remote`) talks to them over TCP exactly as to vLLM or llama.cpp's server.

Each serves GET /v1/models and POST /v1/completions; `behaviour` may be switched while it runs.
"""
from __future__ import annotations

import json
import socket
import threading

MODELS = json.dumps({"object": "list", "data": [{"id": "scripted", "object": "model"}]}).encode()
TEXT = ("return a", " + b")  # what "ok" streams


def _event(text: str, finish: str | None = None) -> bytes:
    body = {"object": "text_completion", "choices": [{"text": text, "index": 0, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


def _answer(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class EngineServer:
    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []  # the raw requests received (headers and body)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        for conn in self._open:
            conn.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = self._read_request(conn)
            self.requests.append(request)
            behaviour = self.behaviour
            if request.startswith(b"GET ") and behaviour not in ("down", "silent", "unauthorized"):
                conn.sendall(_answer("200 OK", "application/json", MODELS))
            elif behaviour in ("down", "flaky"):
                if behaviour == "flaky":
                    self.behaviour = "ok"  # down for this one request only
                conn.sendall(_answer("503 Service Unavailable", "application/json",
                                     b'{"error": {"message": "overloaded"}}'))
            elif behaviour == "unauthorized":
                conn.sendall(_answer("401 Unauthorized", "application/json", b'{"error": {"message": "bad key"}}'))
            elif behaviour == "silent":
                threading.Event().wait(60)  # holds the connection and never answers
            elif behaviour == "garbage":
                conn.sendall(_answer("200 OK", "text/event-stream", b"data: <html>not json</html>\n\n"))
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
                conn.sendall(_event(TEXT[0]))
                if behaviour == "dies":
                    conn.shutdown(socket.SHUT_RDWR)  # the engine process went away mid-stream
                    return
                conn.sendall(_event(TEXT[1]) + _event("", "stop") + b"data: [DONE]\n\n")
        except OSError:
            pass
        finally:
            conn.close()
