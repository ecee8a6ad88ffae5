"""Runs benchmark tasks through the editor's completion path (`fim.complete`) and scores them as they come.

For left-to-right tasks (HumanEval, MBPP) the request is the prompt as a file with the cursor at its end;
for infilling the file is prefix + suffix with the cursor between (a removed whole line is shown as an
empty line with the cursor on it, see `Task.editor_suffix`). Each completion is executed in the
sandbox on a worker while the model writes the next one. Every finished sample is appended to
`results.jsonl` at once (one write of one whole line), so a run that is interrupted resumes where it
stopped: a half-written last line is cut off (the file is truncated, never rewritten) and a record seen
twice counts once. The file is locked (`flock`) while a run holds it, so a second run on the same folder
is refused instead of interleaving. `run.json` beside it records the settings; resuming with other
settings is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from codegemma import EngineProtocol
from fim import CompletionOptions, CompletionRequest, FileContext, complete

from eval.datasets import Task
from eval.errors import ResultsError
from eval.sandbox import Outcome, Sandbox
from eval.scoring import exact_match

RESULTS = "results.jsonl"
SETTINGS = "run.json"
STAT_KEYS = ("prompt_tokens", "cached_tokens", "new_tokens", "drafted", "accepted", "forward_passes")


@dataclass(frozen=True)
class Settings:
    """How completions are produced (stored in run.json; a resumed run must use the same)."""

    model: str
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0  # 0.95 is the usual choice with sampling (Codex paper); set by the CLI
    max_tokens: int = 256
    speculative: bool | None = None  # None: the engine's choice (on where its measured cost lets it pay)
    context_files: int = 0  # other files attached as multi-file context (canonical code of other tasks)
    seed: int = 0
    candidates: int = 1  # suffix-aware reranking (fim.rerank) with up to this many candidates; 1 = off
    rerank_lines: bool = False  # reranking also scores each candidate cut at its line ends


@dataclass(frozen=True)
class Generated:
    """One completion and how it was produced."""

    completion: str
    stats: dict[str, Any]


def generate(engine: EngineProtocol, task: Task, sample: int, settings: Settings,
             context: tuple[FileContext, ...] = ()) -> Generated:
    """Complete one task once through `fim.complete`, timing the first streamed text and the whole call."""
    text = task.prompt + task.editor_suffix
    options = CompletionOptions(
        max_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p,
        seed=_seed(settings.seed, task.task_id, sample), stop=task.stop, use_context=bool(context),
        speculative=settings.speculative, candidates=settings.candidates,
        rerank_lines=settings.rerank_lines,
    )
    request = CompletionRequest(path=task_path(task), text=text, cursor=len(task.prompt), language="python",
                                other_files=context, options=options)
    first: list[float] = []
    started = time.perf_counter()
    response = complete(engine, request, on_text=lambda piece: first or first.append(time.perf_counter()))
    total = time.perf_counter() - started
    stats = {key: getattr(response.stats, key) for key in STAT_KEYS}
    stats.update(ttft_s=(first[0] - started) if first else total, total_s=total, stop_reason=response.stop_reason)
    if settings.candidates > 1 or settings.rerank_lines:
        rerank = response.debug.get("rerank", {})
        # every candidate with its scores, so that other selection rules can be scored afterwards
        stats.update(rerank_made=rerank.get("made", 1), rerank_chosen=rerank.get("chosen", 0),
                     rerank_candidates=[{key: c[key] for key in ("text", "source", "candidate_tokens", "candidate_logp",
                                                                  "probe_tokens", "probe_logp", "score")}
                                        for c in rerank.get("candidates", [])])
    return Generated(response.text, stats)


def task_path(task: Task) -> str:
    """A file name for the task, as an editor would have it (HumanEval/0 -> HumanEval_0.py)."""
    return task.task_id.replace("/", "_") + ".py"


def context_for(task: Task, tasks: list[Task], count: int) -> tuple[FileContext, ...]:
    """`count` other tasks' canonical code as neighbouring files (the ones just before it in the list)."""
    if count <= 0:
        return ()
    index = tasks.index(task)
    others = [tasks[(index - step) % len(tasks)] for step in range(1, min(count, len(tasks) - 1) + 1)]
    return tuple(FileContext(task_path(o), o.prompt + o.reference + o.suffix) for o in others)


def score(task: Task, completion: str, outcome: Outcome) -> dict[str, Any]:
    """The result fields of one executed sample."""
    record: dict[str, Any] = {"passed": outcome.passed, "result": outcome.result}
    if task.infilling:
        record["exact_match"] = exact_match(completion, task.reference)
    return record


class Run:
    """One evaluation run writing to `out_dir`: generation in this thread, execution on sandbox workers."""

    def __init__(self, out_dir: Path, settings: Settings, sandbox: Sandbox) -> None:
        self.out_dir = out_dir
        self.settings = settings
        self.sandbox = sandbox
        self.results_path = out_dir / RESULTS
        self._lock = threading.Lock()
        out_dir.mkdir(parents=True, exist_ok=True)
        self._sink = _locked_results(self.results_path)
        try:
            self._check_settings()
            self.records = read_results(self.results_path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the results file (also when the process ends, however it ends)."""
        self._sink.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_settings(self) -> None:
        path = self.out_dir / SETTINGS
        wanted = asdict(self.settings)
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ResultsError(f"cannot read {path}: {error}") from None
            # a setting added after a run was stored had its default value in that run
            defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
            changed = sorted(key for key in wanted if stored.get(key, defaults.get(key)) != wanted[key])
            if changed:
                raise ResultsError(f"{self.out_dir} holds a run with other settings ({', '.join(changed)}): "
                                   "use another --out directory")
        else:
            _write_atomically(path, json.dumps(wanted, indent=2) + "\n")

    def pending(self, tasks: list[Task]) -> list[tuple[Task, int]]:
        """(task, sample index) pairs not yet in the results file."""
        done = {(r["benchmark"], r["task_id"], r["sample"]) for r in self.records}
        return [(task, i) for task in tasks for i in range(self.settings.n)
                if (task.benchmark, task.task_id, i) not in done]

    def execute(self, engine: EngineProtocol, tasks: list[Task], all_tasks: dict[str, list[Task]],
                on_record: Callable[[dict], None] | None = None) -> list[dict]:
        """Generate and score every pending sample; returns all records of `tasks` (old and new)."""
        futures: list[tuple[Future, threading.Event]] = []
        for task, sample in self.pending(tasks):
            context = context_for(task, all_tasks[task.benchmark], self.settings.context_files)
            generated = generate(engine, task, sample, self.settings, context)
            future, stored = self.sandbox.submit(task.program(generated.completion)), threading.Event()
            future.add_done_callback(
                lambda done, t=task, s=sample, g=generated, e=stored: self._store(t, s, g, done, on_record, e))
            futures.append((future, stored))
        for future, stored in futures:
            stored.wait()  # the callback, not just the future: a future's waiters wake before its callbacks run
        for future, _ in futures:
            future.result()  # a sandbox failure surfaces here
        wanted = {(t.benchmark, t.task_id) for t in tasks}
        return [r for r in self.records if (r["benchmark"], r["task_id"]) in wanted]

    def _store(self, task: Task, sample: int, generated: Generated, done: Future,
               on_record: Callable[[dict], None] | None, stored: threading.Event) -> None:
        try:
            if done.exception() is not None:
                return
            record = {"benchmark": task.benchmark, "task_id": task.task_id, "sample": sample,
                      "completion": generated.completion, **score(task, generated.completion, done.result()),
                      **generated.stats}
            with self._lock:
                os.write(self._sink.fileno(), (json.dumps(record) + "\n").encode())  # one whole line (O_APPEND)
                self.records.append(record)
                if on_record:
                    on_record(record)
        finally:
            stored.set()


def read_results(path: Path) -> list[dict]:
    """Records of an earlier (maybe interrupted) run: a half-written last line is cut off (by truncating
    the file), a sample recorded twice counts once (the first record)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        os.truncate(path, len(data))  # so that appended records start on a line of their own
    records, seen = [], set()
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
            key = (record["benchmark"], record["task_id"], record["sample"])
        except (json.JSONDecodeError, TypeError, KeyError):
            raise ResultsError(f"{path}:{number} is not a JSON record; use another --out directory") from None
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


def _locked_results(path: Path):
    """The results file opened for appending and locked against a second run (ResultsError if one holds it)."""
    sink = open(path, "ab")
    try:
        fcntl.flock(sink.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sink.close()
        raise ResultsError(f"another run is writing {path}: wait for it to finish or use another --out "
                           "directory") from None
    return sink


def _write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary file beside it, fsynced, then renamed over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _seed(base: int, task_id: str, sample: int) -> int:
    # Stable across runs and processes (unlike hash()), so a resumed sampled run draws the same samples.
    return (base * 1_000_003 + zlib.crc32(task_id.encode()) * 1009 + sample) % (2**31)
