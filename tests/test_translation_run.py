"""How a continual translation run measures: the copy-source baseline, bootstrap intervals, perplexity, the test set."""

import json
import math
import random

import numpy as np
import pytest
import sacrebleu
import torch

from retain.config import ConfigError
from retain.data.catalogues import Corpus, Direction, Pair
from retain.engine.generative import GenerativeLearner
from retain.models.generative import LanguageModel
from retain.translation import (
    TranslationConfig,
    chrf_intervals,
    chrf_of,
    chrf_statistics,
    copy_source,
    load_run_corpus,
    perplexity_without_end,
    resampled_chrf,
    run_translation,
    translation_table,
    write_translation_report,
)

GERMAN = [("File not found", "Datei nicht gefunden"), ("cannot open %s", "kann %s nicht öffnen"),
          ("Permission denied", "Keine Berechtigung"), ("%d files removed", "%d Dateien entfernt"),
          ("Open in --raw mode", "Im --raw-Modus öffnen"), ("Quit", "Beenden")]
FRENCH = [("File not found", "Fichier introuvable"), ("cannot open %s", "impossible d'ouvrir %s"),
          ("Permission denied", "Permission refusée"), ("%d files removed", "%d fichiers supprimés"),
          ("Open in --raw mode", "Ouvrir en mode --raw"), ("Quit", "Quitter")]


def _corpus():
    return Corpus([Direction(lang, [], [Pair(s, t, lang, "x") for s, t in pairs])
                   for lang, pairs in (("de", GERMAN), ("fr", FRENCH))])


def _noisy(references, rng):
    """Each reference with about a third of its characters replaced: outputs of middling quality."""
    return ["".join(c if rng.random() > 0.35 else rng.choice("aeiousnrt ") for c in r) for r in references]


def test_copying_the_source_scores_the_sources_against_the_references():
    copy = copy_source(_corpus())
    for pairs, chrf in zip((GERMAN, FRENCH), copy["chrf"], strict=True):
        sources, references = [s for s, _ in pairs], [t for _, t in pairs]
        assert chrf == pytest.approx(sacrebleu.corpus_chrf(sources, [references], word_order=2).score)
    assert copy["chrf_mean"] == pytest.approx(np.mean(copy["chrf"]))
    german = sacrebleu.corpus_bleu([s for s, _ in GERMAN], [[t for _, t in GERMAN]])
    assert copy["bleu"][0] == pytest.approx(german.score)
    for chrf, (low, high) in zip(copy["chrf"], copy["interval"]["directions"], strict=True):
        assert low <= chrf <= high


def test_bootstrap_intervals_hold_the_score_and_narrow_with_more_sentences():
    rng = random.Random(0)
    words = ["Datei", "nicht", "gefunden", "öffnen", "Berechtigung", "entfernt", "Modus", "Ordner", "Fehler"]
    widths = []
    for n in (8, 128):
        references = [[" ".join(rng.choices(words, k=rng.randint(2, 6))) for _ in range(n)] for _ in range(2)]
        stats = [chrf_statistics(_noisy(r, rng), r) for r in references]
        resampled = resampled_chrf(stats)
        assert resampled.shape == (1000, 2)
        intervals = chrf_intervals(resampled)
        scores = [chrf_of(s) for s in stats]
        for score, (low, high) in zip(scores, intervals["directions"], strict=True):
            assert low < score < high
        low, high = intervals["mean"]
        assert low < np.mean(scores) < high
        widths.append(high - low)
        assert np.array_equal(resampled, resampled_chrf(stats))  # a fixed seed: the same intervals every time
        assert not (resampled - resampled_chrf(stats)).any()  # one system against itself: a paired difference of 0
    assert widths[1] < widths[0] / 2  # 16 times the sentences: about a quarter of the width


def _hand_perplexity(learner, texts, end):
    losses = []
    learner.model.eval()
    with torch.no_grad():
        for text in texts:
            row = learner.model.tokenizer.encode(text) + ([learner.model.tokenizer.eos_id] if end else [])
            logp = learner.model.net(input_ids=torch.tensor([row])).logits[0].log_softmax(-1)
            losses += [-float(logp[j, row[j + 1]]) for j in range(len(row) - 1)]
    return math.exp(np.mean(losses))


def test_perplexity_without_the_end_token_leaves_only_it_out():
    torch.manual_seed(0)
    learner = GenerativeLearner(LanguageModel("tiny", "lora"), max_tokens=40)
    texts = ["the cat sat on the mat", "a dog barked"]
    without = perplexity_without_end(learner, texts)
    assert without == pytest.approx(_hand_perplexity(learner, texts, end=False), rel=1e-4)
    assert learner.perplexity(texts) == pytest.approx(_hand_perplexity(learner, texts, end=True), rel=1e-4)
    assert abs(without - learner.perplexity(texts)) > 1e-3 * without
    long = ["x" * 60]  # cut at max_tokens: it has no end token to leave out
    assert perplexity_without_end(learner, long) == pytest.approx(learner.perplexity(long))


def test_more_shared_test_sentences_than_the_catalogues_hold_is_refused_naming_the_field():
    cfg = TranslationConfig.model_validate({"model": {"name": "tiny"},
                                            "corpus": {"languages": ["de", "fr"], "n_train": 4, "n_test": 100_000}})
    with pytest.raises(ConfigError, match=r"corpus.n_test: 100000 test sentences asked.*into every one of de, fr"):
        load_run_corpus(cfg)


def test_a_run_reports_the_copy_baseline_intervals_copies_and_both_perplexities(tmp_path):
    cfg = TranslationConfig.model_validate({
        "name": "tiny-mt", "model": {"name": "tiny"}, "corpus": {"languages": ["de", "fr"], "n_train": 4, "n_test": 6},
        "training": {"batch_size": 4, "max_tokens": 200, "threads": 1},
        "generation": {"max_new_tokens": 8, "perplexity_texts": 2}})
    results, extras = run_translation(cfg, progress=False)
    corpus = load_run_corpus(cfg)
    assert extras["copy_source"] == copy_source(corpus)
    e = extras["methods"]["finetune"]
    final = [100 * v for v in results.methods["finetune"].runs[0].matrix[-1]]
    for chrf, (low, high) in zip(final, e["final_interval"]["directions"], strict=True):
        assert low <= chrf <= high
    low, high = e["over_copy_interval"]["mean"]
    assert low <= np.mean(final) - extras["copy_source"]["chrf_mean"] <= high
    sources = [p.source for p in corpus.directions[0].test]
    assert e["copied"][-1][0] == np.mean([o == s for o, s in zip(e["final_outputs"][0], sources, strict=True)])
    assert e["perplexity_with_end_before"] != e["perplexity_before"]
    table = translation_table(results, extras)
    assert "| copy source (no model) |" in table and "| untrained model |" in table and "over copying" in table
    write_translation_report(results, extras, tmp_path)
    assert json.loads((tmp_path / "translation.json").read_text())["bootstrap"]["resamples"] == 1000
    assert "copy source (no model)" in (tmp_path / "report.md").read_text()
