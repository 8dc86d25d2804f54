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


def test_summary_of_seeds_and_results_json_round_trip():
    import json

    from retain.metrics import ExperienceInfo, ExperimentResult, MethodResult, Metrics, SeedRun, StreamInfo, Summary

    def run(seed, final):
        matrix = [[1.0, 0.0], [final, 0.8]]
        m = Metrics(**summarize(matrix, [0.5, 0.5], [10, 30]), train_seconds=2.0 + seed, peak_mb=100.0,
                    gradient_steps=10, samples_per_second=50.0, update_seconds=1.0)
        return SeedRun(seed, matrix, [0.5, 0.5], m, 10, [1.0, 1.0 + seed], [90.0, 100.0])

    runs = [run(0, 0.6), run(1, 0.4)]
    s = Summary.of(runs)
    assert s.mean.acc == pytest.approx((0.7 + 0.6) / 2) and s.std.acc == pytest.approx(0.05)
    assert s.mean.train_seconds == 2.5 and s.mean.prequential_acc is None and s.std.prequential_acc is None
    assert s.matrix == [[1.0, 0.0], [0.5, 0.8]] and s.curve == pytest.approx([1.0, 0.65])
    stream = StreamInfo("s", "class_incremental", 4, "vision", None, None,
                        [ExperienceInfo(0, 0, [0, 1], 20, 10), ExperienceInfo(1, 0, [2, 3], 20, 30)])
    result = ExperimentResult({"model": {"name": "mlp"}}, [0, 1], {"torch": "x"}, stream,
                              {"m": MethodResult([{"name": "replay"}], "offline", runs, s)})
    written = json.loads(json.dumps(result.to_dict()))  # what results.json holds
    summary = written["methods"]["m"]["summary"]
    assert summary["acc"] == pytest.approx(0.65) and summary["acc_std"] == pytest.approx(0.05)
    assert "prequential_acc" not in summary and written["stream"]["backbone"] is None
    back = ExperimentResult.from_dict(written)
    assert back.methods["m"].summary.mean == s.mean and back.methods["m"].runs[1].metrics == runs[1].metrics
    assert back.rows() == result.rows() and back.rows()[0]["acc"] == pytest.approx(0.65)
    nan_run = SeedRun(0, [[1.0, 1.0]], [0.5, 0.5], Metrics(**(runs[0].metrics.__dict__ | {"forgetting": math.nan})), 1)
    joint = ExperimentResult(result.config, [0], {}, stream,
                             {"j": MethodResult([], "offline", [nan_run], Summary.of([nan_run]))}).to_dict()
    assert joint["methods"]["j"]["summary"]["forgetting"] is None  # written as null
    assert math.isnan(ExperimentResult.from_dict(json.loads(json.dumps(joint))).methods["j"].summary.mean.forgetting)
