"""`codegemma lsp`: run the language server over stdio (what editors start) or TCP.

`--tcp` on an address other than loopback needs a token (--token or $CODEGEMMA_LSP_TOKEN), which the client
sends as `initializationOptions.token`; without it the server would run a model for anyone on the network.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace

TOKEN_ENV = "CODEGEMMA_LSP_TOKEN"


class _OneLineFormatter(logging.Formatter):
    """Log records as single lines without tracebacks: the editor shows the server's stderr in its
    LSP log, and pygls logs a full traceback for every malformed message or refused request (the
    client already got an error response naming the problem)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().split("\n", 1)[0]
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        return f"codegemma-lsp {record.levelname} {record.name}: {message}"


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:2087, got {value!r}")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codegemma lsp",
        description="CodeGemma language server: inline completions (LSP 3.18) over stdio or TCP.",
    )
    parser.add_argument("--model", default=None,
                        help="model path (HF checkpoint dir or .gguf) or name for codegemma.load; "
                             "default: the embedded model. initializationOptions.model overrides it.")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="complete on a running engine shared by every editor window instead of loading the "
                             "model: a `codegemma serve` (http://HOST:PORT) or an OpenAI-compatible /v1/completions "
                             "(vLLM, TGI, llama.cpp server); --model then names its tokenizer. API key: "
                             "$CODEGEMMA_ENGINE_API_KEY")
    parser.add_argument("--tcp", type=_host_port, metavar="HOST:PORT",
                        help="serve one client over TCP instead of stdio")
    parser.add_argument("--token", default=None,
                        help=f"with --tcp: clients must send it as initializationOptions.token (or set {TOKEN_ENV}); "
                             "required for a non-loopback address")
    parser.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024,
                        help="larger JSON-RPC messages are read, dropped and answered with an error (default 64 MiB)")
    parser.add_argument("--stdio", action="store_true",
                        help="serve over stdio (the default; accepted because LSP clients such as "
                             "vscode-languageclient add it)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="stderr log level (default: warning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.tcp is not None:
        from fim.http.settings import is_loopback  # the one loopback test both servers use

        host = args.tcp[0]
        if not is_loopback(host) and not token:
            print(f"codegemma lsp: --tcp {host} exposes the server beyond this machine: set --token (or "
                  f"{TOKEN_ENV}), or bind 127.0.0.1", file=sys.stderr)
            return 2
        if not is_loopback(host):
            print(f"codegemma lsp: warning: listening on {host}, reachable from the network; clients must send "
                  "the token", file=sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)

    from lsp.server import server  # imported here: `--help` should not pay for pygls and torch
    from lsp.transport import serve_io, serve_tcp

    server.settings = replace(server.settings, model=args.model, server=args.server)
    try:
        if args.tcp is not None:
            serve_tcp(server, *args.tcp, token=token, max_bytes=args.max_message_bytes)
        else:
            serve_io(server, max_bytes=args.max_message_bytes)
    except OSError as error:
        print(f"codegemma lsp: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0 if server.shutdown_requested else 1


if __name__ == "__main__":
    sys.exit(main())
