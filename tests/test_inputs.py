"""Bad inputs are refused before anything changes; a fit that fails or diverges leaves the learner as it was."""

import numpy as np
import pytest
import torch

from retain.engine.learner import Diverged
from retain.strategies import EWC, L2, GrowingHead, Replay, Strategy

from .conftest import make_learner


def fingerprint(learner):
    """Everything a fit can change: weights (and head sizes), strategy state, random state, counters."""
    state = {f"model.{k}": v.clone() for k, v in learner.model.state_dict().items()}
    for i, s in enumerate(learner.strategies):
        state |= {f"{i}.{k}": v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.state_dict().items()}
    state["rng"] = learner.generator.get_state()
    state["counters"] = (list(learner.seen_classes_), learner.experiences_seen_, learner.steps_, learner.samples_seen_)
    return state


def same(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k] for k, v in a.items())


@pytest.fixture
def trained(split_digits):
    learner = make_learner(split_digits, [Replay(40), EWC()], epochs=1)
    learner.fit(split_digits[0])
    return learner


def _nan(exp):
    x = exp.x_train.clone()
    x[3, 0, 2, 2] = float("nan")
    return x, exp.y_train


@pytest.mark.parametrize(
    "bad,message",
    [
        (_nan, "fit: experience 1: x holds NaN or infinite values"),
        (lambda e: (e.x_train, torch.full_like(e.y_train, 12)), r"label 12 is outside the model's classes 0..9"),
        (lambda e: (e.x_train[:, :, :, :7], e.y_train), "each sample must have 64 values, got 56"),
        (lambda e: (e.x_train, e.y_train.float()), "labels must be integers"),
        (lambda e: (e.x_train, e.y_train[:-1]), "y must hold one label per row of x"),
    ],
    ids=["nan", "label-range", "shape", "float-labels", "ragged"],
)
def test_fit_refuses_bad_data_before_the_first_step(split_digits, trained, bad, message):
    exp = split_digits[1]
    x, y = bad(exp)
    before = fingerprint(trained)
    with pytest.raises(ValueError, match=message):
        if len(x) == len(y):
            trained.fit(type(exp)(x, y, exp.x_test, exp.y_test, id=1))
        else:
            trained.fit(x, y)
    assert same(fingerprint(trained), before)


def test_fit_takes_plain_arrays_as_one_experience(split_digits):
    exp = split_digits[0]
    from_arrays = make_learner(split_digits, [Replay(40)], epochs=1)
    from_arrays.fit(exp.x_train.numpy(), exp.y_train.tolist())
    from_experience = make_learner(split_digits, [Replay(40)], epochs=1)
    from_experience.fit(exp)
    assert same(fingerprint(from_arrays), fingerprint(from_experience))
    assert from_arrays.score(exp) > 0.9


def test_a_diverging_fit_stops_says_so_and_restores_the_learner(split_digits, trained):
    before = fingerprint(trained)
    trained.lr = 1e6  # an absurd step size: the loss turns non-finite within a few steps
    with pytest.raises(Diverged, match=r"fit: training diverged at step \d+ .*the learner is as it was"):
        trained.fit(split_digits[1])
    assert same(fingerprint(trained), before)
    penalised = make_learner(split_digits, [L2(lam=1e30)], epochs=1)  # a penalty no step can follow
    penalised.fit(split_digits[0])
    kept = fingerprint(penalised)
    with pytest.raises(Diverged, match="training diverged"):
        penalised.fit(split_digits[1])
    assert same(fingerprint(penalised), kept)
    assert same(fingerprint(trained), before)
    trained.lr = 0.05  # and it trains on from there
    trained.fit(split_digits[1])
    assert trained.experiences_seen_ == 2 and all(torch.isfinite(p).all() for p in trained.model.parameters())


class _Broken(Strategy):
    name = "broken_for_a_test"

    def after_experience(self, learner, ctx):
        raise RuntimeError("a hook failed")


def test_a_fit_that_fails_midway_leaves_the_learner_as_it_was(split_digits):
    learner = make_learner(split_digits, [GrowingHead(), Replay(40)], epochs=1)
    learner.fit(split_digits[0])
    learner.strategies.append(_Broken())
    learner._experience_hooks["after_experience"].append(learner.strategies[-1])
    before, head = fingerprint(learner), learner.model.head.n_outputs
    with pytest.raises(RuntimeError, match="a hook failed"):
        learner.fit(split_digits[1])  # the head grows and steps are taken before the hook fails
    assert same(fingerprint(learner), before) and learner.model.head.n_outputs == head == 2
    learner.strategies.pop()
    learner._experience_hooks["after_experience"].pop()
    learner.fit(split_digits[1])
    assert learner.model.head.n_outputs == 4


def test_partial_fit_stops_a_diverging_step_before_it_writes_the_weights(split_digits):
    learner = make_learner(split_digits, [], epochs=1, lr=1e12)
    exp = split_digits[0]
    with pytest.raises(Diverged, match="partial_fit: training diverged"):
        for i in range(0, 200, 10):
            learner.partial_fit(exp.x_train[i:i + 10], exp.y_train[i:i + 10])
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())


@pytest.mark.parametrize(
    "x,message",
    [(torch.full((2, 1, 8, 8), float("inf")), "predict: x holds NaN or infinite values"),
     (torch.zeros(2, 63), "each sample must have 64 values, got 63"),
     (torch.zeros(64), r"x must be a batch \(n, features...\)")],
)
def test_predict_refuses_bad_inputs_and_takes_numpy(trained, split_digits, x, message):
    with pytest.raises(ValueError, match=message):
        trained.predict(x)
    x = split_digits[0].x_test
    assert torch.equal(trained.predict(x.numpy()), trained.predict(x))
    assert torch.equal(trained.predict(x.tolist()), trained.predict(x))
    assert np.array_equal(trained.predict_proba(x.numpy().astype(np.float64)).numpy(),
                          trained.predict_proba(x).numpy())


def test_integer_pixels_are_taken_as_arrays_and_refused_in_an_experience(split_digits):
    exp = split_digits[0]
    learner = make_learner(split_digits, [], epochs=1)
    pixels = (exp.x_train * 16).round().to(torch.uint8)
    learner.fit(pixels.numpy(), exp.y_train)  # arrays: converted to floats
    assert learner.predict((exp.x_test * 16).round().long()).shape == exp.y_test.shape
    before = fingerprint(learner)
    with pytest.raises(ValueError, match=r"x holds torch.uint8 values; this model reads floating point inputs"):
        learner.fit(type(exp)(pixels, exp.y_train, exp.x_test, exp.y_test, id=1))
    assert same(fingerprint(learner), before)
