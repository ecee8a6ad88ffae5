"""Benchmark loaders: sizes, the MBPP split and prompt, loading by path, errors."""

import gzip
import json

import pytest

from eval.datasets import DATA_ENV, load_tasks, resolve_data_dir, select
from eval.errors import DatasetError


@pytest.mark.parametrize("name, count, infilling", [
    ("humaneval", 164, False), ("mbpp", 500, False), ("infill-single", 1033, True),
    ("infill-multi", 5815, True), ("infill-random", 164, True),
])
def test_named_benchmarks_have_their_published_sizes(data_dir, name, count, infilling):
    tasks = load_tasks(name, data_dir)
    assert len(tasks) == count
    assert len({t.task_id for t in tasks}) == count
    assert all(t.infilling == infilling and t.benchmark == name for t in tasks)
    assert all(bool(t.suffix) == infilling or t.suffix == "" for t in tasks)


def test_mbpp_is_the_test_split_with_three_asserts_in_the_prompt(data_dir):
    tasks = load_tasks("mbpp", data_dir)
    assert [int(t.task_id) for t in tasks] == list(range(11, 511))
    first = tasks[0]
    assert first.prompt.startswith('"""\nYou are an expert Python programmer, and here is your task: ')
    asserts = [line for line in first.prompt.splitlines() if line.startswith("assert ")]
    assert len(asserts) == 3 and all(a in first.test for a in asserts)
    assert first.entry_point is None


def test_program_puts_the_completion_between_prompt_and_suffix(data_dir):
    task = load_tasks("infill-random", data_dir)[0]
    program = task.program("MIDDLE")
    assert program.startswith(task.prompt + "MIDDLE" + task.suffix)
    assert program.rstrip().endswith(f"check({task.entry_point})")


def test_a_removed_line_is_an_empty_line_in_the_editor(data_dir):
    line = load_tasks("infill-single", data_dir)[0]
    assert line.editor_suffix == "\n" + line.suffix
    assert line.program(line.reference.rstrip("\n")) == line.program(line.reference)
    span = load_tasks("infill-random", data_dir)[0]
    assert span.editor_suffix == span.suffix
    assert span.program("x").startswith(span.prompt + "x" + span.suffix)


def test_data_dir_from_environment(monkeypatch, data_dir):
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    assert resolve_data_dir(None) == data_dir
    assert len(load_tasks("humaneval")) == 164
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(DatasetError, match="--data-dir"):
        load_tasks("humaneval")


def test_files_of_the_same_formats_load_by_path(tmp_path, data_dir):
    sanitized = load_tasks(str(data_dir / "mbpp" / "sanitized-mbpp.json"))
    assert len(sanitized) == 427 and sanitized[0].benchmark == "sanitized-mbpp"
    small = tmp_path / "mine.jsonl.gz"
    records = [json.loads(line) for line in gzip.open(data_dir / "humaneval" / "HumanEval.jsonl.gz", "rt")][:3]
    with gzip.open(small, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    tasks = load_tasks(str(small))
    assert [t.task_id for t in tasks] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert tasks[0].benchmark == "mine"


@pytest.mark.parametrize("content, message", [
    ("not json\n", "not valid JSON"),
    ('{"task_id": 1}\n', "lacks a usable field"),
    ("", "no benchmark records"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as caught:
        load_tasks(str(path))
    assert "\n" not in str(caught.value)


def test_unknown_name_and_missing_dir(tmp_path):
    with pytest.raises(DatasetError, match="unknown benchmark 'humaneva'"):
        load_tasks("humaneva", tmp_path)
    with pytest.raises(DatasetError, match="is missing"):
        load_tasks("humaneval", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_tasks("humaneval", tmp_path / "nope")


def test_select_by_ids_and_limit(data_dir):
    tasks = load_tasks("humaneval", data_dir)
    assert [t.task_id for t in select(tasks, ["HumanEval/5", "HumanEval/1"])] == ["HumanEval/5", "HumanEval/1"]
    assert len(select(tasks, None, 4)) == 4
    with pytest.raises(DatasetError, match="HumanEval/999"):
        select(tasks, ["HumanEval/999"])
