"""`codegemma bench completion`: quality and latency of one model in one table, across decoding setups.

Each setup runs the same tasks through `fim.complete`: plain decoding vs speculative decoding, each
without and with multi-file context (the canonical code of other tasks of the benchmark attached as
neighbouring files: it measures what the extra prompt costs and whether unrelated context hurts; it is
not related context, so it is not expected to help). Per setup and benchmark: pass@1, exact match for
infilling, time to first token, total latency, tokens per second, draft acceptance. Results go under
--out (one resumable run per setup); the last line printed is a JSON object.

    codegemma bench completion [--model PATH] [--dataset infill-single,humaneval] [--limit 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from eval.cli import add_sandbox_arguments, names, sandbox_from
from eval.datasets import load_tasks, select
from eval.errors import EvalError

SETUPS = {  # name -> (speculative, use context)
    "plain": (False, False),
    "speculative": (True, False),
    "plain+context": (False, True),
    "speculative+context": (True, True),
}


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="codegemma bench completion", description=__doc__.split("\n\n")[0])
    result.add_argument("--model", default=None, help="checkpoint dir or .gguf (default: the embedded model)")
    result.add_argument("--dtype", default=None)
    result.add_argument("--int8", action="store_true")
    result.add_argument("--dataset", "--tasks", dest="datasets", type=names, default=["infill-single", "humaneval"])
    result.add_argument("--limit", type=int, default=20, help="first N tasks of each benchmark")
    result.add_argument("--max-tokens", type=int, default=128)
    result.add_argument("--setups", type=names, default=list(SETUPS), help=f"of {', '.join(SETUPS)}")
    result.add_argument("--context-files", type=int, default=2, help="files attached in the +context setups")
    result.add_argument("--out", type=Path, default=None, help="results per setup (default: a temp dir)")
    add_sandbox_arguments(result)
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        return bench(parser().parse_args(argv))
    except EvalError as error:
        print(f"codegemma bench completion: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codegemma bench completion: interrupted", file=sys.stderr)
        return 130


def bench(args: argparse.Namespace) -> int:
    from eval.report import summarize, table, terminal_table
    from eval.runner import Run, Settings
    from eval.session import load_engine, progress_bar

    unknown = [s for s in args.setups if s not in SETUPS]
    if unknown:
        raise EvalError(f"unknown setup(s) {', '.join(unknown)}: use {', '.join(SETUPS)}")
    if args.limit < 1:
        raise EvalError("--limit must be at least 1")
    all_tasks = {benchmark[0].benchmark: benchmark
                 for benchmark in (load_tasks(name, args.data_dir) for name in args.datasets)}
    tasks = [t for benchmark in all_tasks.values() for t in select(benchmark, None, args.limit)]
    out = args.out or Path(tempfile.mkdtemp(prefix="codegemma-bench-"))
    started = time.monotonic()
    engine = load_engine(args.model, args.dtype, args.int8)
    rows: dict[str, dict] = {}
    with sandbox_from(args) as sandbox:
        for setup in args.setups:
            speculative, context = SETUPS[setup]
            settings = Settings(model=engine.name, max_tokens=args.max_tokens, speculative=speculative,
                                context_files=args.context_files if context else 0)
            with (Run(out / setup.replace("+", "_"), settings, sandbox) as evaluation,
                  progress_bar(len(evaluation.pending(tasks)), setup) as on_record):
                records = evaluation.execute(engine, tasks, all_tasks, on_record)
            for benchmark, summary in summarize(records).items():
                rows[f"{setup} / {benchmark}"] = summary
    print(terminal_table(table(rows, first="setup / benchmark")))
    print(json.dumps({"bench": "completion", "model": engine.name, "limit": args.limit, "out": str(out),
                      "wall_s": round(time.monotonic() - started, 1), "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
