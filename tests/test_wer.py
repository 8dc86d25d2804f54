"""Word and character error rates against hand-computed values and against jiwer; recall of new words."""

import random

import jiwer
import pytest
import torch

from retain.metrics.bootstrap import drop_bound
from retain.metrics.wer import (
    ErrorCounts,
    cer,
    edit_counts,
    new_word_recall,
    normalize,
    row_errors,
    row_scores,
    wer,
    word_accuracy,
)

VOCABULARY = ["the", "cat", "sat", "on", "mat", "Kubernetes", "don't", "state-of-the-art", "Paris", "a",
              "deploy", "it's", "naïve", "café", "42"]


def sentence(rng, n):
    words = [rng.choice(VOCABULARY) for _ in range(n)]
    if words and rng.random() < 0.5:
        words[-1] += rng.choice([".", "!", "?", ","])
    return " ".join(words)


def garbled(rng, text):
    """``text`` with random substitutions, deletions and insertions of words."""
    out = []
    for word in text.split():
        roll = rng.random()
        if roll < 0.1:
            continue
        out.append(rng.choice(VOCABULARY) if roll < 0.25 else word)
        if rng.random() < 0.1:
            out.append(rng.choice(VOCABULARY))
    return " ".join(out)


@pytest.fixture(scope="module")
def pairs():
    rng = random.Random(0)
    refs = [sentence(rng, rng.randint(1, 12)) for _ in range(200)]
    hyps = [garbled(rng, r) if i % 20 else "" for i, r in enumerate(refs)]  # every 20th hypothesis empty
    return refs, hyps


@pytest.mark.parametrize("ref, hyp, counts", [
    ("the cat sat", "the cat sat", (0, 0, 0)),
    ("the cat sat", "the dog sat", (1, 0, 0)),
    ("the cat sat", "the sat", (0, 1, 0)),
    ("the cat sat", "the cat sat down", (0, 0, 1)),
    ("the cat sat", "", (0, 3, 0)),
    ("", "uh um", (0, 0, 2)),
    ("a b c d", "b c d e", (0, 1, 1)),
], ids=["exact", "substitution", "deletion", "insertion", "empty-hypothesis", "empty-reference", "shifted"])
def test_edit_counts_by_hand(ref, hyp, counts):
    assert edit_counts(ref.split(), hyp.split()) == counts


def test_rates_by_hand():
    refs = ["the cat sat", "on the mat"]
    assert wer(refs, ["the cat sat", "on the mat"]) == 0.0
    assert wer(refs, ["the dog sat", "on the mat"]) == pytest.approx(1 / 6)  # one substitution in 6 words
    assert wer(refs, ["the sat", "on mat"]) == pytest.approx(2 / 6)  # two deletions
    assert wer(refs, ["the cat sat down", "on the mat"]) == pytest.approx(1 / 6)  # one insertion
    assert wer(refs, ["", ""]) == 1.0 and cer(refs, ["", ""]) == 1.0  # all deleted
    assert wer(refs, ["the cat sat", "on the mat and then some more"]) == pytest.approx(4 / 6)
    # case and punctuation are not errors
    assert wer(["The cat, sat."], ["the cat sat"]) == 0.0
    # characters: "the cat sat" has 11, "the cap sat" 1 substitution, "thecat sat" 1 deletion
    assert cer(["the cat sat"], ["the cap sat"]) == pytest.approx(1 / 11)
    assert cer(["the cat sat"], ["thecat sat"]) == pytest.approx(1 / 11)
    assert row_errors(refs, ["the dog sat", "on mat"]) == [ErrorCounts(1, 3, 3, 11), ErrorCounts(1, 3, 4, 10)]


def test_empty_references_count_their_insertions():
    # an empty reference adds its inserted words to the errors, nothing to the words
    assert wer(["", "the cat sat"], ["uh", "the cat sat"]) == pytest.approx(1 / 3)
    # no reference word at all: each inserted word is one whole error, as jiwer 4 scores it
    assert wer([""], ["uh um"]) == 2.0 == jiwer.wer("", "uh um")
    assert wer(["", ""], ["", ""]) == 0.0 and word_accuracy([""], [""]) == 1.0
    assert word_accuracy([""], ["uh"]) == 0.0


def test_rates_agree_with_jiwer_on_random_pairs(pairs):
    refs, hyps = pairs
    norm_refs, norm_hyps = [normalize(r) for r in refs], [normalize(h) for h in hyps]
    assert 0.1 < wer(refs, hyps) < 0.5  # the pairs hold errors of every kind, not a trivial corpus
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(norm_refs, norm_hyps), abs=1e-12)
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(norm_refs, norm_hyps), abs=1e-12)
    for ref, hyp, mine in zip(norm_refs, norm_hyps, row_errors(refs, hyps), strict=True):
        assert mine.word_errors / mine.words == pytest.approx(jiwer.wer(ref, hyp), abs=1e-12)
        assert mine.char_errors / mine.chars == pytest.approx(jiwer.cer(ref, hyp), abs=1e-12)


def test_the_breakdown_is_jiwers_but_on_rare_ties():
    rng = random.Random(1)
    letters, differ = "abcdef", 0
    for _ in range(3000):
        ref = [rng.choice(letters) for _ in range(rng.randint(1, 8))]
        hyp = [rng.choice(letters) for _ in range(rng.randint(0, 8))]
        out = jiwer.process_words(" ".join(ref), " ".join(hyp))
        theirs = (out.substitutions, out.deletions, out.insertions)
        mine = edit_counts(ref, hyp)
        assert sum(mine) == sum(theirs)  # the edit distance always agrees
        differ += mine != theirs
    assert differ <= 15  # equally short alignments split into S, D and I otherwise in 11 of 3,000 pairs


@pytest.mark.parametrize("text, expected", [
    ("Hello,   World!", "hello world"),
    ("state-of-the-art", "state of the art"),
    ("It’s Bob’s “naïve” café…", "it's bob's naïve café"),
    ("'quoted' students' rock 'n' roll", "quoted students rock n roll"),
    ("e.g. 1,000 U.S. dollars — $5 + 10% & more", "eg one thousand us dollars $five + ten more"),
    ("Mister Dashwood's 4 queens", "mr dashwood's four queens"),
    ("\t\n", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_row_scores_average_to_the_corpus_score(pairs):
    refs, hyps = pairs
    scores = row_scores(refs, hyps)
    assert scores.shape == (200,) and float(scores.max()) == 1.0
    assert float(scores.mean()) == pytest.approx(word_accuracy(refs, hyps), abs=1e-12)
    # the bootstrap bounds the rise in corpus WER: a version that empties every 10th row
    worse = [("" if i % 10 == 0 else h) for i, h in enumerate(hyps)]
    rise = wer(refs, worse) - wer(refs, hyps)
    bound = drop_bound(scores, row_scores(refs, worse))
    assert float((scores - row_scores(refs, worse)).mean()) == pytest.approx(rise, abs=1e-12)
    assert 0.0 < bound < rise


def test_row_scores_weigh_errors_by_the_mean_reference_length():
    scores = row_scores(["a b c d e f g h", "yes"], ["a b c d e f g h", "no"])  # 9 words, 2 rows: L = 4.5
    assert torch.allclose(scores, torch.tensor([1.0, 1 - 1 / 4.5], dtype=torch.float64))


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="one hypothesis per reference, got 1 hypotheses for 2"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no transcripts"):
        cer([], [])
    with pytest.raises(TypeError, match="references: give a list"):
        wer("the cat", "the cat")
    with pytest.raises(ValueError, match="none holds any of the words"):
        new_word_recall(["the cat"], ["the cat"], ["kubernetes"])
    with pytest.raises(ValueError, match="holds no word"):
        new_word_recall(["the cat"], ["the cat"], ["..."])


def test_new_word_recall():
    refs = ["Deploy it to Kubernetes today.", "New York, New York!", "nothing new here"]
    # row 1: kubernetes missed; row 2: "new york" twice in the reference, once in the hypothesis
    hyps = ["deploy it to cooper net ease today", "new york new jersey", "nothing new here kubernetes"]
    assert new_word_recall(refs, hyps, ["kubernetes", "New-York"]) == pytest.approx(1 / 3)
    # an extra mention in a row earns nothing beyond the reference's count; a term given twice counts once
    assert new_word_recall(["ship it on kubernetes"], ["kubernetes kubernetes kubernetes"],
                           ["Kubernetes", "kubernetes"]) == 1.0
    # a multi-word term is matched as a run of whole words, not as parts of words
    assert new_word_recall(["home assistant"], ["homes assistant"], ["home assistant"]) == 0.0
    assert new_word_recall(["home assistant"], ["my home assistant"], ["home assistant"]) == 1.0
