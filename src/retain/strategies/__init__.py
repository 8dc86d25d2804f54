"""Strategies: one file per continual-learning method, each a few hooks of the contract."""

from __future__ import annotations

import sys
from typing import Any

from retain.strategies.agem import AGEM
from retain.strategies.base import HOOKS, Strategy, implements
from retain.strategies.bic import BiC
from retain.strategies.cumulative import Cumulative
from retain.strategies.der import DER, DERPP
from retain.strategies.er_ace import ERACE
from retain.strategies.ewc import EWC
from retain.strategies.finetune import Finetune
from retain.strategies.gdumb import GDumb
from retain.strategies.gem import GEM
from retain.strategies.growing_head import GrowingHead
from retain.strategies.icarl import ICaRL
from retain.strategies.joint import Joint
from retain.strategies.l2 import L2
from retain.strategies.lora_experts import LoRAExperts
from retain.strategies.lwf import LwF
from retain.strategies.mas import MAS
from retain.strategies.memory import Memory
from retain.strategies.mir import MIR
from retain.strategies.pnn import PNN
from retain.strategies.replay import Replay
from retain.strategies.si import SI
from retain.strategies.slda import SLDA
from retain.strategies.task_heads import TaskHeads

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        Finetune, Cumulative, Joint, Replay, DER, DERPP, ERACE, GDumb, L2, EWC, SI, MAS, LwF,
        GEM, AGEM, ICaRL, BiC, MIR, GrowingHead, TaskHeads, PNN, SLDA, LoRAExperts,
    )
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy by its registry name.

    >>> make_strategy("replay", memory_size=50).memory_size
    50
    >>> make_strategy("rehearsal")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'rehearsal'; choose one of: finetune, cumulative, ...
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**params)


__all__ = [
    "describe",
    "BiC",
    "ICaRL",
    "SLDA",
    "LoRAExperts",
    "PNN",
    "AGEM",
    "DER",
    "DERPP",
    "ERACE",
    "GEM",
    "GDumb",
    "EWC",
    "HOOKS",
    "L2",
    "STRATEGIES",
    "Cumulative",
    "Finetune",
    "GrowingHead",
    "Joint",
    "LwF",
    "MAS",
    "MIR",
    "Memory",
    "Replay",
    "SI",
    "Strategy",
    "TaskHeads",
    "implements",
    "make_strategy",
]


def describe(cls: type[Strategy]) -> dict[str, Any]:
    """What ``retain strategies`` shows of a method: its job, family, scenarios, defaults, paper.

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
    }
