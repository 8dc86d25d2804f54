"""The conformance checks every strategy passes, as River's ``check_estimator`` does for estimators.

The test suite runs them over the whole registry, so a method is checked the moment its file
exists in ``retain/strategies/``; :func:`check_strategy` runs them on one class (yours too).
Each check builds the smallest setting the strategy declares it fits: its first scenario kind, a
model that meets its ``needs``, scikit-learn's digits (or token ids for a text backbone). A failed
check raises ``AssertionError`` naming the method and what went wrong (also under ``python -O``).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from retain.data import Experience, Stream, class_incremental, load_dataset, permuted, task_incremental
from retain.data.datasets import Dataset
from retain.data.scenes import detection_stream, pack, unpack
from retain.engine import Learner
from retain.engine.detection import DetectionLearner, applies_to_detection
from retain.engine.generative import GenerativeLearner
from retain.metrics.detection import Boxes, mean_average_precision
from retain.models import Classifier, make_model
from retain.models.detector import Detector
from retain.models.generative import LanguageModel
from retain.strategies import Strategy, describe, implements, make_strategy
from retain.strategies.contract import HOOKS, LEARNER_VIEW, SCENARIO_KINDS, LearnerView

HOOK_PARAMETERS = {"before_experience": ["learner", "ctx"], "batch": ["learner", "step"],
                   "task_loss": ["learner", "step", "logits"], "loss": ["learner", "step", "logits"],
                   "after_backward": ["learner", "step"], "after_experience": ["learner", "ctx"]}


@dataclass
class Bench:
    """A stream and a model builder that fit a strategy's declared scenario and needs; ``detector``: the
    learner is a :class:`~retain.engine.detection.DetectionLearner` (a method that needs one)."""

    stream: Stream
    model: Callable[[], Classifier | Detector]
    detector: bool = False

    def learner(self, strategies: list[Strategy], seed: int = 0) -> Learner | DetectionLearner:
        torch.manual_seed(seed)
        model = self.model()
        if self.detector:
            assert isinstance(model, Detector)
            return DetectionLearner(model, strategies, epochs=1, lr=1e-3, batch_size=8, seed=seed)
        assert isinstance(model, Classifier)
        return Learner(model, strategies, epochs=1, lr=0.05, seed=seed, device="cpu")

    def load(self, folder: str) -> Learner | DetectionLearner:
        return DetectionLearner.load(folder) if self.detector else Learner.load(folder, device="cpu")

    def score(self, learner: Learner | DetectionLearner, experience: Experience) -> float:
        """Accuracy on the experience's test split (a detector: mAP@0.5 over its classes)."""
        if isinstance(learner, Learner):
            return learner.score(experience)
        truth = [Boxes(b, labels) for b, labels in unpack(experience.y_test)]
        return mean_average_precision(learner.detect(experience.x_test), truth, experience.classes)["map50"] or 0.0


@functools.cache
def _digits_stream(kind: str) -> Stream:
    data = load_dataset("digits")
    builders: dict[str, Callable[[Dataset, int], Stream]] = {
        "class_incremental": class_incremental, "task_incremental": task_incremental, "domain_incremental": permuted}
    return builders[kind](data, 5)


@functools.cache
def _scene_stream(kind: str) -> Stream:
    """Five experiences of 40 small scenes (32 pixels): two new classes each, earlier classes unlabelled in
    later scenes (task-incremental: each a task of its own); domain-incremental, the same ten classes in
    new scenes each time."""
    if kind == "domain_incremental":
        scenes = detection_stream([tuple(range(10))], train_per_experience=200, test=100, size=32, cache=False)
        train, test = scenes.experiences[0].train, scenes.test
        exps = [Experience(*pack(train[40 * k:40 * k + 40], 4), *pack(test[20 * k:20 * k + 20], 4), id=k,
                           classes=tuple(range(10)), scenario=kind) for k in range(5)]
        return Stream(exps, n_classes=10, name="scenes", scenario=kind)
    scenes = detection_stream([(2 * k, 2 * k + 1) for k in range(5)], train_per_experience=40, test=60, size=32,
                              cache=False)
    exps = [Experience(*pack(e.train, 4), *pack([s.only(e.classes) for s in scenes.test], 4), id=k,
                       task=k if kind == "task_incremental" else 0, classes=e.classes, scenario=kind)
            for k, e in enumerate(scenes.experiences)]
    return Stream(exps, n_classes=10, name="scenes", scenario=kind)


@functools.cache
def _token_stream(kind: str) -> Stream:
    """Five experiences of two classes each; class ``c``'s texts carry token ``1000 + c``."""
    g = torch.Generator().manual_seed(0)
    exps = []
    for k in range(5):
        parts = []
        for c in (2 * k, 2 * k + 1):
            ids = torch.randint(2000, 3000, (30, 8), generator=g)
            ids[:, 0], ids[:, 1], ids[:, -2:] = 101, 1000 + c, 0  # [CLS], the class's token, padding
            parts.append((ids, torch.full((30,), c)))
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        exps.append(Experience(x[::2].contiguous(), y[::2], x[1::2].contiguous(), y[1::2], id=k,
                               task=k if kind == "task_incremental" else 0, scenario=kind))
    return Stream(exps, n_classes=10, name="tokens", scenario=kind)


def bench(cls: type[Strategy], kind: str | None = None) -> Bench:
    """The setting to check ``cls`` in, on the ``kind`` stream (default: its first scenario)."""
    kind = kind or cls.scenarios[0]
    if "detector" in cls.needs:
        return Bench(_scene_stream(kind), lambda: Detector("tiny", 10, width=16), detector=True)
    if "lora_text" in cls.needs:
        stream = _token_stream(kind)
        return Bench(stream, lambda: make_model("text", (8,), 10, backbone="tiny_text", adaptation="lora",
                                                lora_rank=2))
    stream = _digits_stream(kind)
    hidden = () if "fixed_features" in cls.needs else (32,)
    return Bench(stream, lambda: make_model("mlp", stream.input_shape, stream.n_classes, hidden=hidden))


def _state_bytes(strategy: Strategy) -> int:
    return sum(v.numel() * v.element_size() for v in strategy.state_dict().values() if isinstance(v, torch.Tensor))


def expect(ok: bool, message: str) -> None:
    """Fail a check with ``message`` unless ``ok`` (an ``assert`` would vanish under ``python -O``)."""
    if not ok:
        raise AssertionError(message)


def check_builds_from_defaults_and_config(cls: type[Strategy]) -> None:
    """Defaults build; ``get_config()`` is JSON and rebuilds the same strategy; it is documented."""
    s = cls()
    config = s.get_config()
    json.dumps(config)
    expect(cls(**config).get_config() == config, f"{cls.name}: get_config() does not rebuild the same strategy")
    info = describe(cls)
    expect(bool(info["summary"] and cls.paper and cls.__doc__),
           f"{cls.name}: a method states its idea and cites its paper")
    for hook in HOOKS:
        if implements(s, hook):
            names = list(inspect.signature(getattr(cls, hook)).parameters)[1:]
            expect(names == HOOK_PARAMETERS[hook], (f"{cls.name}.{hook} takes {names}, the contract says "
                                                    f"{HOOK_PARAMETERS[hook]}"))


def _reloaded_trains_alike(learner: Any, load: Callable[[str], Any], experience: Experience, who: str) -> Any:
    """Save ``learner``, load it with ``load``, train both on ``experience``: the weights must agree to the
    bit (``who`` starts the message). Returns the reloaded learner."""
    with tempfile.TemporaryDirectory() as tmp:
        learner.save(tmp)
        loaded = load(tmp)
    for one in (learner, loaded):
        one.fit(experience)
    mine, theirs = learner.model.state_dict(), loaded.model.state_dict()
    expect(mine.keys() == theirs.keys(), f"{who}the reloaded model has other parameters")
    for k, v in mine.items():
        expect(torch.equal(v, theirs[k]), f"{who}{k} differs after training on from a reload")
    return loaded


def check_save_load_continues_bit_exactly(cls: type[Strategy]) -> None:
    """Saved after two experiences and reloaded, the learner trains the third to the same bits."""
    b = bench(cls)
    learner = b.learner([cls()])
    for exp in b.stream.experiences[:2]:
        learner.fit(exp)
    loaded = _reloaded_trains_alike(learner, b.load, b.stream[2], f"{cls.name}: ")
    a, z = learner.strategies[0].state_dict(), loaded.strategies[0].state_dict()
    expect(a.keys() == z.keys(), f"{cls.name}: the reloaded strategy state has other keys")
    for k, v in a.items():
        same = torch.equal(v.cpu(), z[k].cpu()) if isinstance(v, torch.Tensor) else v == z[k]
        expect(same, f"{cls.name}: state {k} differs after training on from a reload")


def check_loading_a_fresh_state_resets(cls: type[Strategy]) -> None:
    """Loading a fresh strategy's state into a trained one gives the fresh state back (a failed
    fit is undone this way)."""
    b = bench(cls)
    fresh, trained = cls(), cls()
    learner = b.learner([trained])
    learner.fit(b.stream[0])
    empty = fresh.state_dict()
    trained.load_state_dict(empty, cast(LearnerView, learner))  # a detection learner is read alike
    again = trained.state_dict()
    expect(again.keys() == empty.keys() and all(
        torch.equal(v, again[k]) if isinstance(v, torch.Tensor) else v == again[k] for k, v in empty.items()),
        f"{cls.name}: loading a fresh state left {sorted(again)} instead of {sorted(empty)}")


def check_state_stays_bounded(cls: type[Strategy]) -> None:
    """Its state has the same size after experience 5 as after experience 3 (memories full by
    then), unless the method declares why it grows (``grows``), and then it does grow."""
    b = bench(cls)
    strategy = cls()
    learner = b.learner([strategy])
    sizes = []
    for exp in b.stream:
        learner.fit(exp)
        sizes.append(_state_bytes(strategy))
    if cls.grows is None:
        expect(sizes[4] == sizes[2], f"{cls.name}: state grew from {sizes[2]} to {sizes[4]} bytes (experience 3 to 5)")
    else:
        expect(sizes[4] > sizes[2], f"{cls.name} declares its state grows ({cls.grows}) but it did not")
    memory = strategy.memory()
    if memory is not None:
        expect(len(memory) == memory.size, f"{cls.name}: its memory did not fill up")
    if cls.family in ("replay", "regularization", "gradient_projection", "prototype"):
        expect(sizes[4] > 0, f"{cls.name}: a {cls.family} method learned no state")


def check_online_flag(cls: type[Strategy]) -> None:
    """``partial_fit`` takes the method when it says it learns online, refuses it otherwise, and
    takes it in hybrid mode once an experience has been learned."""
    b = bench(cls)
    if b.detector:  # a detector learns experience by experience (DetectionLearner has no partial_fit)
        expect(not cls().supports_online(), f"{cls.name} says it learns online, but it needs a detector, which "
                                            "learns only whole experiences")
        return
    exp = b.stream[0]
    x, y, t = exp.x_train[:8], exp.y_train[:8], exp.train_tasks()[:8]
    learner = b.learner([cls()])
    assert isinstance(learner, Learner)  # not a detector's
    if cls().supports_online():
        learner.partial_fit(x, y, t, steps=2)
        expect(learner.steps_ == 2 and learner.samples_seen_ == 8, f"{cls.name}: partial_fit took no steps")
    else:
        try:
            learner.partial_fit(x, y, t)
        except ValueError as err:
            expect("learns only at experience ends" in str(err), f"{cls.name}: refused online for {err}")
        else:
            raise AssertionError(f"{cls.name} does not support online learning, yet partial_fit took it")
        learner.fit(exp)
        steps = learner.steps_
        learner.partial_fit(x, y, t, hybrid=True)
        expect(learner.steps_ == steps + 1, f"{cls.name}: partial_fit in hybrid mode took no step")


def check_scenarios_are_enforced(cls: type[Strategy]) -> None:
    """Every scenario kind the method does not declare is refused before training starts."""
    for kind in SCENARIO_KINDS:
        if kind in cls.scenarios:
            continue
        b = bench(cls, kind)
        learner = b.learner([cls()])
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        try:
            learner.fit(b.stream[0])
        except ValueError as err:
            expect(f"{cls.name} supports" in str(err), f"{cls.name}: refused {kind} for another reason: {err}")
        else:
            raise AssertionError(f"{cls.name} declares {cls.scenarios} but trained on a {kind} stream")
        after = learner.model.state_dict()
        expect(all(torch.equal(v, after[k]) for k, v in before.items()), f"{cls.name}: refused after changing")


def check_composes_with_replay_and_ewc(cls: type[Strategy]) -> None:
    """Put first, it composes with ``Replay`` and with ``EWC``: two experiences train to finite
    weights, unless both replace the task loss, which the learner refuses at once."""
    b = bench(cls)
    # a detector's rows have no one class: its replay keeps a reservoir
    replay = make_strategy("replay", memory_size=60, **({"policy": "reservoir"} if b.detector else {}))
    for other in (replay, make_strategy("ewc")):
        if type(other) is cls:
            continue
        both_replace = implements(cls(), "task_loss") and implements(other, "task_loss")
        try:
            learner = b.learner([cls(), other])
        except ValueError as err:
            expect(both_replace and "each replace the task loss" in str(err), f"{cls.name}+{other.name}: {err}")
            continue
        expect(not both_replace, f"{cls.name}+{other.name}: two task losses were accepted")
        for exp in b.stream.experiences[:2]:
            learner.fit(exp)
        expect(all(torch.isfinite(p).all() for p in learner.model.parameters()), f"{cls.name}+{other.name}: NaN")
        expect(0.0 <= b.score(learner, b.stream[0]) <= 1.0, f"{cls.name}+{other.name}: no accuracy")


def check_reads_only_the_learner_view(cls: type[Strategy]) -> None:
    """The method's module (and its bases' modules) read only ``LearnerView`` of the learner and write nothing on it."""
    modules = {sys.modules[k.__module__] for k in cls.__mro__ if k.__module__.startswith("retain.strategies")}
    modules.add(sys.modules[cls.__module__])
    for module in modules:
        problems = learner_access_problems(Path(inspect.getfile(module)).read_text())
        expect(not problems, f"{module.__name__}: {'; '.join(problems)}")


def learner_access_problems(source: str) -> list[str]:
    """Lines of ``source`` that read a learner attribute outside ``LearnerView`` or write one.

    >>> learner_access_problems("def hook(learner, step):\\n    learner.steps_ += 1\\n    return learner.model")
    ['line 2: writes learner.steps_', 'line 2: reads learner.steps_, which is not in LearnerView']
    """
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "learner":
            if isinstance(node.ctx, ast.Store | ast.Del):
                problems.append(f"line {node.lineno}: writes learner.{node.attr}")
            if node.attr not in LEARNER_VIEW:
                problems.append(f"line {node.lineno}: reads learner.{node.attr}, which is not in LearnerView")
    return problems


def _token_rows(learner: GenerativeLearner[LanguageModel], direction: int) -> Experience:
    """Eight tiny prompt/target pairs of one direction as token rows (``direction``: their tag)."""
    g = torch.Generator().manual_seed(direction)
    words = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (4,), generator=g)) for _ in range(16)]
    x, y = learner.encode([f"[{direction}] {w}" for w in words[:8]], words[8:])
    empty = torch.empty(0, x.shape[1], dtype=torch.long)
    return Experience(x, y, empty, empty.clone(), id=direction, task=direction, classes=(direction,),
                      t_train=torch.full((len(x),), direction, dtype=torch.long), scenario="task_incremental")


def check_runs_under_the_generative_learner(cls: type[Strategy]) -> None:
    """A strategy that declares ``generative`` trains a language model (the tiny decoder, LoRA)
    direction after direction; saved and reloaded, the learner trains on to the same bits, and its
    state stays bounded. Others are refused by the generative learner with the reason."""
    learner_of = functools.partial(GenerativeLearner, LanguageModel("tiny", "lora"), max_tokens=24, batch_size=4)
    if not cls.generative:
        try:
            learner_of([cls()])
        except ValueError:
            return
        raise AssertionError(f"{cls.name}: does not declare generative, but the generative learner took it")
    # sequences have no class to balance a memory by: a memory keeps a reservoir
    fits = {"policy": "reservoir"} if "policy" in getattr(cls, "__dataclass_fields__", {}) else {}
    learner = learner_of([cls(**fits)])
    for d in range(2):
        learner.fit(_token_rows(learner, d))
    _reloaded_trains_alike(learner, GenerativeLearner.load, _token_rows(learner, 2),
                           f"{cls.name} under the generative learner: ")
    size = _state_bytes(learner.strategies[0])
    learner.fit(_token_rows(learner, 3))
    expect(_state_bytes(learner.strategies[0]) <= max(size, 1) * 2,
           f"{cls.name}: its state under the generative learner keeps growing with every direction")


def check_runs_under_the_detection_learner(cls: type[Strategy]) -> None:
    """A strategy that applies to detectors and needs no detector of its own (those are checked on one by
    every other check) trains a tiny detector experience after experience; saved and reloaded, the learner
    trains on to the same bits, and its state stays bounded. Others are refused with the reason."""
    b = Bench(_scene_stream("class_incremental"), lambda: Detector("tiny", 10, width=16), detector=True)
    if not applies_to_detection(cls):
        try:
            b.learner([cls()])
        except ValueError:
            return
        raise AssertionError(f"{cls.name}: does not declare detection, but the detection learner took it")
    if "detector" in cls.needs:
        return
    fits = {"policy": "reservoir"} if "policy" in getattr(cls, "__dataclass_fields__", {}) else {}
    learner = b.learner([cls(**fits)])
    for exp in b.stream.experiences[:2]:
        learner.fit(exp)
    _reloaded_trains_alike(learner, b.load, b.stream[2], f"{cls.name} under the detection learner: ")
    size = _state_bytes(learner.strategies[0])
    learner.fit(b.stream[3])
    expect(_state_bytes(learner.strategies[0]) <= max(size, 1) * 2,
           f"{cls.name}: its state under the detection learner keeps growing with every experience")


CHECKS = (
    check_builds_from_defaults_and_config,
    check_reads_only_the_learner_view,
    check_save_load_continues_bit_exactly,
    check_loading_a_fresh_state_resets,
    check_state_stays_bounded,
    check_online_flag,
    check_scenarios_are_enforced,
    check_composes_with_replay_and_ewc,
    check_runs_under_the_generative_learner,
    check_runs_under_the_detection_learner,
)


def check_strategy(cls: type[Strategy]) -> None:
    """Run every check on ``cls``; the first that fails raises ``AssertionError`` naming the method."""
    for check in CHECKS:
        check(cls)
