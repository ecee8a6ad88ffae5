"""`codegemma serve`: run the HTTP completion API with uvicorn.

Binds 127.0.0.1:8012 by default (llama.vim's and llama.vscode's default endpoint). Binding any other
address needs an API key, because the server would otherwise run a model for anyone on the network.
The key can come from --api-key or the CODEGEMMA_API_KEY environment variable (which keeps it out of
the process list).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

import uvicorn

from fim.http.app import create_app
from fim.http.limits import uvicorn_config
from fim.http.settings import ServerSettings, is_loopback
from fim.service import MAX_PARALLEL, CompletionService

API_KEY_ENV = "CODEGEMMA_API_KEY"
# Slots of concurrent requests decoding together (llama.cpp's --parallel). One by default: measured on 2
# cores (`codegemma bench http`, 2026-12-01) batching 4 clients with 1500-character prompts gave 0.88x the
# completions/s of one slot, as prefill dominates, and one slot keeps speculation (1.1-1.3x per request);
# with short prompts 4 slots gave 2.4x.
DEFAULT_PARALLEL = 1


def build_parser() -> argparse.ArgumentParser:
    d = ServerSettings()
    p = argparse.ArgumentParser(prog="codegemma serve", description="HTTP completion server for editor plugins "
                                "(llama.cpp /infill, Tabby /v1/completions, OpenAI-style /openai/v1/completions).")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s; others need --api-key)")
    p.add_argument("--port", type=int, default=d.port, help="port (default %(default)s; 0 = any free port)")
    p.add_argument("--model", default=None, help="model: a HF checkpoint dir or .gguf file (default: the embedded one)")
    p.add_argument("--engine", default=None, metavar="URL",
                   help="front a running engine instead of loading the model: another codegemma serve "
                        "(http://HOST:PORT) or an OpenAI-compatible /v1/completions (vLLM, TGI, llama.cpp server, "
                        "http://HOST:PORT/v1); --model then names its tokenizer. API key: $CODEGEMMA_ENGINE_API_KEY")
    p.add_argument("--dtype", default=None, help="weights dtype, e.g. bfloat16 or float32")
    p.add_argument("--int8", action="store_true", help="weight-only int8 linear layers")
    p.add_argument("--adapter", help="FIM adapter: default (the one that ships, on the embedded model), on, off or an adapter file; also $CODEGEMMA_ADAPTER")
    p.add_argument("--quant", choices=("int8", "q8_0", "q4"), help="weights quantized once and cached: int8, q8_0 or q4 (GGUF block formats on the native products)")
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait for the model (default 8); "
                   "more get 503 with Retry-After")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help="requests decoded together, each in its own KV slot (default %(default)s; 1 = one at a "
                        f"time; at most {MAX_PARALLEL}); memory grows with it")
    p.add_argument("--max-tokens", type=int, default=d.max_new_tokens,
                   help="largest n_predict / max_tokens to generate; larger requests are capped to it (default %(default)s)")
    p.add_argument("--default-tokens", type=int, default=None,
                   help=f"tokens for requests that do not say (Tabby, n_predict -1) (default {d.default_new_tokens}, "
                        "or --max-tokens when lower)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="largest request body (default %(default)s)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. https://editor.example) whose pages may call this server; repeatable, "
                        "'*' for any (default: none but the server's own)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections and running requests before new ones get 503 (default %(default)s)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a client has to send a request's headers (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Validated settings; ValueError with a one-line message for a bad combination."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    default_tokens = (args.default_tokens if args.default_tokens is not None
                      else min(ServerSettings.default_new_tokens, args.max_tokens))
    if not is_loopback(args.host) and not api_key:
        raise ValueError(f"binding {args.host} exposes the server beyond this machine: set --api-key "
                         f"(or {API_KEY_ENV}), or bind 127.0.0.1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    for name, value in (("--max-queue", args.max_queue), ("--max-tokens", args.max_tokens),
                        ("--default-tokens", default_tokens), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not 1 <= args.parallel <= MAX_PARALLEL:
        raise ValueError(f"--parallel must be 1..{MAX_PARALLEL}, got {args.parallel}")
    if args.max_connections < 1:
        raise ValueError(f"--max-connections must be at least 1, got {args.max_connections}")
    if not args.header_timeout > 0:
        raise ValueError(f"--header-timeout must be above 0, got {args.header_timeout}")
    if default_tokens > args.max_tokens:
        raise ValueError(f"--default-tokens {default_tokens} is above --max-tokens {args.max_tokens}")
    return ServerSettings(host=args.host, port=args.port, api_key=api_key, model_label=args.model or "default",
                          max_new_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                          default_new_tokens=default_tokens, allowed_origins=tuple(args.allow_origin),
                          max_connections=args.max_connections, header_timeout_s=args.header_timeout)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is a clear error rather than a uvicorn log."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        # listen now, not when uvicorn starts: a client that read "listening on" must never be refused
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def _stop_on_load_failure(service: CompletionService, server: uvicorn.Server) -> None:
    # A server whose model cannot load would only ever answer 503: say why and exit.
    service.wait_ready()
    if service.error is not None:
        print(f"codegemma serve: the model failed to load: {service.error}", file=sys.stderr)
        server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        sock = bind(settings.host, settings.port)
    except ValueError as error:
        print(f"codegemma serve: {error}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    service = CompletionService(args.model, dtype=args.dtype, int8=args.int8, quant=args.quant,
                                max_queue=args.max_queue, parallel=args.parallel, server=args.engine,
                                adapter=args.adapter)
    service.start(on_progress=lambda message, _fraction: print(f"codegemma serve: {message}", file=sys.stderr))
    app = create_app(service, settings)
    config = uvicorn_config(app, settings, log_level=args.log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    threading.Thread(target=_stop_on_load_failure, args=(service, server), daemon=True).start()
    print(f"codegemma serve: listening on http://{host}:{port} (llama.cpp /infill, Tabby /v1/completions, "
          f"OpenAI /openai/v1/completions, engine /engine/v1/completions, /metrics)", file=sys.stderr)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
        sock.close()
    return 1 if service.error is not None else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
