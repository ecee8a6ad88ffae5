"""Spread subsets, confidence intervals, and an eval run comparing single-candidate and reranked variants."""

import json

import pytest

from eval import cli
from eval.datasets import load_tasks
from eval.errors import EvalError
from eval.scoring import wilson_interval
from eval.subsets import subset
from tests.tiny import tiny_adapter, tiny_checkpoint

FAST = ["--timeout", "3", "--workers", "2"]


@pytest.mark.parametrize("benchmark, spread, quick", [
    ("humaneval", 164, 17), ("mbpp", 500, 20), ("infill-single", 345, 69), ("infill-multi", 291, 59),
    ("infill-random", 164, 41)])
def test_subset_sizes(data_dir, benchmark, spread, quick):
    tasks = load_tasks(benchmark, data_dir)
    assert len(subset(tasks, "full")) == len(tasks)
    assert len(subset(tasks, "spread")) == spread and len(subset(tasks, "quick")) == quick
    assert subset(tasks, "quick")[0] == tasks[0]


def test_unknown_subset(data_dir):
    with pytest.raises(EvalError, match="unknown subset"):
        subset(load_tasks("humaneval", data_dir), "tiny")


def test_wilson_interval():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(0.25 * 345, 345)
    assert high - low < 0.1  # the spread subset's interval is within +-5 points at this score
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_eval_compares_single_and_reranked_variants(tmp_path, data_dir, capsys):
    out = tmp_path / "cmp"
    code = cli.main(["--dataset", "infill-single,infill-random", "--subset", "quick", "--limit", "2",
                     "--candidates", "1,3,1+lines", "--model", tiny_checkpoint(), "--max-tokens", "4",
                     "--data-dir", str(data_dir), "--out", str(out), *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert set(summary["variants"]) == {"candidates-1", "candidates-3", "candidates-1-lines"}
    for variant in summary["variants"].values():
        single = variant["infill-single"]
        assert single["tasks"] == 2 and len(single["pass@1_ci95"]) == 2 and "exact_match_ci95" in single
    assert "infill-single candidates-3" in printed and "pass@1 95% CI" in printed
    single_ids = [json.loads(line)["task_id"] for line in (out / "candidates-1" / "results.jsonl").read_text().splitlines()]
    reranked = [json.loads(line) for line in (out / "candidates-3" / "results.jsonl").read_text().splitlines()]
    assert sorted(single_ids) == sorted(r["task_id"] for r in reranked)  # the same tasks
    assert all(r["rerank_made"] == 3 for r in reranked)  # FIM tiny model: the probe is in the prompt
    assert json.loads((out / "candidates-3" / "run.json").read_text())["candidates"] == 3


def test_eval_compares_with_and_without_an_adapter_in_one_run(tmp_path, data_dir, capsys):
    model, adapter = tiny_adapter()
    out = tmp_path / "adapters"
    code = cli.main(["--dataset", "infill-single", "--subset", "quick", "--limit", "2", "--adapter", f"off,{adapter}",
                     "--model", model, "--max-tokens", "4", "--data-dir", str(data_dir), "--out", str(out), *FAST])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["variants"]) == {"adapter-off", "adapter-adapter"}
    assert summary["model"] == ["tiny-gemma3-plain", "tiny-gemma3-plain +fim-adapter"]
    runs = {v: json.loads((out / v / "run.json").read_text()) for v in summary["variants"]}
    assert runs["adapter-adapter"]["model"].endswith("+fim-adapter")
    prompts = [json.loads(line) for line in (out / "adapter-off" / "results.jsonl").read_text().splitlines()]
    assert len(prompts) == 2 and all("exact_match" in r for r in prompts)


def test_bad_candidate_counts_are_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--candidates", "0,x"])
    assert "candidate counts" in capsys.readouterr().err
