"""`codegemma bench remote`: does a completion through a remote engine equal the local one?

Runs the same eval tasks through `fim.complete` twice, greedy, with the same model: on the engine loaded
here and on a running engine (`--server URL`: a `codegemma serve`, llama.cpp's server, vLLM ...), and
reports the share of tasks whose completions are equal, with the latencies of both. A prompt reaches a
remote engine as text that the engine tokenizes again; where that text does not give back the prompt's
own ids (pieces the prompt builder encoded apart, such as a file label and the code after it, can merge
into other tokens), the two paths see different prompts: that share is reported too.

    codegemma bench remote --server http://127.0.0.1:8012 [--model M] [--dataset infill-single] [--every 50]
        [--limit 20] [--prompt-format text|tokens]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from fim.complete import complete, prepare
from fim.engine import load_engine
from fim.remote import load_remote
from fim.errors import FimError
from fim.prompt_text import ids_to_text, text_to_ids
from fim.request import CompletionOptions, CompletionRequest

from eval.datasets import Task, load_tasks
from eval.errors import EvalError
from eval.runner import task_path


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="codegemma bench remote", description=__doc__.split("\n\n")[0])
    result.add_argument("--server", required=True, metavar="URL", help="the running engine to compare with")
    result.add_argument("--model", default=None, help="the model both run (default: the embedded model)")
    result.add_argument("--dataset", default="infill-single")
    result.add_argument("--every", type=int, default=50, help="every Nth task of the dataset (default 50)")
    result.add_argument("--limit", type=int, default=20, help="at most this many tasks (default 20)")
    result.add_argument("--max-tokens", type=int, default=64)
    result.add_argument("--prompt-format", choices=["text", "tokens"], default="text",
                        help="send prompts as text (every engine; the default) or token ids (codegemma serve, vLLM, "
                             "llama.cpp server)")
    return result


def request_for(task: Task, max_tokens: int) -> CompletionRequest:
    """The eval harness's request for a task (`eval.runner.generate`), greedy."""
    return CompletionRequest(path=task_path(task), text=task.prompt + task.editor_suffix, cursor=len(task.prompt),
                             language="python", options=CompletionOptions(max_tokens=max_tokens, stop=task.stop))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.every < 1 or args.limit < 1:
        print("codegemma bench remote: --every and --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        tasks = load_tasks(args.dataset)[::args.every][:args.limit]
        local = load_engine(args.model)
        remote = load_remote(args.server, args.model, prompt_format=args.prompt_format)
    except (EvalError, FimError) as error:
        print(f"codegemma bench remote: {error}", file=sys.stderr)
        return 2
    equal = same_prompt = 0
    times: dict[str, list[float]] = {"local": [], "remote": []}
    for task in tasks:
        request = request_for(task, args.max_tokens)
        ids = prepare(local, request)[0].ids
        round_trip = text_to_ids(local.tokenizer, ids_to_text(local.tokenizer, ids)) == ids
        try:
            here, there = complete(local, request), complete(remote, request)
        except FimError as error:
            print(f"codegemma bench remote: {task.task_id}: {error}", file=sys.stderr)
            return 1
        times["local"].append(here.elapsed_s)
        times["remote"].append(there.elapsed_s)
        equal += here.text == there.text
        same_prompt += round_trip
        print(f"{task.task_id:<40} {'equal' if here.text == there.text else 'DIFFERENT':<9} "
              f"prompt text {'round-trips' if round_trip else 'retokenizes differently'}  "
              f"local {here.elapsed_s * 1000:.0f} ms  remote {there.elapsed_s * 1000:.0f} ms")
    result = {"tasks": len(tasks), "equal": equal, "agreement": round(equal / len(tasks), 3) if tasks else None,
              "prompt_round_trip": same_prompt, "local_p50_ms": round(1000 * statistics.median(times["local"]))
              if tasks else None, "remote_p50_ms": round(1000 * statistics.median(times["remote"])) if tasks else None,
              "dataset": args.dataset, "every": args.every, "prompt_format": args.prompt_format, "server": args.server, "engine": remote.name}
    print(f"agreement {equal}/{len(tasks)}; prompt text round-trips for {same_prompt}/{len(tasks)}")
    print(json.dumps(result))
    return 0
