"""`codegemma bench lsp`: editor latency of the language server, measured the way an editor drives it.

It starts `codegemma lsp` as a subprocess over stdio, opens a real source file (a chunk of a standard
library module by default) and replays typing part of it: one didChange per keystroke and an inline
completion request after each, as editors ask; at the end of each line the "user" pauses and waits
for the ghost text. Requests that the next keystroke supersedes come back cancelled. It reports the
p50/p95 request-to-response time of the answered requests and the share cancelled, first with the
default settings, then, in the same server (one model load), with prompt reuse and speculative
decoding switched off; or, with `--server URL`, in a second server that completes on that running
engine (`remote_*` keys). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

from lsp.client import REQUEST_CANCELLED, LspClient, Pending, ResponseError
from lsp.positions import position_at

DEFAULT_FILE = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
PLAIN_SETTINGS = {"speculative": False, "reusePrompt": False}
WARM_UP_S = 120.0


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _outcome(pending: Pending, timeout: float) -> str:
    """'answered', 'cancelled', 'error', or 'timeout' when no answer came within `timeout` seconds."""
    try:
        pending.result(timeout)
        return "answered"
    except ResponseError as error:
        return "cancelled" if error.code == REQUEST_CANCELLED else "error"
    except TimeoutError:
        return "timeout"


def _lsp_position(text: str) -> dict:
    """The position at the end of `text`."""
    position = position_at(text, len(text))
    return {"line": position.line, "character": position.character}


def replay(client: LspClient, uri: str, before: str, typed: str, after: str, interval_s: float,
           pause_s: float, wait_s: float) -> dict:
    """Type `typed` between `before` and `after`; returns the latency summary of one pass."""
    client.notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "python", "version": 1, "text": before + after}})
    warm_up = client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": _lsp_position(before), "context": {"triggerKind": 1}})
    _outcome(warm_up, timeout=WARM_UP_S)  # the first run pays one-off costs; it is not measured
    text, version, requests = before, 1, []
    for char in typed:
        position = _lsp_position(text)
        version += 1
        client.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": position, "end": position}, "text": char}]})
        text += char
        pending = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": _lsp_position(text), "context": {"triggerKind": 2}})
        requests.append(pending)
        if char == "\n":  # end of a line: the user waits for the ghost text, then reads it
            _outcome(pending, timeout=wait_s)
            time.sleep(pause_s)
        else:
            time.sleep(interval_s)
    _outcome(requests[-1], timeout=wait_s)  # the user stops typing: give the last request its chance
    outcomes = [_outcome(p, timeout=0) if p.future.done() else "timeout" for p in requests]
    shown = sum(1 for p, outcome in zip(requests, outcomes) if outcome == "answered" and p.result()["items"])
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    answered = [p.latency_ms for p, outcome in zip(requests, outcomes) if outcome == "answered"]
    return {
        "requests": len(requests),
        "p50_ms": _percentile(answered, 0.5),
        "p95_ms": _percentile(answered, 0.95),
        "cancelled_share": outcomes.count("cancelled") / len(outcomes),
        "shown_share": shown / len(outcomes),  # requests answered with ghost text
        "errors": outcomes.count("error"),
        "timeout_share": outcomes.count("timeout") / len(outcomes),  # unanswered within --wait-s
    }


def _chunk(path: Path, start_line: int, chars: int) -> tuple[str, str, str]:
    """(before, typed, after): `typed` is about `chars` characters from `start_line`, ending at a line
    end, so the line being typed never has stray text after the cursor."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    start_line = min(start_line, max(0, len(lines) - 1))
    before = "".join(lines[:start_line])
    rest = source[len(before):]
    end = rest.find("\n", chars) + 1 or len(rest)
    return before, rest[:end], rest[end:]


def _format(name: str, summary: dict) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"
    return (f"{name:<28} requests {summary['requests']:>4}  p50 {ms(summary['p50_ms']):>8}  "
            f"p95 {ms(summary['p95_ms']):>8}  cancelled {100 * summary['cancelled_share']:.0f}%  "
            f"with ghost text {100 * summary['shown_share']:.0f}%  timed out {100 * summary['timeout_share']:.0f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegemma bench lsp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model for the server (default: the embedded model)")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="also measure `codegemma lsp --server URL` (a running codegemma serve or another "
                             "engine), after the in-process baseline, instead of the no-reuse pass")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE,
                        help=f"source file to type (default: {DEFAULT_FILE})")
    parser.add_argument("--start-line", type=int, default=120, help="type from this line on (default: 120)")
    parser.add_argument("--chars", type=int, default=120, help="characters typed per pass (default: 120)")
    parser.add_argument("--interval-ms", type=float, default=120.0, help="time between keystrokes (default: 120)")
    parser.add_argument("--pause-ms", type=float, default=300.0, help="pause after each line (default: 300)")
    parser.add_argument("--wait-s", type=float, default=20.0,
                        help="longest wait for the ghost text at a pause; slower answers count as timeouts "
                             "(default: 20)")
    return parser


def _session(command: list[str], label: str, file: Path) -> LspClient | None:
    """A started, initialized server with its model ready (None, after a message, when it failed to load)."""
    client = LspClient(command, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    client.initialize(file.resolve().parent.as_uri())
    started = time.perf_counter()
    end = client.wait_model_ready(timeout=600)
    print(f"{label}: {end['params']['value'].get('message', '')} (waited {time.perf_counter() - started:.1f} s)")
    if any(m["method"] == "window/showMessage" and m["params"]["type"] == 1 for m in client.notifications):
        print(f"codegemma bench lsp: the {label} server could not load its model", file=sys.stderr)
        client.close()
        return None
    return client


def _keys(prefix: str, summary: dict) -> dict:
    return {f"{prefix}{key}": summary[key] for key in ("p50_ms", "p95_ms", "cancelled_share", "requests",
                                                       "shown_share", "timeout_share", "errors")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        before, typed, after = _chunk(args.file, args.start_line, args.chars)
    except (OSError, UnicodeDecodeError) as error:
        print(f"codegemma bench lsp: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    if not typed:
        print(f"codegemma bench lsp: nothing to type in {args.file} after line {args.start_line}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "lsp.cli", *(["--model", args.model] if args.model else [])]
    uri = args.file.resolve().as_uri()

    def replay_with(client: LspClient, name: str) -> dict:
        summary = replay(client, uri, before, typed, after, args.interval_ms / 1000, args.pause_ms / 1000,
                         args.wait_s)
        print(_format(name, summary))
        return summary

    print(f"typing {len(typed)} characters of {args.file} from line {args.start_line}, "
          f"{args.interval_ms:.0f} ms per key, {args.pause_ms:.0f} ms pause per line")
    client = _session(command, "in-process model", args.file)
    if client is None:
        return 1
    try:
        default = replay_with(client, "default")
        if args.server is None:
            client.notify("workspace/didChangeConfiguration", {"settings": PLAIN_SETTINGS})
            second = replay_with(client, "no reuse, no speculation")
    finally:
        client.close()
    if args.server is not None:
        # The baseline ran first, in its own server; this one loads no model and asks the running engine.
        client = _session([*command, "--server", args.server], f"--server {args.server}", args.file)
        if client is None:
            return 1
        try:
            second = replay_with(client, "--server (shared engine)")
        finally:
            client.close()
    result = {**_keys("", default), **_keys("remote_" if args.server else "plain_", second),
              "chars": len(typed), "interval_ms": args.interval_ms, "file": str(args.file)}
    if args.server is not None:
        result["server"] = args.server
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
