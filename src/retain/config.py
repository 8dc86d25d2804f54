"""Run configuration: YAML validated by pydantic, every bad value refused with its field named."""

from __future__ import annotations

import math
import reprlib
from itertools import pairwise
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from retain.data.datasets import DATASETS
from retain.engine.learner import KNOBS
from retain.engine.persist import MAX_ITEMS, MAX_LORA_RANK, MAX_RATE, MAX_SIZE, MAX_STRATEGY_INT, LoadError, bounded
from retain.engine.updater import Hybrid
from retain.models.pretrained import PRETRAINED, adaptation_problem
from retain.quality.gate import GatePolicy
from retain.store.promotion import PromotionRule
from retain.strategies import STRATEGIES, Strategy, make_strategy
from retain.strategies.contract import online_problem, scenario_problem

HEAD_STRATEGY = {"growing": "growing_head", "per_task": "task_heads"}
MAX_LAYER_WEIGHTS = 1 << 28  # between two hidden layers: 1 GiB of float32 weights, far above any real model's
MAX_THREADS = 1024  # training.threads: torch (and the OpenMP of scikit-learn, numpy) cannot start many more
MAX_YAML_VALUES = 100_000  # in a config file once its aliases are expanded; a real config holds hundreds
Objective = Literal["accuracy", "train_seconds", "peak_mb"]  # what retain tune optimises
Mode = Literal["offline", "online", "hybrid"]  # how a run's stream arrives


def _numbers(annotation: Any) -> bool:
    """Whether a field of type ``annotation`` takes numbers but no yes/no (pydantic reads ``true`` there as 1)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _numbers(args[0])
    if origin is Literal:
        return any(type(a) in (int, float) for a in args)
    if origin in (Union, UnionType):
        return any(_numbers(a) for a in args) and not any(a is bool or a is Any for a in args)
    return annotation in (int, float)


def _yes_no_for_number(value: Any, annotation: Any) -> bool:
    """Whether ``value`` holds a yes/no where ``annotation`` wants a number (or a list of numbers)."""
    if isinstance(value, bool):
        return _numbers(annotation)
    if isinstance(value, list) and get_origin(annotation) is list:
        return any(_yes_no_for_number(v, get_args(annotation)[0]) for v in value)
    return False


def _refuse_yes_no(value: Any, fields: dict[str, Any], where: str = "") -> None:
    """Refuse a yes/no among the entries of ``value`` (a mapping) that ``fields`` (pydantic's) declare numbers."""
    for key, item in value.items() if isinstance(value, dict) else ():
        if key in fields and _yes_no_for_number(item, fields[key].annotation):
            raise ValueError(f"{where}{key}: {_yes_no(item)}")


def _yes_no(value: Any) -> str:
    def shown(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else repr(v)

    what = f"{shown(value)} is" if not isinstance(value, list) else f"[{', '.join(map(shown, value))}] holds"
    return f"{what} a yes/no, not a number (YAML reads true, false, yes, no, on and off so): give a number"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A yes/no is refused where a number is expected, here and in a section's own settings (promotion, gate,
        hybrid): pydantic would read ``memory_size: true`` as 1."""
        assert info.field_name is not None  # a field's validator
        annotation = cls.model_fields[info.field_name].annotation
        if _yes_no_for_number(value, annotation):
            raise ValueError(_yes_no(value))
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):  # those check their own
            _refuse_yes_no(value, getattr(annotation, "__pydantic_fields__", {}), f"{info.field_name}.")
        return value


class FilesConfig(_Strict):
    """How to read the user's own files (``dataset: files``); unset columns are inferred."""

    label: str = Field("label", description="the label column of a table")
    text: str | None = Field(None, description="the text column of a table (default: 'text' if there is one)")
    features: list[str] | None = Field(None, description="numeric feature columns (default: all but label, task)")
    task: str | None = Field(None, description="a task id column")
    image_size: PositiveInt | None = Field(None, description="side images are resized to (default: the first's)")
    channels: Literal[1, 3] | None = Field(None, description="image channels (default: the first image's)")
    sample_rate: PositiveInt = Field(16_000, description="audio is resampled to this rate")
    seconds: PositiveFloat = Field(1.0, description="audio clips are cut or padded to this length")

    def options(self) -> dict[str, Any]:
        """Keyword options for ``retain.data.files.load_stream``."""
        return {"label": self.label, "text": self.text, "features": self.features, "task": self.task,
                "size": self.image_size, "channels": self.channels, "sample_rate": self.sample_rate,
                "seconds": self.seconds}


class ScenarioConfig(_Strict):
    """Which data, cut into which stream (``dataset: files`` reads a folder of batches, ``path``)."""

    # a Literal of the registry's names, built at import: mypy takes only values written out
    dataset: Literal[(*DATASETS, "files")]  # type: ignore[valid-type]
    path: str | None = Field(None, description="folder of batches (files), or of the IDX files (fashion_mnist)")
    files: FilesConfig = Field(default_factory=FilesConfig)
    kind: Literal["class_incremental", "task_incremental", "permuted", "rotated"] = "class_incremental"
    n_experiences: PositiveInt = 5
    class_order: list[NonNegativeInt] | None = None
    shuffle_seed: int | None = Field(None, description="shuffle the class order with this seed")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    split_seed: int = 0
    max_train_per_class: PositiveInt | None = Field(None, description="keep at most this many train samples a class")
    max_test_per_class: PositiveInt | None = Field(None, description="keep at most this many test samples a class")

    def modality(self) -> str:
        """What the data holds: vision, text, audio, or tabular (numeric features)."""
        if self.dataset != "files":
            return DATASETS[self.dataset].modality
        from retain.data.files import FileError, modality_of

        if self.path is None:
            raise ValueError("scenario.path: dataset files needs the folder of batch folders to tell what it holds")
        try:
            return modality_of(self.path, self.files.text)
        except FileError as err:
            raise ValueError(f"scenario.path: {err}") from None

    @model_validator(mode="after")
    def _fits_the_classes(self, info: ValidationInfo) -> ScenarioConfig:
        if self.dataset == "files":
            if self.path is None and not _for_loop(info):
                raise ValueError("dataset files needs path: the folder of batch folders (see retain export)")
            cut = sorted(f for f in self.model_fields_set & {"kind", "n_experiences", "class_order", "shuffle_seed",
                                                             "test_fraction", "split_seed", "max_train_per_class",
                                                             "max_test_per_class"}
                         if getattr(self, f) != type(self).model_fields[f].get_default(call_default_factory=True))
            if cut:
                raise ValueError(f"{', '.join(cut)}: your files are already cut into batches (one folder each, "
                                 "train and test), and their kind is read off the data; remove these settings")
            return self
        n = DATASETS[self.dataset].n_classes
        if self.kind in ("class_incremental", "task_incremental") and self.n_experiences > n:
            raise ValueError(
                f"n_experiences is {self.n_experiences} but {self.dataset} has only {n} classes: "
                f"allowed is 1..{n} for a {self.kind} stream"
            )
        if self.class_order is not None and sorted(self.class_order) != list(range(n)):
            raise ValueError(f"class_order must be a permutation of 0..{n - 1}, got {self.class_order}")
        if self.path is not None and self.dataset != "fashion_mnist":
            raise ValueError("path is only used with dataset: fashion_mnist or files")
        return self


class ModelConfig(_Strict):
    """The trainable model, optionally on top of a (pretrained) backbone.

    With ``backbone`` and ``adaptation: frozen`` the backbone's features are computed once
    (cached) and ``name``/``hidden`` is the model trained on them (``hidden: []`` is a linear
    probe); with ``lora`` or ``full`` the head sits on the backbone, which trains too.
    """

    name: Literal["mlp", "cnn", "audio_cnn"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=MAX_SIZE)]] = Field(default_factory=lambda: [256, 256],
                                                                   max_length=MAX_ITEMS)
    head: Literal["fixed", "growing", "per_task"] = "fixed"
    backbone: Literal[tuple(PRETRAINED)] | None = None  # type: ignore[valid-type]  # the registry's names
    adaptation: Literal["frozen", "lora", "full"] = "frozen"
    lora_rank: int = Field(8, ge=1, le=MAX_LORA_RANK)
    image_size: int = Field(64, ge=1, le=MAX_SIZE, description="side the image backbone resizes inputs to")
    feature_cache: str | None = Field("default", description="folder of cached features; default: "
                                      "$RETAIN_CACHE/features or ~/.cache/retain/features; null: no cache")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        problem = self.backbone and adaptation_problem(self.backbone, self.adaptation)
        if problem:
            raise ValueError(problem)
        if self.name == "audio_cnn" and self.backbone != "logmel":
            raise ValueError("name audio_cnn needs backbone: logmel (it reads log-mel spectrograms)")
        if self.backbone is None and self.adaptation != "frozen":
            raise ValueError("adaptation needs a backbone (minilm, tiny_text, efficientnet_lite0, ...)")
        if self.name == "mlp" and not self.hidden and self.backbone is None:
            raise ValueError("hidden: an MLP on raw inputs needs at least one hidden layer")
        return self

    @field_validator("hidden")
    @classmethod
    def _layers_fit(cls, hidden: list[int]) -> list[int]:
        for i, (a, b) in enumerate(pairwise(hidden)):
            if a * b > MAX_LAYER_WEIGHTS:
                raise ValueError(f"layers {i} and {i + 1} ({a} and {b} units) would hold {a * b:,} weights between "
                                 f"them; at most {MAX_LAYER_WEIGHTS:,} (1 GiB of float32)")
        return hidden


class TrainingConfig(_Strict):
    """How each experience is trained; the defaults are the benchmarks' protocol (``benchmarks/class_il.py``)."""

    # Bounded as a saved learner is (retain.engine.persist): a version trained over them could not load.
    epochs: int = Field(3, ge=1, le=MAX_SIZE)
    batch_size: int = Field(32, ge=1, le=MAX_SIZE)
    lr: float = Field(0.01, gt=0, le=MAX_RATE)
    backbone_lr: float | None = Field(None, gt=0, le=MAX_RATE, description="learning rate of the backbone's own "
                                      "weights when they train (adaptation: full); heads and LoRA adapters use lr; "
                                      "default: lr")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="within each experience the learning rate falls "
                            "exponentially, step by step, to lr_decay times lr by its last step; 1: constant")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | Literal["auto"] = Field("auto", description=f"torch CPU threads, 1 to {MAX_THREADS}; auto: one "
                                           "per core not already busy at the start (see retain.util.auto_threads)")

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_THREADS:
            raise ValueError(f"give auto or a number of threads from 1 to {MAX_THREADS}, got {value}")
        return value


class OnlineConfig(_Strict):
    """How the stream arrives in online and hybrid modes."""

    batch_size: PositiveInt = 10
    steps: PositiveInt = Field(1, description="gradient steps per incoming batch")
    shuffle: bool = True
    blurry: float = Field(0.0, ge=0.0, le=0.5)
    eval_every: PositiveInt = 500


class ServiceConfig(_Strict):
    """``retain serve``: who may write, how big a request may be, and when the updater learns the
    feedback it has (a config's ``service:`` section)."""

    token_env: str = Field("RETAIN_TOKEN", description="environment variable holding the bearer token for writes")
    token_file: str | None = Field(None, description="or a file holding it (read at start)")
    open_reads: bool = Field(True, description="predict, versions, metrics and the dashboard need no token")
    max_request_bytes: PositiveInt = Field(8 * 2**20, description="larger request bodies are refused (413)")
    max_inputs: PositiveInt = Field(1024, description="inputs or feedback rows one request may carry")
    update_rows: PositiveInt = Field(200, description="queued feedback rows that start an update")
    update_wait: PositiveFloat = Field(60.0, description="seconds the oldest queued row may wait for an update")
    min_rows: PositiveInt = Field(10, description="fewest queued rows an update takes (except for a new class, "
                                  "or rows that waited update_wait)")
    new_class_rows: PositiveInt = Field(10, description="rows of a class never seen that start an update at once "
                                        "(once the queue holds out the promotion rule's min_held_out rows)")
    drift: Literal["page_hinkley", "adwin"] | None = Field(
        "page_hinkley", description="detector on the error of predictions later labelled (null: none)")
    poll: PositiveFloat = Field(0.5, description="seconds between the updater's and the model swap's checks")
    shadow: bool = Field(True, description="serve the newest kept candidate in shadow: it answers each prediction "
                         "made under an id too (not returned), and is promoted once the rows feedback labels since "
                         "show it surely better (the promotion rule's confidence)")
    shadow_rows: PositiveInt = Field(50, description="labelled live rows a candidate in shadow is judged on")
    cache_features: bool = Field(False, description="keep /predict's inputs' frozen-backbone features in the feature "
                                 "cache (model.feature_cache); off, requests neither read nor fill it")


class SearchRange(_Strict):
    """What ``retain tune`` may try for one knob: ``low``..``high`` (``log`` scale, optional
    ``step``) or a list of ``choices``. Integer knobs (epochs, memory sizes) get integers."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: PositiveFloat | None = None
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self

    def bounds(self) -> list[Any]:
        """The values that must each be valid for the knob: the ends of the range, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]




class TuneConfig(_Strict):
    """``retain tune``: how many trials, what they optimise, and the training knobs searched
    (the strategies' knobs are declared next to them, under ``search:``)."""

    trials: PositiveInt = Field(20, description="trials per method (a resumed study counts the ones done)")
    objectives: list[Objective] = Field(
        default_factory=lambda: list[Objective](["accuracy"]), min_length=1,
        description="accuracy (on the validation slices) alone, or against training time or memory: a Pareto front")
    validation_fraction: float = Field(0.2, gt=0.0, le=0.5, description="of each experience's training rows, "
                                       "held out to score trials (the test sets are read only by the final report)")
    pruner: Literal["quartile", "median", "hyperband", "none"] = Field(
        "quartile", description="stops a trial whose score after an experience is in the bottom quarter (median: "
        "half) of the finished trials' there (single objective)")
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, description="of the sampler and the validation slices")
    trial_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                   description="model seeds a trial trains with, in step: its scores are their mean "
                                   "(more seeds: fewer lucky trials, more time)")
    search: dict[str, SearchRange] | None = Field(None, description="training knobs (lr, epochs, batch_size, "
                                                  "momentum, backbone_lr, lr_decay); default: lr /10..x10 and "
                                                  "epochs 1..2x")
    default_spaces: bool = Field(True, description="search each strategy's declared knobs when it names none")
    start_from_defaults: bool = Field(True, description="the config's own values are the first trial")
    final_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                                   description="seeds of the final test-set report of the default and best configs")

    @field_validator("objectives", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _valid(self) -> TuneConfig:
        if "accuracy" not in self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives must include accuracy, each once; got {self.objectives}")
        unknown = sorted(set(self.search or {}) - set(KNOBS))
        if unknown:
            raise ValueError(f"search: {', '.join(unknown)} is not a training knob; allowed: "
                             f"{', '.join(KNOBS)} (a strategy's knobs go under its own search:)")
        for knob, space in (self.search or {}).items():
            for value in space.bounds():
                try:
                    TrainingConfig.model_validate({knob: value})
                except ValidationError as err:
                    raise ValueError(f"search.{knob}: {value!r} is not a valid {knob}: "
                                     f"{err.errors()[0]['msg']}") from None
        return self


class MethodConfig(_Strict):
    """One column of the comparison: a label and the strategies it composes; ``search`` holds
    the ranges ``retain tune`` may try for their knobs, by ``strategy.knob``."""

    label: str
    compose: list[dict[str, Any]]
    search: dict[str, SearchRange] = Field(default_factory=dict)

    def build(self, head: str = "fixed") -> list[Strategy]:
        """The strategies, a head-growing one first when the model's head asks for it."""
        specs = list(self.compose)
        if head in HEAD_STRATEGY and all(s["name"] != HEAD_STRATEGY[head] for s in specs):
            specs.insert(0, {"name": HEAD_STRATEGY[head]})
        return [make_strategy(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in specs]

    @property
    def whole_stream(self) -> bool:
        return any(STRATEGIES[s["name"]].whole_stream for s in self.compose)


def _component(entry: Any, where: str) -> tuple[dict[str, Any], dict[str, SearchRange]]:
    """A strategy entry, validated with every hyper-parameter recorded, and its search ranges by
    ``name.knob`` (each range's ends valid values of the knob)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"{where}: give a strategy name or a mapping with 'name', got {entry!r}")
    name = entry["name"]
    if name not in STRATEGIES:
        raise ValueError(f"{where}.name: unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    params = {k: v for k, v in entry.items() if k not in ("name", "search")}
    strategy = _strategy(name, params, where)
    search = entry.get("search") or {}
    if not isinstance(search, dict):
        raise ValueError(f"{where}.search: give a mapping of knob: {{low, high[, log]}} or {{choices}}")
    ranges = {}
    for knob, raw in search.items():
        if knob not in strategy.__dataclass_fields__:
            raise ValueError(f"{where}.search.{knob}: {name} has no knob {knob!r}; its knobs: "
                             f"{', '.join(strategy.__dataclass_fields__)}")
        try:
            space = SearchRange.model_validate(raw)
        except ValidationError as err:
            raise ValueError(f"{where}.search.{knob}: {format_errors(err).strip().removeprefix('config: ')}") from None
        for value in space.bounds():
            _strategy(name, params | {knob: value}, f"{where}.search")
        ranges[f"{name}.{knob}"] = space
    return {"name": name, **strategy.get_config()}, ranges


def _strategy(name: str, params: dict[str, Any], where: str) -> Strategy:
    _refuse_yes_no(params, getattr(STRATEGIES[name], "__pydantic_fields__", {}), f"{where}.")
    try:
        strategy = make_strategy(name, **params)
    except ValidationError as err:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {_shown(e.get('input'))})"
            for e in err.errors()
        )
        raise ValueError(problems) from None
    try:  # the bounds a saved learner's strategy settings are held to: over them, no version could load
        bounded(strategy.get_config(), where, limit=MAX_STRATEGY_INT)
    except LoadError as err:
        raise ValueError(f"{err} (the most a saved model holds)") from None
    return strategy


class RunConfig(_Strict):
    """A whole ``retain run``: one scenario, several methods, several seeds."""

    name: str = "run"
    scenario: ScenarioConfig = Field(None, validate_default=True, description="the data (retain init and update "
                                     "take theirs from --data: there, only files: how to read it)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    strategies: list[MethodConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    mode: list[Mode] = Field(default_factory=lambda: list[Mode](["offline"]), min_length=1)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    hybrid: Hybrid = Field(default_factory=Hybrid)
    promotion: PromotionRule = Field(default_factory=PromotionRule)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    output: str = "runs"

    @field_validator("scenario", mode="before")
    @classmethod
    def _scenario(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            if not _for_loop(info):
                raise ValueError("Field required: the data to run on, e.g. {dataset: digits} or {dataset: files, "
                                 "path: FOLDER}")
            return {"dataset": "files"}
        return value

    @classmethod
    def for_loop(cls, raw: dict[str, Any]) -> RunConfig:
        """A config for ``retain init`` / ``update`` / ``serve``: the data comes batch by batch, so
        the scenario may be left out (a ``files`` scenario without a path says how to read tables)."""
        return cls.model_validate(raw, context={"loop": True})

    @field_validator("mode", mode="before")
    @classmethod
    def _one_or_more_modes(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("strategies", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise ValueError("strategies must be a list of strategy names or mappings")
        methods: list[dict[str, Any]] = []
        for i, entry in enumerate(value):
            if isinstance(entry, MethodConfig):
                entry = entry.model_dump()
            if isinstance(entry, dict) and "compose" in entry:
                extra = set(entry) - {"compose", "label", "search"}
                if extra:
                    raise ValueError(f"strategies.{i}: unknown key(s) {sorted(extra)} beside compose")
                if not isinstance(entry["compose"], list) or not entry["compose"]:
                    raise ValueError(f"strategies.{i}.compose: give a non-empty list of strategies")
                built = [_component(c, f"strategies.{i}.compose.{j}") for j, c in enumerate(entry["compose"])]
                label = entry.get("label") or "+".join(p["name"] for p, _ in built)
            else:
                built = [_component(entry, f"strategies.{i}")]
                label = built[0][0]["name"]
            parts = [p for p, _ in built]
            names = [p["name"] for p in parts]
            search = {k: v for _, ranges in built for k, v in ranges.items()}
            for key, raw in (entry.get("search") or {}).items() if "compose" in entry else ():
                if key.split(".")[0] not in names:  # a dumped config keeps its ranges as name.knob
                    raise ValueError(f"strategies.{i}.search.{key}: name a knob as strategy.knob of {names}")
                search[key] = SearchRange.model_validate(raw)
            if len(set(names)) < len(names) and search:
                raise ValueError(f"strategies.{i}: a composition that repeats a strategy cannot be tuned by name")
            methods.append({"label": label, "compose": parts, "search": search})
        labels = [m["label"] for m in methods]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"strategies: labels must be unique, {dupes} repeat (set 'label')")
        return methods

    @model_validator(mode="after")
    def _strategies_fit(self) -> RunConfig:
        kind = {"permuted": "domain_incremental", "rotated": "domain_incremental"}.get(
            self.scenario.kind, self.scenario.kind)
        head = STRATEGIES.get(HEAD_STRATEGY.get(self.model.head, ""))
        files = self.scenario.dataset == "files"  # its kind is read off the data: the learner checks it then
        if head is not None and not files and scenario_problem(head, kind):
            raise ValueError(f"model.head: {self.model.head} needs scenario.kind: {' or '.join(head.scenarios)} "
                             "(task ids at test time)")
        for i, method in enumerate(self.strategies):
            for strategy in method.build(self.model.head):
                problem = None if files else scenario_problem(strategy, kind)
                if problem:
                    raise ValueError(f"strategies.{i}: {problem} (scenario.kind {self.scenario.kind})")
                problem = _needs_problem(strategy, self.model)
                if problem:
                    raise ValueError(f"strategies.{i}: {problem}")
                problem = online_problem(strategy) if "online" in self.mode else None
                if problem:
                    raise ValueError(f"strategies.{i}: {problem}; mode online needs a stream-updated memory "
                                     "(such as update: stream)")
        if self.scenario.dataset == "files" and self.scenario.path is None:  # the loop checks each batch it reads
            return self
        problem = modality_problem(self.model, self.scenario.modality(), f"data set {self.scenario.dataset}")
        if problem:
            raise ValueError(problem)
        return self


def _needs_problem(strategy: Strategy, model: ModelConfig) -> str | None:
    """Why ``model`` lacks what ``strategy`` declares it needs (``Strategy.needs``), or None."""
    for need in strategy.needs:
        if need == "lora_text" and (model.adaptation != "lora" or model.backbone is None
                                    or PRETRAINED[model.backbone].modality != "text"):
            return f"{strategy.name} needs model.backbone minilm (or tiny_text) with model.adaptation: lora"
        if need == "fixed_features" and (model.adaptation != "frozen" or model.hidden or model.head == "per_task"):
            return (f"{strategy.name} needs fixed features and a linear head: model.adaptation: frozen, "
                    "hidden: [], head: fixed or growing")
        if need == "detector":
            return f"{strategy.name} trains an object detector: it needs task: detection"
        if need == "mlp" and (model.name != "mlp" or model.adaptation != "frozen"):
            return f"{strategy.name} builds MLP columns: it needs model.name: mlp on raw inputs or frozen features"
    return None


def format_errors(err: ValidationError) -> str:
    """One line per problem: the field's path, what is wrong, and the value given."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see examples/)"
        quiet = isinstance(e.get("input"), dict) or e["type"] == "value_error"
        shown = "" if quiet else f" (got {_shown(e.get('input'))})"
        where = "" if loc and msg.startswith(loc) else f"{loc or 'config'}: "
        lines.append(f"  {where}{msg}{shown}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A config file that cannot be used; the message lists every problem by field."""


def _for_loop(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("loop"))


def modality_problem(model: ModelConfig, modality: str, data: str) -> str | None:
    """Why ``model`` cannot read ``data`` holding ``modality`` inputs, or None."""
    if model.backbone is not None and PRETRAINED[model.backbone].modality != modality:
        return f"model.backbone: {model.backbone} reads {PRETRAINED[model.backbone].modality}, but {data} is {modality}"
    if model.backbone is None and modality not in ("vision", "tabular"):
        hint = {"text": "minilm (or tiny_text)", "audio": "logmel"}[modality]
        return f"model.backbone: {data} is {modality}; set backbone: {hint}"
    return None


_SHOWN = reprlib.Repr()  # a value in a message: its start, however large (or aliased) it is
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlist = _SHOWN.maxdict = 8


def _shown(value: Any) -> str:
    return _SHOWN.repr(value)


class _YamlProblem(ValueError):
    """What makes a YAML file unusable as a config, beyond its syntax."""


class _ConfigLoader(yaml.SafeLoader):
    """YAML as a config is read: safely, with every key of a mapping given once."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):  # a !!map tag on another node reaches here too: yaml refuses it
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with << may be overridden: that is what merging is for
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise _YamlProblem(f"line {line}: key {key!r} is given twice (first on line {seen[key]}); "
                                       "keep one")
                seen[key] = line
        return super().construct_mapping(node, deep)


def _values(node: yaml.Node, counted: dict[int, int]) -> int:
    """How many values ``node`` holds once its aliases are expanded; each node is counted once (``counted``)."""
    if id(node) not in counted:
        counted[id(node)] = 1  # a node that holds itself (an alias inside its own anchor) counts once
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        counted[id(node)] = 1 + sum(_values(c, counted) for c in children)
    return counted[id(node)]


def _load_yaml(text: str) -> Any:
    """The value a YAML document holds, built only if its aliases expand to at most :data:`MAX_YAML_VALUES`
    values: nested aliases (a "billion laughs") would make validating and reporting it take minutes and GBs."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        values = _values(node, {})
        if values > MAX_YAML_VALUES:
            raise _YamlProblem(f"its aliases (*name) expand to {values:,} values, more than the "
                               f"{MAX_YAML_VALUES:,} a config may hold; write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds, or a :class:`ConfigError` saying what is wrong with the file: its
    syntax, a key given twice (by line), aliases that expand beyond :data:`MAX_YAML_VALUES` values.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    >>> _ = f.write("training:\\n  lr: 0.1\\n  lr: 0.2\\n"); f.close()
    >>> read_yaml(f.name)
    Traceback (most recent call last):
    ...
    retain.config.ConfigError: ...: line 3: key 'lr' is given twice (first on line 2); keep one
    >>> os.unlink(f.name)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = _load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except _YamlProblem as err:
        raise ConfigError(f"{path}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (scenario:, strategies:, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, loop: bool = False) -> RunConfig:
    """Read and validate a YAML run config.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    >>> _ = f.write("scenario: {dataset: digits}\\nstrategies: [{name: replay, memory_size: 0}]\\n"); f.close()
    >>> load_config(f.name)
    Traceback (most recent call last):
    ...
    retain.config.ConfigError: invalid config ...:
      strategies.0.memory_size: Input should be greater than 0 (got 0)
    >>> os.unlink(f.name)
    """
    path, raw = Path(path), read_yaml(path)
    try:
        return RunConfig.for_loop(raw) if loop else RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid config {path}:\n{format_errors(err)}") from None
