"""Behaviour each method exists for, on digits, in seconds."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from retain.metrics import average_accuracy, forgetting
from retain.strategies import (
    EWC,
    L2,
    Cumulative,
    Finetune,
    GrowingHead,
    ICaRL,
    LwF,
    Memory,
    Replay,
    TaskHeads,
)
from retain.strategies.importance import _linear_importance, _vmap_importance

from .conftest import incoming, make_learner, train_matrix


def test_finetune_forgets_everything_in_class_incremental(split_digits):
    _, rows = train_matrix(split_digits, [Finetune()])
    assert forgetting(rows) > 0.9 and average_accuracy(rows) < 0.25


def test_replay_forgets_less_than_finetune(split_digits):
    _, fine = train_matrix(split_digits, [Finetune()])
    _, replay = train_matrix(split_digits, [Replay(100)])
    assert forgetting(replay) < forgetting(fine) - 0.5
    assert average_accuracy(replay) > 0.8


def test_cumulative_trains_on_everything_seen(split_digits):
    learner, rows = train_matrix(split_digits, [Cumulative()], epochs=2)
    assert average_accuracy(rows) > 0.85
    assert sum(len(y) for y in learner.strategies[0].y_) == sum(e.n_train for e in split_digits)


@pytest.mark.parametrize("strategy", [L2(), EWC(), EWC(mode="online")], ids=["l2", "ewc", "online-ewc"])
def test_weight_regularizers_forget_less_on_a_permuted_stream(permuted_digits, strategy):
    _, fine = train_matrix(permuted_digits, [Finetune()])
    _, reg = train_matrix(permuted_digits, [strategy])
    assert forgetting(reg) < forgetting(fine) - 0.2
    assert average_accuracy(reg) > average_accuracy(fine)


@pytest.mark.parametrize("heads", [[], [TaskHeads()]], ids=["single-head", "task-heads"])
def test_lwf_keeps_the_old_models_outputs(split_digits, task_digits, heads):
    stream = task_digits if heads else split_digits
    drift = {}
    for label, extra in (("finetune", []), ("lwf", [LwF(alpha=1.0)])):
        learner = make_learner(stream, [*heads, *extra], epochs=3)
        learner.fit(stream[0])
        x, t = stream[0].x_test, stream[0].test_tasks()
        old = learner.predict_logits(x, t)[:, :2].log_softmax(1)
        learner.fit(stream[1])
        new = learner.predict_logits(x, t)[:, :2].log_softmax(1)
        drift[label] = float(torch.nn.functional.kl_div(new, old, log_target=True, reduction="batchmean"))
    assert drift["lwf"] < 0.5 * drift["finetune"]


DISTILLERS = {
    "lwf+replay": (False, lambda: [Replay(60), LwF()]),
    "task-heads+lwf+replay": (True, lambda: [TaskHeads(), Replay(60), LwF()]),
    "icarl": (False, lambda: [ICaRL(60)]),
}


@pytest.mark.parametrize("combo", list(DISTILLERS))
def test_distillers_run_the_old_model_on_the_training_set_once_per_experience(split_digits, task_digits, combo,
                                                                               monkeypatch):
    """With replayed rows appended to each batch: the old model sees each training row once
    (cached, in large batches) plus the replayed rows of every step, not every row in every
    epoch; and training lands where recomputing the old outputs at each step lands."""
    from retain.strategies.distillation import OldOutputs

    per_task, strategies = DISTILLERS[combo]
    stream = task_digits if per_task else split_digits
    seen, params = {}, {}
    for cached in (True, False):
        if not cached:  # what the loss did before: the old model on the whole batch at each step
            monkeypatch.setattr(OldOutputs, "__call__", lambda self, learner, step, x, t: self.fn(x, t))
        learner = make_learner(stream, strategies(), epochs=3)
        learner.fit(stream[0])
        distiller, rows = learner.strategies[-1], []

        def count(module, args, out, distiller=distiller, rows=rows):
            if module is distiller.old_model_.backbone:
                rows.append(len(args[0]))

        handle = torch.nn.modules.module.register_module_forward_hook(count)
        try:
            learner.fit(stream[1])
        finally:
            handle.remove()
        seen[cached] = sum(rows)
        params[cached] = torch.cat([p.detach().flatten() for p in learner.model.parameters()])
    n = stream[1].n_train
    assert seen[False] - seen[True] == 2 * n  # three epochs of training rows against one pass
    assert seen[True] > n  # the replayed rows still go through the old model, at each step
    assert torch.allclose(params[True], params[False], atol=1e-4)


def test_task_heads_add_one_head_per_task(task_digits):
    learner, rows = train_matrix(task_digits, [TaskHeads()], epochs=2)
    assert sorted(learner.model.head.task_classes) == [0, 1, 2, 3, 4]
    assert average_accuracy(rows) > 0.9


def test_growing_head_grows_with_the_classes(split_digits):
    learner = make_learner(split_digits, [GrowingHead(), Replay(50)], epochs=1)
    sizes = []
    for exp in split_digits:
        learner.fit(exp)
        sizes.append(learner.model.head.n_outputs)
    assert sizes == [2, 4, 6, 8, 10]


def test_growing_head_keeps_old_logits_when_it_grows(split_digits):
    learner = make_learner(split_digits, [GrowingHead()], epochs=1)
    learner.fit(split_digits[0])
    x = split_digits[0].x_test
    before = learner.predict_logits(x)
    learner.strategies[0].before_experience(learner, split_digits[1])
    assert torch.equal(learner.predict_logits(x)[:, :2], before)


@pytest.mark.parametrize("kind", ["fisher", "mas"])
def test_fast_importance_equals_per_sample_gradients(task_digits, kind):
    learner = make_learner(task_digits, [TaskHeads()], epochs=1)
    learner.fit(task_digits[0])
    learner.fit(task_digits[1])
    x = torch.cat([task_digits[0].x_train, task_digits[1].x_train])
    y = torch.cat([task_digits[0].y_train, task_digits[1].y_train])
    t = torch.cat([task_digits[0].train_tasks(), task_digits[1].train_tasks()])
    stat = (lambda a: a.pow(2)) if kind == "fisher" else torch.abs
    fast = _linear_importance(learner, x, y, t, kind, stat, 64)
    exact = _vmap_importance(learner, x, y, t, kind, stat, 64)
    for k in exact:
        assert torch.allclose(fast[k], exact[k], rtol=1e-4, atol=1e-6 * float(exact[k].abs().max())), k


def test_reservoir_memory_holds_a_uniform_sample():
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(1000)
    for _ in range(200):
        mem = Memory(50, "reservoir")
        for start in range(0, 1000, 100):  # offered in chunks, like experiences
            ids = torch.arange(start, start + 100)
            mem.add(ids[:, None].float(), ids, generator=gen)
        assert len(mem) == 50 and len(mem.y.unique()) == 50
        hits[mem.y] += 1
    # each sample should be kept with probability 50/1000: 10 expected hits out of 200 draws
    by_tenth = hits.view(10, 100).sum(1)  # 1000 expected per tenth of the stream
    chi2 = float(((by_tenth - 1000) ** 2 / 1000).sum())
    assert chi2 < 21.7  # chi-square, 9 degrees of freedom, p = 0.01


def test_class_balanced_memory_shares_slots_equally():
    mem = Memory(60, "class_balanced")
    gen = torch.Generator().manual_seed(0)
    for classes in ([0, 1], [2, 3], [4, 5]):
        y = torch.tensor(classes).repeat_interleave(100)
        mem.add(torch.randn(200, 3), y, generator=gen)
    assert torch.bincount(mem.y).tolist() == [10] * 6


def test_capped_memory_keeps_a_fixed_share_per_experience_until_full():
    mem = Memory(60, "class_balanced", balance="e", cap=25)
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for e in range(4):
        mem.add(torch.randn(100, 3), torch.full((100,), e), e=e, generator=gen)
        sizes.append(torch.bincount(mem.e).tolist())
    # 25 each while they fit; then the 60 slots are shared (15 each for four experiences)
    assert sizes == [[25], [25, 25], [20, 20, 20], [15, 15, 15, 15]]


def test_replay_appends_memory_samples_to_the_batch(split_digits):
    learner = make_learner(split_digits, [Replay(40, ratio=2.0)], epochs=1)
    learner.fit(split_digits[0])
    step = learner.strategies[0].batch(learner, incoming(split_digits[1], 8))
    assert len(step.y) == 24 and set(step.y[8:].tolist()) <= {0, 1}
    assert torch.equal(step.new()[0], split_digits[1].x_train[:8])  # the incoming rows first, unchanged


@pytest.mark.parametrize("weight", [1.0, 2.0, 3.0])
def test_replay_weighs_a_replayed_row_weight_times_a_new_one(split_digits, weight):
    learner = make_learner(split_digits, [Replay(40, ratio=1.0, weight=weight)], epochs=1)
    learner.fit(split_digits[0])
    step = learner.step_batch(incoming(split_digits[1], 8))
    y = step.y
    assert len(y) == 16 and set(y[8:].tolist()) <= {0, 1}
    # rows i and i + 8 get the same logits and labels: only their weights differ
    z = torch.randn(8, 10)
    logits, y = torch.cat([z, z]).requires_grad_(True), torch.cat([y[:8], y[:8]])
    step.y = y
    loss = learner.objective(step, logits)
    per_row = torch.nn.functional.cross_entropy(logits.detach(), y, reduction="none")
    assert loss.item() == pytest.approx(((per_row[:8].sum() + weight * per_row[8:].sum()) / (8 + 8 * weight)).item())
    loss.backward()
    assert torch.allclose(logits.grad[8:], weight * logits.grad[:8], atol=1e-7)


def test_two_strategies_that_replace_the_task_loss_do_not_compose(split_digits):
    from retain.strategies import DER, ERACE

    with pytest.raises(ValueError, match="der and er_ace each replace the task loss"):
        make_learner(split_digits, [DER(50), ERACE(50)])


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: Replay(memory_size=0), "memory_size"),
        (lambda: EWC(lam=-1.0), "lam"),
        (lambda: L2(lam=-0.5), "lam"),
        (lambda: EWC(mode="offline"), "mode"),
        (lambda: LwF(temperature=0), "temperature"),
        (lambda: Replay(memory=10), "memory"),
    ],
)
def test_bad_hyper_parameters_name_the_field(make, field):
    with pytest.raises(ValidationError) as err:
        make()
    assert err.value.errors()[0]["loc"] == (field,)


def test_reservoir_replay_is_reproducible(split_digits):
    a = train_matrix(split_digits, [Replay(50, policy="reservoir")], epochs=1)[1]
    b = train_matrix(split_digits, [Replay(50, policy="reservoir")], epochs=1)[1]
    assert np.array_equal(a, b)


def test_cls_er_answers_with_its_stable_teacher_and_trains_on_from_the_working_weights(split_digits):
    from retain.strategies import make_strategy
    from retain.strategies.importance import snapshot

    # experiences of 40 steps: teachers that average over about 10 and 20 steps (the authors' 0.99 suits 1,000)
    short = {"memory_size": 100, "plastic_decay": 0.9, "stable_decay": 0.95}
    strategy = make_strategy("cls_er", **short)
    learner = make_learner(split_digits, [strategy])
    learner.fit(split_digits[0])
    held = snapshot(learner.model)
    # between experiences the model holds the stable average, not the weights it trained
    assert all(torch.equal(held[k], strategy.stable_[k]) for k in held)
    assert all(not torch.equal(held[k], strategy.working_[k]) for k in held)
    assert all(not torch.equal(strategy.plastic_[k], strategy.stable_[k]) for k in held)
    steps = strategy.steps_
    learner.fit(split_digits[1])
    assert strategy.steps_ == 2 * steps  # the teachers followed every optimizer step, none twice
    _, cls_er = train_matrix(split_digits, [make_strategy("cls_er", **short)])
    _, replay = train_matrix(split_digits, [Replay(100)])
    assert average_accuracy(cls_er) > average_accuracy(replay) + 0.01  # 93.3 against 90.5
