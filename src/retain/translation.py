"""Continual translation: a language model learns one English→X direction per experience, each scored by chrF++.

The stream is :mod:`retain.data.catalogues`' (Debian's translation catalogues). After each
experience every direction's test sources are translated (greedy, batched) and scored with
sacrebleu's chrF++ (the accuracy matrix: ACC, forgetting, BWT and the report's heat maps read it
unchanged, on a 0-1 scale) and BLEU, with the share of outputs whose format specifiers differ
from the source's. The perplexity of held-out English text (fortunes) before and after tells how
much general language the model lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
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
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.exc import SQLAlchemyError
from tqdm.auto import tqdm

from retain.config import ConfigError, format_errors, read_yaml
from retain.data import Experience, Stream
from retain.data.catalogues import LANGUAGES, Corpus, Direction, is_test_source, load_corpus, specifiers_kept
from retain.data.files import json_lines
from retain.data.text import FORTUNES_DIR, parse_fortunes
from retain.engine.generative import GenerativeLearner, check_strategy
from retain.experiment import versions
from retain.metrics import average_accuracy, stream_accuracy, summarize
from retain.metrics.cost import PeakMemory
from retain.metrics.results import ExperienceInfo, ExperimentResult, MethodResult, Metrics, SeedRun, StreamInfo, Summary
from retain.models.generative import ADAPTATIONS, MODELS, LanguageModel
from retain.monitor import write_report
from retain.store import Batch, ModelStore, StoreError
from retain.strategies import STRATEGIES, make_strategy
from retain.util import auto_threads, require, slug

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

    name: Literal[MODELS] = "smollm2"
    adaptation: Literal[ADAPTATIONS] = "lora"
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
    adaptation: Literal[ADAPTATIONS] | None = Field(None, description="this method's adaptation (default: the model's)")
    lr: PositiveFloat | None = Field(None, description="this method's learning rate (default: training.lr)")

    @field_validator("compose", mode="before")
    @classmethod
    def _compose(cls, v: Any) -> list[dict[str, Any]]:
        specs = [{"name": s} if isinstance(s, str) else s for s in (v or [])]
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or s.get("name") not in STRATEGIES:
                raise ValueError(f"compose[{i}]: give a strategy name, got {s!r}")
            check_strategy(make_strategy(s["name"], **{k: w for k, w in s.items() if k != "name"}))
        return specs

    @property
    def whole_stream(self) -> bool:
        return any(STRATEGIES[s["name"]].whole_stream for s in self.compose)


class TranslationConfig(_Strict):
    """``retain run`` on a config with ``task: translation``."""

    task: str = "translation"
    name: str = "translation"
    output: str = Field("runs", description="the folder runs are written under (retain run --out overrides)")
    seed: int = 0
    model: LMConfig = Field(default_factory=LMConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    training: LMTrainingConfig = Field(default_factory=LMTrainingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    methods: list[TranslationMethod] = Field(default_factory=lambda: [TranslationMethod(label="finetune")])
    max_drop: NonNegativeFloat = Field(2.0, description="a store promotes a version only if no direction it had "
                                                        "learned lost more chrF++ points than this")

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


def english_texts(n: int) -> list[str]:
    """``n`` English fortunes of 40-200 characters (Debian's ``fortunes`` package, file ``wisdom``),
    the held-out general text whose perplexity shows what the model keeps of plain English."""
    path = FORTUNES_DIR / "wisdom"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install Debian's package fortunes (make data does)")
    quotes = [q for q in parse_fortunes(path) if 40 <= len(q) <= 200]
    if len(quotes) < n:
        raise ConfigError(f"generation.perplexity_texts: {n} asked, {path} has {len(quotes)} quotes of 40-200 "
                          "characters")
    return quotes[:n]


def experience(learner: GenerativeLearner, direction: Direction, index: int) -> Experience:
    """One direction's training pairs as token rows, tagged with its index."""
    return pairs_experience(learner, direction.lang, [p.source for p in direction.train],
                            [p.target for p in direction.train], index)


def pairs_experience(learner: GenerativeLearner, lang: str, sources: list[str], targets: list[str],
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


def translate(learner: GenerativeLearner, sources: list[str], lang: str, direction: int | None = None,
              max_new_tokens: int = 40, batch_size: int = 32, progress: bool = False) -> list[str]:
    """``sources`` translated into ``lang`` (``direction``: the index whose expert adapter to use)."""
    return learner.generate([prompt(s, lang) for s in sources], direction, max_new_tokens, batch_size, progress,
                            desc=f"en-{lang}")


def score(outputs: list[str], sources: list[str], references: list[str]) -> dict[str, float]:
    """chrF++ and BLEU (sacrebleu, corpus level, 0-100) and the share of outputs whose format
    specifiers differ from their source's.

    >>> s = score(["Datei %s fehlt"], ["File %s missing"], ["Datei %s fehlt"])
    >>> round(s["chrf"]), round(s["bleu"]), s["broken"]
    (100, 100, 0.0)
    """
    sacrebleu = require("sacrebleu", "sacrebleu")
    return {"chrf": float(sacrebleu.corpus_chrf(outputs, [references], word_order=2).score),
            "bleu": float(sacrebleu.corpus_bleu(outputs, [references]).score),
            "broken": float(np.mean([not specifiers_kept(s, o) for s, o in zip(sources, outputs, strict=True)]))}


def evaluate(learner: GenerativeLearner, corpus: Corpus, cfg: TranslationConfig, progress: bool = False
             ) -> list[dict[str, float]]:
    """Every direction's test set translated and scored (one dict per direction)."""
    rows = []
    for i, d in enumerate(corpus.directions):
        sources = [p.source for p in d.test]
        outputs = translate(learner, sources, d.lang, i, cfg.generation.max_new_tokens, cfg.generation.batch_size,
                            progress)
        rows.append(score(outputs, sources, [p.target for p in d.test]))
    return rows


def build_learner(cfg: TranslationConfig, method: TranslationMethod) -> GenerativeLearner:
    """The learner of one method: the config's model with the method's adaptation and strategies."""
    model = LanguageModel(cfg.model.name, method.adaptation or cfg.model.adaptation, cfg.model.lora_rank, cfg.seed)
    strategies = [make_strategy(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in method.compose]
    t = cfg.training
    return GenerativeLearner(model, strategies, lr=method.lr or t.lr, epochs=t.epochs, batch_size=t.batch_size,
                             max_tokens=t.max_tokens, seed=cfg.seed, device=t.device)


def baseline(learner: GenerativeLearner, corpus: Corpus, cfg: TranslationConfig, progress: bool = False
             ) -> dict[str, Any]:
    """What the untrained model scores: every direction, and the English texts' perplexity. The
    same for every method on one base model (LoRA adapters start at zero, experts start unrouted)."""
    texts = english_texts(cfg.generation.perplexity_texts) if cfg.generation.perplexity_texts else []
    return {"scores": evaluate(learner, corpus, cfg, progress),
            "perplexity": learner.perplexity(texts) if texts else None}


def run_method(cfg: TranslationConfig, corpus: Corpus, method: TranslationMethod, progress: bool = False,
               tick: Callable[[], None] = lambda: None, base: dict[str, Any] | None = None,
               ) -> tuple[SeedRun, dict[str, Any], GenerativeLearner]:
    """One method over the stream: its chrF matrix (0-1) as a seed run, and the rest it measured
    (BLEU and broken-specifier matrices, perplexity before and after, tokens, minutes per
    experience). ``base``: :func:`baseline`'s result when already measured."""
    learner = build_learner(cfg, method)
    learner.directions = {d.lang: i for i, d in enumerate(corpus.directions)}
    texts = english_texts(cfg.generation.perplexity_texts) if cfg.generation.perplexity_texts else []
    base = base or baseline(learner, corpus, cfg, progress)
    untrained, ppl_before = base["scores"], base["perplexity"]
    exps = [experience(learner, d, i) for i, d in enumerate(corpus.directions)]
    chunks = [Stream(exps, len(exps)).merged()] if method.whole_stream else exps
    rows, seconds, peaks = [], [], []
    for exp in chunks:
        with PeakMemory(learner.device) as cost:
            learner.fit(exp, progress)
        seconds.append(cost.seconds)
        peaks.append(cost.peak_mb)
        rows.append(evaluate(learner, corpus, cfg, progress))
        tick()
    chrf = [[r["chrf"] / 100 for r in row] for row in rows]
    untrained_chrf = [r["chrf"] / 100 for r in untrained]
    sizes = [len(d.test) for d in corpus.directions]
    if method.whole_stream:
        final = [chrf[-1]] * len(exps)
        accuracy = {"acc": average_accuracy(final), "stream_acc": stream_accuracy(final, sizes),
                    "forgetting": math.nan, "bwt": math.nan, "fwt": math.nan}
    else:
        accuracy = summarize(chrf, untrained_chrf, sizes)
    with tempfile.TemporaryDirectory() as folder:  # what the learner holds: weights it learned and strategies' state
        state_bytes = sum(f.stat().st_size for f in learner.save(folder).iterdir())
    pairs = learner.epochs * sum(len(e.y_train) for e in chunks)  # replayed rows not counted
    metrics = Metrics(**accuracy, train_seconds=float(sum(seconds)), peak_mb=float(max(peaks)),
                      gradient_steps=learner.steps_,
                      samples_per_second=pairs / max(sum(seconds), 1e-9),
                      update_seconds=float(np.mean(seconds[1:] if len(seconds) > 1 else seconds)),
                      trainable_parameters=learner.model.adapted_parameters())
    extra = {"bleu": [[r["bleu"] for r in row] for row in rows], "broken": [[r["broken"] for r in row] for row in rows],
             "untrained": untrained, "perplexity_before": ppl_before,
             "perplexity_after": learner.perplexity(texts) if texts else None,
             "tokens_trained": learner.tokens_, "minutes_per_experience": [s / 60 for s in seconds],
             "state_bytes": state_bytes}
    return SeedRun(cfg.seed, chrf, untrained_chrf, metrics, learner.steps_, seconds, peaks), extra, learner


def stream_info(corpus: Corpus, cfg: TranslationConfig) -> StreamInfo:
    """What ``results.json`` records of the stream: one experience (and "class") per direction."""
    return StreamInfo(name="debian_catalogues", scenario="task_incremental", n_classes=len(corpus.directions),
                      modality="translation", backbone=cfg.model.name, adaptation=cfg.model.adaptation, score="chrF++",
                      experiences=[ExperienceInfo(i, i, [i], len(d.train), len(d.test), [d.name])
                                   for i, d in enumerate(corpus.directions)])


def run_translation(cfg: TranslationConfig, progress: bool = True, out: str | Path | None = None,
                    on_method: Callable[[ExperimentResult, dict[str, Any]], None] = lambda r, e: None,
                    ) -> tuple[ExperimentResult, dict[str, Any]]:
    """Every method of ``cfg`` over the translation stream. Returns the results (chrF matrices as
    accuracy matrices) and, per method, what else was measured, with the corpus's manifest. With
    ``out``, each method's final model is saved under ``out/models/<label>`` (``retain predict`` reads it).
    ``on_method`` gets the results so far after each method (``retain run`` writes its report then)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(auto_threads() if cfg.training.threads == "auto" else int(cfg.training.threads))
    try:
        c = cfg.corpus
        corpus = load_corpus(c.languages, c.n_train, c.n_test, max_chars=c.max_chars, seed=cfg.seed)
        results = ExperimentResult(cfg.model_dump(mode="json"), [cfg.seed], versions(), stream_info(corpus, cfg))
        extras: dict[str, Any] = {"corpus": corpus.manifest(), "methods": {}}
        base = None
        with tqdm(total=len(cfg.methods) * len(corpus.directions), disable=not progress, desc=cfg.name) as bar:
            for method in cfg.methods:
                bar.set_postfix_str(method.label)
                start = time.perf_counter()
                run, extra, learner = run_method(cfg, corpus, method, progress, lambda: bar.update(1), base)
                base = {"scores": extra["untrained"], "perplexity": extra["perplexity_before"]}
                if out is not None:
                    learner.save(Path(out) / "models" / slug(method.label))
                if method.whole_stream:
                    bar.update(len(corpus.directions) - 1)
                extra["seconds"] = time.perf_counter() - start
                results.methods[method.label] = MethodResult(method.compose, "offline", [run], Summary.of([run]))
                extras["methods"][method.label] = extra
                on_method(results, extras)
        return results, extras
    finally:
        torch.set_num_threads(threads)


def load_translation_config(path: str | Path) -> TranslationConfig:
    """Read and validate a ``task: translation`` YAML config; errors name the field."""
    try:
        return TranslationConfig.model_validate(read_yaml(path))
    except ValidationError as err:
        raise ConfigError(f"invalid config {path}:\n{format_errors(err)}") from None


def translation_table(results: ExperimentResult, extras: dict[str, Any]) -> str:
    """The Markdown table of every method: chrF++ and BLEU at the end, forgetting, perplexity, cost."""
    lines = ["| method | chrF++ (final, mean) | BLEU (final, mean) | forgetting chrF | BWT chrF | broken specifiers % "
             "| English perplexity before → after | tokens trained | minutes per experience | trainable parameters |",
             "|" + " --- |" * 10]
    for label, m in results.methods.items():
        e, s = extras["methods"][label], m.summary.mean
        ppl = (f"{e['perplexity_before']:.1f} → {e['perplexity_after']:.1f}" if e["perplexity_before"] else "n/a")
        lines.append(f"| {label} | {100 * s.acc:.1f} | {np.mean(e['bleu'][-1]):.1f} | {_points(s.forgetting)} | "
                     f"{_points(s.bwt)} | {100 * np.mean(e['broken'][-1]):.0f} | {ppl} | {e['tokens_trained']} | "
                     f"{np.mean(e['minutes_per_experience']):.1f} | {s.trainable_parameters:.0f} |")
    return "\n".join(lines)


def _points(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def write_translation_report(results: ExperimentResult, extras: dict[str, Any], folder: str | Path) -> Path:
    """``results.json`` (chrF++ matrices as accuracy matrices), ``translation.json`` (the rest), and
    :func:`retain.monitor.write_report`'s heat maps, curves and ``report.md``, with this run's table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "translation.json").write_text(json.dumps(extras, indent=1) + "\n")
    cfg, corpus = results.config, extras["corpus"]
    sizes = ", ".join(f"{d['name']} {d['train']}/{d['test']}" for d in corpus["directions"])
    licences = ", ".join(f"{k} ({v['package']} {v['version']}, {v['licence']})"
                         for k, v in corpus["catalogues"].items())
    intro = f"""# {cfg['name']}: continual translation

One direction per experience ({sizes} train/test pairs) from Debian's translation catalogues; model
`{cfg['model']['name']}` ({cfg['model']['adaptation']} unless a method says otherwise; LoRA rank
{cfg['model']['lora_rank']}), AdamW lr {cfg['training']['lr']}, batch {cfg['training']['batch_size']},
{cfg['training']['epochs']} epoch(s) an experience; greedy decoding of at most
{cfg['generation']['max_new_tokens']} tokens.

{translation_table(results, extras)}

- **chrF++** (sacrebleu: character n-grams and word bigrams, 0-100) is the score of the matrices
  below. **forgetting**: a direction's best earlier chrF++ minus its final one, averaged over all
  but the last direction; **BWT**: final minus just-learned (Chaudhry et al. 2018; Lopez-Paz &
  Ranzato 2017). n/a: a model trained once on every direction (joint).
- **broken specifiers**: final outputs whose printf or brace format specifiers differ from the source's.
- **English perplexity**: of {cfg['generation']['perplexity_texts']} held-out English fortunes with no
  direction tag (experts read them with the base model).

Catalogues: {licences}."""
    return write_report(results, folder, intro)


class TranslationStore:
    """The loop on a translation model: ``init`` and ``update`` learn a JSON Lines batch of pairs
    (``{"source", "target", "lang"}`` per line, as ``retain export translations`` writes them) into a
    new version of a :class:`~retain.store.ModelStore`, one direction after another in the order
    their languages first appear; each version is scored with chrF++ on the held-out pairs of every
    batch so far (a fifth of the sources, by :func:`~retain.data.catalogues.is_test_source` with its
    own salt, so the same source is held out in every direction and never trained on) and promoted
    only if no direction it had learned lost more than ``max_drop`` points (the config's).
    ``predict`` translates with the promoted version, ``rollback`` goes back.
    """

    def __init__(self, path: str | Path) -> None:
        self.store = ModelStore(path)
        self.cfg = TranslationConfig.model_validate(self.store.config)

    @staticmethod
    def holds_translation(path: str | Path) -> bool:
        """Whether ``path`` is a store made by :meth:`init` (its config is a translation run's)."""
        try:
            return ModelStore(path).config.get("task") == "translation"
        except (StoreError, OSError, SQLAlchemyError):
            return False

    @classmethod
    def init(cls, cfg: TranslationConfig, data: str | Path, path: str | Path, database: str | None = None,
             progress: bool = False) -> tuple[TranslationStore, dict[str, Any]]:
        """A new store learning its first batch with the config's first method."""
        pairs = read_pairs(data)  # refused before the store exists
        ModelStore.create(path, cfg.model_dump(mode="json"), database)
        store = cls(path)
        return store, store._learn(data, pairs, progress)

    def update(self, data: str | Path, progress: bool = False) -> dict[str, Any]:
        """Learn one more batch into a new version; promoted if it keeps what the last one knew."""
        return self._learn(data, read_pairs(data), progress)

    def _learn(self, data: str | Path, pairs: list[dict[str, str]], progress: bool) -> dict[str, Any]:
        store, cfg = self.store, self.cfg
        with store.writer():
            parent = store.promoted()
            learner = store.load(parent) if parent is not None else build_learner(cfg, cfg.methods[0])
            name = f"batch-{len(store.held_out_names()) + 1}"
            held = [p for p in pairs if is_test_source(p["source"], salt="store")]
            train = [p for p in pairs if not is_test_source(p["source"], salt="store")]
            held_out = (store.meta("held_out") or {}) | {name: held}
            before = store.version(parent).metrics.get("accuracy", {}) if parent is not None else {}
            for lang in dict.fromkeys(p["lang"] for p in train):
                direction = learner.directions.setdefault(lang, len(learner.directions))
                rows = [p for p in train if p["lang"] == lang]
                learner.fit(pairs_experience(learner, lang, [p["source"] for p in rows], [p["target"] for p in rows],
                                             direction), progress)
            after = self._scores(learner, held_out)
            drops = {k: 100 * (before[k] - after[k]) for k in before if k in after}
            worst = max(drops.values(), default=0.0)
            keep = worst <= cfg.max_drop
            reason = (f"chrF++ of every earlier direction within {cfg.max_drop} points "
                      f"(worst drop {worst:.1f})" if keep else f"a direction lost {worst:.1f} chrF++ points")
            store.set_meta("held_out", held_out)
            digest = hashlib.sha256(Path(data).read_bytes()).hexdigest()
            version = store.add_version(learner, parent=parent, metrics={"accuracy": after, "score": "chrF++ / 100"},
                                        batches=[Batch(digest, len(train), str(data)),
                                                 Batch(digest, len(held), name, "held_out")],
                                        decision="promoted" if keep else "rejected", reason=reason, promote=keep)
        return {"version": version, "promoted": keep, "reason": reason, "chrf": {k: 100 * v for k, v in after.items()},
                "trained_pairs": len(train), "held_out_pairs": len(held)}

    def _scores(self, learner: GenerativeLearner, held_out: dict[str, list[dict[str, str]]]) -> dict[str, float]:
        """chrF++ / 100 on each batch's held-out pairs of each direction, keyed ``batch-N en-<lang>``
        (a later version is compared with its parent on the same pairs)."""
        g, out = self.cfg.generation, {}
        for batch, rows in held_out.items():
            for lang in dict.fromkeys(p["lang"] for p in rows):
                mine = [p for p in rows if p["lang"] == lang]
                sources = [p["source"] for p in mine]
                outputs = translate(learner, sources, lang, learner.directions.get(lang), g.max_new_tokens,
                                    g.batch_size)
                out[f"{batch} en-{lang}"] = score(outputs, sources, [p["target"] for p in mine])["chrf"] / 100
        return out

    def versions(self) -> list[dict[str, Any]]:
        """Every version: id, parent, whether promoted, its decision and reason, its chrF++ by direction."""
        return [{"version": v.id, "parent": v.parent, "promoted": v.promoted, "decision": v.decision,
                 "reason": v.reason, "accuracy": v.metrics.get("accuracy", {}),
                 "data": [b.source for b in v.batches if b.role == "train"]} for v in self.store.versions()]

    def rollback(self, version: int | None = None) -> int:
        with self.store.writer():
            return self.store.rollback(version)


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """The pairs of a JSON Lines file, each ``{"source", "target", "lang"}``; a bad row is named."""
    pairs = []
    for i, row in json_lines(path):
        if not all(isinstance(row.get(k), str) and row[k] for k in ("source", "target", "lang")):
            raise StoreError(f"{path}, line {i}: give an object with \"source\", \"target\" and \"lang\" strings")
        if row["lang"] not in LANGUAGES:
            raise StoreError(f"{path}, line {i}: lang {row['lang']!r}; give one of {', '.join(LANGUAGES)}")
        pairs.append(row)
    if not pairs:
        raise StoreError(f"{path}: no pairs")
    return pairs
