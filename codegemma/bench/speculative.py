"""`codegemma bench speculative`: plain vs speculative decoding and prompt reuse on real completion work.

Workloads, all measured in this one run on the same engine:
- multi-line and single-line HumanEval-Infilling cases (the data directory from --data-dir or
  $CODEGEMMA_DATA); a model without FIM tokens completes the prefix, with the suffix as a draft source;
- a replay of typing a real source file, asking for a completion at every pause (end of a word or line),
  timing time-to-first-token with prompt reuse and with a fresh prefill;
- the cost of verifying k draft tokens against one decode step, as the engine measures it to decide whether
  speculation is on by default and how long its drafts are.
The speculative runs use the engine's default settings (speculation where the measured cost lets it pay),
nothing forced. Greedy decoding, so plain and speculative runs produce the same tokens and their times
compare directly.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
from pathlib import Path

from codegemma import kernels
from codegemma.contract import GenerateOptions
from codegemma.engine import Engine
from codegemma.errors import CodegemmaError


def data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("CODEGEMMA_DATA") or "")
    if not arg and not os.environ.get("CODEGEMMA_DATA"):
        raise CodegemmaError("no data directory: pass --data-dir DIR or set CODEGEMMA_DATA (the folder that holds "
                             "humaneval-infilling/)")
    if not (path / "humaneval-infilling").is_dir():
        raise CodegemmaError(f"{path}: no humaneval-infilling/ folder in the data directory")
    return path


def infilling_cases(root: Path, kind: str, limit: int) -> list[dict]:
    name = {"multi": "HumanEval-MultiLineInfilling", "single": "HumanEval-SingleLineInfilling"}[kind]
    with gzip.open(root / "humaneval-infilling" / f"{name}.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    # spread over problems: every n-th case rather than the first few of one problem
    step = max(1, len(rows) // limit)
    return rows[::step][:limit]


def _prompt(engine: Engine, prefix: str, suffix: str) -> tuple[list[int], list[list[int]]]:
    tok = engine.tokenizer
    if engine.supports_fim:
        return [tok.bos_id, *tok.fim_ids(tok.encode(prefix), tok.encode(suffix))], []
    return tok.encode(prefix, bos=True), [tok.encode(suffix)]


def run_completions(engine: Engine, cases: list[dict], max_new: int, single: bool) -> dict:
    """Each case plain and speculative back to back, the order alternating between cases, so that the
    machine's drift (20% and more between minutes here) hits both modes alike."""
    runs = {mode: dict(ms=[], tokens=0, drafted=0, accepted=0) for mode in ("plain", "speculative")}
    for i, case in enumerate(cases):
        ids, sources = _prompt(engine, case["prompt"], case["suffix"])
        for mode in ("plain", "speculative") if i % 2 == 0 else ("speculative", "plain"):
            options = GenerateOptions(max_new_tokens=max_new, speculative=None if mode == "speculative" else False,
                                      stop_strings=("\n",) if single else (), reuse_prompt=False)
            gen = engine.generate(ids, options, draft_sources=sources)
            run = runs[mode]
            run["ms"].append(gen.stats.decode_s * 1000)
            run["tokens"] += gen.stats.new_tokens
            run["drafted"] += gen.stats.drafted
            run["accepted"] += gen.stats.accepted
    out = {mode: dict(ms_per_completion=statistics.mean(r["ms"]), decode_tok_s=r["tokens"] / (sum(r["ms"]) / 1000),
                      tokens=r["tokens"], drafted=r["drafted"], accepted=r["accepted"]) for mode, r in runs.items()}
    out["speedup"] = out["speculative"]["decode_tok_s"] / out["plain"]["decode_tok_s"]
    return out


def typing_replay(engine: Engine, text: str, max_new: int, pauses: int) -> dict:
    """Type `text` from its start; at each pause ask for a completion twice: reusing the cache, then fresh."""
    stops = [i for i, ch in enumerate(text) if ch in " \n(" and i > 200]
    step = max(1, len(stops) // pauses)
    with_reuse, fresh = [], []
    engine.prompt_cache.clear()
    for cursor in stops[::step][:pauses]:
        ids = engine.tokenizer.encode(text[:cursor], bos=True)
        reused = engine.generate(ids, GenerateOptions(max_new_tokens=max_new, cache_key="replay"))
        with_reuse.append(reused.stats.ttft_s * 1000)
        cold = engine.generate(ids, GenerateOptions(max_new_tokens=max_new, reuse_prompt=False))
        fresh.append(cold.stats.ttft_s * 1000)
        # the fresh run recomputed the same prompt into the cache (bit-identically), so the cache is back to
        # what the reused run left: record that, as the next keystroke would find it
        engine.prompt_cache.commit(ids[:len(ids) - 1], "replay")
    return dict(requests=len(fresh), median_ttft_reuse_ms=statistics.median(with_reuse),
                median_ttft_fresh_ms=statistics.median(fresh))


def main(argv: list[str] | None = None) -> int:
    import codegemma

    ap = argparse.ArgumentParser(prog="codegemma bench speculative", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path or preset (default: the embedded model)")
    ap.add_argument("--dtype", default=None, help="bf16 or fp32 (default: bf16 where the CPU has it)")
    ap.add_argument("--data-dir", default=None, help="benchmark data folder (or $CODEGEMMA_DATA)")
    ap.add_argument("--cases", type=int, default=12, help="HumanEval-Infilling cases per workload")
    ap.add_argument("--pauses", type=int, default=12, help="completion requests in the typing replay")
    ap.add_argument("--replay-file", default=None, help="source file to replay (default: json/decoder.py)")
    args = ap.parse_args(argv)
    root = data_dir(args.data_dir)
    engine = codegemma.load(args.model, dtype=args.dtype)
    engine.warmup()
    costs = engine.verify_cost.to_dict()
    print("verify cost of k draft tokens vs one step: " + ", ".join(f"k={k}: {v:.2f}x" for k, v in costs.items())
          + (" (AMX tiles)" if kernels.amx() else ""))
    print(f"speculation on by default: {engine.speculative_default}")
    multi = run_completions(engine, infilling_cases(root, "multi", args.cases), 64, single=False)
    single = run_completions(engine, infilling_cases(root, "single", args.cases), 32, single=True)
    import json.decoder as example

    replay_text = Path(args.replay_file or example.__file__).read_text()
    replay = typing_replay(engine, replay_text[:6000], 16, args.pauses)
    print(f"{'workload':<12} {'plain tok/s':>11} {'spec tok/s':>10} {'plain ms':>9} {'spec ms':>8} {'speedup':>8} "
          f"{'accepted':>9}")
    for name, r in (("multi-line", multi), ("single-line", single)):
        p, s = r["plain"], r["speculative"]
        print(f"{name:<12} {p['decode_tok_s']:>11.1f} {s['decode_tok_s']:>10.1f} {p['ms_per_completion']:>9.0f} "
              f"{s['ms_per_completion']:>8.0f} {r['speedup']:>7.2f}x {s['accepted']:>4}/{s['drafted']:<4}")
    print(f"typing replay ({replay['requests']} requests): median TTFT {replay['median_ttft_reuse_ms']:.0f} ms with "
          f"reuse vs {replay['median_ttft_fresh_ms']:.0f} ms fresh")
    if engine.verify_measurements > 1:  # the first table said drafts do not pay; the engine looked again
        costs = engine.verify_cost.to_dict()
        print(f"verify cost measured {engine.verify_measurements} times; best times now: "
              + ", ".join(f"k={k}: {v:.2f}x" for k, v in costs.items())
              + f"; speculation on by default: {engine.speculative_default}")
    drafted = multi["speculative"]["drafted"] + single["speculative"]["drafted"]
    accepted = multi["speculative"]["accepted"] + single["speculative"]["accepted"]
    result = dict(
        speedup_multiline=round(multi["speedup"], 3),
        speedup_singleline=round(single["speedup"], 3),
        worst_ratio=round(min(multi["speedup"], single["speedup"]), 3),
        acceptance_rate=round(accepted / drafted, 3) if drafted else 0.0,
        ttft_reuse_ratio=round(replay["median_ttft_reuse_ms"] / replay["median_ttft_fresh_ms"], 3),
        verify_cost=costs,
        verify_cost_k8=round(engine.verify_cost(8), 3),
        speculative_default=engine.speculative_default,
        verify_measurements=engine.verify_measurements,
        plain_multiline_tok_s=round(multi["plain"]["decode_tok_s"], 2),
        spec_multiline_tok_s=round(multi["speculative"]["decode_tok_s"], 2),
        amx=kernels.amx(),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
