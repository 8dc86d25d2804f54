"""The engine: reproducible training, save/load of everything, clear errors."""

import json

import pytest
import torch

from retain import Learner
from retain.models import make_model
from retain.strategies import EWC, L2, Cumulative, GrowingHead, LwF, Replay, TaskHeads

from .conftest import make_learner, train_matrix

COMBOS = {
    "replay+ewc+lwf": lambda: [Replay(60), EWC(), LwF()],
    "growing+replay": lambda: [GrowingHead(), Replay(60, policy="reservoir")],
    "l2+online-ewc": lambda: [L2(), EWC(mode="online", decay=0.9)],
    "cumulative": lambda: [Cumulative()],
}


def test_same_seed_same_numbers(split_digits):
    _, a = train_matrix(split_digits, [Replay(50), EWC()], epochs=1)
    _, b = train_matrix(split_digits, [Replay(50), EWC()], epochs=1)
    _, c = train_matrix(split_digits, [Replay(50), EWC()], epochs=1, seed=1)
    assert a == b and a != c


@pytest.mark.parametrize("combo", COMBOS, ids=list(COMBOS))
def test_saved_learner_predicts_and_continues_identically(split_digits, tmp_path, combo):
    learner = make_learner(split_digits, COMBOS[combo](), epochs=1)
    for exp in split_digits[:2]:
        learner.fit(exp)
    learner.save(tmp_path / "ckpt")
    loaded = Learner.load(tmp_path / "ckpt", device="cpu")
    x = split_digits[0].x_test
    assert torch.equal(loaded.predict_logits(x), learner.predict_logits(x))
    for exp in split_digits[2:]:
        learner.fit(exp)
        loaded.fit(exp)
    for exp in split_digits:
        assert torch.equal(loaded.predict_logits(exp.x_test), learner.predict_logits(exp.x_test))
    assert loaded.steps_ == learner.steps_ and loaded.seen_classes_ == list(range(10))


def test_saved_task_heads_learner_round_trips(task_digits, tmp_path):
    learner = make_learner(task_digits, [TaskHeads(), LwF()], epochs=1)
    learner.fit(task_digits[0])
    learner.fit(task_digits[1])
    learner.save(tmp_path)
    loaded = Learner.load(tmp_path, device="cpu")
    learner.fit(task_digits[2])
    loaded.fit(task_digits[2])
    exp = task_digits[1]
    assert torch.equal(loaded.predict(exp.x_test, exp.test_tasks()), learner.predict(exp.x_test, exp.test_tasks()))


def test_save_writes_safetensors_and_json_only(split_digits, tmp_path):
    learner = make_learner(split_digits, [Replay(20)], epochs=1)
    learner.fit(split_digits[0])
    learner.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "learner-1.json", "manifest.json",
                                                          "model-1.safetensors", "state-1.safetensors"]
    meta = json.loads((tmp_path / "learner-1.json").read_text())
    assert meta["strategies"][0]["name"] == "replay" and meta["strategies"][0]["params"]["memory_size"] == 20


def test_loading_a_folder_without_a_learner_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved learner \\(manifest.json is missing\\)"):
        Learner.load(tmp_path)


def test_per_task_model_needs_task_ids_to_predict(task_digits):
    learner, _ = train_matrix(task_digits, [TaskHeads()], epochs=1)
    with pytest.raises(ValueError, match="pass the task id"):
        learner.predict(task_digits[0].x_test)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"lr": 0.0}, "lr"), ({"momentum": 1.0}, "momentum"), ({"batch_size": 0}, "batch_size"),
     ({"epochs": 0}, "epochs"), ({"device": "tpu"}, "device")],
)
def test_bad_learner_settings_name_the_setting(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Learner(make_model("mlp", (1, 8, 8), 10), **kwargs)


def test_strategies_must_be_strategy_objects():
    with pytest.raises(TypeError, match="Strategy objects"):
        Learner(make_model("mlp", (1, 8, 8), 10), ["replay"])


def test_auto_device_runs_where_it_can(split_digits):
    learner = Learner(make_model("mlp", (1, 8, 8), 10), device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert learner.device.type == expected
    learner.fit(split_digits[0])
    assert learner.predict(split_digits[0].x_test).device.type == "cpu"


def test_fit_re_estimates_batchnorm_statistics_on_the_training_set_and_memory(split_digits):
    learner = make_learner(split_digits, [Replay(60)], hidden=(32,), epochs=2)
    norm = torch.nn.BatchNorm1d(64)
    learner.model.backbone.net.insert(1, norm)  # normalise the flattened pixels, before the first layer
    learner.fit(split_digits[0])
    memory = learner.strategies[0].memory_.x.clone()
    learner.fit(split_digits[1])
    seen = torch.cat([split_digits[1].x_train, memory]).flatten(1)  # what experience 1 trained on
    assert torch.allclose(norm.running_mean, seen.mean(0), atol=2e-3)
    assert torch.allclose(norm.running_var, seen.var(0), atol=2e-3)
    assert norm.momentum == 0.1  # the training-time momentum is restored


def _sgd_trajectory(make_optimizer, late_head: bool) -> torch.Tensor:
    """Parameters after 12 steps on a two-layer net; with ``late_head`` a second head joins the
    loss at step 5 (its momentum then starts mid-run, as a task head does)."""
    torch.manual_seed(0)
    body, head, late = torch.nn.Linear(10, 8), torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)
    params = [*body.parameters(), *head.parameters(), *late.parameters()]
    opt = make_optimizer(params)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        x, y = torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)
        z = body(x).relu()
        out = head(z) + late(z) if late_head and step >= 5 else head(z)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in params])


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_learner_sgd_takes_torch_sgd_steps(momentum):
    from retain.engine.sgd import FusedSGD

    ours = _sgd_trajectory(lambda ps: FusedSGD([(ps, 0.05)], momentum), late_head=False)
    fused = _sgd_trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum, fused=True), late_head=False)
    assert torch.equal(ours, fused)  # the same kernel: bit for bit
    # A parameter that gets its first gradient late starts its momentum then (torch's fused SGD
    # cannot take that case; its per-parameter loop can, rounding aside).
    ours = _sgd_trajectory(lambda ps: FusedSGD([(ps, 0.05)], momentum), late_head=True)
    loop = _sgd_trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum, foreach=False), late_head=True)
    assert torch.allclose(ours, loop, atol=1e-6)


def test_learner_uses_the_fused_sgd_and_keeps_backbone_lr_apart(split_digits):
    from retain.engine.sgd import FusedSGD

    learner = make_learner(split_digits, [], hidden=(16,))
    learner.backbone_lr = 0.001
    opt = learner._optimizer()
    assert isinstance(opt, FusedSGD)
    backbone = {id(p) for p in learner.model.backbone.parameters()}
    lrs = {lr for params, lr in opt.groups for p in params if id(p) in backbone}
    assert lrs == {0.001} and sum(len(ps) for ps, _ in opt.groups) == len(list(learner.model.parameters()))
