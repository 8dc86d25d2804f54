"""Every metric against matrices computed by hand."""

import math

import numpy as np
import pytest

from retain.metrics import (
    accuracy_curve,
    avalanche_forgetting,
    average_accuracy,
    bwt,
    forgetting,
    forgetting_per_experience,
    fwt,
    stream_accuracy,
    summarize,
)

R = [[1.0, 0.0, 0.0], [0.5, 0.8, 1.0], [0.2, 1.0, 0.5]]
B = [0.1, 0.2, 0.3]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(R) == pytest.approx((0.2 + 1.0 + 0.5) / 3)


def test_stream_accuracy_weights_by_test_size():
    assert stream_accuracy(R, [10, 20, 70]) == pytest.approx((0.2 * 10 + 1.0 * 20 + 0.5 * 70) / 100)


def test_forgetting_takes_the_best_earlier_accuracy():
    # j=0: max(1.0, 0.5) - 0.2 = 0.8 ; j=1: max(0.0, 0.8) - 1.0 = -0.2
    assert forgetting_per_experience(R) == pytest.approx([0.8, -0.2])
    assert forgetting(R) == pytest.approx(0.3)


def test_forgetting_uses_the_max_not_the_diagonal():
    # accuracy on experience 0 peaks after experience 1, not right after training it
    m = [[0.6, 0.0, 0.0], [0.9, 0.7, 0.0], [0.4, 0.7, 0.9]]
    assert forgetting(m) == pytest.approx(((0.9 - 0.4) + (0.7 - 0.7)) / 2)
    assert bwt(m) == pytest.approx(((0.4 - 0.6) + (0.7 - 0.7)) / 2)


def test_bwt_and_fwt():
    assert bwt(R) == pytest.approx(((0.2 - 1.0) + (1.0 - 0.8)) / 2)
    assert fwt(R, B) == pytest.approx(((0.0 - 0.2) + (1.0 - 0.3)) / 2)


def test_avalanche_forgetting_matches_the_issue_example():
    expected = [[0, 0, 0], [0.5, 0, 0], [0.8, -0.2, 0]]
    assert np.allclose(avalanche_forgetting(R), expected)


def test_accuracy_curve_averages_seen_experiences():
    assert accuracy_curve(R) == pytest.approx([1.0, 0.65, (0.2 + 1.0 + 0.5) / 3])


def test_single_experience_has_no_forgetting_defined():
    s = summarize([[0.9]], [0.1], [5])
    assert s["acc"] == pytest.approx(0.9) and s["stream_acc"] == pytest.approx(0.9)
    assert all(math.isnan(s[k]) for k in ("forgetting", "bwt", "fwt"))


@pytest.mark.parametrize("bad", [[[1.0, 0.0]], [], [[0.1, 0.2], [0.3]]])
def test_non_square_matrix_is_refused(bad):
    with pytest.raises(ValueError, match="square"):
        average_accuracy(bad)


def test_wrong_sizes_are_refused():
    with pytest.raises(ValueError, match="test_sizes"):
        stream_accuracy(R, [1, 2])
    with pytest.raises(ValueError, match="one accuracy per experience"):
        fwt(R, [0.1])
