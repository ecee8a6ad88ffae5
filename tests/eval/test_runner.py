"""The runner: completions through fim.complete with a tiny engine, streaming results, resuming."""

import pytest
from tests.tiny import tiny_engine

from eval.datasets import load_tasks
from eval.errors import ResultsError
from eval.runner import RESULTS, Run, Settings, context_for, generate, read_results

MAX_TOKENS = 4


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module")
def benchmarks(data_dir):
    return {name: load_tasks(name, data_dir) for name in ("humaneval", "infill-single")}


def test_generate_records_latency_tokens_and_speculation(engine, benchmarks):
    task = benchmarks["infill-single"][0]
    generated = generate(engine, task, 0, Settings(model=engine.name, max_tokens=MAX_TOKENS))
    stats = generated.stats
    assert isinstance(generated.completion, str)
    assert 0 < stats["ttft_s"] <= stats["total_s"]
    assert 0 <= stats["new_tokens"] <= MAX_TOKENS and stats["prompt_tokens"] > 0
    assert stats["drafted"] >= stats["accepted"] >= 0
    assert stats["stop_reason"]


def test_context_is_other_tasks_code(benchmarks):
    tasks = benchmarks["humaneval"]
    files = context_for(tasks[0], tasks, 2)
    assert [f.path for f in files] == ["HumanEval_163.py", "HumanEval_162.py"]
    assert tasks[163].reference in files[0].text
    assert context_for(tasks[0], tasks, 0) == ()


def test_run_streams_results_and_resumes(tmp_path, engine, benchmarks, sandbox):
    tasks = benchmarks["humaneval"][:1] + benchmarks["infill-single"][:1]
    settings = Settings(model=engine.name, n=2, max_tokens=MAX_TOKENS)
    seen = []
    records = Run(tmp_path, settings, sandbox).execute(engine, tasks, benchmarks, seen.append)
    assert len(records) == len(seen) == 4
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert len(lines) == 4
    for record in records:
        assert {"benchmark", "task_id", "sample", "completion", "passed", "result", "ttft_s", "total_s",
                "new_tokens", "drafted", "accepted"} <= record.keys()
    assert all("exact_match" in r for r in records if r["benchmark"] == "infill-single")

    # An interrupted run: the last record half written, another missing. Resuming redoes only those.
    (tmp_path / RESULTS).write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    with Run(tmp_path, settings, sandbox) as resumed:
        assert len(resumed.pending(tasks)) == 2
        again = resumed.execute(engine, tasks, benchmarks)
    assert len(again) == 4
    assert {(r["task_id"], r["sample"]) for r in again} == {(t.task_id, i) for t in tasks for i in range(2)}
    assert len(read_results(tmp_path / RESULTS)) == 4
    with Run(tmp_path, settings, sandbox) as done:
        assert done.pending(tasks) == []


def test_resume_with_other_settings_is_refused(tmp_path, engine, sandbox):
    Run(tmp_path, Settings(model=engine.name), sandbox)
    with pytest.raises(ResultsError, match="other settings \\(temperature\\)"):
        Run(tmp_path, Settings(model=engine.name, temperature=0.8), sandbox)


def test_garbage_results_file_is_reported(tmp_path):
    (tmp_path / RESULTS).write_text("not json\n")
    with pytest.raises(ResultsError, match="is not a JSON record"):
        read_results(tmp_path / RESULTS)
