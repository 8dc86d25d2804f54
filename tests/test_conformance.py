"""Every registered strategy passes every conformance check; a new method is checked by existing."""

import importlib
import pathlib
import sys

import pytest

import retain.strategies
from retain.checks import CHECKS, check_strategy, learner_access_problems
from retain.config import RunConfig
from retain.strategies import STRATEGIES, discover, make_strategy


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_conforms(name, check):
    check(STRATEGIES[name])


def test_no_strategy_module_touches_the_learner_outside_its_view():
    folder = pathlib.Path(retain.strategies.__file__).parent
    problems = {p.name: learner_access_problems(p.read_text()) for p in sorted(folder.glob("*.py"))}
    assert {k: v for k, v in problems.items() if v} == {}
    assert len(problems) > len(STRATEGIES) // 2  # the walk saw the package's modules


THROWAWAY = '''"""Halved steps: every gradient halved before the optimizer step (a throwaway method for a test)."""

from retain.strategies.base import Strategy, params


@params
class HalvedSteps(Strategy):
    """Halve every gradient, as if the learning rate were half (no paper: a test's method)."""

    name = "halved_steps"
    paper = "none: written by the conformance test"

    def after_backward(self, learner, step) -> None:
        for p in learner.trainable:
            if p.grad is not None:
                p.grad.mul_(0.5)
'''

LEAKY = '''"""A leaky method: it keeps every batch and reads the learner's optimizer (for a test)."""

import torch

from retain.strategies.base import Strategy, params


@params
class Leaky(Strategy):
    """Remembers every training set it sees, undeclared (no paper: a test's method)."""

    name = "leaky"
    paper = "none: written by the conformance test"

    def __post_init__(self):
        self.seen_ = []

    def after_experience(self, learner, ctx):
        self.seen_.append(ctx.train_set[0][:10].clone())
        learner.optimizer.zero_grad()

    def state_dict(self):
        return {"seen": torch.cat(self.seen_)} if self.seen_ else {}

    def load_state_dict(self, state, learner):
        self.seen_ = [state["seen"]] if state else []
'''


@pytest.fixture
def extra_folder(tmp_path):
    """A folder added to the strategies package, as a new file in retain/strategies/ would be."""
    retain.strategies.__path__.append(str(tmp_path))
    try:
        yield tmp_path
    finally:
        retain.strategies.__path__.remove(str(tmp_path))
        for module in ("throwaway", "leaky"):
            sys.modules.pop(f"retain.strategies.{module}", None)
        importlib.invalidate_caches()
        discover()


def test_a_new_method_is_picked_up_and_checked_by_existing(extra_folder):
    (extra_folder / "throwaway.py").write_text(THROWAWAY)
    importlib.invalidate_caches()
    assert "halved_steps" not in STRATEGIES
    discover()
    cls = STRATEGIES["halved_steps"]
    assert make_strategy("halved_steps").name == "halved_steps"
    assert retain.strategies.HalvedSteps is cls
    check_strategy(cls)
    cfg = RunConfig.model_validate({"scenario": {"dataset": "digits"}, "strategies": ["halved_steps"]})
    assert cfg.strategies[0].build()[0].name == "halved_steps"


def test_the_checks_catch_a_method_that_breaks_the_contract(extra_folder):
    (extra_folder / "leaky.py").write_text(LEAKY)
    importlib.invalidate_caches()
    discover()
    cls = STRATEGIES["leaky"]
    failures = {}
    for check in CHECKS:
        try:
            check(cls)
        except AssertionError as err:
            failures[check.__name__] = str(err)
    assert set(failures) == {"check_reads_only_the_learner_view", "check_state_stays_bounded"}
    assert "reads learner.optimizer, which is not in LearnerView" in failures["check_reads_only_the_learner_view"]
    assert "state grew" in failures["check_state_stays_bounded"]
