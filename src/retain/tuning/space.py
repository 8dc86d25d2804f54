"""What a study searches: the knobs of one method (its strategies' and the training's), and the
run config a trial's values make."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import optuna
import yaml

from retain.config import MethodConfig, RunConfig, SearchRange, TrainingConfig
from retain.engine.learner import KNOBS
from retain.strategies import STRATEGIES

INTEGER_TRAINING = ("epochs", "batch_size")


@dataclass(frozen=True)
class Knob:
    """One searched value: ``key`` is ``strategy.knob`` or ``training.knob``; ``default`` the
    config's own value (the first trial's, when it lies in the range).

    Attributes:
        key: ``strategy.knob``, ``training.knob`` (or, tuning a store, ``model.lora_rank``).
        space: the range or the choices searched.
        integer: whether the knob takes whole numbers.
        default: the config's own value.
    """

    key: str
    space: SearchRange
    integer: bool
    default: Any

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this knob, drawn by Optuna's sampler.

        Args:
            trial: the Optuna trial.

        Returns:
            A choice, a whole number or a float in the range.
        """
        s = self.space
        if s.choices is not None:
            return trial.suggest_categorical(self.key, s.choices)
        assert s.low is not None and s.high is not None  # SearchRange: a range without choices has both ends
        if self.integer:
            return trial.suggest_int(self.key, round(s.low), round(s.high), step=round(s.step or 1), log=s.log)
        return trial.suggest_float(self.key, s.low, s.high, step=s.step, log=s.log)

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is one the search may try.

        Args:
            value: a knob's value.

        Returns:
            True for one of the choices, or a value within the range.
        """
        s = self.space
        if s.choices is not None:
            return value in s.choices
        return value is not None and s.low <= value <= s.high



def whole_numbers(strategy: str, knob: str) -> bool:
    """Whether a strategy's knob takes whole numbers, by its declared type (``PositiveInt``, ``Annotated[int,
    ...]``): not by a config's value, where YAML's ``2`` for a weight of 2.0 would read as one.

    >>> whole_numbers("box_replay", "per_image"), whole_numbers("replay", "weight"), whole_numbers("der", "memory_size")
    (True, False, True)
    """
    return re.search(r"\bint\b|Int\b", str(STRATEGIES[strategy].__dataclass_fields__[knob].type)) is not None

def default_training_space(training: TrainingConfig) -> dict[str, SearchRange]:
    """The training knobs searched when the config names none: the learning rate a decade either
    side of the config's, and 1 to twice its epochs."""
    return {"lr": SearchRange(low=training.lr / 10, high=training.lr * 10, log=True),
            "epochs": SearchRange(low=1, high=max(2, 2 * training.epochs), step=1)}


def knobs(cfg: RunConfig, method: MethodConfig) -> list[Knob]:
    """Every knob a study of ``method`` searches: those its strategies declare under ``search:``
    (or, when none does and ``tune.default_spaces``, the ranges each strategy class declares as
    ``tunable``), then the training knobs of ``tune.search`` (default: lr and epochs).

    Args:
        cfg: the run config (its ``tune`` section and training settings).
        method: the method whose strategies' knobs are searched.

    Returns:
        The knobs, the strategies' first.
    """
    ranges = dict(method.search)
    if not ranges and cfg.tune.default_spaces:
        for part in method.compose:
            for knob, raw in STRATEGIES[part["name"]].tunable.items():
                ranges[f"{part['name']}.{knob}"] = SearchRange.model_validate(raw)
    training = cfg.tune.search if cfg.tune.search is not None else default_training_space(cfg.training)
    ranges |= {f"training.{k}": v for k, v in training.items()}
    found = []
    for key, space in ranges.items():
        owner, name = key.split(".", 1)
        if owner == "training":
            default, integer = getattr(cfg.training, name), name in INTEGER_TRAINING
        else:
            default = next(p for p in method.compose if p["name"] == owner)[name]
            integer = whole_numbers(owner, name)
        found.append(Knob(key, space, integer, default))
    return found


def configured(cfg: RunConfig, method: MethodConfig, values: dict[str, Any], seeds: list[int] | None = None,
               ) -> RunConfig:
    """The run config of ``method`` alone with a trial's ``values`` set (none: the config's own),
    validated as ``retain run`` would; no search ranges and no tune section are left in it.

    Args:
        cfg: the run config.
        method: the one method kept.
        values: a trial's values, by knob key (:attr:`Knob.key`).
        seeds: the seeds to run; None: the config's.

    Returns:
        The validated run config.

    Raises:
        ValueError: a ``training.`` key that is not a training knob.
    """
    compose = [dict(p) for p in method.compose]
    training = cfg.training.model_dump()
    for key, value in values.items():
        owner, name = key.split(".", 1)
        if owner == "training":
            if name not in KNOBS:
                raise ValueError(f"{key}: not a training knob")
            training[name] = value
        else:
            next(p for p in compose if p["name"] == owner)[name] = value
    raw = cfg.model_dump(mode="json", exclude={"tune"}) | {
        "training": training, "strategies": [{"label": method.label, "compose": compose}],
        "seeds": seeds or cfg.seeds}
    loop = cfg.scenario.dataset == "files" and cfg.scenario.path is None  # a store's config: data from the store
    return RunConfig.model_validate(raw, context={"loop": loop})


def config_yaml(cfg: RunConfig, note: str) -> str:
    """``cfg`` as a YAML ``retain run`` takes as it is, under a comment line."""
    raw = cfg.model_dump(mode="json", exclude={"tune"}, exclude_defaults=True)
    raw["strategies"] = [{"label": m.label, "compose": m.compose} for m in cfg.strategies]
    return f"# {note}\n" + yaml.safe_dump(raw, sort_keys=False)
