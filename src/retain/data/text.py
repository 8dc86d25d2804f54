"""Text data sets from Debian's fortune cookie packages: language identification and topics.

Source: the ``fortunes`` (English, with ``fortunes-min``), ``fortunes-de``, ``fortunes-es``,
``fortunes-it``, ``fortunes-ru``, ``fortunes-pl``, ``fortunes-cs`` and ``fortunes-br``
(Brazilian Portuguese) packages under ``/usr/share/games/fortunes``. The quotes are
collected from many authors; Debian ships them as freely redistributable (see each package's
``/usr/share/doc/<package>/copyright``). Parsing all files takes about a second.

A quote is the text between two ``%`` lines. Quotes are whitespace-normalised, those shorter
than 20 or longer than 600 characters are dropped, and duplicates are removed before a seeded
sample is drawn, so a seed always gives the same data set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")

# Language -> (Debian package, sub-folder or file names under FORTUNES_DIR).
LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "english": ("fortunes", ("art", "computers", "education", "food", "law", "literature", "love",
                             "medicine", "people", "politics", "science", "sports", "wisdom", "work")),
    "german": ("fortunes-de", ("de",)),
    "spanish": ("fortunes-es", ("es",)),
    "italian": ("fortunes-it", ("it",)),
    "russian": ("fortunes-ru", ("ru",)),
    "polish": ("fortunes-pl", ("pl",)),
    "czech": ("fortunes-cs", ("cs",)),
    "portuguese": ("fortunes-br", ("brasil",)),
}

# English topic files with at least 200 quotes each (package ``fortunes`` or ``fortunes-min``).
TOPICS = ("art", "computers", "education", "food", "law", "literature", "politics", "science",
          "wisdom", "work")


@dataclass
class TextDataset:
    """Labeled texts already split into train and test."""

    name: str
    texts_train: list[str]
    y_train: list[int]
    texts_test: list[str]
    y_test: list[int]
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def parse_fortunes(path: Path) -> list[str]:
    """The quotes of one fortune file; files that are not UTF-8 text are skipped (returns [])."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    quotes = []
    for chunk in raw.split("\n%\n"):
        text = " ".join(chunk.replace("\t", " ").split()).strip("% ")
        if 20 <= len(text) <= 600:
            quotes.append(text)
    return quotes


def _fortune_files(entry: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8"))
    return [entry]


def _quotes(names: tuple[str, ...], package: str, root: Path) -> list[str]:
    entries = [root / n for n in names]
    missing = [str(e) for e in entries if not e.exists()]
    if missing:
        from retain.data.base import DatasetNotFound

        raise DatasetNotFound(f"{missing[0]} not found; install Debian's package: apt-get install {package}")
    seen: dict[str, None] = {}
    for entry in entries:
        for f in _fortune_files(entry):
            seen.update(dict.fromkeys(parse_fortunes(f)))
    return list(seen)


def _split(name: str, per_class: dict[str, list[str]], n_per_class: int, test_fraction: float,
           seed: int) -> TextDataset:
    rng = random.Random(seed)
    names = tuple(per_class)
    n_test = round(n_per_class * test_fraction)
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for label, cls in enumerate(names):
        quotes = sorted(per_class[cls])
        if len(quotes) < n_per_class:
            raise ValueError(f"{name}: class {cls!r} has only {len(quotes)} quotes, fewer than n_per_class "
                             f"{n_per_class}")
        chosen = rng.sample(quotes, n_per_class)
        te_x += chosen[:n_test]
        te_y += [label] * n_test
        tr_x += chosen[n_test:]
        tr_y += [label] * (n_per_class - n_test)
    return TextDataset(name, tr_x, tr_y, te_x, te_y, names)


def fortunes_language(n_per_class: int = 300, test_fraction: float = 0.25, seed: int = 0,
                      root: str | Path = FORTUNES_DIR) -> TextDataset:
    """Language identification over 8 languages, ``n_per_class`` quotes each (default 225 train / 75 test).

    >>> d = fortunes_language(n_per_class=20)
    >>> d.n_classes, len(d.texts_train), len(d.texts_test), d.class_names[:3]
    (8, 120, 40, ('english', 'german', 'spanish'))
    """
    root = Path(root)
    per_class = {lang: _quotes(names, pkg, root) for lang, (pkg, names) in LANGUAGES.items()}
    return _split("fortunes_language", per_class, n_per_class, test_fraction, seed)


def fortunes_topics(n_per_class: int = 160, test_fraction: float = 0.25, seed: int = 0,
                    topics: tuple[str, ...] = TOPICS, root: str | Path = FORTUNES_DIR) -> TextDataset:
    """English topic classification: which fortune file (art, computers, food, ...) a quote comes from.

    >>> d = fortunes_topics(n_per_class=20)
    >>> d.n_classes, len(d.texts_train), d.class_names[:2]
    (10, 150, ('art', 'computers'))
    """
    root = Path(root)
    package = {t: "fortunes-min" if t == "literature" else "fortunes" for t in topics}
    per_class = {t: _quotes((t,), package[t], root) for t in topics}
    return _split("fortunes_topics", per_class, n_per_class, test_fraction, seed)
