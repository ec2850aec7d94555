import itertools
import math
import random

import pytest

from pear_exp.metrics import mean_ci95, pass_at_k


def brute_force_pass_at_k(outcomes: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration_over_all_k_subsets():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        outcomes = [rng.random() < 0.3 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(outcomes), k) == pytest.approx(brute_force_pass_at_k(outcomes, k))


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(3, 0, 3) == 0.0
    assert pass_at_k(3, 3, 1) == 1.0


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_mean_ci95_hand_values():
    mean, half = mean_ci95([0.0, 1.0, 1.0, 0.0])
    # sample variance = 4 * 0.25 / 3 = 1/3; half-width = 1.96 * sqrt(1/3 / 4)
    assert mean == 0.5
    assert half == pytest.approx(1.96 * (1 / 12) ** 0.5)


def test_mean_ci95_student_t_hand_values():
    # over seeds: Student's t with n - 1 degrees of freedom instead of 1.96
    # values 0.2, 0.4: mean 0.3, sd = sqrt(0.02) = 0.1414, half = 12.706 * 0.1414 / sqrt(2) = 1.2706
    mean, half = mean_ci95([0.2, 0.4], student_t=True)
    assert mean == pytest.approx(0.3) and half == pytest.approx(1.2706, rel=1e-4)
    # sd 1, t(2) = 4.302653 (tables round it to 4.303) -> 4.302653 / sqrt(3)
    mean, half = mean_ci95([1.0, 2.0, 3.0], student_t=True)
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3**0.5)
    # the same values under the normal approximation, and the edge cases of both
    assert mean_ci95([1.0, 2.0, 3.0])[1] == pytest.approx(1.96 / 3**0.5)
    for student_t in (False, True):
        assert mean_ci95([5.0], student_t=student_t)[0] == 5.0
        assert math.isnan(mean_ci95([5.0], student_t=student_t)[1])
        assert all(math.isnan(x) for x in mean_ci95([], student_t=student_t))
