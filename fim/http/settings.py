"""Server settings for the HTTP completion API: bind address, auth and request limits."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8012
    api_key: str | None = None          # when set, every route but the health checks needs "Bearer <key>"
    model_label: str = "default"        # what health reports before the engine has loaded
    max_body_bytes: int = 2 * 1024 * 1024   # larger bodies get 413 before they are parsed
    max_new_tokens: int = 512           # n_predict / max_tokens above this are capped to it
    default_new_tokens: int = 64        # used when a client asks for "as many as you like" (n_predict -1)
    retry_after_s: int = 1              # sent with 503 when the queue is full or the model is loading
    disconnect_poll_s: float = 0.05     # how often a waiting request checks that its client is still there
    header_timeout_s: float = 10.0      # a request's line and headers must arrive within this (slowloris)
    body_timeout_s: float = 30.0        # and its body within this after them
    keep_alive_s: float = 5.0           # idle time allowed between two requests on one connection
    max_connections: int = 64           # open connections and running requests; more get 503
    max_header_bytes: int = 16 * 1024   # request line plus headers; more gets 400
    allowed_origins: tuple[str, ...] = ()  # browser origins that may call the API ("*": any); same-origin always


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
