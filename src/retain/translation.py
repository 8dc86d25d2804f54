"""Continual translation: a language model learns one English→X direction per experience, each scored by chrF++.

The stream is :mod:`retain.data.catalogues`' (Debian's translation catalogues); every direction is
tested on the same English sources. After each experience every direction's test sources are
translated (greedy, batched) and scored with sacrebleu's chrF++ (the accuracy matrix: ACC,
forgetting, BWT and the report's heat maps read it unchanged, on a 0-1 scale) and BLEU, with the
share of outputs whose format specifiers differ from the source's and the share that copy their
source unchanged. Two references frame the scores: the untrained model, and copying the English
source (no model at all: a catalogue message keeps names, options, numbers and specifiers that
chrF++ credits). Final scores carry 95% bootstrap intervals over the test sentences. The
perplexity of held-out English text (fortunes) before and after tells how much general language
the model lost.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retain.config import ConfigError, read_yaml
from retain.data import Experience, Stream
from retain.data.catalogues import Corpus, Direction, load_corpus
from retain.data.text import FORTUNES_DIR, parse_fortunes
from retain.engine.generative import GenerativeLearner
from retain.engine.protocol import stream_summary, train_and_score
from retain.experiment import versions
from retain.extras import require
from retain.metrics.results import ExperienceInfo, ExperimentResult, MethodResult, Metrics, SeedRun, StreamInfo, Summary
from retain.models.generative import LanguageModel
from retain.monitor import write_report
from retain.monitor.report import percent
from retain.tasks.translation import (
    TranslationConfig,
    TranslationMethod,
    build_translator,
    pairs_experience,
    score,
    translate,
    validate_translation,
)
from retain.util import auto_threads, slug

__all__ = ["TranslationConfig", "chrf_intervals", "copy_source", "load_run_corpus", "load_translation_config",
           "perplexity_without_end", "run_translation", "score", "translate", "translation_table",
           "write_translation_report"]

RESAMPLES = 1000  # bootstrap draws of the test sentences behind every interval
BOOTSTRAP_SEED = 0  # fixed, so a run's intervals and two runs' on one test set are drawn alike


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


def perplexity_without_end(learner: GenerativeLearner[LanguageModel], texts: Sequence[str], batch_size: int = 16
                           ) -> float:
    """``exp`` of the mean next-token loss over the tokens of ``texts`` themselves: what
    :meth:`GenerativeLearner.perplexity` computes, less the end-of-text token it predicts after each
    text. Fine-tuning on one-line messages teaches a model to end a line early, which lowers the loss
    of that one token a text so much that it hides the rest (a review of the first run of
    ``benchmarks/llm_mt.py`` measured SmolLM2's perplexity of the fortunes falling 23.5% counting the
    end token, 4.6% without). No direction tag: experts read with the base model.

    Args:
        learner: the translation learner.
        texts: English texts.
        batch_size: texts scored at once.

    Returns:
        The perplexity (1 and up).
    """
    return learner.perplexity(texts, batch_size, end=False)


def english_perplexity(learner: GenerativeLearner[LanguageModel], texts: Sequence[str]) -> dict[str, float | None]:
    """The English texts' perplexity without the end token (the figure to read) and with it."""
    if not texts:
        return {"perplexity": None, "with_end": None}
    return {"perplexity": perplexity_without_end(learner, texts), "with_end": learner.perplexity(texts)}


def _chrf() -> Any:
    return require("sacrebleu", "llm").CHRF(word_order=2)  # chrF++, as score() computes it


def chrf_statistics(outputs: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Each sentence's chrF++ statistics, a row per sentence (sacrebleu's counts of hypothesis,
    reference and matching n-grams of every order): the corpus chrF++ of any draw of the sentences
    is :func:`chrf_of` the sum of their rows.

    >>> stats = chrf_statistics(["Datei fehlt", "Fehler"], ["Datei fehlt", "Ein Fehler"])
    >>> stats.shape, round(chrf_of(stats), 1), round(chrf_of(stats[:1]), 1)
    ((2, 24), 77.6, 100.0)
    """
    # Resampling these counts is what sacrebleu's own bootstrap does (sacrebleu.significance): 1000 draws
    # of 32 sentences take 0.03 s, against 5.2 s re-scoring each drawn list with corpus_chrf.
    return np.asarray(_chrf()._extract_corpus_statistics(list(outputs), [list(references)]), dtype=np.int64)


def chrf_of(statistics: np.ndarray) -> float:
    """Corpus chrF++ (0-100) of sentences' statistics (:func:`chrf_statistics`)."""
    return float(_chrf()._compute_score_from_stats(statistics.sum(0)).score)


def resampled_chrf(statistics: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
                   ) -> np.ndarray:
    """Corpus chrF++ of each direction (columns) on ``resamples`` draws of its test sentences with
    replacement (rows). The draw depends on the seed and the sizes only: directions that share their
    test sources draw the same sources, and two systems scored on the same sentences are drawn
    alike, so the difference of their resamples is a paired bootstrap."""
    rng = np.random.default_rng(seed)
    draws = {n: rng.integers(0, n, (resamples, n)) for n in sorted({len(s) for s in statistics})}
    metric = _chrf()
    return np.array([[metric._compute_score_from_stats(total).score for total in s[draws[len(s)]].sum(1)]
                     for s in statistics]).T


def chrf_intervals(resampled: np.ndarray) -> dict[str, list[Any]]:
    """95% percentile intervals of each direction's chrF++ and of their mean, from :func:`resampled_chrf`
    (or a difference of two).

    Args:
        resampled: chrF++ (0-100) of each direction (columns) on each bootstrap draw (rows).

    Returns:
        ``directions``: a ``[low, high]`` a direction; ``mean``: the ``[low, high]`` of their mean.
    """
    return {"directions": np.percentile(resampled, [2.5, 97.5], axis=0).T.tolist(),
            "mean": np.percentile(resampled.mean(1), [2.5, 97.5]).tolist()}


def _references(corpus: Corpus) -> list[list[str]]:
    return [[p.target for p in d.test] for d in corpus.directions]


def _sources(corpus: Corpus) -> list[list[str]]:
    return [[p.source for p in d.test] for d in corpus.directions]


def copy_source(corpus: Corpus) -> dict[str, Any]:
    """What copying every English test source unchanged scores (no model): chrF++ and BLEU per
    direction, the chrF++ mean and its 95% bootstrap intervals. A model that does not beat it has
    not shown that it translates.

    Args:
        corpus: the translation stream.

    Returns:
        ``chrf`` and ``bleu`` by direction (0-100), ``chrf_mean`` and ``interval`` (:func:`chrf_intervals`).
    """
    rows = [score(s, s, r) for s, r in zip(_sources(corpus), _references(corpus), strict=True)]
    stats = [chrf_statistics(s, r) for s, r in zip(_sources(corpus), _references(corpus), strict=True)]
    chrf = [r["chrf"] for r in rows]
    return {"chrf": chrf, "chrf_mean": float(np.mean(chrf)), "bleu": [r["bleu"] for r in rows],
            "interval": chrf_intervals(resampled_chrf(stats))}


def experience(learner: GenerativeLearner[LanguageModel], direction: Direction, index: int) -> Experience:
    """One direction's training pairs as token rows, tagged with its index."""
    return pairs_experience(learner, direction.lang, [p.source for p in direction.train],
                            [p.target for p in direction.train], index)


def score_directions(learner: GenerativeLearner[LanguageModel], corpus: Corpus, cfg: TranslationConfig,
                     progress: bool = False) -> tuple[list[dict[str, float]], list[list[str]]]:
    """Every direction's test set translated and scored: one dict per direction (chrF++, BLEU,
    broken specifiers, and ``copied``: the share of outputs equal to their source), and the outputs."""
    rows, outputs = [], []
    for i, (d, sources) in enumerate(zip(corpus.directions, _sources(corpus), strict=True)):
        outputs.append(translate(learner, sources, d.lang, i, cfg.generation.max_new_tokens,
                                 cfg.generation.batch_size, progress))
        copied = float(np.mean([o.strip() == s.strip() for o, s in zip(outputs[-1], sources, strict=True)]))
        rows.append(score(outputs[-1], sources, [p.target for p in d.test]) | {"copied": copied})
    return rows, outputs


def _intervals(outputs: list[list[str]], corpus: Corpus) -> dict[str, list[Any]]:
    return chrf_intervals(resampled_chrf([chrf_statistics(o, r) for o, r in zip(outputs, _references(corpus),
                                                                                  strict=True)]))


def baseline(learner: GenerativeLearner[LanguageModel], corpus: Corpus, cfg: TranslationConfig, progress: bool = False
             ) -> dict[str, Any]:
    """What the untrained model scores: every direction with its chrF++ intervals, and the English
    texts' perplexity (without and with the end token). The same for every method on one base model
    (LoRA adapters start at zero, experts start unrouted)."""
    texts = english_texts(cfg.generation.perplexity_texts) if cfg.generation.perplexity_texts else []
    rows, outputs = score_directions(learner, corpus, cfg, progress)
    ppl = english_perplexity(learner, texts)
    return {"scores": rows, "interval": _intervals(outputs, corpus), "perplexity": ppl["perplexity"],
            "perplexity_with_end": ppl["with_end"]}


def run_translation_method(cfg: TranslationConfig, corpus: Corpus, method: TranslationMethod, progress: bool = False,
               tick: Callable[[], None] = lambda: None, base: dict[str, Any] | None = None,
               ) -> tuple[SeedRun, dict[str, Any], GenerativeLearner[LanguageModel]]:
    """One method over the stream: its chrF matrix (0-1) as a seed run, and the rest it measured
    (BLEU, broken-specifier and copied-source matrices, the final outputs with 95% intervals of
    their chrF++ and of its gain over copying the source, perplexity before and after, tokens,
    minutes per experience). ``base``: :func:`baseline`'s result when already measured."""
    learner = build_translator(cfg, method)
    learner.directions = {d.lang: i for i, d in enumerate(corpus.directions)}
    texts = english_texts(cfg.generation.perplexity_texts) if cfg.generation.perplexity_texts else []
    base = base or baseline(learner, corpus, cfg, progress)
    untrained = base["scores"]
    exps = [experience(learner, d, i) for i, d in enumerate(corpus.directions)]
    chunks = [Stream(exps, len(exps)).merged()] if method.whole_stream else exps
    scored: list[list[dict[str, float]]] = []
    translated: list[list[list[str]]] = []

    def chrf(fitted: GenerativeLearner[LanguageModel]) -> list[float]:
        rows, outputs = score_directions(fitted, corpus, cfg, progress)
        scored.append(rows)
        translated.append(outputs)
        return [r["chrf"] / 100 for r in rows]

    trained = train_and_score([learner], chunks, chrf, lambda i, so_far: tick(),
                              fit=lambda fitted, exp: fitted.fit(exp, progress))
    seconds = trained.seconds
    untrained_chrf = [r["chrf"] / 100 for r in untrained]
    sizes = [len(d.test) for d in corpus.directions]
    accuracy = stream_summary(trained.rows, untrained_chrf, sizes, method.whole_stream)
    with tempfile.TemporaryDirectory() as folder:  # what the learner holds: weights it learned and strategies' state
        state_bytes = sum(f.stat().st_size for f in learner.save(folder).iterdir())
    pairs = learner.epochs * sum(len(e.y_train) for e in chunks)  # replayed rows not counted
    metrics = Metrics(**accuracy, train_seconds=float(sum(seconds)), peak_mb=float(max(trained.peaks)),
                      gradient_steps=learner.steps_,
                      samples_per_second=pairs / max(sum(seconds), 1e-9),
                      update_seconds=float(np.mean(seconds[1:] if len(seconds) > 1 else seconds)),
                      trainable_parameters=learner.model.adapted_parameters())
    final = resampled_chrf([chrf_statistics(o, r) for o, r in zip(translated[-1], _references(corpus), strict=True)])
    copied = resampled_chrf([chrf_statistics(s, r) for s, r in zip(_sources(corpus), _references(corpus),
                                                                    strict=True)])
    ppl = english_perplexity(learner, texts)
    extra = {"bleu": [[r["bleu"] for r in row] for row in scored],
             "broken": [[r["broken"] for r in row] for row in scored],
             "copied": [[r["copied"] for r in row] for row in scored],
             "final_interval": chrf_intervals(final), "over_copy_interval": chrf_intervals(final - copied),
             "final_outputs": translated[-1],
             "untrained": untrained, "untrained_interval": base["interval"],
             "perplexity_before": base["perplexity"], "perplexity_after": ppl["perplexity"],
             "perplexity_with_end_before": base["perplexity_with_end"], "perplexity_with_end_after": ppl["with_end"],
             "tokens_trained": learner.tokens_, "minutes_per_experience": [s / 60 for s in seconds],
             "state_bytes": state_bytes}
    run = SeedRun(cfg.seed, trained.rows, untrained_chrf, metrics, learner.steps_, seconds, trained.peaks)
    return run, extra, learner


def stream_info(corpus: Corpus, cfg: TranslationConfig) -> StreamInfo:
    """What ``results.json`` records of the stream: one experience (and "class") per direction."""
    return StreamInfo(name="debian_catalogues", scenario="task_incremental", n_classes=len(corpus.directions),
                      modality="translation", backbone=cfg.model.name, adaptation=cfg.model.adaptation, score="chrF++",
                      experiences=[ExperienceInfo(i, i, [i], len(d.train), len(d.test), [d.name])
                                   for i, d in enumerate(corpus.directions)])


def load_run_corpus(cfg: TranslationConfig) -> Corpus:
    """The corpus of ``cfg``: ``corpus.n_test`` English test sources shared by every direction, which
    the catalogues must hold.

    Args:
        cfg: the translation config.

    Returns:
        The corpus: each direction's training and test pairs.

    Raises:
        ConfigError: the catalogues hold fewer shared test sources than ``corpus.n_test``; it names the field.
    """
    c = cfg.corpus
    corpus = load_corpus(c.languages, c.n_train, c.n_test, max_chars=c.max_chars, seed=cfg.seed)
    found = len(corpus.directions[0].test)
    if found < c.n_test:
        raise ConfigError(f"corpus.n_test: {c.n_test} test sentences asked, but the catalogues have {found} "
                          f"test-side English sources of at most {c.max_chars} characters (corpus.max_chars) "
                          f"translated into every one of {', '.join(c.languages)}: ask for at most {found}")
    return corpus


def run_translation(cfg: TranslationConfig, progress: bool = True, out: str | Path | None = None,
                    on_method: Callable[[ExperimentResult, dict[str, Any]], None] = lambda r, e: None,
                    ) -> tuple[ExperimentResult, dict[str, Any]]:
    """Every method of ``cfg`` over the translation stream.

    Args:
        cfg: the translation config.
        progress: show progress bars.
        out: a folder to save each method's final model in, under ``out/models/<label>`` (``retain predict``
            reads it); None: not saved.
        on_method: called with the results so far after each method (``retain run`` writes its report then).

    Returns:
        The results (chrF matrices as accuracy matrices) and what else was measured: the corpus's manifest,
        the copy-source baseline (:func:`copy_source`), the bootstrap's settings, and per method
        :func:`run_translation_method`'s extras.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(auto_threads() if cfg.training.threads == "auto" else int(cfg.training.threads))
    try:
        corpus = load_run_corpus(cfg)
        results = ExperimentResult(cfg.model_dump(mode="json"), [cfg.seed], versions(), stream_info(corpus, cfg))
        extras: dict[str, Any] = {"corpus": corpus.manifest(), "copy_source": copy_source(corpus),
                                  "bootstrap": {"resamples": RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95,
                                                "unit": "test source (drawn alike in every direction)"},
                                  "methods": {}}
        base = None
        with tqdm(total=len(cfg.methods) * len(corpus.directions), disable=not progress, desc=cfg.name) as bar:

            def tick() -> None:
                bar.update(1)

            for method in cfg.methods:
                bar.set_postfix_str(method.label)
                start = time.perf_counter()
                run, extra, learner = run_translation_method(cfg, corpus, method, progress, tick, base)
                base = {"scores": extra["untrained"], "interval": extra["untrained_interval"],
                        "perplexity": extra["perplexity_before"],
                        "perplexity_with_end": extra["perplexity_with_end_before"]}
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
    """Read and validate a ``task: translation`` YAML config; errors name the field.

    Args:
        path: the YAML file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file cannot be read or a value is invalid; it names the field.
    """
    return validate_translation(read_yaml(path), str(path))


def _with_interval(value: float, interval: list[float]) -> str:
    return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"


def _ppl(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "n/a"
    return f"{before:.1f} → {after:.1f} ({100 * (after / before - 1):+.1f}%)"


def translation_table(results: ExperimentResult, extras: dict[str, Any]) -> str:
    """The Markdown tables of a run: every method's summary (chrF++ and its gain over copying the
    source, BLEU, forgetting, perplexity, cost); each direction's final chrF++ beside the copy-source
    and untrained baselines, with 95% bootstrap intervals; the share of final outputs that copy
    their source.

    Args:
        results: what :func:`run_translation` returned first.
        extras: what it returned second.

    Returns:
        The tables, blank lines between them.
    """
    names = [d["name"] for d in extras["corpus"]["directions"]]
    methods = {label: extras["methods"][label] for label in results.methods}
    lines = ["| method | chrF++ (final, mean) [95%] | over copying the source [95%] | BLEU (final, mean) "
             "| forgetting chrF | BWT chrF | broken specifiers % | copies of the source % "
             "| English perplexity before → after | with the end token | tokens trained | minutes per experience "
             "| trainable parameters |",
             "|" + " --- |" * 13]
    copy = extras["copy_source"]
    for label, m in results.methods.items():
        e, s = methods[label], m.summary.mean
        final = 100 * s.acc
        lines.append(f"| {label} | {_with_interval(final, e['final_interval']['mean'])} | "
                     f"{_with_interval(final - copy['chrf_mean'], e['over_copy_interval']['mean'])} | "
                     f"{np.mean(e['bleu'][-1]):.1f} | {percent(s.forgetting)} | {percent(s.bwt)} | "
                     f"{100 * np.mean(e['broken'][-1]):.0f} | {100 * np.mean(e['copied'][-1]):.0f} | "
                     f"{_ppl(e['perplexity_before'], e['perplexity_after'])} | "
                     f"{_ppl(e['perplexity_with_end_before'], e['perplexity_with_end_after'])} | "
                     f"{e['tokens_trained']} | {np.mean(e['minutes_per_experience']):.1f} | "
                     f"{s.trainable_parameters:.0f} |")
    first = next(iter(methods.values()))
    untrained = [r["chrf"] for r in first["untrained"]]
    rows = [("copy source (no model)", copy["chrf"], copy["interval"]),
            ("untrained model", untrained, first["untrained_interval"])]
    rows += [(label, [100 * v for v in m.runs[0].matrix[-1]], methods[label]["final_interval"])
             for label, m in results.methods.items()]
    lines += ["", "| final chrF++ [95%] | " + " | ".join(names) + " | mean |", "|" + " --- |" * (len(names) + 2)]
    lines += [f"| {label} | " + " | ".join(_with_interval(v, iv) for v, iv in zip(chrf, interval["directions"],
                                                                               strict=True))
              + f" | {_with_interval(float(np.mean(chrf)), interval['mean'])} |" for label, chrf, interval in rows]
    lines += ["", "| exact copies of the source, % of final outputs | " + " | ".join(names) + " |",
              "|" + " --- |" * (len(names) + 1),
              "| untrained model | " + " | ".join(f"{100 * r['copied']:.0f}" for r in first["untrained"]) + " |"]
    lines += [f"| {label} | " + " | ".join(f"{100 * v:.0f}" for v in e["copied"][-1]) + " |"
              for label, e in methods.items()]
    return "\n".join(lines)


def write_translation_report(results: ExperimentResult, extras: dict[str, Any], folder: str | Path) -> Path:
    """``results.json`` (chrF++ matrices as accuracy matrices), ``translation.json`` (the rest), and
    :func:`retain.monitor.write_report`'s heat maps, curves and ``report.md``, with this run's table.

    Args:
        results: what :func:`run_translation` returned first.
        extras: what it returned second.
        folder: the folder to write in (made if missing).

    Returns:
        The folder written.
    """
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
- **copy source**: each English source copied unchanged, scored against the references (no model). A
  catalogue message keeps names, options, numbers and format specifiers, so copying scores well: a
  method shows it translates only where it beats copying. **over copying the source**: final chrF++
  minus the copy's, with the interval of that difference (paired: both scored on the same draws).
- **[95%]**: percentile intervals of {extras['bootstrap']['resamples']} bootstrap draws of the test
  sources (seed {extras['bootstrap']['seed']}), the same sources drawn in every direction; every
  direction is tested on the same {corpus['directions'][0]['test']} English sources.
- **broken specifiers**: final outputs whose printf or brace format specifiers differ from the source's;
  **copies of the source**: final outputs equal to their source.
- **English perplexity**: of {cfg['generation']['perplexity_texts']} held-out English fortunes with no
  direction tag (experts read them with the base model), over the texts' own tokens; **with the end
  token**: counting the end-of-text token after each text too, which fine-tuning on one-line
  messages makes much likelier (it can hide what happened to the words).

Catalogues: {licences}."""
    return write_report(results, folder, intro)
