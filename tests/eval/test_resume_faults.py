"""Fault injection: `codegemma eval` killed (SIGKILL, whole process group) at 20 random points and resumed
ends with the same results as an uninterrupted run, each sample recorded once; a second run on the same
folder is refused while one holds it; resuming truncates a torn last line instead of rewriting the file.

A quarter of the kills come at a random time before a run could write its first record (start-up, model
loading, the first generation); the others right after the run has added a random 1-3 records (during
generation, execution or a write; polled every 5 ms, since the tiny model writes about 20 records a
second). That leaves work for all 20 kills instead of the first few runs finishing it."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from eval.errors import ResultsError
from eval.runner import RESULTS, Run, Settings, read_results
from tests.tiny import tiny_checkpoint

KILLS = 20
COMMAND = ["eval", "--model", tiny_checkpoint(), "--dataset", "humaneval,infill-single", "--limit", "5", "--n", "10",
           "--max-tokens", "4", "--timeout", "3", "--workers", "2"]
KEPT = ("completion", "passed", "result", "exact_match")


def _eval(out, data_dir) -> subprocess.Popen:
    env = {**os.environ, "CODEGEMMA_DATA": str(data_dir)}
    return subprocess.Popen([sys.executable, "-m", "codegemma.cli", *COMMAND, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _lines(out) -> int:
    try:
        return (out / RESULTS).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _results(out) -> dict:
    lines = (out / RESULTS).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = [(r["benchmark"], r["task_id"], r["sample"]) for r in records]
    assert len(keys) == len(set(keys)), "a sample was recorded twice"
    return {key: {k: r.get(k) for k in KEPT} for key, r in zip(keys, records)}


def test_killed_twenty_times_and_resumed_gives_the_uninterrupted_results(tmp_path, data_dir):
    started = time.monotonic()
    reference = tmp_path / "reference"
    process = _eval(reference, data_dir)
    while _lines(reference) == 0 and process.poll() is None and time.monotonic() - started < 300:
        time.sleep(0.02)
    first_record_s = time.monotonic() - started
    assert process.wait(timeout=300) == 0
    expected = _results(reference)
    assert len(expected) == 100

    out = tmp_path / "killed"
    chance = random.Random(18)
    kills = 0
    for _ in range(KILLS):
        more = chance.choice([0, 1, 2, 3])
        target = _lines(out) + more
        process = _eval(out, data_dir)
        if more == 0:
            time.sleep(chance.uniform(0.05, first_record_s))
        while _lines(out) < target and process.poll() is None and time.monotonic() - started < 600:
            time.sleep(0.005)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        else:
            assert process.returncode == 0, process.stderr.read()[-2000:]
        process.wait(timeout=60)
        if (out / RESULTS).exists():
            read_results(out / RESULTS)  # what a resume reads: a torn last line is the only damage allowed
        assert time.monotonic() - started < 600
    process = _eval(out, data_dir)
    assert process.wait(timeout=300) == 0
    print(f"\n{kills} of {KILLS} runs killed; {time.monotonic() - started:.0f} s in all")
    assert kills >= KILLS - 2, f"only {kills} runs were killed before they finished"
    assert _results(out) == expected


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, sandbox):
    settings = Settings(model="tiny")
    with Run(tmp_path, settings, sandbox):
        with pytest.raises(ResultsError, match="another run is writing"):
            Run(tmp_path, settings, sandbox)
    Run(tmp_path, settings, sandbox).close()  # free again once the first one is done


def test_resume_truncates_a_torn_line_in_place_and_counts_a_sample_once(tmp_path):
    path = tmp_path / RESULTS
    record = {"benchmark": "b", "task_id": "t", "sample": 0, "passed": True}
    path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n" + '{"benchmark": "b", "ta')
    inode = path.stat().st_ino
    assert read_results(path) == [record]
    assert path.stat().st_ino == inode and path.read_text().endswith("}\n")
