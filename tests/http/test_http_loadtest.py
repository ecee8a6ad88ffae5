"""The loopback load test (`codegemma bench http`), once with a tiny engine and once with the real model."""
from __future__ import annotations

import json

import pytest

from fim.http.loadtest import main, percentile, prefill_share
from tests.tiny import tiny_checkpoint


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_percentile():
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0


def test_prefill_share_reads_the_server_metrics():
    metrics = ('codegemma_completion_stage_seconds_sum{stage="prefill"} 3.0\n'
               'codegemma_completion_stage_seconds_sum{stage="decode"} 1.0\n'
               'codegemma_completion_stage_seconds_sum{stage="total"} 4.5\n')
    assert prefill_share(metrics) == 0.75
    assert prefill_share("") is None


def test_loadtest_rejects_bad_arguments(capsys):
    assert main(["--clients", "0"]) == 2
    assert "--clients" in capsys.readouterr().err
    assert main(["--parallel", "17"]) == 2
    assert "--parallel must be 1..16" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # argparse's own refusal: a usage line and exit code 2
        main(["--load", "burst"])
    assert stopped.value.code == 2 and "invalid choice: 'burst'" in capsys.readouterr().err


def test_loadtest_with_a_tiny_engine(capsys):
    code = main(["--model", tiny_checkpoint(), "--clients", "3", "--duration", "4", "--n-predict", "4",
                 "--prefix-chars", "200", "--max-rss-mb", "2000", "--startup-timeout", "120"])
    report = _report(capsys)
    assert code == 0, report
    assert report["survived"] and report["after_ok"] and report["ok"] >= 1
    assert report["status_counts"].get("200", 0) == report["ok"]
    assert 0 < report["p50_ms"] <= report["p95_ms"] and report["peak_rss_mb"] > 0
    # the same load with one slot, in the same run, and the throughput ratio
    one_slot = report["one_slot"]
    assert report["parallel"] == 4 and one_slot["parallel"] == 1 and one_slot["ok"] >= 1
    assert 0 < report["prefill_share"] < 1 and 0 < one_slot["prefill_share"] < 1
    assert report["batching_speedup"] == round(report["throughput_rps"] / one_slot["throughput_rps"], 2)
    assert (report["one_slot_p50_ms"], report["one_slot_p95_ms"]) == (one_slot["p50_ms"], one_slot["p95_ms"])


@pytest.mark.slow
def test_loadtest_with_the_default_model(capsys):
    code = main(["--clients", "3", "--duration", "15", "--n-predict", "8", "--prefix-chars", "400",
                 "--max-rss-mb", "2500", "--startup-timeout", "300"])
    report = _report(capsys)
    assert code == 0, report
    assert report["model"] == "default" and report["ok"] >= 1
    assert report["survived"] and report["after_ok"] and report["peak_rss_mb"] <= 2500
    assert not set(report["status_counts"]) - {"200", "503", "unfinished"}, report["status_counts"]


def test_typing_clients_go_down_their_own_files():
    from fim.http.loadtest import typing_samples

    first, other = typing_samples(0, prefix_chars=300, lines=40), typing_samples(1, prefix_chars=300, lines=40)
    assert first[0][0] != other[0][0] and len(first) == 40
    for (name, prefix, _), (_, following, _) in zip(first, first[1:]):
        assert len(prefix) <= 300 and len(following) <= 300
        # the next request extends this prompt, or its text before the cursor restarted further down (by
        # half of prefix_chars at a time)
        assert any(following.startswith(prefix[i:]) for i in range(0, len(prefix), 150)), (prefix, following)
    assert sum(following.startswith(prefix) for (_, prefix, _), (_, following, _) in zip(first, first[1:])) > 30


def test_loadtest_typing_load_with_a_tiny_engine(capsys):
    code = main(["--model", tiny_checkpoint(), "--clients", "2", "--duration", "4", "--n-predict", "4",
                 "--prefix-chars", "200", "--load", "typing", "--max-rss-mb", "2000", "--startup-timeout", "120"])
    report = _report(capsys)
    assert code == 0, report
    assert report["load"] == "typing" and report["ok"] >= 1 and report["one_slot"]["ok"] >= 1
