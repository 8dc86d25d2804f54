"""Transcripts scored: word and character error rates, per-row scores for the bootstrap, recall of new words.

Every score here reads both sides through :func:`normalize` first, so case and punctuation are not
errors. Rates are corpus rates, as jiwer computes them: all rows' edit errors over all rows'
reference words (or characters), so a long sentence weighs more than a short one. ``1 - WER`` is
the 0-1, higher-is-better score a version is judged by (:func:`word_accuracy`), and
:func:`row_scores` are per-row scores whose mean is that same number, for
:func:`retain.metrics.bootstrap.drop_bound`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from retain.util import TITLES, spell_numbers


def normalize(text: str) -> str:
    """``text`` as it is scored: lowercase, numbers spelled out (:func:`spell_numbers`), punctuation
    removed, except an apostrophe inside a word, dashes turned into spaces, runs of whitespace collapsed
    into one space, "mister" and "missus" written as Whisper writes them ("mr", "mrs"). Typographic apostrophes
    count as ``'``. Punctuation is what Unicode calls it: ``%`` and ``&`` go, symbols (``$``, ``+``) stay.

    Args:
        text: a transcript.

    Returns:
        The normalized text.

    >>> normalize("Don't   stop—it's state-of-the-art, “Kubernetes’” pods!")
    "don't stop it's state of the art kubernetes pods"
    >>> normalize("  'Quoted' U.S. students' 1,000, Mister Smith")
    'quoted us students one thousand mr smith'
    """
    text = spell_numbers(unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'"))
    out = []
    for i, ch in enumerate(text):
        kind = unicodedata.category(ch)
        if kind == "Pd":
            out.append(" ")
        elif ch == "'":
            # kept only between letters or digits: "don't" keeps it, "'quoted'" and "students'" lose it
            inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append(ch if inside else "")
        elif not kind.startswith("P"):
            out.append(ch)
    return " ".join(TITLES.get(w, w) for w in "".join(out).split())


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a Levenshtein alignment of ``hypothesis`` to
    ``reference`` (sequences of words, or of characters): their sum is the edit distance, which
    WER and CER count. Where several alignments reach it, the one traced back from the end
    preferring a deletion, then a match or substitution, then an insertion is taken: it gives
    jiwer 4's breakdown (rapidfuzz's) on over 99.5% of random word pairs (tests/test_wer.py).

    Args:
        reference: the true sequence.
        hypothesis: the sequence aligned to it.

    Returns:
        The substitutions, deletions and insertions.

    >>> edit_counts("the cat sat".split(), "a cat sat down".split())
    (1, 0, 1)
    >>> edit_counts(list("abc"), list("ac"))
    (0, 1, 0)
    """
    n, m = len(reference), len(hypothesis)
    # cost[i][j]: edits that turn reference[:i] into hypothesis[:j]
    cost = [list(range(m + 1))] + [[i] + [0] * m for i in range(1, n + 1)]
    for i in range(1, n + 1):
        row, above, word = cost[i], cost[i - 1], reference[i - 1]
        for j in range(1, m + 1):
            row[j] = min(above[j - 1] + (word != hypothesis[j - 1]), above[j] + 1, row[j - 1] + 1)
    subs = dels = ins = 0
    i, j = n, m
    while i or j:
        if i and cost[i][j] == cost[i - 1][j] + 1:
            dels, i = dels + 1, i - 1
        elif i and j and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            subs += reference[i - 1] != hypothesis[j - 1]
            i, j = i - 1, j - 1
        else:
            ins, j = ins + 1, j - 1
    return subs, dels, ins


@dataclass(frozen=True)
class ErrorCounts:
    """One row's edit errors and reference length, in words and in characters (spaces count as
    characters, as in jiwer's CER).

    Attributes:
        word_errors: word edits (substitutions, deletions, insertions).
        words: words of the normalized reference.
        char_errors: character edits.
        chars: characters of the normalized reference.
    """

    word_errors: int
    words: int
    char_errors: int
    chars: int


def row_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[ErrorCounts]:
    """Each row's :class:`ErrorCounts` of ``hypotheses`` against ``references`` (both normalized).

    Args:
        references: the true transcripts.
        hypotheses: the model's transcripts, one per reference.

    Returns:
        One count per row.

    Raises:
        TypeError: when either side is one string instead of a list.
        ValueError: when the sides differ in length or are empty.

    >>> row_errors(["Hello, world!"], ["hello word"])
    [ErrorCounts(word_errors=1, words=2, char_errors=1, chars=11)]
    """
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(texts, str):
            raise TypeError(f"{name}: give a list of transcripts, not one string")
    if len(references) != len(hypotheses):
        raise ValueError(f"give one hypothesis per reference, got {len(hypotheses)} hypotheses for "
                         f"{len(references)} references")
    if not references:
        raise ValueError("references: no transcripts to score")
    out = []
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = normalize(reference), normalize(hypothesis)
        out.append(ErrorCounts(sum(edit_counts(ref.split(), hyp.split())), len(ref.split()),
                               sum(edit_counts(ref, hyp)), len(ref)))
    return out


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate: substitutions, deletions and insertions of every row over the reference
    words of every row. It exceeds 1 when a hypothesis inserts more words than the references hold.
    An empty reference adds its inserted words to the errors and nothing to the words; when no
    reference has a word, each inserted word counts as one whole error (as jiwer 4 does).

    Args:
        references: the true transcripts.
        hypotheses: the model's transcripts, one per reference.

    Returns:
        The corpus word error rate, 0 and up.

    Raises:
        TypeError: when either side is one string instead of a list.
        ValueError: when the sides differ in length or are empty.

    >>> wer(["the cat sat", "on the mat"], ["the cat sat", "on a mat"])  # 1 error in 6 words
    0.16666666666666666
    >>> wer(["", "yes"], ["uh", "yes"])  # the empty row's insertion counts against the one word
    1.0
    """
    rows = row_errors(references, hypotheses)
    return sum(r.word_errors for r in rows) / max(1, sum(r.words for r in rows))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate: as :func:`wer`, over the characters of the normalized texts (spaces included).

    Args:
        references: the true transcripts.
        hypotheses: the model's transcripts, one per reference.

    Returns:
        The corpus character error rate, 0 and up.

    Raises:
        TypeError: when either side is one string instead of a list.
        ValueError: when the sides differ in length or are empty.

    >>> cer(["the cat"], ["the cap"])  # 1 error in 7 characters
    0.14285714285714285
    """
    rows = row_errors(references, hypotheses)
    return sum(r.char_errors for r in rows) / max(1, sum(r.chars for r in rows))


def word_accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """``1 - WER`` clipped at 0: a version's score on a 0-1 scale, higher is better. Below 0 every
    output is as useless as an empty one (which scores exactly 0), so the clip loses nothing a
    promotion rule should weigh.

    Args:
        references: the true transcripts.
        hypotheses: the model's transcripts, one per reference.

    Returns:
        ``max(0, 1 - WER)``, 0-1.

    Raises:
        TypeError: when either side is one string instead of a list.
        ValueError: when the sides differ in length or are empty.

    >>> word_accuracy(["the cat sat", "on the mat"], ["the cat sat", "on a mat"])
    0.8333333333333334
    >>> word_accuracy(["yes"], ["uh well yes no"])  # WER 3
    0.0
    """
    return max(0.0, 1.0 - wer(references, hypotheses))


def row_scores(references: Sequence[str], hypotheses: Sequence[str]) -> Tensor:
    """Per-row scores whose mean is ``1 - WER`` of the rows together: row ``i`` scores
    ``1 - e_i / L``, with ``e_i`` its word errors and ``L`` the rows' reference words (at least
    one, as in :func:`wer`) over their number. So a row's errors weigh as much as in the corpus
    rate; a perfect row scores 1, and a row with more errors than ``L`` scores below 0 (unclipped,
    or the mean would drift from the corpus score).

    The paired bootstrap (:func:`retain.metrics.bootstrap.drop_bound`) then bounds the rise of the
    corpus WER: the mean of resampled ``before - after`` rows is the resample's added errors over
    the whole set's word count rather than the resample's (the usual linearisation of a ratio).
    Score a pooled set by calling this on the pooled rows, not by joining per-set scores: each
    set's ``L`` differs. While ``WER <= 1`` the mean equals :func:`word_accuracy`.

    Args:
        references: the true transcripts.
        hypotheses: the model's transcripts, one per reference.

    Returns:
        One score per row (float64), at most 1.

    Raises:
        TypeError: when either side is one string instead of a list.
        ValueError: when the sides differ in length or are empty.

    >>> refs, hyps = ["the cat sat", "on the mat today"], ["the cat sat", "on a mat"]
    >>> row_scores(refs, hyps).tolist()  # 2 errors in row 2; 7 words in 2 rows, L = 3.5
    [1.0, 0.4285714285714286]
    >>> round(float(row_scores(refs, hyps).mean()), 12) == round(word_accuracy(refs, hyps), 12)
    True
    """
    rows = row_errors(references, hypotheses)
    errors = torch.tensor([r.word_errors for r in rows], dtype=torch.float64)
    return 1.0 - errors * len(rows) / max(1, sum(r.words for r in rows))


def new_word_recall(references: Sequence[str], hypotheses: Sequence[str], words: Iterable[str]) -> float:
    """Of the occurrences of ``words`` (terms of one or more words, normalized) in the references,
    the share the hypotheses hold: in each row a term counts as recalled as many times as it
    occurs in both (an extra mention in the hypothesis earns nothing). Occurrences are counted as
    whole-word runs, left to right without overlap.

    Args:
        references: the true transcripts.
        hypotheses: the model's transcripts, one per reference.
        words: the terms to recall, each one or more words (normalized before matching).

    Returns:
        Occurrences recalled over occurrences in the references, 0-1.

    Raises:
        ValueError: when a term is empty once normalized, none is given, the sides differ in length,
            or no reference holds any term.

    >>> refs = ["Deploy it to Kubernetes.", "Kubernetes and Home Assistant"]
    >>> hyps = ["deploy it to cooper net ease", "kubernetes and home assistant kubernetes"]
    >>> round(new_word_recall(refs, hyps, ["kubernetes", "Home-Assistant"]), 4)  # 2 of 3 occurrences
    0.6667
    """
    terms: dict[tuple[str, ...], None] = {}
    for word in words:
        tokens = tuple(normalize(word).split())
        if not tokens:
            raise ValueError(f"words: {word!r} holds no word once normalized")
        terms[tokens] = None  # a term given twice counts once
    if not terms:
        raise ValueError("words: give at least one word to recall")
    if len(references) != len(hypotheses):
        raise ValueError(f"give one hypothesis per reference, got {len(hypotheses)} hypotheses for "
                         f"{len(references)} references")
    found = total = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
        for term in terms:
            wanted = _occurrences(ref, term)
            total += wanted
            found += min(wanted, _occurrences(hyp, term))
    if not total:
        raise ValueError(f"references: none holds any of the words {[' '.join(t) for t in terms][:5]}; "
                         "recall needs at least one occurrence")
    return found / total


def _occurrences(tokens: list[str], term: tuple[str, ...]) -> int:
    """How many times ``term`` occurs in ``tokens`` as a run, counted left to right without overlap."""
    count = i = 0
    while i + len(term) <= len(tokens):
        if tuple(tokens[i:i + len(term)]) == term:
            count, i = count + 1, i + len(term)
        else:
            i += 1
    return count


__all__ = ["ErrorCounts", "cer", "edit_counts", "new_word_recall", "normalize", "row_errors", "row_scores", "wer",
           "word_accuracy"]
