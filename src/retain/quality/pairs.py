"""The gate's checks on translation pairs: repeats, empty or over-long text, copies, broken specifiers, wrong script.

A pair is ``(source, target, lang)``. What can be told cheaply without a model is checked: a pair
seen before (the same pair, or one whose source and target differ only in case, spacing and
punctuation), an empty side or one longer than ``max_chars``, a target whose printf/brace format
specifiers differ from the source's (a translation that would crash the program printing it), and
a target with no letter of the direction's script (every direction in
:data:`~retain.data.catalogues.LANGUAGES` writes Latin letters). Targets that copy their source are
counted but kept: about 1% of the catalogues' messages are the same in both languages (names,
"Filesystem").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from retain.data.catalogues import specifiers_kept
from retain.quality.gate import GatePolicy, GateReport, decide


def pair_hash(source: str, target: str, lang: str) -> str:
    """A content hash of one pair (exact repeats share one)."""
    return hashlib.sha256("\0".join((lang, source, target)).encode()).hexdigest()


def _loose(text: str) -> str:
    """``text`` without case, marks, spacing and punctuation: near-repeats compare equal."""
    plain = unicodedata.normalize("NFKD", text.casefold())
    return re.sub(r"[\W_]+", "", "".join(c for c in plain if not unicodedata.combining(c)))


def loose_hash(source: str, target: str, lang: str) -> str:
    """A hash of one pair that near-repeats share (case, accents, spacing and punctuation left out)."""
    return "~" + pair_hash(_loose(source), _loose(target), lang)


def _latin(text: str) -> bool:
    return any(c.isalpha() and "LATIN" in unicodedata.name(c, "") for c in text)


def copied(source: str, target: str) -> bool:
    """Whether ``target`` is ``source`` again (up to case, accents, spacing and punctuation)."""
    return _loose(source) == _loose(target) and any(c.isalpha() for c in source)


def pair_problem(source: str, target: str, lang: str, max_chars: int) -> str | None:
    """What is wrong with one pair that no model should learn, or None.

    >>> pair_problem("File %s not found", "Datei %d nicht gefunden", "de", 80)
    'format specifiers differ'
    >>> pair_problem("Open", "Open", "de", 80) is None  # a copy may be right (names): inspect_pairs counts them
    True
    """
    if not source.strip() or not target.strip():
        return "empty text"
    if len(source) > max_chars or len(target) > max_chars:
        return f"longer than {max_chars} characters"
    if not specifiers_kept(source, target):
        return "format specifiers differ"
    if any(c.isalpha() for c in target) and not _latin(target):
        return f"no Latin letter in a target for {lang}"
    return None


def inspect_pairs(sources: Sequence[str], targets: Sequence[str], langs: Sequence[str], policy: GatePolicy,
                  known: AbstractSet[str] = frozenset(), max_chars: int = 200) -> GateReport:
    """Check a batch of pairs against ``policy``; ``known`` holds :func:`pair_hash` and
    :func:`loose_hash` values of pairs already held. Broken pairs count against ``max_flagged``
    as label errors do (they say the batch is corrupted); repeats are only dropped.

    >>> report = inspect_pairs(["Open", "Save", "Save", "%s files"], ["Öffnen", "Speichern", "speichern!", "Dateien"],
    ...                        ["de"] * 4, GatePolicy(max_flagged=0.5))
    >>> report.duplicates, report.label_issues, report.decision
    ([2], [3], 'quarantine')
    """
    report = GateReport(len(sources))
    problems: dict[int, str] = {}
    copies = [i for i, (s, t) in enumerate(zip(sources, targets, strict=True)) if copied(s, t)]
    seen = set(known)
    for i, (s, t, lang) in enumerate(zip(sources, targets, langs, strict=True)):
        problem = pair_problem(s, t, lang, max_chars)
        if problem:
            problems[i] = problem
        exact, loose = pair_hash(s, t, lang), loose_hash(s, t, lang)
        if policy.duplicates and (exact in seen or loose in seen):
            report.duplicates.append(i)
        seen |= {exact, loose}
    report.label_issues = sorted(problems)
    share = len(problems) / max(len(sources), 1)
    kinds = sorted({p for p in problems.values()})
    found = (f"{len(problems)} broken pairs ({100 * share:.1f}% of {len(sources)}"
             f"{': ' + ', '.join(kinds) if kinds else ''}), {len(report.duplicates)} duplicates")
    decide(report, share, found, policy)
    if copies:  # some messages are the same in both languages (names, "Filesystem"): kept, but said
        report.reason += f"; {len(copies)} targets copy their source (kept)"
    return report
