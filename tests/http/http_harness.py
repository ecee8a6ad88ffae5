"""Real uvicorn servers on 127.0.0.1 (free ports) in background threads, for the HTTP API tests.

Each server owns its CompletionService; tests talk to it over a real socket with httpx. Server commands
started as subprocesses (`codegemma serve`) are tested inside `serving`.
"""
from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import uvicorn

from fim.http import ServerSettings, create_app
from fim.http.limits import uvicorn_config
from fim.service import CompletionService

API_KEY = "test-key-0123456789"


@dataclass
class LiveServer:
    url: str
    service: CompletionService
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.service.close()


def error_message(response: httpx.Response, status: int) -> str:
    """The message of a JSON error answer, after checking its status and shape."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"]["code"] == status and body["error"]["type"]
    return body["error"]["message"]


def start_server(service: CompletionService, settings: ServerSettings, start_service: bool = True) -> LiveServer:
    """Serve create_app(service, settings) on a free loopback port; returns once it accepts connections."""
    if start_service:
        service.start()
        assert service.wait_ready(120), service.error
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(create_app(service, settings), settings, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    return LiveServer(f"http://127.0.0.1:{port}", service, server, thread)




@contextlib.contextmanager
def serving(proc: subprocess.Popen) -> Iterator[str]:
    """A server subprocess's URL once its model is ready. Leaving the block stops it with Ctrl-C, which must
    end it with status 0 (after a failure inside the block it is killed)."""
    try:
        yield _ready_url(proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready_url(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """The URL a server subprocess (stderr piped as text) reports it listens on, once /health says its model
    is ready."""
    for line in proc.stderr:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            break
    else:
        raise AssertionError("the server exited without a 'listening on' line")
    deadline = time.monotonic() + timeout
    while httpx.get(found.group(1) + "/health", timeout=timeout).status_code != 200:
        assert time.monotonic() < deadline, "the server's model did not become ready"
        time.sleep(0.1)
    return found.group(1)
