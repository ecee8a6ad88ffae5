"""Benchmark loaders: HumanEval, MBPP and HumanEval-Infilling as a list of `Task`s.

Every task is "text before the cursor, text after it": the model writes what goes between, and
`Task.program(completion)` is the Python program whose clean run means the completion is correct.

Benchmarks by name (files under the data directory, unchanged public copies):
  humaneval      humaneval/HumanEval.jsonl.gz                              left-to-right completion
  mbpp           mbpp/mbpp.jsonl, test split task_ids 11-510 (500 tasks)   left-to-right completion
  infill-single  humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz    fill the middle
  infill-multi   humaneval-infilling/HumanEval-MultiLineInfilling.jsonl.gz     fill the middle
  infill-random  humaneval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz  fill the middle
Any other `.jsonl`, `.jsonl.gz` or `.json` file in one of these formats may be given by path; its format is
recognised from its keys (`suffix` = infilling, `test_list` = MBPP, else HumanEval).

MBPP prompt format (zero-shot, the wording of Austin et al. 2021 inside a module docstring, so a code
model sees an ordinary Python file and writes the function after it):
    \"\"\"
    You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:

    {test 1}
    {test 2}
    {test 3}
    \"\"\"
The program run for scoring is the prompt, the completion, the task's `test_setup_code` and its three
asserts (the `challenge_test_list` is not used, as in the published numbers).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from eval.errors import DatasetError

DATA_ENV = "CODEGEMMA_DATA"
MBPP_TEST_IDS = range(11, 511)

# Stop sequences of the Codex paper for HumanEval: the function body ends at the next top-level statement.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# MBPP completions write whole functions (helpers allowed); they end where tests or a new file would start.
MBPP_STOP = ("\nassert", '\n"""', "\nprint", "\nif __name__", "\n```")

LINE_HOLE_PREFIXES = ("SingleLineInfilling/", "MultiLineInfilling/")

BENCHMARKS: dict[str, str] = {
    "humaneval": "humaneval/HumanEval.jsonl.gz",
    "mbpp": "mbpp/mbpp.jsonl",
    "infill-single": "humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz",
    "infill-multi": "humaneval-infilling/HumanEval-MultiLineInfilling.jsonl.gz",
    "infill-random": "humaneval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz",
}


@dataclass(frozen=True)
class Task:
    """One benchmark problem: the model writes the text between `prompt` and `suffix`."""

    benchmark: str
    task_id: str
    prompt: str  # text before the cursor
    suffix: str  # text after the cursor ("" for left-to-right completion)
    reference: str  # the canonical completion (the removed middle, for infilling)
    test: str  # test code: defines `check(candidate)` (HumanEval) or holds asserts (MBPP)
    entry_point: str | None  # the function `check` is called with; None when the tests are plain asserts
    stop: tuple[str, ...] = ()  # extra stop strings for left-to-right completion
    infilling: bool = False  # a fill-in-the-middle task (exact match of the middle is also scored)

    @property
    def line_hole(self) -> bool:
        """Whole lines were removed (single- and multi-line infilling), not an arbitrary span."""
        return self.task_id.startswith(LINE_HOLE_PREFIXES)

    @property
    def editor_suffix(self) -> str:
        """The text after the cursor as an editor shows the task.

        A removed whole line is, in an editor, an empty line with the cursor on it; completions there do not
        end with a newline, so the line break stays in the file after the cursor.
        """
        return "\n" + self.suffix if self.line_hole else self.suffix

    def program(self, completion: str) -> str:
        """The program to execute: code with the completion in place, then the tests, then the check call."""
        if self.line_hole and not completion.endswith("\n"):
            completion += "\n"  # the line break of the empty line the completion was written on
        call = f"\ncheck({self.entry_point})\n" if self.entry_point else "\n"
        return self.prompt + completion + self.suffix + "\n" + self.test + call


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data directory from the argument, else from $CODEGEMMA_DATA; an error if neither names one."""
    chosen = data_dir if data_dir else os.environ.get(DATA_ENV)
    if not chosen:
        raise DatasetError(f"no data directory: pass --data-dir DIR or set {DATA_ENV}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data directory {path} does not exist")
    return path


def load_tasks(name: str, data_dir: str | os.PathLike | None = None) -> list[Task]:
    """Tasks of a named benchmark (under the data directory) or of a benchmark file given by path."""
    if name in BENCHMARKS:
        path = resolve_data_dir(data_dir) / BENCHMARKS[name]
        if not path.is_file():
            raise DatasetError(f"benchmark {name!r}: {path} is missing from the data directory")
        return _parse(name, _read_records(path), mbpp_test_split=True)
    path = Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(BENCHMARKS)
        raise DatasetError(f"unknown benchmark {name!r}: use one of {known} or the path of a benchmark file")
    return _parse(_stem(path), _read_records(path), mbpp_test_split=False)


def select(tasks: list[Task], task_ids: list[str] | None = None, limit: int | None = None) -> list[Task]:
    """Only the named task ids (in the given order, each must exist), then the first `limit`."""
    if task_ids:
        by_id = {task.task_id: task for task in tasks}
        missing = [task_id for task_id in task_ids if task_id not in by_id]
        if missing:
            raise DatasetError(f"unknown task id(s): {', '.join(missing[:5])}")
        tasks = [by_id[task_id] for task_id in task_ids]
    return tasks[:limit] if limit is not None else tasks


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The zero-shot MBPP prompt (see the module docstring)."""
    listed = "\n".join(tests)
    return (
        '"""\nYou are an expert Python programmer, and here is your task: '
        f"{text} Your code should pass these tests:\n\n{listed}\n\"\"\"\n"
    )


def _stem(path: Path) -> str:
    name = path.name
    for ending in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return path.stem


def _read_records(path: Path) -> list[dict]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    try:
        if path.name.endswith(".json"):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON/JSONL: {error}") from None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise DatasetError(f"{path} holds no benchmark records")
    return records


def _parse(benchmark: str, records: list[dict], mbpp_test_split: bool) -> list[Task]:
    try:
        if "test_list" in records[0]:
            if mbpp_test_split:
                records = [r for r in records if int(r["task_id"]) in MBPP_TEST_IDS]
            return [_mbpp_task(benchmark, r) for r in records]
        return [_humaneval_task(benchmark, r) for r in records]
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"benchmark {benchmark!r}: a record lacks a usable field ({error})") from None


def _humaneval_task(benchmark: str, record: dict) -> Task:
    infilling = "suffix" in record
    return Task(
        benchmark=benchmark,
        task_id=str(record["task_id"]),
        prompt=record["prompt"],
        suffix=record["suffix"] if infilling else "",
        reference=record["canonical_solution"],
        test=record["test"],
        entry_point=record["entry_point"],
        stop=() if infilling else HUMANEVAL_STOP,
        infilling=infilling,
    )


def _mbpp_task(benchmark: str, record: dict) -> Task:
    tests = list(record["test_list"])
    # The sanitized MBPP file names its fields differently: `prompt` for `text`, `test_imports` for setup.
    text = record.get("text", record.get("prompt"))
    setup = record.get("test_setup_code") or "\n".join(record.get("test_imports", []))
    return Task(
        benchmark=benchmark,
        task_id=str(record["task_id"]),
        prompt=mbpp_prompt(text, tests),
        suffix="",
        reference=record["code"],
        test=setup + "\n" + "\n".join(tests),
        entry_point=None,
        stop=MBPP_STOP,
    )
