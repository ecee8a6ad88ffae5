"""Fixed, documented subsets of the benchmarks: every k-th task of each, so that a subset spreads over the
whole set (task ids are ordered by problem) and is the same in every run.

`spread` is sized for a 95% confidence interval of about +-5 points or better on every benchmark (a Wilson
interval around p is widest at p = 0.5: +-5.4 points for 329 tasks, +-5.7 for 291, +-7.6 for 164; at the
scores this model reaches, 10-30%, +-3 to +-5): HumanEval and MBPP whole (164 and 500 tasks), every 3rd
infill-single task (345 of 1033), every 20th infill-multi task (291 of 5815), all 164 infill-random tasks.
`quick` is a smaller spread for a loaded or slow machine: every 10th HumanEval task (17), every 25th MBPP
task (20), every 15th infill-single task (69), every 100th infill-multi task (59), every 4th infill-random
task (41).
"""

from __future__ import annotations

from eval.datasets import Task
from eval.errors import EvalError

# subset name -> benchmark -> take every k-th task (from the first); benchmarks not named are taken whole
SUBSETS: dict[str, dict[str, int]] = {
    "full": {},
    "spread": {"infill-single": 3, "infill-multi": 20},
    "quick": {"humaneval": 10, "mbpp": 25, "infill-single": 15, "infill-multi": 100, "infill-random": 4},
}


def subset(tasks: list[Task], name: str) -> list[Task]:
    """The named subset of one benchmark's tasks (in their order)."""
    if name not in SUBSETS:
        raise EvalError(f"unknown subset {name!r}: use one of {', '.join(SUBSETS)}")
    if not tasks:
        return tasks
    return tasks[::SUBSETS[name].get(tasks[0].benchmark, 1)]
