"""`codegemma bench decode`: load time, RSS, prefill and decode speed of this engine against transformers
(loaded directly in bf16) and llama.cpp (when installed) on the same GGUF and token ids.

Our engine runs three ways: the default (a GGUF file in its own block formats), and the explicit float copies
bf16 and int8. `--synthetic Q4_K_M|Q8_0` measures a CodeGemma 2B-size file instead of the embedded model
(codegemma.bench.synthetic). Each engine runs in its own subprocess so load time and RSS are its own; the
first load also runs once with an empty model cache, which gives the cold load time and the cache's size.
Our engine runs the file's own weights, as llama.cpp does (`adapter="off"`); where the FIM adapter ships for
the model (the embedded one), the engine as it loads by default, with the adapter merged, is measured too.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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
    text = "".join(p.read_text() for p in sorted(Path(__file__).parents[1].glob("*.py")))
    return tok.encode(text, bos=True)[:n]


def _weight_bytes_per_token(engine) -> int:
    """Bytes of weights one decode step reads: every matrix once, the tied embedding once as the output
    layer; norms (the model's only parameters of one dimension) left out."""
    norms = sum(p.numel() * p.element_size() for p in engine.model.parameters() if p.dim() == 1)
    return sum(engine.formats().values()) - norms


def _cache_mb(root: Path) -> float:
    """What a model's loading wrote under the cache root, the native kernels' build left out."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "kernels" not in p.parts) / 1e6


def worker_ours(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import codegemma
    from codegemma.generate import prefill

    t = time.perf_counter()
    engine = codegemma.load(args.model, dtype=None if args.path == "native" else "bf16", int8=args.path == "int8",
                            adapter=args.adapter)
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
    return dict(tok_s=decode_tok_s, prefill_tok_s=prefill_tok_s, load_s=load_s, rss_mb=_rss_mb(),
                weight_bytes=_weight_bytes_per_token(engine), layers_ms=layers_ms, output_ms=output_ms,
                text=gen.text, tokens=gen.tokens, formats={k: round(v / 1e6, 1) for k, v in engine.formats().items()})


def worker_cold(args) -> dict:
    """The default load with an empty model cache (CODEGEMMA_CACHE is a fresh folder that reuses the
    kernels' build): the first-start time and what the load writes to disk."""
    import codegemma

    root = Path(os.environ["CODEGEMMA_CACHE"])
    t = time.perf_counter()
    codegemma.load(args.model, adapter=args.adapter)
    return dict(load_s=time.perf_counter() - t, cache_mb=_cache_mb(root))


def worker_hf(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    path = _gguf(args)
    tok = _tokenizer(path)  # identical ids for both engines
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
    path = _gguf(args)
    tok = _tokenizer(path)
    t = time.perf_counter()
    llm = Llama(model_path=str(path), n_threads=args.threads, n_ctx=2048, n_batch=512, verbose=False)
    load_s = time.perf_counter() - t
    long = _prefill_ids(tok, args.prefill)
    llm.eval(long[:64])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(long)
    prefill_tok_s = len(long) / (time.perf_counter() - t)
    llm.reset()
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
    return dict(tok_s=best, prefill_tok_s=prefill_tok_s, load_s=load_s, rss_mb=_rss_mb())


def _gguf(args) -> Path:
    from codegemma.loader import default_gguf

    return default_gguf() if args.model is None else Path(args.model)


def _tokenizer(path: Path):
    from codegemma.gguf.format import read_gguf
    from codegemma.gguf.loader import cached_tokenizer

    return cached_tokenizer(path, read_gguf(path))


WORKERS = {"ours": worker_ours, "cold": worker_cold, "hf": worker_hf, "llamacpp": worker_llamacpp}


def _run_worker(name: str, args, extra: list[str] = (), env: dict[str, str] | None = None) -> dict | None:
    cmd = [sys.executable, "-m", "codegemma.bench.decode", "--worker", name, "--tokens", str(args.tokens),
           "--threads", str(args.threads), "--prefill", str(args.prefill), "--reps", str(args.reps), *extra]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        print(f"[{name}] failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="codegemma bench decode", description=__doc__)
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    ap.add_argument("--synthetic", choices=("Q4_K_M", "Q8_0"), default=None,
                    help="measure a CodeGemma 2B-size synthetic file in this format (written on first use)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to decode per engine")
    ap.add_argument("--prefill", type=int, default=1000, help="prompt tokens for the prefill measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="decode runs per engine; the best counts")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline (it loads in ~45 s)")
    ap.add_argument("--copies", action="store_true", help="also measure the explicit bf16 and int8 float copies "
                    "(default for the embedded model; they need a float cache of the file's size x 2-4)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=("native", "bf16", "int8"), default="native", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", default="off", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    if args.synthetic:
        from codegemma.bench.synthetic import synthetic_model

        args.model = str(synthetic_model(args.synthetic))
    copies = args.copies or args.model is None
    ours = _run_worker("ours", args)
    if ours is None:
        return 1
    with tempfile.TemporaryDirectory() as cache:
        from codegemma import kernels

        (Path(cache) / "kernels").symlink_to(kernels.cache_dir(), target_is_directory=True)
        cold = _run_worker("cold", args, env={"CODEGEMMA_CACHE": cache})
    bf16 = _run_worker("ours", args, ["--path", "bf16"]) if copies else None
    int8 = _run_worker("ours", args, ["--path", "int8"]) if copies else None
    from codegemma.adapter.lora import DEFAULT_ADAPTER

    adapted = _run_worker("ours", args, ["--adapter", "default"]) if args.model is None and DEFAULT_ADAPTER.is_file() \
        else None
    hf = None if args.no_hf or args.synthetic else _run_worker("hf", args)
    llama = _run_worker("llamacpp", args)
    rows = [("codegemma (gguf)", ours), ("codegemma +adapter", adapted), ("codegemma bf16 copy", bf16),
            ("codegemma int8 copy", int8), ("transformers bf16", hf), ("llama.cpp", llama)]
    print(f"{'engine':<20} {'decode tok/s':>12} {'prefill tok/s':>13} {'load s':>8} {'RSS MB':>8}")
    for name, r in rows:
        if r:
            prefill = f"{r['prefill_tok_s']:.0f}" if "prefill_tok_s" in r else "-"
            print(f"{name:<20} {r['tok_s']:>12.1f} {prefill:>13} {r['load_s']:>8.2f} {r['rss_mb']:>8.0f}")
        else:
            print(f"{name:<20} {'n/a':>12}")
    from codegemma import kernels

    print("native decode kernels: " + ("on" if kernels.available() else f"off ({kernels.unavailable_reason()})")
          + (", AMX tiles for several token rows" if kernels.amx() else ""))
    print("weight formats (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(ours["formats"].items())))
    print(f"one decode step: layers {ours['layers_ms']:.1f} ms + output layer {ours['output_ms']:.1f} ms")
    if cold:
        print(f"first load with an empty model cache: {cold['load_s']:.2f} s, cache {cold['cache_mb']:.1f} MB")
    if hf:
        same = sum(a == b for a, b in zip(ours["tokens"], hf["tokens"]))
        print(f"greedy tokens identical to transformers: {same}/{len(hf['tokens'])} "
              f"(bf16 rounding differs between the two implementations)")

    def r(value: float | None, digits: int = 2) -> float | None:
        return None if value is None else round(value, digits)

    result = dict(
        model=args.model or "default",
        decode_tok_s=r(ours["tok_s"]),
        decode_bf16_tok_s=r(bf16 and bf16["tok_s"]),
        decode_int8_tok_s=r(int8 and int8["tok_s"]),
        adapter_decode_tok_s=r(adapted and adapted["tok_s"]),
        adapter_prefill_tok_s=r(adapted and adapted["prefill_tok_s"], 1),
        adapter_load_s=r(adapted and adapted["load_s"], 3),
        adapter_rss_mb=r(adapted and adapted["rss_mb"], 1),
        hf_decode_tok_s=r(hf and hf["tok_s"]),
        llamacpp_decode_tok_s=r(llama and llama["tok_s"]),
        prefill_tok_s=r(ours["prefill_tok_s"], 1),
        llamacpp_prefill_tok_s=r(llama and llama["prefill_tok_s"], 1),
        load_s=r(ours["load_s"], 3),
        first_load_s=r(cold and cold["load_s"], 3),
        rss_mb=r(ours["rss_mb"], 1),
        llamacpp_rss_mb=r(llama and llama["rss_mb"], 1),
        file_mb=r(Path(args.model).stat().st_size / 1e6 if args.model else None, 1),
        cache_mb=r(cold and cold["cache_mb"], 1),
        formats=ours["formats"],
        bandwidth_gb_s=r(ours["weight_bytes"] * ours["tok_s"] / 1e9),
        int8_rss_mb=r(int8 and int8["rss_mb"], 1),
        speedup_vs_hf=r(hf and ours["tok_s"] / hf["tok_s"]),
        vs_llamacpp=r(llama and ours["tok_s"] / llama["tok_s"]),
        int8_vs_llamacpp=r(llama and int8 and int8["tok_s"] / llama["tok_s"]),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
