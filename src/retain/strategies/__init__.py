"""Strategies: one file per continual-learning method, each a few hooks of the contract.

A method is registered by existing: every module in this package (or in a folder added to its
``__path__``) is imported, and every :class:`Strategy` subclass defined there that sets its own
``name`` joins :data:`STRATEGIES`, and is exported from this package under its class name. The
conformance suite (``retain.checks``, run by ``tests/test_conformance.py``) checks every method in it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import TYPE_CHECKING, Any

from retain.strategies.base import FAMILIES, HOOKS, Strategy, implements
from retain.strategies.contract import ExperienceContext, LearnerView, Step
from retain.strategies.memory import Memory

if TYPE_CHECKING:  # the methods as type checkers see them; at run time discover() exports each by its file
    from retain.strategies.agem import AGEM as AGEM
    from retain.strategies.bic import BiC as BiC
    from retain.strategies.box_replay import BoxReplay as BoxReplay
    from retain.strategies.cls_er import CLSER as CLSER
    from retain.strategies.cumulative import Cumulative as Cumulative
    from retain.strategies.der import DER as DER
    from retain.strategies.der import DERPP as DERPP
    from retain.strategies.detection_distill import DetectionDistill as DetectionDistill
    from retain.strategies.er_ace import ERACE as ERACE
    from retain.strategies.ewc import EWC as EWC
    from retain.strategies.finetune import Finetune as Finetune
    from retain.strategies.gdumb import GDumb as GDumb
    from retain.strategies.gem import GEM as GEM
    from retain.strategies.growing_head import GrowingHead as GrowingHead
    from retain.strategies.icarl import ICaRL as ICaRL
    from retain.strategies.joint import Joint as Joint
    from retain.strategies.l2 import L2 as L2
    from retain.strategies.lora_experts import LoRAExperts as LoRAExperts
    from retain.strategies.lwf import LwF as LwF
    from retain.strategies.mas import MAS as MAS
    from retain.strategies.mir import MIR as MIR
    from retain.strategies.pnn import PNN as PNN
    from retain.strategies.pseudo_labels import PseudoLabels as PseudoLabels
    from retain.strategies.replay import Replay as Replay
    from retain.strategies.si import SI as SI
    from retain.strategies.slda import SLDA as SLDA
    from retain.strategies.task_heads import TaskHeads as TaskHeads
    from retain.strategies.weight_aligning import WeightAligning as WeightAligning
    from retain.strategies.weight_average import WeightAverage as WeightAverage
    from retain.strategies.xder import XDER as XDER

STRATEGIES: dict[str, type[Strategy]] = {}
"""Every method, by registry name: baselines first, then by family and name (filled by :func:`discover`)."""


def discover() -> dict[str, type[Strategy]]:
    """Import every module of the package and register the methods they define, baselines first,
    then by family and name. Returns the registry (also :data:`STRATEGIES`).

    Returns:
        :data:`STRATEGIES`, refilled; each method's class is exported from this package under its name.

    Raises:
        TypeError: two methods share a name, or one names a family outside ``FAMILIES``.
    """
    found: dict[str, type[Strategy]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in vars(module).values():
            if (isinstance(cls, type) and issubclass(cls, Strategy) and cls is not Strategy
                    and cls.__module__ == module.__name__ and "name" in vars(cls)):
                if cls.name in found and found[cls.name] is not cls:
                    raise TypeError(f"two strategies are named {cls.name!r}: {found[cls.name].__module__} "
                                    f"and {cls.__module__}")
                if cls.family not in FAMILIES:
                    raise TypeError(f"{cls.__module__}.{cls.__name__}: family {cls.family!r} is not one of "
                                    f"{', '.join(FAMILIES)}")
                found[cls.name] = cls
    ordered = sorted(found.values(), key=lambda c: (FAMILIES.index(c.family), c.name != "finetune", c.name))
    for old in STRATEGIES.values():  # a method whose file is gone is no longer exported
        globals().pop(old.__name__, None)
    STRATEGIES.clear()
    STRATEGIES.update((cls.name, cls) for cls in ordered)
    globals().update((cls.__name__, cls) for cls in ordered)
    __all__[:] = [*_BASE_EXPORTS, *sorted(cls.__name__ for cls in ordered)]
    return STRATEGIES


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy by its registry name.

    Args:
        name: a key of :data:`STRATEGIES`.
        **params: its hyper-parameters (those left out keep their defaults).

    Returns:
        The strategy, untrained.

    Raises:
        ValueError: no method has that name.
        pydantic.ValidationError: a parameter is unknown, of the wrong type, or out of range (the message names it).

    >>> make_strategy("replay", memory_size=50).memory_size
    50
    >>> make_strategy("rehearsal")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'rehearsal'; choose one of: finetune, cumulative, joint, ...
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**params)


# The method to start from on each kind of stream, with the settings that differ from its defaults, and the
# measurement behind the choice: the best on average over class orders and seeds that is never far behind the
# best method of a run, on every protocol measured (benchmarks/FRONTIER.md, TRICKS.md, RESULTS.md).
RECOMMENDED: dict[str, tuple[str, dict[str, Any], str]] = {
    "class_incremental": ("derpp", {"alpha": 0.3}, (
        "Split Fashion-MNIST, 3 class orders x 3 seeds, 600 images a class: best on average at memory 200 and 500 "
        "(74.8 and 76.5%, CLS-ER 74.0 and 75.1, DER++ at alpha 1 74.0 and 73.3); never 5 points behind a run's "
        "best with 600 or 6,000 a class (alpha 1: 11); Split MNIST-5k: 88.1%, where CLS-ER gets 77.8")),
    "task_incremental": ("derpp", {}, (
        "task-incremental MNIST-5k: 97.7%, the best of the methods (cumulative retraining 98.0)")),
    "domain_incremental": ("derpp", {}, (
        "Permuted MNIST-5k: 87.0%, second to GEM's 87.6 in 63% of its training time")),
}
"""Per kind of stream: the method to start from, the settings that differ from its defaults, and the
measurement behind the choice."""


def describe(cls: type[Strategy]) -> dict[str, Any]:
    """What ``retain strategies`` shows of a method: its job, family, scenarios, defaults, paper, and
    the kinds of stream it is the recommended start for (:data:`RECOMMENDED`).

    Args:
        cls: a method's class (a value of :data:`STRATEGIES`).

    Returns:
        ``name``, ``summary`` (its module's first docstring line), ``family``, ``scenarios``, ``defaults``
        (each hyper-parameter's default), ``paper`` and ``recommended_for``.

    >>> describe(STRATEGIES["replay"])["defaults"]["memory_size"]
    200
    """
    module = sys.modules[cls.__module__]
    return {
        "name": cls.name,
        "summary": (module.__doc__ or "").strip().splitlines()[0],
        "family": cls.family,
        "scenarios": list(cls.scenarios),
        "defaults": {k: f.default for k, f in cls.__dataclass_fields__.items()},
        "paper": cls.paper,
        "recommended_for": [kind for kind, (name, *_) in RECOMMENDED.items() if name == cls.name],
    }


__all__ = ["ExperienceContext", "HOOKS", "LearnerView", "Memory", "RECOMMENDED", "STRATEGIES", "Step", "Strategy",
           "describe",
           "discover", "implements", "make_strategy"]  # and every method's class, added by discover()
_BASE_EXPORTS = tuple(__all__)
discover()
