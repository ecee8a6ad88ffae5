"""`codegemma eval`, `codegemma eval check` and `codegemma bench completion` end to end (tiny model)."""

import json

import pytest

from eval import bench, cli
from eval.datasets import load_tasks
from tests.tiny import tiny_checkpoint

FAST = ["--timeout", "3", "--workers", "2"]


def last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_check_scores_existing_completions_in_input_order(tmp_path, data_dir, capsys):
    tasks = load_tasks("humaneval", data_dir)[:3]
    samples = [{"task_id": tasks[1].task_id, "completion": "    return None\n"},
               {"task_id": tasks[0].task_id, "completion": tasks[0].reference},
               {"task_id": tasks[2].task_id, "completion": tasks[2].reference},
               {"task_id": tasks[2].task_id, "completion": "    import sys\n    sys.exit(0)\n"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = tmp_path / "results.jsonl"
    code = cli.main(["check", "--dataset", "humaneval", "--samples", str(path), "--results", str(out),
                     "--data-dir", str(data_dir), *FAST])
    assert code == 0
    summary = last_json(capsys)
    assert summary["pass@1"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert summary["samples"] == 4 and summary["passed"] == 2
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["passed"]) for r in results] == [
        (tasks[1].task_id, False), (tasks[0].task_id, True), (tasks[2].task_id, True), (tasks[2].task_id, False)]
    assert results[1]["result"] == "passed" and results[0]["result"].startswith("failed")


def test_check_reports_exact_match_for_infilling(tmp_path, data_dir, capsys):
    task = load_tasks("infill-single", data_dir)[0]
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": task.task_id, "completion": task.reference}) + "\n")
    assert cli.main(["check", "--dataset", "infill-single", "--samples", str(path),
                     "--data-dir", str(data_dir), *FAST]) == 0
    summary = last_json(capsys)
    assert summary["pass@1"] == 1.0 and summary["exact_match"] == 1.0


@pytest.mark.parametrize("content, message", [
    ('{"task_id": "HumanEval/999", "completion": ""}\n', "task ids not in humaneval: HumanEval/999"),
    ('{"task_id": "HumanEval/0"}\n', "needs a task_id and a string completion"),
    ("{broken\n", "is not JSON"),
])
def test_check_bad_samples_give_one_line_errors(tmp_path, data_dir, capsys, content, message):
    path = tmp_path / "samples.jsonl"
    path.write_text(content)
    code = cli.main(["check", "--dataset", "humaneval", "--samples", str(path), "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_missing_data_dir_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CODEGEMMA_DATA", raising=False)
    code = cli.main(["check", "--dataset", "humaneval", "--samples", str(tmp_path / "x.jsonl")])
    assert code == 2 and "CODEGEMMA_DATA" in capsys.readouterr().err


def test_eval_run_writes_results_report_and_json_summary(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    code = cli.main(["--dataset", "humaneval,infill-single", "--limit", "1", "--model", tiny_checkpoint(),
                     "--max-tokens", "4", "--data-dir", str(data_dir), "--out", str(out), *FAST])
    assert code == 0
    summary = last_json(capsys)
    assert set(summary["benchmarks"]) == {"humaneval", "infill-single"}
    assert summary["benchmarks"]["infill-single"]["pass@1"] == 0.0  # random weights
    assert "exact_match" in summary["benchmarks"]["infill-single"]
    for name in ("results.jsonl", "run.json", "report.md", "pass_at_k.png", "latency.png"):
        assert (out / name).stat().st_size > 0
    assert "| humaneval |" in (out / "report.md").read_text()


def test_eval_unknown_model_is_one_line(tmp_path, data_dir, capsys):
    code = cli.main(["--limit", "1", "--model", str(tmp_path / "none.gguf"), "--data-dir", str(data_dir),
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("codegemma eval: cannot load the model") and err.count("\n") == 1


def test_bench_completion_table_and_json(tmp_path, data_dir, capsys):
    code = bench.main(["--model", tiny_checkpoint(), "--dataset", "infill-single", "--limit", "1", "--max-tokens", "4",
                       "--setups", "plain,speculative+context", "--data-dir", str(data_dir),
                       "--out", str(tmp_path), *FAST])
    assert code == 0
    result = last_json(capsys)
    assert result["bench"] == "completion"
    assert set(result["results"]) == {"plain / infill-single", "speculative+context / infill-single"}
    assert result["results"]["plain / infill-single"]["samples"] == 1
