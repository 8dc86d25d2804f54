"""The strategy zoo: each method's defining property, on digits, in seconds."""

import json

import pytest
import torch
import torch.nn.functional as F

from retain import Learner
from retain.cli import main
from retain.metrics import average_accuracy, forgetting
from retain.models import NMEHead, make_model
from retain.strategies import (
    AGEM,
    DER,
    DERPP,
    ERACE,
    GEM,
    MAS,
    PNN,
    SI,
    STRATEGIES,
    BiC,
    Finetune,
    GDumb,
    ICaRL,
    Memory,
    Replay,
    TaskHeads,
    make_strategy,
)
from retain.strategies.memory import herding_order
from retain.strategies.projection import GroupGrads, flat_grad, memory_grad, project_to_cone

from .conftest import incoming, make_learner, train_matrix


def test_every_method_is_listed_with_family_scenarios_defaults_and_paper(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name, cls in STRATEGIES.items():
        assert f"\n{name} " in "\n" + out and cls.paper in out
    assert "memory_size=200" in out and "gradient_projection" in out


def test_type_checkers_see_every_method_the_package_exports():
    """A user's mypy or pyright sees ``from retain.strategies import Replay``: the package names each method for
    them in its TYPE_CHECKING block, which must follow the files (discover() exports them at run time)."""
    import ast
    from pathlib import Path

    import retain.strategies as package

    tree = ast.parse(Path(package.__file__).read_text())
    typed = {(node.module, alias.name) for block in tree.body if isinstance(block, ast.If)
             and getattr(block.test, "id", None) == "TYPE_CHECKING"
             for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    found = {(cls.__module__, cls.__name__) for cls in package.STRATEGIES.values()}
    assert typed == found, ("retain/strategies/__init__.py's TYPE_CHECKING block must import exactly the methods: "
                            f"add {sorted(found - typed)}, drop {sorted(typed - found)}")


def test_each_kind_of_stream_has_a_recommended_method_that_can_learn_it(capsys):
    from retain.strategies import RECOMMENDED
    from retain.strategies.contract import SCENARIO_KINDS

    assert set(RECOMMENDED) == set(SCENARIO_KINDS)
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for kind, (name, settings, why) in RECOMMENDED.items():
        assert kind in STRATEGIES[name].scenarios and why
        make_strategy(name, **settings)  # settings the method takes
        given = "".join(f" {k}={v}" for k, v in settings.items())
        assert f"{kind.split('_')[0]}-incremental streams: {name}{given} (" in out
    assert main(["strategies", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {kind for row in rows.values() for kind in row["recommended_for"]} == set(SCENARIO_KINDS)


@pytest.mark.parametrize("strategy", [SI(), MAS()], ids=["si", "mas"])
def test_importance_regularizers_forget_less_on_a_permuted_stream(permuted_digits, strategy):
    _, fine = train_matrix(permuted_digits, [Finetune()])
    _, reg = train_matrix(permuted_digits, [strategy])
    assert forgetting(reg) < forgetting(fine) - 0.2


@pytest.mark.parametrize("make", [DER, DERPP, ERACE, GEM, ICaRL, BiC], ids=lambda c: c.name)
def test_memory_methods_beat_finetune_in_class_incremental(split_digits, make):
    _, fine = train_matrix(split_digits, [Finetune()], epochs=3)
    _, ours = train_matrix(split_digits, [make(memory_size=100)], epochs=3)
    assert average_accuracy(ours) > average_accuracy(fine) + 0.3


def test_der_stores_logits_with_the_sample(split_digits):
    learner = make_learner(split_digits, [DER(memory_size=50)], epochs=1)
    learner.fit(split_digits[0])
    mem = learner.strategies[0].memory_
    assert set(mem.data) == {"x", "y", "t", "e", "logits"} and mem.logits.shape == (50, 10)
    # stored at the end of the experience: the logits the trained model gives those samples
    assert torch.allclose(mem.logits, learner.predict_logits(mem.x), atol=1e-5)
    streaming = DER(memory_size=5, store="stream")
    logits = torch.randn(4, 10)
    step = streaming.batch(learner, incoming(split_digits[1], 4))  # the contract's order: batch, then loss
    streaming.loss(learner, step, logits)
    assert torch.equal(streaming.memory_.logits, logits) and torch.equal(streaming.memory_.x, step.x)
    assert streaming.memory_.e.tolist() == [1] * 4  # stored as samples of the step's experience


@pytest.mark.parametrize("shared", [True, False])
def test_derpp_label_term_reuses_the_logit_batch_when_shared(split_digits, shared):
    derpp = DERPP(memory_size=20, batch_size=8, shared=shared)
    learner = make_learner(split_digits, [derpp], epochs=1)
    learner.fit(split_digits[0])
    step = learner.step_batch(incoming(split_digits[1], 16))
    x, y = step.x, step.y
    assert len(y) == (24 if shared else 32)  # one memory batch of 8, or two
    mem = derpp.memory_
    # the logits kept with the replayed samples
    stored = torch.stack([mem.logits[(mem.x == row).flatten(1).all(1)][0] for row in x[16:24]])
    logits = torch.randn(len(y), 10)
    labels = slice(16, 24) if shared else slice(24, 32)
    # the step's loss: cross-entropy on the new rows, logit matching, labels of replayed rows
    expected = (F.cross_entropy(logits[:16], y[:16])
                + derpp.alpha * (logits[16:24] - stored).pow(2).mean()
                + derpp.beta * F.cross_entropy(logits[labels], y[labels]))
    assert torch.allclose(learner.objective(step, logits), expected, atol=1e-6)
    assert DERPP().shared and not DER().shared  # DER++ shares by default (Avalanche's form)


def test_der_clips_the_gradient_norm_only_above_its_cap(split_digits):
    learner = make_learner(split_digits, [DER(memory_size=50, max_grad_norm=0.5)], epochs=1)
    params = list(learner.model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 0.1)  # norm far above 0.5
    learner.strategies[0].after_backward(learner, incoming(split_digits[0], 1))
    assert torch.nn.utils.get_total_norm([p.grad for p in params]).item() == pytest.approx(0.5, rel=1e-4)
    small = [g.clone() * 1e-3 for g in (p.grad for p in params)]  # norm 0.0005: left as it is
    for p, g in zip(params, small, strict=True):
        p.grad = g.clone()
    learner.strategies[0].after_backward(learner, incoming(split_digits[0], 1))
    assert all(torch.equal(p.grad, g) for p, g in zip(params, small, strict=True))


def test_er_ace_leaves_absent_classes_alone_on_new_data(split_digits):
    learner = make_learner(split_digits, [ERACE()], epochs=1)
    exp = split_digits[1]
    step = learner.step_batch(incoming(exp, 16))  # classes 2 and 3 only; the contract's order: batch, then loss
    logits = torch.randn(16, 10, requires_grad=True)
    learner.objective(step, logits).backward()
    absent = [c for c in range(10) if c not in (2, 3)]
    assert torch.equal(logits.grad[:, absent], torch.zeros(16, 8))
    # With a memory, replayed rows join the batch and get the plain cross-entropy over every class,
    # while the incoming rows still leave the absent classes alone.
    old = split_digits[0]
    learner.strategies[0].memory_.add(old.x_train[:20], old.y_train[:20], old.train_tasks()[:20])
    step = learner.step_batch(incoming(exp, 16))
    y = step.y
    assert len(y) == 32 and set(y[16:].tolist()) - {2, 3}  # old classes among the replayed rows
    logits = torch.randn(32, 10, requires_grad=True)
    learner.objective(step, logits).backward()
    assert torch.equal(logits.grad[:16, absent], torch.zeros(16, 8))
    expected = torch.autograd.grad(F.cross_entropy(logits[16:], y[16:]), logits)[0][16:]
    assert torch.allclose(logits.grad[16:], expected, atol=1e-6)


def _one_backward(learner, exp):
    x, y, t = exp.x_train[:32], exp.y_train[:32], exp.train_tasks()[:32]
    learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.05)
    learner.optimizer.zero_grad()
    F.cross_entropy(learner.model(x, t), y).backward()


def test_agem_projected_gradient_never_raises_the_memory_loss(split_digits):
    learner = make_learner(split_digits, [AGEM(memory_size=60, sample_size=60)], epochs=2)
    learner.fit(split_digits[0])
    mem = learner.strategies[0].memory_
    conflicts = 0
    for exp in split_digits[1:3]:
        _one_backward(learner, exp)
        g_ref = memory_grad(learner, mem.x, mem.y, mem.t)
        conflicts += int(torch.dot(flat_grad(learner), g_ref) < 0)
        learner.strategies[0].after_backward(learner, incoming(exp, 32))
        assert torch.dot(flat_grad(learner), g_ref) >= -1e-6
    assert conflicts > 0  # the projection had something to do


def test_gem_projection_satisfies_every_old_experience(split_digits):
    learner = make_learner(split_digits, [GEM(memory_size=60, sample_size=None)], epochs=2)
    for exp in split_digits[:3]:
        learner.fit(exp)
    mem = learner.strategies[0].memory_
    assert sorted(mem.e.unique().tolist()) == [0, 1, 2]
    _one_backward(learner, split_digits[3])
    learner.strategies[0].after_backward(learner, incoming(split_digits[0], 1))
    g = flat_grad(learner)
    for k in range(3):
        rows = mem.e == k
        assert torch.dot(g, memory_grad(learner, mem.x[rows], mem.y[rows], mem.t[rows])) >= -1e-5


class _SharedLayer(torch.nn.Module):
    """One linear layer applied twice: its rows' errors do not give its gradient in one pass."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x, t=None):
        return self.fc(x.flatten(1)) + self.fc(x.flatten(1).flip(1))


@pytest.mark.parametrize("head,one_pass", [("fixed", True), ("growing", True), ("per_task", True),
                                           ("cnn", False), ("shared_layer", False)])
def test_group_gradients_in_one_pass_equal_a_pass_per_group(split_digits, head, one_pass):
    torch.manual_seed(0)
    if head == "shared_layer":
        model = _SharedLayer()
    elif head == "cnn":
        model = make_model("cnn", split_digits.input_shape, 10)
    else:
        model = make_model("mlp", split_digits.input_shape, 10, head=head, hidden=(32,))
    if head == "growing":
        model.head.grow(4)
        model.head.grow(10)  # two blocks of units
    if head == "per_task":
        model.head.add_task(0, [0, 1])
        model.head.add_task(1, [2, 3])
    learner = Learner(model, [], device="cpu")
    rows = [split_digits[k] for k in (0, 1)]
    x = torch.cat([e.x_train[:n] for e, n in zip(rows, (12, 7), strict=True)])
    y = torch.cat([e.y_train[:n] for e, n in zip(rows, (12, 7), strict=True)])
    t = torch.tensor([0] * 12 + [1] * 7)
    grads = GroupGrads()
    G = grads(learner, x, y, t, [12, 7])
    assert (grads._layout is not None) == one_pass
    expected = torch.stack([memory_grad(learner, x[:12], y[:12], t[:12]), memory_grad(learner, x[12:], y[12:], t[12:])])
    assert G.shape == expected.shape and torch.allclose(G, expected, atol=1e-6)
    assert torch.allclose(grads(learner, x, y, t, [12, 7]), expected, atol=1e-6)  # and again, on its buffer


def test_gem_constrains_each_step_by_a_fresh_sample_of_every_old_experience(split_digits):
    gem = GEM(memory_size=60, sample_size=8)
    learner = make_learner(split_digits, [gem], epochs=2)
    for exp in split_digits[:3]:
        learner.fit(exp)
    calls = []
    real = gem._grads
    gem._grads = lambda learner, x, y, t, sizes: calls.append((x, y, t, sizes)) or real(learner, x, y, t, sizes)
    for _ in range(2):
        _one_backward(learner, split_digits[3])
        gem.after_backward(learner, incoming(split_digits[3], 32))
        x, y, t, sizes = calls[-1]
        assert sizes == [8, 8, 8]  # of the 20 stored per experience
        mem = gem.memory_
        source = [int(mem.e[(mem.x == row).flatten(1).all(1)][0]) for row in x]
        assert source == [0] * 8 + [1] * 8 + [2] * 8
        g = flat_grad(learner)
        for lo in (0, 8, 16):  # the projection satisfies the constraints it was given
            assert torch.dot(g, memory_grad(learner, x[lo:lo + 8], y[lo:lo + 8], t[lo:lo + 8])) >= -1e-5
    assert not torch.equal(calls[0][0], calls[1][0])  # drawn afresh each step


def test_cone_projection_is_the_closest_feasible_gradient():
    torch.manual_seed(0)
    for _ in range(20):
        G, g = torch.randn(3, 6), torch.randn(6)
        p = project_to_cone(g, G, eps=1e-10)
        assert (G @ p >= -1e-5).all()
        # optimality: p - g = G^T v with v >= 0 and v_k = 0 where constraint k is slack
        v = torch.linalg.lstsq(G.T.double(), (p - g).double().unsqueeze(1)).solution.squeeze(1)
        assert (v >= -1e-5).all() and ((G @ p > 1e-4) <= (v.abs() < 1e-4)).all()


def test_gdumb_retrains_on_a_balanced_memory_only(split_digits):
    learner, rows = train_matrix(split_digits, [GDumb(memory_size=100)], epochs=30)
    mem = learner.strategies[0].memory_
    assert torch.bincount(mem.y).tolist() == [10] * 10
    assert average_accuracy(rows) > 0.6


def test_icarl_predicts_with_the_nearest_mean_of_exemplars(split_digits):
    learner = make_learner(split_digits, [ICaRL(memory_size=100)], epochs=2)
    for exp in split_digits[:3]:
        learner.fit(exp)
    head = learner.model.head
    assert isinstance(head, NMEHead) and head.has_mean.sum() == 6
    x = split_digits[1].x_test
    f = F.normalize(learner.features(x), dim=1)
    nearest = torch.cdist(f, head.means[:6]).argmin(1)
    assert torch.equal(learner.predict(x), nearest)
    with torch.no_grad():
        head.inner.fc.weight.zero_()  # the trained linear head plays no part in prediction
    assert torch.equal(learner.predict(x), nearest)


def test_herding_picks_the_sample_nearest_the_mean_first():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    order = herding_order(f, torch.zeros(4, dtype=torch.long))
    assert order.tolist()[:2] in ([3, 2], [2, 3]) and len(set(order.tolist())) == 4
    assert herding_order(f, torch.zeros(4, dtype=torch.long), limit=2).tolist() == order.tolist()[:2]
    mem = Memory(2, "herding")
    mem.add(f, torch.zeros(4, dtype=torch.long), features=f)
    assert torch.allclose(mem.x[mem.x[:, 0].argsort()], torch.tensor([[0.6, 0.8], [0.8, 0.6]]))


def test_herding_memory_keeps_each_class_s_herding_prefix_over_experiences():
    """Herding stops at a class's share of the memory; what is kept is still the head of each
    class's full herding order (the mean-matching prefix), experience after experience."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(120, 8, generator=g).relu() + 0.1
    y = torch.arange(120) % 4
    mem = Memory(30, "herding")
    for e, classes in enumerate(([2, 3], [0, 1])):  # the new classes get the odd slots
        rows = torch.isin(y, torch.tensor(classes)).nonzero().squeeze(1)
        mem.add(f[rows], y[rows], e=e, features=f[rows])
    for c in range(4):  # 30 slots over 4 classes: 8, 8, 7, 7 (the remainder goes to the lowest labels)
        rows = (y == c).nonzero().squeeze(1)
        full = rows[herding_order(f[rows], y[rows])]  # no limit
        kept = mem.x[mem.y == c]
        assert torch.equal(kept, f[full[:len(kept)]]) and len(kept) == (8 if c < 2 else 7)


def test_bic_layer_only_rescales_new_class_logits(split_digits):
    learner = make_learner(split_digits, [BiC(memory_size=100)], epochs=2)
    learner.fit(split_digits[0])
    head = learner.model.head
    assert torch.equal(head.scale, torch.ones(10)) and torch.equal(head.shift, torch.zeros(10))
    learner.fit(split_digits[1])
    first = head.scale.clone(), head.shift.clone()
    assert torch.equal(first[0][[0, 1]], torch.ones(2)) and torch.equal(first[1][[0, 1]], torch.zeros(2))
    assert not torch.equal(first[0][[2, 3]], torch.ones(2))
    learner.fit(split_digits[2])
    assert torch.equal(head.scale[:4], first[0][:4]) and torch.equal(head.shift[:4], first[1][:4])
    assert not torch.equal(head.scale[[4, 5]], torch.ones(2))


def test_pnn_old_columns_stay_frozen(task_digits):
    learner = make_learner(task_digits, [PNN()], epochs=2)
    learner.fit(task_digits[0])
    column0 = {k: v.clone() for k, v in learner.model.state_dict().items()}
    before = learner.predict(task_digits[0].x_test, task_digits[0].test_tasks())
    for exp in task_digits[1:3]:
        learner.fit(exp)
    after = learner.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in column0.items())
    assert torch.equal(learner.predict(task_digits[0].x_test, task_digits[0].test_tasks()), before)
    assert len(learner.model.backbone.columns) == 3


def test_a_strategy_refuses_a_scenario_it_does_not_support(split_digits):
    learner = make_learner(split_digits, [PNN()], epochs=1)
    expected = r"pnn supports task_incremental streams, not class_incremental \(experience 0\)"
    with pytest.raises(ValueError, match=expected):
        learner.fit(split_digits[0])


ROUND_TRIP = {
    "si": ("split", lambda: [SI()]), "mas": ("split", lambda: [MAS()]),
    "der": ("split", lambda: [DER(60)]), "derpp": ("split", lambda: [DERPP(60, store="stream")]),
    "er_ace": ("split", lambda: [ERACE(60)]), "agem": ("split", lambda: [AGEM(60)]),
    "gem": ("split", lambda: [GEM(60)]), "gdumb": ("split", lambda: [GDumb(60)]),
    "icarl": ("split", lambda: [ICaRL(60)]), "bic": ("split", lambda: [BiC(60)]),
    "herding": ("split", lambda: [Replay(60, policy="herding")]),
    "pnn": ("task", lambda: [PNN()]), "task_heads+si": ("task", lambda: [TaskHeads(), SI()]),
}


@pytest.mark.parametrize("name", ROUND_TRIP, ids=list(ROUND_TRIP))
def test_save_load_round_trip(split_digits, task_digits, tmp_path, name):
    kind, make = ROUND_TRIP[name]
    stream = split_digits if kind == "split" else task_digits
    learner = make_learner(stream, make(), epochs=1)
    for exp in stream[:2]:
        learner.fit(exp)
    learner.save(tmp_path)
    loaded = Learner.load(tmp_path, device="cpu")
    for exp in stream[2:4]:
        learner.fit(exp)
        loaded.fit(exp)
    for exp in stream[:4]:
        args = (exp.x_test, exp.test_tasks())
        assert torch.equal(loaded.predict_logits(*args), learner.predict_logits(*args))


def test_every_registered_strategy_builds_with_defaults():
    for name in STRATEGIES:
        assert make_strategy(name).name == name


def test_penalty_gradient_equals_the_gradient_of_the_penalty():
    from retain.strategies.importance import add_penalty_grad

    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 4)
    anchor = {"weight": torch.randn(3, 5), "bias": torch.randn(3)}  # the layer has grown by one unit since
    stiffness = {"weight": torch.rand(3, 5), "bias": torch.rand(3)}
    penalty = sum(0.5 * (stiffness[k] * (getattr(layer, k)[: len(a)] - a) ** 2).sum() for k, a in anchor.items())
    penalty.backward()
    expected = {k: p.grad.clone() for k, p in layer.named_parameters()}
    layer.zero_grad()
    add_penalty_grad(layer, anchor, stiffness)
    assert all(torch.allclose(p.grad, expected[k]) for k, p in layer.named_parameters())
