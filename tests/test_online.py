"""Online and hybrid learning: partial_fit, online streams, prequential evaluation, triggers."""

import pytest
import torch

from retain.data import OnlineStream
from retain.engine import Hybrid, run_online
from retain.strategies import EWC, MIR, Replay

from .conftest import incoming, make_learner

ONLINE_ER = dict(memory_size=100, ratio=1.0, policy="reservoir", update="stream")


def test_partial_fit_learns_one_sample_at_a_time(split_digits):
    learner = make_learner(split_digits, [Replay(**ONLINE_ER)], lr=0.05)
    exp = split_digits[0]
    for i in range(200):
        learner.partial_fit(exp.x_train[i:i + 1], exp.y_train[i:i + 1])
    assert learner.samples_seen_ == 200 and learner.steps_ == 200
    assert len(learner.strategies[0].memory_) == 100
    assert learner.score(exp) > 0.9


def test_partial_fit_takes_several_steps_per_batch(split_digits):
    learner = make_learner(split_digits, [Replay(**ONLINE_ER)])
    exp = split_digits[0]
    learner.partial_fit(exp.x_train[:10], exp.y_train[:10], steps=3)
    assert learner.steps_ == 3 and learner.strategies[0].memory_.seen == 10  # offered once


@pytest.mark.parametrize(
    "x,y,message",
    [
        (torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "non-empty batch"),
        (torch.rand(2, 1, 8, 7), torch.tensor([0, 1]), "must have 64 values"),
        (torch.full((2, 1, 8, 8), float("nan")), torch.tensor([0, 1]), "NaN or infinite"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0, 2**40]), "label 1099511627776 is outside the model's classes 0..9"),
        (torch.rand(2, 1, 8, 8), torch.tensor([-1, 0]), "label -1 is outside"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]), "labels must be integers"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]), "one label per row"),
    ],
)
def test_bad_batches_are_refused_and_change_nothing(split_digits, x, y, message):
    learner = make_learner(split_digits, [Replay(**ONLINE_ER)])
    exp = split_digits[0]
    learner.partial_fit(exp.x_train[:8], exp.y_train[:8])
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    rng = learner.generator.get_state()
    with pytest.raises(ValueError, match=message):
        learner.partial_fit(x, y)
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(rng, learner.generator.get_state())
    assert learner.samples_seen_ == 8 and len(learner.strategies[0].memory_) == 8


def test_partial_fit_refuses_strategies_that_need_experience_ends(split_digits):
    learner = make_learner(split_digits, [EWC()])
    with pytest.raises(ValueError, match="ewc learns only at experience ends; run it in hybrid mode"):
        learner.partial_fit(split_digits[0].x_train[:4], split_digits[0].y_train[:4])


def test_online_stream_is_one_pass_and_blurry_mixes_neighbours(split_digits):
    sharp = OnlineStream(split_digits, batch_size=7, seed=0)
    assert sum(len(b.y) for b in sharp) == sharp.n_samples == sum(e.n_train for e in split_digits)
    first = sharp.y[: sharp.boundaries[0]]
    assert set(first.tolist()) == {0, 1}
    blurry = OnlineStream(split_digits, batch_size=7, blurry=0.2, seed=0)
    assert set(blurry.y[: blurry.boundaries[0]].tolist()) == {0, 1, 2, 3}
    assert sorted(blurry.y.tolist()) == sorted(sharp.y.tolist())
    with pytest.raises(ValueError, match="blurry must be between 0 and 0.5"):
        OnlineStream(split_digits, blurry=0.9)


def test_mir_replays_the_samples_whose_loss_rises_most(split_digits):
    learner = make_learner(split_digits, [MIR(memory_size=60, candidates=60, batch_size=5)])
    for b in OnlineStream(split_digits, batch_size=10, seed=0):
        learner.partial_fit(b.x, b.y)
        if learner.samples_seen_ >= 400:
            break
    mir = learner.strategies[0]
    step = incoming(split_digits[3], 10)
    step.fresh = False  # a later step on these rows: nothing offered to the memory
    mem = mir.memory_
    rise = mir.interference(learner, *step.new(), mem.x, mem.y, mem.t)
    state = learner.generator.get_state()
    chosen = mir.batch(learner, step).added()[0]
    learner.generator.set_state(state)
    top = mem.x[rise.topk(5).indices]
    assert torch.equal(chosen.sort(0).values, top.sort(0).values)


def test_prequential_accuracy_is_measured_before_the_update(split_digits):
    learner = make_learner(split_digits, [Replay(**ONLINE_ER)])
    calls = []
    original = learner.partial_fit

    def spy(x, y, t=None, steps=1, hybrid=False):
        calls.append(float((learner.predict(x, t) == y).float().mean()))
        return original(x, y, t, steps, hybrid)

    learner.partial_fit = spy
    result = run_online(learner, OnlineStream(split_digits, batch_size=50, seed=0), eval_every=10**6)
    sizes = [50] * (len(calls) - 1) + [result.samples - 50 * (len(calls) - 1)]
    weighted = sum(c * n for c, n in zip(calls, sizes, strict=True)) / sum(sizes)
    assert result.prequential_acc == pytest.approx(weighted)
    assert len(result.matrix) == 5 and result.gradient_steps == len(calls)


def _triggers(stream, hybrid, steps=1):
    learner = make_learner(stream, [Replay(**ONLINE_ER)])
    result = run_online(learner, OnlineStream(stream, batch_size=10, seed=0), steps=steps, hybrid=hybrid)
    return result, [c.trigger for c in result.consolidations], [c.at_sample for c in result.consolidations]


def test_hybrid_consolidates_on_schedule(split_digits):
    result, triggers, at = _triggers(split_digits, Hybrid(every=300, on_new_class=False, drift=None, cooldown=0))
    assert triggers == ["schedule"] * 4 and at == [300, 600, 900, 1200]
    assert all(c.gradient_steps > 0 and c.seconds > 0 for c in result.consolidations)


def test_hybrid_consolidates_when_a_new_class_appears(split_digits):
    _, triggers, at = _triggers(split_digits, Hybrid(on_new_class=True, drift=None))
    starts = OnlineStream(split_digits, batch_size=10, seed=0).boundaries[:-1]
    assert triggers == ["new_class"] * 4
    assert all(0 <= a - s <= 10 for a, s in zip(at, starts, strict=True))


def test_hybrid_consolidates_on_drift_and_not_on_a_stationary_stream(split_digits):
    _, triggers, at = _triggers(split_digits, Hybrid(on_new_class=False, drift="page_hinkley"))
    starts = OnlineStream(split_digits, batch_size=10, seed=0).boundaries[:-1]
    assert "drift" in triggers
    assert all(any(0 <= a - s <= 200 for a in at) for s in starts)
    stationary = type(split_digits)(split_digits.experiences[:1], n_classes=10)
    _, quiet, _ = _triggers(stationary, Hybrid(on_new_class=False, drift="page_hinkley"))
    assert quiet == []


def test_a_reloaded_learner_files_online_rows_under_the_last_experience(split_digits, tmp_path):
    from retain import Learner
    from retain.strategies import GEM

    learner = make_learner(split_digits, [GEM(memory_size=40), Replay(**ONLINE_ER)], epochs=1)
    for exp in split_digits[:2]:
        learner.fit(exp)
    learner.save(tmp_path)
    loaded = Learner.load(tmp_path, device="cpu")
    for one in (learner, loaded):
        one.partial_fit(split_digits[2].x_train[:10], split_digits[2].y_train[:10], hybrid=True)
    assert torch.equal(loaded.strategies[1].memory_.e, learner.strategies[1].memory_.e)
    assert set(loaded.strategies[1].memory_.e.tolist()) == {0, 1}  # stream rows join experience 1, the last fit
