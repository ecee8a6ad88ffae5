"""Hostile HTTP clients (issue 18): cross-site pages, DNS rebinding, slow and idle connections, trickled
bodies, oversized headers, too many connections, and health checks that would show paths.

Every server here listens on 127.0.0.1 only; every slow-client loop is bounded in count and time.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from tests.http.http_harness import API_KEY, LiveServer, error_message, start_server

from fim.http import ServerSettings
from fim.service import CompletionService
from tests.tiny import tiny_checkpoint

ALLOWED = "https://editor.example"
INFILL = b'{"input_prefix": "a = ", "n_predict": 1}'


@pytest.fixture(scope="module")
def guarded() -> Iterator[LiveServer]:
    """Short deadlines so the slow-client tests stay short."""
    settings = ServerSettings(default_new_tokens=2, header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0,
                              max_connections=48, allowed_origins=(ALLOWED,))
    server = start_server(CompletionService(tiny_checkpoint()), settings)
    yield server
    server.stop()


def _address(server: LiveServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes (or answers and closes) the connection within `within_s`."""
    sock.settimeout(within_s)
    try:
        sock.recv(4096)
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_a_web_page_cannot_post_text_plain(client):
    """A page's fetch(..., {mode: "no-cors", body: "{...}"}) sends text/plain without a preflight."""
    r = client.post("/infill", content=INFILL, headers={"content-type": "text/plain;charset=UTF-8"})
    assert "application/json" in error_message(r, 415)
    r = client.post("/infill", content=INFILL, headers={"content-type": "multipart/form-data; boundary=x"})
    error_message(r, 415)


def test_cross_site_origins_are_refused(client):
    r = client.post("/infill", content=INFILL, headers={"origin": "https://evil.example",
                                                         "content-type": "application/json"})
    assert "--allow-origin https://evil.example" in error_message(r, 403)
    # a form post from a page (the type curl -d uses) carries an Origin: refused too
    r = client.post("/infill", content=INFILL, headers={"origin": "null",
                                                         "content-type": "application/x-www-form-urlencoded"})
    error_message(r, 403)
    assert client.get("/metrics", headers={"origin": "https://evil.example"}).status_code == 403


def test_same_origin_and_allowed_origins_are_served(guarded):
    with guarded.client() as c:
        same = c.post("/infill", content=INFILL, headers={"origin": guarded.url, "content-type": "application/json"})
        assert same.status_code == 200 and "access-control-allow-origin" not in same.headers
        listed = c.post("/infill", content=INFILL, headers={"origin": ALLOWED, "content-type": "application/json"})
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == ALLOWED
        preflight = c.options("/infill", headers={"origin": ALLOWED, "access-control-request-method": "POST"})
        assert preflight.status_code == 204 and "Authorization" in preflight.headers["access-control-allow-headers"]
        form = c.post("/infill", content=INFILL, headers={"origin": ALLOWED,
                                                           "content-type": "application/x-www-form-urlencoded"})
        error_message(form, 415)  # from a browser, even an allowed one, the body must say it is JSON


def test_dns_rebinding_host_is_refused(client):
    r = client.get("/metrics", headers={"host": "evil.example:8012"})
    assert "loopback" in error_message(r, 403)
    assert client.get("/health", headers={"host": "localhost:8012"}).status_code == 200


def test_health_shows_no_paths_without_the_key():
    service = CompletionService("/secret/place/model.gguf")
    service.start()
    service.wait_ready(60)
    server = start_server(service, ServerSettings(api_key=API_KEY), start_service=False)
    try:
        with server.client() as c:
            for path in ("/health", "/v1/health"):
                message = error_message(c.get(path), 503)
                assert "failed to load" in message and "/secret" not in message
                keyed = error_message(c.get(path, headers={"authorization": f"Bearer {API_KEY}"}), 503)
                assert "/secret/place" in keyed
    finally:
        server.stop()


def test_tabby_health_names_the_model_without_directories(secured):
    with secured.client() as c:
        public = c.get("/v1/health").json()["model"]
        keyed = c.get("/v1/health", headers={"authorization": f"Bearer {API_KEY}"}).json()["model"]
    assert "/" not in public and keyed.endswith(public)


def test_idle_connection_is_closed_after_the_header_timeout(guarded):
    sock = socket.create_connection(_address(guarded), timeout=5)
    try:
        started = time.monotonic()
        assert _closed_by_server(sock, within_s=4.0)
        assert time.monotonic() - started < 3.0
    finally:
        sock.close()


def test_slowloris_does_not_starve_a_normal_client(guarded):
    """30 connections trickle a request a byte every 0.2 s; a normal client is served meanwhile, and the
    server drops every trickling connection at its 1 s header deadline."""
    slow = [socket.create_connection(_address(guarded), timeout=5) for _ in range(30)]
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40
    dropped: set[int] = set()
    served_in = None
    started = time.monotonic()
    try:
        with guarded.client(timeout=5.0) as c:
            for step in range(20):  # at most 20 x 0.2 s
                for i, sock in enumerate(slow):
                    if i not in dropped:
                        try:
                            sock.sendall(request[step:step + 1])
                        except OSError:
                            dropped.add(i)
                if step == 2:
                    t = time.monotonic()
                    assert c.get("/health").status_code == 200
                    served_in = time.monotonic() - t
                time.sleep(0.2)
                if len(dropped) == len(slow):
                    break
        for i, sock in enumerate(slow):
            if i not in dropped and _closed_by_server(sock, within_s=0.5):
                dropped.add(i)
    finally:
        for sock in slow:
            sock.close()
    assert served_in is not None and served_in < 1.0
    assert len(dropped) == len(slow)
    assert time.monotonic() - started < 8.0


def test_trickled_body_times_out_with_408(guarded):
    sock = socket.create_connection(_address(guarded), timeout=5)
    try:
        sock.sendall(b"POST /infill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        answer = b""
        deadline = time.monotonic() + 4.0
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.3)
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        sock.close()


def test_oversized_headers_are_refused(guarded):
    sock = socket.create_connection(_address(guarded), timeout=5)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        sock.settimeout(3.0)
        answer = sock.recv(4096)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()


def test_connections_over_the_limit_get_503_until_idle_ones_are_dropped():
    settings = ServerSettings(header_timeout_s=1.0, max_connections=4)
    server = start_server(CompletionService(tiny_checkpoint()), settings)
    idle = [socket.create_connection(_address(server), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.1)
        with server.client(timeout=5.0) as c:
            assert c.get("/health").status_code == 503
            time.sleep(1.5)  # the idle connections pass their header deadline and are closed
            assert c.get("/health").status_code == 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()
