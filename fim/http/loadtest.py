"""`codegemma bench http`: a load test of the HTTP server on loopback.

Starts `codegemma serve` as a subprocess, runs N concurrent clients for a fixed time against its
completion routes, samples the server's memory, then checks
that it survived, stayed under the RSS bound and still answers a normal request. It does this twice, with
batching (`--parallel` slots) and with one slot, the same requests in the same order, and prints each run's
throughput, p50/p95 latency and status counts, and the ratio of the two throughputs (`batching_speedup`);
the last line is one JSON object: the batched run's figures, `one_slot` with the other run's, and the ratio.

Two loads (`--load`): `random` (the default), every request at a random cursor position in a standard-library
file, so nearly every prompt is new; `typing`, each client an editor user going down its own file a line
per request, so its prompts grow from a fixed start and a server can reuse their cache (the text before the
cursor restarts further down, as llama.vscode's chunks do, once it passes --prefix-chars).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from fim.service import MAX_PARALLEL

SAMPLE_FILES = ("json/decoder.py", "textwrap.py", "shlex.py", "fnmatch.py", "heapq.py", "bisect.py",
                "colorsys.py", "string.py")
ROUTES = ("infill", "tabby", "openai")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codegemma bench http", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default %(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (default %(default)s)")
    p.add_argument("--model", default=None, help="model for the server (default: the embedded one)")
    p.add_argument("--route", choices=(*ROUTES, "mixed"), default="mixed", help="which API to load")
    p.add_argument("--load", choices=("random", "typing"), default="random",
                   help="random cursor positions, or each client typing down its own file (module docstring)")
    p.add_argument("--n-predict", type=int, default=32, help="tokens per completion (default %(default)s)")
    p.add_argument("--prefix-chars", type=int, default=1500, help="text before the cursor (default %(default)s)")
    p.add_argument("--parallel", type=int, default=4, help="the batched run's slots, the server's --parallel "
                   "(default %(default)s); the baseline run has one")
    p.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue (default %(default)s)")
    p.add_argument("--max-rss-mb", type=float, default=3000.0, help="memory bound for the server process")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the model to load")
    p.add_argument("--seed", type=int, default=0)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample_files() -> list[tuple[str, str, list[int]]]:
    """(path, text, cursor positions) of the standard-library sample files: the line starts from a tenth of
    the file on."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for name in SAMPLE_FILES:
        if (stdlib / name).exists():
            text = (stdlib / name).read_text(encoding="utf-8")
            starts = [i + 1 for i, c in enumerate(text) if c == "\n"]
            out.append((name, text, starts[len(starts) // 10:]))
    return out


def samples(seed: int, n: int = 64, prefix_chars: int = 1500) -> list[tuple[str, str, str]]:
    """(path, prefix, suffix) at random line starts of standard-library files."""
    files = _sample_files()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, text, starts = rng.choice(files)
        cursor = rng.choice(starts)
        out.append((name, text[max(0, cursor - prefix_chars):cursor], text[cursor:cursor + prefix_chars // 4]))
    return out


def typing_samples(client: int, prefix_chars: int = 1500, lines: int = 400) -> list[tuple[str, str, str]]:
    """(path, prefix, suffix) of client `client` typing down its own standard-library file: the cursor at
    each next line start from a tenth of the file on; the prefix starts at a fixed point and moves on by half
    of `prefix_chars` whenever it would grow past it."""
    files = _sample_files()
    name, text, starts = files[client % len(files)]
    starts = starts[:lines]
    out, anchor = [], max(0, starts[0] - prefix_chars // 2)
    for cursor in starts:
        while cursor - anchor > prefix_chars:
            anchor += prefix_chars // 2
        out.append((name, text[anchor:cursor], text[cursor:cursor + prefix_chars // 4]))
    return out


def request_for(route: str, sample: tuple[str, str, str], n_predict: int) -> tuple[str, dict]:
    """(url path, JSON body) as llama.vim, tabby-agent or Continue would send it."""
    path, prefix, suffix = sample
    if route == "infill":
        return "/infill", {"input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "prompt": "",
                           "n_predict": n_predict, "stream": False, "cache_prompt": True}
    if route == "tabby":
        # Tabby requests carry no length: the server's default applies.
        return "/v1/completions", {"language": "python", "segments": {"prefix": prefix, "suffix": suffix,
                                                                       "filepath": path}}
    return "/openai/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": n_predict}


class Server:
    """`codegemma serve` in a subprocess, with its peak memory sampled in the background."""

    def __init__(self, model: str | None, port: int, max_queue: int, max_tokens: int, parallel: int) -> None:
        cmd = [sys.executable, "-m", "fim.http.cli", "--port", str(port), "--max-queue", str(max_queue),
               "--max-tokens", str(max_tokens), "--default-tokens", str(max_tokens), "--parallel", str(parallel),
               "--log-level", "warning"]
        if model:
            cmd += ["--model", model]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.peak_rss = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> None:
        with contextlib.suppress(psutil.Error):  # the process is gone: its last sample stands
            self.peak_rss = max(self.peak_rss, psutil.Process(self.proc.pid).memory_info().rss)

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float) -> str | None:
        """None when /health says ok; else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return f"server exited with {self.proc.returncode}: {self.stderr_tail()}"
            try:
                if (await client.get(f"{self.url}/health")).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            self.sample_rss()
            await asyncio.sleep(0.25)
        return f"the server was not ready after {timeout:.0f} s"

    def stderr_tail(self) -> str:
        if self.alive():
            return ""
        return " | ".join((self.proc.stderr.read() or "").strip().splitlines()[-3:])

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def client_loop(client: httpx.AsyncClient, url: str, requests: list[tuple[str, dict]], end: float,
                      rng: random.Random | None, results: list[tuple[str, float]]) -> None:
    """Requests until `end`: random choices of `requests`, or (rng None) them in order, round and round."""
    turn = 0
    while time.monotonic() < end:
        path, body = rng.choice(requests) if rng is not None else requests[turn % len(requests)]
        turn += 1
        start = time.monotonic()
        try:
            # A request still running at the end is abandoned (the server cancels it) and counted as such.
            response = await asyncio.wait_for(client.post(url + path, json=body), timeout=end - start)
            status = str(response.status_code)
        except asyncio.TimeoutError:
            response, status = None, "unfinished"
        except httpx.HTTPError as error:
            response, status = None, type(error).__name__
        results.append((status, time.monotonic() - start))
        if response is not None and response.status_code == 503:
            # A real client backs off as told; bounded so that the run still ends on time.
            retry = float(response.headers.get("retry-after", "1") or 1)
            await asyncio.sleep(max(0.0, min(retry, end - time.monotonic())))


async def normal_request(client: httpx.AsyncClient, url: str, args: argparse.Namespace) -> bool:
    """One ordinary completion after the load; it may wait out the abandoned requests still queued (503)."""
    path, body = request_for("infill", samples(args.seed + 1, 1, args.prefix_chars)[0], args.n_predict)
    deadline = time.monotonic() + 120
    while True:
        response = await client.post(url + path, json=body)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response.status_code == 200 and isinstance(response.json().get("content"), str)
        await asyncio.sleep(float(response.headers.get("retry-after", "1") or 1))


def prefill_share(metrics: str) -> float | None:
    """The share of the model's time (prefill + decode, summed over completions) spent in prefill, from the
    server's /metrics: what batched decoding cannot share (Amdahl's bound on `batching_speedup`)."""
    sums = {}
    for line in metrics.splitlines():
        for stage in ("prefill", "decode"):
            if line.startswith(f'codegemma_completion_stage_seconds_sum{{stage="{stage}"}} '):
                sums[stage] = float(line.split()[-1])
    total = sums.get("prefill", 0.0) + sums.get("decode", 0.0)
    return round(sums["prefill"] / total, 3) if total else None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run(args: argparse.Namespace, parallel: int) -> dict:
    """One load run against a server with `parallel` slots."""
    server = Server(args.model, free_port(), args.max_queue, args.n_predict, parallel)
    report: dict = {"clients": args.clients, "duration_s": args.duration, "route": args.route, "load": args.load,
                    "model": args.model or "default", "parallel": parallel, "max_rss_mb": args.max_rss_mb}
    try:
        async with httpx.AsyncClient(timeout=300.0, limits=httpx.Limits(max_connections=args.clients + 2)) as client:
            problem = await server.wait_ready(client, args.startup_timeout)
            if problem:
                return {**report, "passed": False, "error": problem}
            rng = random.Random(args.seed)
            routes = ROUTES if args.route == "mixed" else (args.route,)
            if args.load == "typing":  # each client its own file and route, in order
                plans = [([request_for(routes[c % len(routes)], s, args.n_predict)
                           for s in typing_samples(c, args.prefix_chars)], None) for c in range(args.clients)]
            else:
                requests = [request_for(routes[i % len(routes)], s, args.n_predict)
                            for i, s in enumerate(samples(args.seed, prefix_chars=args.prefix_chars))]
                plans = [(requests, random.Random(rng.random())) for _ in range(args.clients)]
            results: list[tuple[str, float]] = []
            start = time.monotonic()
            end = start + args.duration
            loops = [asyncio.create_task(client_loop(client, server.url, plan, end, choice, results))
                     for plan, choice in plans]
            while not all(t.done() for t in loops):
                server.sample_rss()
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - start
            survived = server.alive()
            after_ok = survived and await normal_request(client, server.url, args)
            share = prefill_share((await client.get(f"{server.url}/metrics")).text) if survived else None
            server.sample_rss()
    finally:
        server.stop()
    ok = [t for status, t in results if status == "200"]
    peak_mb = server.peak_rss / 2**20
    return {**report, "requests": len(results), "ok": len(ok), "elapsed_s": round(elapsed, 2),
            "throughput_rps": round(len(ok) / elapsed, 3), "p50_ms": round(1000 * percentile(ok, 0.5), 1),
            "p95_ms": round(1000 * percentile(ok, 0.95), 1), "status_counts": dict(Counter(s for s, _ in results)),
            "peak_rss_mb": round(peak_mb, 1), "prefill_share": share, "survived": survived, "after_ok": after_ok,
            "passed": survived and after_ok and peak_mb <= args.max_rss_mb and bool(ok)}


def compare(batched: dict, one_slot: dict) -> dict:
    """The batched run's report with the one-slot run's beside it and the throughput ratio."""
    base = one_slot.get("throughput_rps", 0.0)
    speedup = round(batched["throughput_rps"] / base, 2) if base and "throughput_rps" in batched else None
    return {**batched, "one_slot": one_slot, "batching_speedup": speedup,
            "one_slot_p50_ms": one_slot.get("p50_ms"), "one_slot_p95_ms": one_slot.get("p95_ms"),
            "passed": bool(batched["passed"] and one_slot["passed"])}


def _print_run(label: str, report: dict, args: argparse.Namespace) -> None:
    if "error" in report:
        print(f"codegemma bench http: {label}: {report['error']}", file=sys.stderr)
        return
    print(f"{label}: {report['requests']} requests from {args.clients} clients in {report['elapsed_s']} s "
          f"({report['route']}, {report['load']} load, {args.n_predict} tokens each)")
    print(f"  throughput {report['throughput_rps']} completions/s, latency p50 {report['p50_ms']} ms, "
          f"p95 {report['p95_ms']} ms")
    print("  status codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(report["status_counts"].items())))
    print(f"  prefill share of the model's time: {report['prefill_share']}")
    print(f"  server peak RSS {report['peak_rss_mb']} MB (bound {args.max_rss_mb} MB), "
          f"survived: {report['survived']}, normal request afterwards ok: {report['after_ok']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.n_predict < 1 or args.prefix_chars < 1:
        print("codegemma bench http: --clients, --duration, --n-predict and --prefix-chars must be positive",
              file=sys.stderr)
        return 2
    if not 1 <= args.parallel <= MAX_PARALLEL:
        print(f"codegemma bench http: --parallel must be 1..{MAX_PARALLEL}, got {args.parallel}", file=sys.stderr)
        return 2
    batched = asyncio.run(run(args, args.parallel))
    _print_run(f"batching ({args.parallel} slots)", batched, args)
    one_slot = asyncio.run(run(args, 1))
    _print_run("one slot", one_slot, args)
    report = compare(batched, one_slot)
    if report["batching_speedup"] is not None:
        print(f"batching speedup {report['batching_speedup']}x (completions/s), p95 {report['p95_ms']} ms "
              f"against {report['one_slot_p95_ms']} ms with one slot")
    print(json.dumps(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
