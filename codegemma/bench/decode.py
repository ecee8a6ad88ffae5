"""`codegemma bench decode`: load time, RSS, prefill and decode speed of this engine (bf16 and int8) against
transformers (loaded directly in bf16) and llama.cpp (when installed) on the same GGUF and token ids.

Each engine runs in its own subprocess so load time and RSS are its own. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

PROMPT = '''import os
import sys
from dataclasses import dataclass


@dataclass
class Task:
    name: str
    priority: int
    done: bool = False


def load_tasks(path: str) -> list[Task]:
    """Read one task per line: name, priority, done flag."""
    tasks = []
    with open(path) as f:
        for line in f:
            name, priority, done = line.strip().split(",")
            tasks.append(Task(name, int(priority), done == "1"))
    return tasks


def pending(tasks: list[Task]) -> list[Task]:
'''


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def _prefill_ids(tok, n: int) -> list[int]:
    """About n tokens of real code (the model core's own top-level sources) for the prefill measurement."""
    from pathlib import Path

    text = "".join(p.read_text() for p in sorted(Path(__file__).parents[1].glob("*.py")))
    return tok.encode(text, bos=True)[:n]


def _weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every matrix once (fused products and their views are one
    storage), the tied embedding once as the output layer; norms and the KV cache left out."""
    seen, total = set(), 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if "kv_cache" in name or "norm" in name or t.dim() < 2:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def worker_ours(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import codegemma
    from codegemma.generate import prefill

    t = time.perf_counter()
    engine = codegemma.load(args.model, dtype="bf16", int8=args.int8)
    load_s = time.perf_counter() - t
    ids = engine.tokenizer.encode(PROMPT, bos=True)
    options = codegemma.GenerateOptions(max_new_tokens=args.tokens, speculative=False, reuse_prompt=False, stop_ids=frozenset())
    engine.generate(ids, replace(options, max_new_tokens=4))  # warm-up
    decode_tok_s = 0.0
    for _ in range(args.reps):  # best of a few runs: this shared machine's speed drifts by 20% and more
        gen = engine.generate(ids, options)
        decode_tok_s = max(decode_tok_s, (gen.stats.new_tokens - 1) / (gen.stats.total_s - gen.stats.ttft_s))
    long = _prefill_ids(engine.tokenizer, args.prefill)
    t = time.perf_counter()
    prefill(engine.model, long, 0)
    prefill_tok_s = len(long) / (time.perf_counter() - t)
    # where a decode step's time goes: the layers vs the tied output layer
    m = engine.model
    with torch.inference_mode():
        x = torch.tensor([[ids[-1]]])
        t = time.perf_counter()
        for i in range(10):
            h = m.hidden(x, len(ids) + i)
        layers_ms = (time.perf_counter() - t) * 100
        t = time.perf_counter()
        for _ in range(10):
            m.output(h)
        output_ms = (time.perf_counter() - t) * 100
    weight_bytes = _weight_bytes_per_token(m)
    return dict(tok_s=decode_tok_s, prefill_tok_s=prefill_tok_s, load_s=load_s, rss_mb=_rss_mb(),
                weight_bytes=weight_bytes, layers_ms=layers_ms, output_ms=output_ms, text=gen.text,
                tokens=gen.tokens)


def worker_hf(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from codegemma.loader import default_gguf
    from codegemma.tokenizer import Tokenizer
    from codegemma.gguf.loader import gguf_cache_dir

    path = default_gguf() if args.model is None else args.model
    tok = Tokenizer.from_file(gguf_cache_dir(path) / "tokenizer.model")  # identical ids for both engines
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.bfloat16)
    load_s = time.perf_counter() - t
    ids = torch.tensor([tok.encode(PROMPT, bos=True)])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=1, do_sample=False)
        first = time.perf_counter() - t
        total = float("inf")
        for _ in range(args.reps):
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False, min_new_tokens=args.tokens)
            total = min(total, time.perf_counter() - t)
    new = out.shape[1] - ids.shape[1]
    return dict(tok_s=(new - 1) / (total - first), load_s=load_s, rss_mb=_rss_mb(),
                tokens=out[0, ids.shape[1]:].tolist())


def worker_llamacpp(args) -> dict | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from codegemma.loader import default_gguf
    from codegemma.tokenizer import Tokenizer
    from codegemma.gguf.loader import gguf_cache_dir

    path = str(default_gguf() if args.model is None else args.model)
    tok = Tokenizer.from_file(gguf_cache_dir(path) / "tokenizer.model")
    t = time.perf_counter()
    llm = Llama(model_path=path, n_threads=args.threads, n_ctx=2048, verbose=False)
    load_s = time.perf_counter() - t
    ids = tok.encode(PROMPT, bos=True)
    llm.eval(ids)
    best = 0.0
    for _ in range(args.reps):
        n = 0
        for _token in llm.generate(ids, temp=0.0, reset=True):
            n += 1
            if n == 1:
                t1 = time.perf_counter()
            if n >= args.tokens:
                break
        best = max(best, (n - 1) / (time.perf_counter() - t1))
    return dict(tok_s=best, load_s=load_s, rss_mb=_rss_mb())


WORKERS = {"ours": worker_ours, "hf": worker_hf, "llamacpp": worker_llamacpp}


def _run_worker(name: str, args, extra: list[str] = ()) -> dict | None:
    cmd = [sys.executable, "-m", "codegemma.bench.decode", "--worker", name, "--tokens", str(args.tokens),
           "--threads", str(args.threads), "--prefill", str(args.prefill), "--reps", str(args.reps), *extra]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{name}] failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="codegemma bench decode", description=__doc__)
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to decode per engine")
    ap.add_argument("--prefill", type=int, default=1000, help="prompt tokens for the prefill measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="decode runs per engine; the best counts")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline (it loads in ~45 s)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    ours = _run_worker("ours", args)
    if ours is None:
        return 1
    int8 = _run_worker("ours", args, ["--int8"])
    hf = None if args.no_hf else _run_worker("hf", args)
    llama = _run_worker("llamacpp", args)
    rows = [("codegemma bf16", ours), ("codegemma int8", int8), ("transformers bf16", hf), ("llama.cpp", llama)]
    print(f"{'engine':<20} {'decode tok/s':>12} {'load s':>8} {'RSS MB':>8}")
    for name, r in rows:
        if r:
            print(f"{name:<20} {r['tok_s']:>12.1f} {r['load_s']:>8.2f} {r['rss_mb']:>8.0f}")
        else:
            print(f"{name:<20} {'n/a':>12}")
    from codegemma import kernels

    print("native decode kernels: " + ("on" if kernels.available() else f"off ({kernels.unavailable_reason()})"))
    print(f"prefill: {ours['prefill_tok_s']:.0f} tok/s over {args.prefill} tokens (bf16)")
    print(f"one bf16 decode step: layers {ours['layers_ms']:.1f} ms + output layer {ours['output_ms']:.1f} ms")
    if int8:
        print(f"one int8 decode step: layers {int8['layers_ms']:.1f} ms + output layer {int8['output_ms']:.1f} ms")
    if hf:
        same = sum(a == b for a, b in zip(ours["tokens"], hf["tokens"]))
        print(f"greedy tokens identical to transformers: {same}/{len(hf['tokens'])} "
              f"(bf16 rounding differs between the two implementations)")
    result = dict(
        decode_tok_s=round(ours["tok_s"], 2),
        decode_int8_tok_s=round(int8["tok_s"], 2) if int8 else None,
        hf_decode_tok_s=round(hf["tok_s"], 2) if hf else None,
        llamacpp_decode_tok_s=round(llama["tok_s"], 2) if llama else None,
        prefill_tok_s=round(ours["prefill_tok_s"], 1),
        load_s=round(ours["load_s"], 3),
        rss_mb=round(ours["rss_mb"], 1),
        bandwidth_gb_s=round(ours["weight_bytes"] * ours["tok_s"] / 1e9, 2),
        int8_rss_mb=round(int8["rss_mb"], 1) if int8 else None,
        int8_bandwidth_gb_s=round(int8["weight_bytes"] * int8["tok_s"] / 1e9, 2) if int8 else None,
        speedup_vs_hf=round(ours["tok_s"] / hf["tok_s"], 2) if hf else None,
        int8_speedup_vs_hf=round(int8["tok_s"] / hf["tok_s"], 2) if hf and int8 else None,
        int8_vs_llamacpp=round(int8["tok_s"] / llama["tok_s"], 2) if llama and int8 else None,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
