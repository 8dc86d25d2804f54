"""Translation: rows are English source / target pairs of one direction each, scored by chrF++.

The model is a :class:`~retain.models.generative.LanguageModel` prompted with the direction's
``[tag]`` (:func:`prompt`); one direction is learned after another in the order their languages
first appear. A store holds a share of each batch's sources out (by a hash of the source, so the
same sentence is held out in every direction and never trained on) and scores every version with
chrF++ on each batch's held-out pairs of each direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from torch import Tensor

from retain.config import ConfigError, ServiceConfig
from retain.data import Experience
from retain.data.catalogues import LANGUAGES, is_test_source, specifiers_kept
from retain.data.files import InputError, json_lines
from retain.engine.generative import GenerativeLearner, check_generative
from retain.extras import require
from retain.models.generative import Adaptation, LanguageModel, ModelName
from retain.quality import GatePolicy, GateReport
from retain.quality.pairs import inspect_pairs, loose_hash, pair_hash
from retain.store import StoreError
from retain.strategies import STRATEGIES, make_strategy
from retain.tasks.base import (
    Prediction,
    TooFewRows,
    WrittenAnswers,
    strings_of,
    strings_tensors,
    validated,
)
from retain.util import slug

PROMPT = "Translate English to {name} [{tag}]:\n{source}\n"


def prompt(source: str, lang: str) -> str:
    """The prompt of one source sentence; the ``[tag]`` names the direction.

    >>> prompt("File not found", "de")
    'Translate English to German [de]:\\nFile not found\\n'
    """
    return PROMPT.format(name=LANGUAGES[lang], tag=lang, source=source)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LMConfig(_Strict):
    """The language model (:class:`retain.models.generative.LanguageModel`) and how it adapts."""

    name: ModelName = "smollm2"
    adaptation: Adaptation = "lora"
    lora_rank: PositiveInt = 8


class CorpusConfig(_Strict):
    """The stream (:func:`retain.data.catalogues.load_corpus`): one direction per language, in order."""

    languages: list[str] = Field(default_factory=lambda: list(LANGUAGES), description="one direction each, in order")
    n_train: PositiveInt = 200
    n_test: PositiveInt = 30
    max_chars: PositiveInt = 80

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        bad = [lang for lang in v if lang not in LANGUAGES]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"give distinct target languages from: {', '.join(LANGUAGES)} (got {v})")
        return v


class LMTrainingConfig(_Strict):
    """How each experience trains: AdamW at ``lr``, ``epochs`` passes of ``batch_size`` rows of at
    most ``max_tokens`` tokens (prompt, target and end), on ``device`` with ``threads`` CPU threads."""

    lr: PositiveFloat = 1e-3
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 8
    max_tokens: PositiveInt = 72
    threads: PositiveInt | Literal["auto"] = "auto"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="cpu, cuda, cuda:N or mps")


class GenerationConfig(_Strict):
    """How the test sources are translated (greedy) and how many English texts score perplexity."""

    max_new_tokens: PositiveInt = 40
    batch_size: PositiveInt = 32
    perplexity_texts: int = Field(60, ge=0, description="English fortunes scored before and after (0: none)")


class TranslationMethod(_Strict):
    """One column of the comparison: strategies composed, and the adaptation or lr if not the run's."""

    label: str
    compose: list[dict[str, Any]] = Field(default_factory=list)
    adaptation: Adaptation | None = Field(None, description="this method's adaptation (default: the model's)")
    lr: PositiveFloat | None = Field(None, description="this method's learning rate (default: training.lr)")

    @field_validator("compose", mode="before")
    @classmethod
    def _compose(cls, v: Any) -> list[dict[str, Any]]:
        specs = [{"name": s} if isinstance(s, str) else s for s in (v or [])]
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or s.get("name") not in STRATEGIES:
                raise ValueError(f"compose[{i}]: give a strategy name, got {s!r}")
            check_generative(make_strategy(s["name"], **{k: w for k, w in s.items() if k != "name"}))
        return specs

    @property
    def whole_stream(self) -> bool:
        return any(STRATEGIES[s["name"]].whole_stream for s in self.compose)


class TranslationConfig(_Strict):
    """``retain run`` on a config with ``task: translation``, and a translation store's config.

    Attributes:
        task: ``translation``.
        name: the run's name.
        output: the folder runs are written under (``retain run --out`` overrides).
        seed: the seed of the corpus's draw and of the learners.
        model: the language model and how it adapts.
        corpus: the stream: one direction per language, in order.
        training: how each experience trains.
        generation: how the test sources are translated, and how many English texts score perplexity.
        methods: the methods compared (a store learns with the first).
        max_drop: a store promotes a version only if no direction it had learned lost more chrF++ points
            than this.
        confidence: judge a direction's drop by the lower bound of a paired bootstrap over its sentences at
            this confidence (None: by the drop itself).
        min_held_out: the fewest held-out pairs a direction of a store's batch needs: the rule's chrF++ is
            measured on them.
        kept: what becomes of the pairs of a batch whose candidate is kept: ``carry`` them into the next
            update on the promoted line, ``hold`` them until ``retain update --retry``, or ``drop`` them
            (recorded).
        gate: a store's checks on incoming pairs.
        service: ``retain serve`` on a translation store.
    """

    task: str = "translation"
    name: str = "translation"
    output: str = Field("runs", description="the folder runs are written under (retain run --out overrides)")
    seed: int = 0
    model: LMConfig = Field(default_factory=LMConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    training: LMTrainingConfig = Field(default_factory=LMTrainingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    methods: list[TranslationMethod] = Field(default_factory=lambda: [TranslationMethod(label="finetune")])
    max_drop: NonNegativeFloat = Field(2.0, le=100, description="a store promotes a version only if no direction "
                                       "it had learned lost more chrF++ points than this")
    confidence: float | None = Field(None, gt=0.5, lt=1.0, description="judge a direction's drop by the lower "
                                     "bound of a paired bootstrap over its sentences at this confidence")
    min_held_out: PositiveInt = Field(20, description="the fewest held-out pairs a direction of a store's batch "
                                      "needs: the rule's chrF++ is measured on them (on 32 sentences its bootstrap "
                                      "sd is 2.5-4.6 points, more than max_drop)")
    kept: Literal["carry", "hold", "drop"] = Field(
        "carry", description="the pairs of a batch whose candidate is kept: carried into the next update on the "
        "promoted line, held until `retain update --retry`, or dropped (recorded)")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="a store's checks on incoming pairs")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="retain serve on a translation store")

    @field_validator("methods")
    @classmethod
    def _labels(cls, v: list[TranslationMethod]) -> list[TranslationMethod]:
        labels = [m.label for m in v]
        if not v or len({slug(label) for label in labels}) != len(labels):  # each names a model folder
            raise ValueError(f"give at least one method, with labels distinct as folder names (got {labels})")
        return v

    @model_validator(mode="after")
    def _experts_alone(self) -> TranslationConfig:
        for i, m in enumerate(self.methods):
            experts = (m.adaptation or self.model.adaptation) == "experts"
            if experts and any(s["name"] != "finetune" for s in m.compose):
                raise ValueError(f"methods.{i} ({m.label}): experts keep each direction in an adapter of its own "
                                 "and take no strategy; give replay, penalties or joint a shared adapter "
                                 "(adaptation: lora)")
        return self


def validate_translation(raw: dict[str, Any], where: str) -> TranslationConfig:
    """A translation config from its YAML's mapping; errors name the field."""
    return validated(TranslationConfig, raw, where)


def pairs_experience(learner: GenerativeLearner[LanguageModel], lang: str, sources: list[str], targets: list[str],
                     index: int) -> Experience:
    """Pairs translated into ``lang`` as token rows of one experience, tagged with direction ``index``."""
    try:
        x, y = learner.encode([prompt(s, lang) for s in sources], targets)
    except ValueError as err:  # a prompt longer than the rows: the config's limit is the one to raise
        raise ConfigError(f"training.max_tokens: en-{lang}: {err}") from None
    empty = torch.empty(0, x.shape[1], dtype=torch.long)
    return Experience(x, y, empty, empty.clone(), id=index, task=index, classes=(index,),
                      t_train=torch.full((len(x),), index, dtype=torch.long), scenario="task_incremental",
                      metadata={"direction": f"en-{lang}"})


def translate(learner: GenerativeLearner[LanguageModel], sources: list[str], lang: str, direction: int | None = None,
              max_new_tokens: int = 40, batch_size: int = 32, progress: bool = False) -> list[str]:
    """``sources`` translated into ``lang``, greedily.

    Args:
        learner: the translation learner.
        sources: English texts.
        lang: the target language (a key of :data:`~retain.data.catalogues.LANGUAGES`).
        direction: the index whose expert adapter to use (None: the shared weights).
        max_new_tokens: the most tokens a translation gets.
        batch_size: texts translated at once.
        progress: show a progress bar.

    Returns:
        One translation a source.
    """
    return learner.generate([prompt(s, lang) for s in sources], direction, max_new_tokens, batch_size, progress,
                            desc=f"en-{lang}")


def score(outputs: list[str], sources: list[str], references: list[str]) -> dict[str, float]:
    """chrF++ and BLEU (sacrebleu, corpus level, 0-100) and the share of outputs whose format
    specifiers differ from their source's.

    Args:
        outputs: the translations.
        sources: their English sources.
        references: the reference translations.

    Returns:
        ``chrf`` and ``bleu`` (0-100) and ``broken`` (the share, 0-1).

    >>> s = score(["Datei %s fehlt"], ["File %s missing"], ["Datei %s fehlt"])
    >>> round(s["chrf"]), round(s["bleu"]), s["broken"]
    (100, 100, 0.0)
    """
    sacrebleu = require("sacrebleu", "llm")
    return {"chrf": float(sacrebleu.corpus_chrf(outputs, [references], word_order=2).score),
            "bleu": float(sacrebleu.corpus_bleu(outputs, [references]).score),
            "broken": float(np.mean([not specifiers_kept(s, o) for s, o in zip(sources, outputs, strict=True)]))}


def build_translator(cfg: TranslationConfig, method: TranslationMethod) -> GenerativeLearner[LanguageModel]:
    """The learner of one method: the config's model with the method's adaptation and strategies."""
    model = LanguageModel(cfg.model.name, method.adaptation or cfg.model.adaptation, cfg.model.lora_rank, cfg.seed)
    strategies = [make_strategy(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in method.compose]
    t = cfg.training
    return GenerativeLearner(model, strategies, lr=method.lr or t.lr, epochs=t.epochs, batch_size=t.batch_size,
                             max_tokens=t.max_tokens, seed=cfg.seed, device=t.device)


def translations(learner: GenerativeLearner[LanguageModel], rows: Pairs, max_new_tokens: int = 40, batch_size: int = 32,
                 progress: bool = False) -> list[str]:
    """Each row's source translated into its own language, in the rows' order (a language the
    learner never learned goes through the shared weights: experts have no adapter for it)."""
    out = [""] * len(rows)
    for lang in dict.fromkeys(rows.langs):
        index = [i for i, other in enumerate(rows.langs) if other == lang]
        texts = translate(learner, [rows.sources[i] for i in index], lang, learner.directions.get(lang),
                          max_new_tokens, batch_size, progress)
        for i, text in zip(index, texts, strict=True):
            out[i] = text
    return out


@dataclass
class Pairs:
    """Translation pairs: English sources, their targets, and each target's language."""

    sources: list[str]
    targets: list[str]
    langs: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, index: Tensor) -> Pairs:
        rows = index.tolist()
        return Pairs(*([part[i] for i in rows] for part in (self.sources, self.targets, self.langs)))

    def tensors(self) -> dict[str, Tensor]:
        return (strings_tensors("source", self.sources) | strings_tensors("target", self.targets)
                | strings_tensors("lang", self.langs))

    def hashes(self) -> list[str]:
        return [pair_hash(*p) for p in zip(self.sources, self.targets, self.langs, strict=True)]

    def content(self) -> tuple[Tensor, ...]:
        return tuple(self.tensors().values())

    def loose_hashes(self) -> list[str]:
        return [loose_hash(*p) for p in zip(self.sources, self.targets, self.langs, strict=True)]

    def by_source(self, percent: int, salt: str) -> Tensor:
        """A mask of about ``percent``% of the rows, drawn by a hash of their sources (the same
        source falls on the same side in every direction; another ``salt`` draws another split)."""
        return torch.tensor([is_test_source(s, percent, salt=salt) for s in self.sources], dtype=torch.bool)

    def direction(self, lang: str) -> Pairs:
        return self.take(torch.tensor([i for i, g in enumerate(self.langs) if g == lang], dtype=torch.long))


def read_pairs(path: str | Path, labelled: bool = True) -> Pairs:
    """The pairs of a JSON Lines file, each ``{"source", "target", "lang"}`` (``labelled=False``:
    the target may be left out); a bad row is named."""
    keys = ("source", "target", "lang") if labelled else ("source", "lang")
    rows = []
    for i, row in json_lines(path):
        if not all(isinstance(row.get(k), str) and row[k] for k in keys):
            raise StoreError(f"{path}, line {i}: give an object with " + ", ".join(f'"{k}"' for k in keys[:-1])
                             + f' and "{keys[-1]}" strings')
        if row["lang"] not in LANGUAGES:
            raise StoreError(f"{path}, line {i}: lang {row['lang']!r}; give one of {', '.join(LANGUAGES)}")
        rows.append(row)
    if not rows:
        raise StoreError(f"{path}: no pairs")
    return Pairs([r["source"] for r in rows], [r.get("target", "") for r in rows], [r["lang"] for r in rows])


class Translation(WrittenAnswers[Pairs]):
    """English→X pairs learned direction after direction; a version is scored by chrF++ (0-1) on
    each batch's held-out pairs of each direction, and promoted only if no direction it had learned
    lost more than ``max_drop`` points."""

    name = "translation"
    metric = "chrF++"
    labels = "direction"
    config_type = TranslationConfig
    model_kept = ("a store's adapters keep the model, adaptation and LoRA rank they were made with; a tuned rank "
                  "applies to a new store")
    training_tuned = False  # a method's own lr is what tuning sets
    predicts_from = "sources"
    too_few = "a share of the sources is held out by their hash: send more pairs"

    def knobs(self) -> dict[str, Any]:
        t = self.config.training
        return {"lr": self.config.methods[0].lr or t.lr, "epochs": t.epochs, "batch_size": t.batch_size}

    def read(self, data: Path, labelled: bool = True) -> Pairs:
        return read_pairs(data, labelled)

    def as_came(self, data: Path, rows: Pairs, names: list[str]) -> list[dict[str, Any]]:
        return [{"source": s, "target": t, "lang": lang} for s, t, lang in zip(rows.sources, rows.targets, rows.langs,
                                                                               strict=True)]

    def join(self, parts: list[Pairs]) -> Pairs:
        return Pairs(*([row for part in parts for row in getattr(part, f)] for f in ("sources", "targets", "langs")))

    def rows_of(self, tensors: dict[str, Tensor]) -> Pairs:
        return Pairs(strings_of(tensors, "source"), strings_of(tensors, "target"), strings_of(tensors, "lang"))

    def held_rows(self, name: str) -> Pairs:
        """A batch's held-out pairs; stores made before the loop was shared kept them as JSON."""
        if name in self.store.data_names():
            return self.rows_of(self.store.get_data(name))
        rows = (self.store.meta("held_out") or {})[name]
        return Pairs([p["source"] for p in rows], [p["target"] for p in rows], [p["lang"] for p in rows])

    def label_names(self, learner: GenerativeLearner[LanguageModel]) -> list[str]:
        """The directions ``learner`` has learned, in order."""
        return [f"en-{lang}" for lang in learner.directions]

    def answers(self, rows: Pairs, names: list[str], learner: GenerativeLearner[LanguageModel] | None) -> list[str]:
        known = learner.directions if learner is not None else {}
        return [f"en-{lang}" for lang in dict.fromkeys(rows.langs) if lang not in known]

    def split(self, rows: Pairs, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
        """A share ``fraction`` of the sources held out, by their hash (the same in every direction);
        refused when a direction would hold out fewer than ``min_held_out`` pairs."""
        held = self._held(rows, fraction)
        counts = self._held_counts(rows, held)
        few = {lang: n for lang, n in counts.items() if n < self.config.min_held_out}
        if few:
            lang, n = next(iter(few.items()))
            raise TooFewRows(f"en-{lang}: {n} of its {rows.langs.count(lang)} pairs would be held out, "
                             f"min_held_out is {self.config.min_held_out}: send more pairs at once (a new store: "
                             "hold out more with --held-out, or set min_held_out in its config)")
        return held.logical_not().nonzero().squeeze(1), held.nonzero().squeeze(1)

    def learnable(self, rows: Pairs, fraction: float) -> Tensor:
        """The rows of the directions that hold out ``min_held_out`` pairs or more."""
        counts = self._held_counts(rows, self._held(rows, fraction))
        enough = {lang for lang, n in counts.items() if n >= self.config.min_held_out}
        return torch.tensor([i for i, lang in enumerate(rows.langs) if lang in enough], dtype=torch.long)

    @staticmethod
    def _held(rows: Pairs, fraction: float) -> Tensor:
        return rows.by_source(round(100 * fraction), "store")

    @staticmethod
    def _held_counts(rows: Pairs, held: Tensor) -> dict[str, int]:
        return {lang: sum(h for h, g in zip(held.tolist(), rows.langs, strict=True) if g == lang)
                for lang in dict.fromkeys(rows.langs)}

    def new_learner(self, rows: Pairs, names: list[str], seed: int) -> GenerativeLearner[LanguageModel]:
        return build_translator(self.config.model_copy(update={"seed": seed}), self.config.methods[0])

    def fit(self, learner: GenerativeLearner[LanguageModel], train: Pairs, held: Pairs, index: int, names: list[str],
            progress: bool = False) -> None:
        for lang in dict.fromkeys(train.langs):
            direction = learner.directions.setdefault(lang, len(learner.directions))
            mine = train.direction(lang)
            learner.fit(pairs_experience(learner, lang, mine.sources, mine.targets, direction), progress)

    def inspect(self, rows: Pairs, current: GenerativeLearner[LanguageModel] | None, held: dict[str, Pairs],
                known: set[str], seed: int) -> GateReport:
        loose = {h for part in held.values() for h in part.loose_hashes()}
        return inspect_pairs(rows.sources, rows.targets, rows.langs, self.config.gate, known | loose,
                             max_chars=self.config.corpus.max_chars)

    def _translations(self, learner: GenerativeLearner[LanguageModel], rows: Pairs, progress: bool = False
                      ) -> list[str]:
        g = self.config.generation
        return translations(learner, rows, g.max_new_tokens, g.batch_size, progress)

    def chrf(self, learner: GenerativeLearner[LanguageModel], rows: Pairs) -> float:
        """chrF++ / 100 of ``learner``'s translations of ``rows`` against their targets."""
        return score(self._translations(learner, rows), rows.sources, rows.targets)["chrf"] / 100

    def scores(self, learner: GenerativeLearner[LanguageModel], held: dict[str, Pairs]) -> dict[str, float]:
        """chrF++ / 100 on each batch's held-out pairs of each direction, keyed ``batch en-<lang>``
        (a later version is compared with its parent on the same pairs)."""
        return {f"{batch} en-{lang}": chrf for batch, rows in held.items()
                for lang, chrf in self._by_direction(self._translations(learner, rows), rows).items()}

    def per_answer(self, learner: GenerativeLearner[LanguageModel], held: dict[str, Pairs]) -> dict[str, float]:
        """chrF++ / 100 of each direction over every batch's held-out pairs."""
        parts = list(held.values())
        every = Pairs(*(sum((getattr(p, k) for p in parts), []) for k in ("sources", "targets", "langs")))
        return {f"en-{lang}": chrf for lang, chrf in self._by_direction(self._translations(learner, every),
                                                                         every).items()}

    @staticmethod
    def _by_direction(outputs: list[str], rows: Pairs) -> dict[str, float]:
        """chrF++ / 100 of each direction of ``rows`` translated as ``outputs``."""
        out = {}
        for lang in dict.fromkeys(rows.langs):
            mine = [i for i, other in enumerate(rows.langs) if other == lang]
            out[lang] = score([outputs[i] for i in mine], [rows.sources[i] for i in mine],
                              [rows.targets[i] for i in mine])["chrf"] / 100
        return out

    def row_scores(self, learner: GenerativeLearner[LanguageModel], held: dict[str, Pairs]) -> dict[str, Tensor]:
        """Each held-out pair's sentence chrF++ / 100, keyed as :meth:`scores`."""
        sacrebleu = require("sacrebleu", "llm")
        out = {}
        for batch, rows in held.items():
            outputs = self._translations(learner, rows)
            for lang in dict.fromkeys(rows.langs):
                out[f"{batch} en-{lang}"] = torch.tensor([
                    sacrebleu.sentence_chrf(outputs[i], [rows.targets[i]], word_order=2).score / 100
                    for i, other in enumerate(rows.langs) if other == lang])
        return out

    def parent_scores(self, learner: GenerativeLearner[LanguageModel], held: dict[str, Pairs],
                      recorded: dict[str, float]) -> dict[str, float]:
        """The promoted version's scores on ``held``: as its version recorded them (greedy decoding
        gives them again; translating every held-out pair is the costly part of an update)."""
        keys = {f"{batch} en-{lang}" for batch, rows in held.items() for lang in rows.langs}
        return {k: recorded[k] for k in keys} if keys <= set(recorded) else self.scores(learner, held)

    def predict(self, learner: GenerativeLearner[LanguageModel], data: Any, top_k: int, progress: bool = False
                ) -> list[Prediction]:
        rows = data if isinstance(data, Pairs) else self.read(Path(data), labelled=False)
        names = [str(i + 1) for i in range(len(rows))]
        limit = self.config.corpus.max_chars  # as /predict: the store learned no longer text; time grows with length
        long = next((i for i, text in enumerate(rows.sources) if len(text) > limit), None)
        if long is not None:
            raise ValueError(f"{data if isinstance(data, str | Path) else 'inputs'}: text {long + 1} has "
                             f"{len(rows.sources[long])} characters; this store translates texts of at most {limit} "
                             "(corpus.max_chars)")
        return [Prediction(row, text, []) for row, text in zip(names, self._translations(learner, rows, progress),
                                                               strict=True)]

    def request_rows(self, inputs: list[dict[str, Any]], where: str) -> Pairs:
        """Texts and target languages (each input ``{"text", "lang"}``), at most ``corpus.max_chars`` long."""
        texts, langs = read_sources(inputs, LANGUAGES, where)
        limit = self.config.corpus.max_chars  # the store learned no longer sentence; the model's positions are few
        for i, text in enumerate(texts):
            if len(text) > limit:
                raise InputError(f"{where}.{i}.text", f"{len(text)} characters; this store translates texts of at "
                                 f"most {limit} (corpus.max_chars)")
        return Pairs(texts, [""] * len(texts), langs)

    def warm_rows(self) -> Pairs:
        return Pairs(["Hello."], [""], [next(iter(LANGUAGES))])

    def answer_score(self, answer: str, label: str) -> float:
        """The translation's sentence chrF++ / 100 against the post-edit."""
        return float(require("sacrebleu", "llm").sentence_chrf(answer, [label], word_order=2).score) / 100

    def with_answers(self, rows: Pairs, answers: list[str]) -> tuple[Pairs, list[str]]:
        return Pairs(rows.sources, list(answers), rows.langs), []

    def answer_groups(self, rows: Pairs) -> list[str]:
        return [f"en-{lang}" for lang in rows.langs]

    def answer_fields(self, rows: Pairs, index: int) -> dict[str, Any]:
        return {"lang": rows.langs[index]}

    def evaluate(self, learner: GenerativeLearner[LanguageModel], data: Path, version: int, progress: bool = False
                 ) -> dict[str, Any]:
        rows = self.read(data)
        outputs = self._translations(learner, rows, progress)  # each row once, scored overall and by direction
        return {"version": version, "rows": len(rows), "chrf": score(outputs, rows.sources, rows.targets)["chrf"],
                "per_direction": {f"en-{lang}": 100 * chrf for lang, chrf in self._by_direction(outputs, rows).items()}}

    # -- tuning a store (retain.tuning.answers) ----------------------------------------------------
    def tuning_share(self, rows: Pairs, percent: int, salt: str) -> Tensor:
        """By a hash of the sources: a sentence falls on one side in every direction."""
        return rows.by_source(percent, salt)

    def tuning_values(self) -> dict[str, Any]:
        method = self.config.methods[0]
        adapters = (method.adaptation or self.config.model.adaptation) != "full"  # shared adapters and experts
        return ({"training.lr": method.lr or self.config.training.lr}
                | ({"model.lora_rank": self.config.model.lora_rank} if adapters else {})
                | self.strategy_values(method.compose))

    def tuned(self, values: dict[str, Any]) -> TranslationConfig:
        """The config with a trial's ``values`` set, its first method alone (whose own ``lr`` the
        learning rate becomes)."""
        raw = self.config.model_dump(mode="json")
        method = raw["methods"][0]
        method["compose"] = self.with_strategy_values(method["compose"], values)
        method["lr"] = values.get("training.lr", method["lr"])
        raw["methods"] = [method]
        raw["model"]["lora_rank"] = values.get("model.lora_rank", raw["model"]["lora_rank"])
        config: TranslationConfig = self.validate(raw)
        return config

    def score_rows(self, learner: GenerativeLearner[LanguageModel], rows: Pairs) -> float:
        """chrF++ / 100 over ``rows`` of every direction at once."""
        return self.chrf(learner, rows)


def read_sources(inputs: list[dict[str, Any]], languages: dict[str, str], where: str = "inputs"
                 ) -> tuple[list[str], list[str]]:
    """The texts and target languages of a translation store's inputs (each ``{"text", "lang"}``);
    an :class:`InputError` names the first bad one."""
    for i, item in enumerate(inputs):
        kind = next(iter(item))
        if kind != "text":
            raise InputError(f"{where}.{i}.{kind}", "this model translates text: send 'text' and 'lang'")
        if item.get("lang") not in languages:
            raise InputError(f"{where}.{i}.lang", f"give the language to translate into, one of {', '.join(languages)}")
    return [item["text"] for item in inputs], [item["lang"] for item in inputs]
