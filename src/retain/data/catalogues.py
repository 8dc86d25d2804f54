"""A parallel corpus from Debian's translation catalogues: English messages and their human translations.

Every Debian package with translations ships GNU ``.mo`` catalogues under
``/usr/share/locale/<lang>/LC_MESSAGES/``. :data:`CATALOGUES` fixes which ones the corpus reads
(``make`` installs their packages), so it is the same on every machine of one Debian release.
Entries are cleaned (:func:`clean_pairs`): untranslated, empty and multi-line messages go,
plural entries give a singular and a plural pair, a context is kept beside its message, format
specifiers must agree between source and translation, lengths are capped. The split is by source
message (:func:`is_test_source`): an English message is on the test side in every direction or in
none, so no test sentence is ever trained on; the test sets are the same English sources in every
direction (:func:`load_corpus`), so directions are scored on the same sentences.
"""

from __future__ import annotations

import gettext
import hashlib
import json
import re
import struct
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOCALE_ROOT = Path("/usr/share/locale")

# catalogue -> (Debian package shipping it, licence of its translations). Command-line tools
# and libraries present on a standard Debian system; each has all five directions below.
CATALOGUES: dict[str, tuple[str, str]] = {
    "coreutils": ("coreutils", "GPL-3+"),
    "libc": ("libc-l10n", "LGPL-2.1+"),
    "glib20": ("libglib2.0-data", "LGPL-2.1+"),
    "gtk30": ("libgtk-3-common", "LGPL-2.1+"),
    "dpkg": ("dpkg", "GPL-2+"),
    "gettext-tools": ("gettext", "GPL-3+"),
    "wget": ("wget", "GPL-3+"),
    "tar": ("tar", "GPL-3+"),
    "bash": ("bash", "GPL-3+"),
    "make": ("make", "GPL-3+"),
    "diffutils": ("diffutils", "GPL-3+"),
    "apt": ("apt", "GPL-2+"),
    "libapt-pkg6.0": ("libapt-pkg6.0", "GPL-2+"),
    "findutils": ("findutils", "GPL-3+"),
    "sed": ("sed", "GPL-3+"),
    "grep": ("grep", "GPL-3+"),
    "man-db": ("man-db", "GPL-2+"),
    "gnutls30": ("libgnutls30", "LGPL-2.1+"),
}

# Target languages in stream order: code -> name used in the prompt.
LANGUAGES: dict[str, str] = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                             "pt_BR": "Brazilian Portuguese"}

# printf conversions (with position, flags, width, precision, length), Python's %(name)s and {name}.
# The space flag is left out: in messages "100% of" or "50% done" are prose, not conversions.
SPECIFIER = re.compile(r"%(?:\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?"
                       r"[diouxXeEfFgGaAcspnm%]|%\([A-Za-z_]\w*\)[-+#0]*\d*(?:\.\d+)?[diouxXeEfFgGcrs]"
                       r"|\{[A-Za-z_0-9]*\}")
MO_MAGIC = (0x950412DE, 0xDE120495)


class CatalogueError(ValueError):
    """A catalogue that cannot be read (missing, truncated or not a GNU .mo file)."""


@dataclass(frozen=True)
class Entry:
    """One message of a catalogue: ``forms`` holds one translation, or one per plural form, of
    which ``forms[plural_form]`` is the one for two items (from the catalogue's ``Plural-Forms``)."""

    msgid: str
    forms: tuple[str, ...]
    plural: str | None = None
    context: str | None = None
    plural_form: int = 1


@dataclass(frozen=True)
class Pair:
    """One English source with its translation into ``lang``, and where it came from."""

    source: str
    target: str
    lang: str
    catalogue: str
    context: str | None = None


def read_mo(path: str | Path) -> list[Entry]:
    """The entries of a GNU ``.mo`` catalogue (the header entry left out).

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "x.mo"
    >>> write_mo(f, [Entry("file", ("Datei", "Dateien"), plural="files"), Entry("Open", ("Öffnen",), context="menu")])
    >>> [e for e in read_mo(f) if e.msgid == "Open"]
    [Entry(msgid='Open', forms=('Öffnen',), plural=None, context='menu', plural_form=1)]
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CatalogueError(f"{path}: cannot read the catalogue ({e.strerror})") from None
    if len(data) < 28:
        raise CatalogueError(f"{path}: not a .mo catalogue (only {len(data)} bytes)")
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in MO_MAGIC:
        raise CatalogueError(f"{path}: not a .mo catalogue (magic number {magic:#x})")
    order = "<" if magic == MO_MAGIC[0] else ">"
    revision, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 > 1:
        raise CatalogueError(f"{path}: .mo format revision {revision >> 16}, this reader knows 0 and 1")

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i: table + 8 * i + 8])
        if offset + length > len(data):
            raise CatalogueError(f"{path}: truncated or corrupt (string {i} ends past the file's end)")
        return data[offset: offset + length]

    if max(originals, translations) + 8 * count > len(data):
        raise CatalogueError(f"{path}: truncated or corrupt (its tables of {count} strings end past the file)")
    raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    charset, plural_form = "utf-8", 1
    header = next((value for key, value in raw if key == b""), b"")
    found = re.search(rb"charset=([\w.-]+)", header)
    if found and found.group(1) != b"CHARSET":  # msgfmt's placeholder: no charset given
        charset = found.group(1).decode("ascii")
    try:
        "".encode(charset)
    except LookupError:
        raise CatalogueError(f"{path}: unknown charset {charset!r} in its header") from None
    found = re.search(rb"plural=([^;\n]+)", header)
    if found:
        try:  # the form used for two items: gettext's own reading of the C expression
            plural_form = gettext.c2py(found.group(1).decode("ascii"))(2)
        except (ValueError, SyntaxError, RecursionError):
            raise CatalogueError(f"{path}: cannot read its Plural-Forms expression {found.group(1)!r}") from None
    entries = []
    for key, value in raw:
        if key == b"":
            continue
        try:
            msgid, text = key.decode(charset), value.decode(charset)
        except UnicodeDecodeError as e:
            raise CatalogueError(f"{path}: a message is not valid {charset} ({e})") from None
        context = None
        if "\x04" in msgid:
            context, msgid = msgid.split("\x04", 1)
        singular, _, plural = msgid.partition("\x00")
        entries.append(Entry(singular, tuple(text.split("\x00")), plural or None, context, plural_form))
    return entries


def write_mo(path: str | Path, entries: list[Entry]) -> None:
    """Write ``entries`` as a little-endian GNU ``.mo`` catalogue (UTF-8), as ``msgfmt`` does."""
    header = (b"", b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n")
    def key(e: Entry) -> bytes:
        return ((e.context + "\x04" if e.context else "") + e.msgid + ("\x00" + e.plural if e.plural else "")).encode()

    pairs = [header] + [(key(e), "\x00".join(e.forms).encode()) for e in entries]
    pairs.sort(key=lambda p: p[0])
    n = len(pairs)
    start = 28 + 16 * n
    blob = b""
    orig: list[tuple[int, int]] = []
    trans: list[tuple[int, int]] = []
    for table, which in ((orig, 0), (trans, 1)):
        for p in pairs:
            table.append((len(p[which]), start + len(blob)))
            blob += p[which] + b"\x00"
    head = struct.pack("<7I", MO_MAGIC[0], 0, n, 28, 28 + 8 * n, 0, 0)
    tables = b"".join(struct.pack("<2I", *t) for t in orig + trans)
    Path(path).write_bytes(head + tables + blob)


def specifiers(text: str) -> Counter[str]:
    """The format specifiers of a message, as a multiset (positions dropped: ``%1$s`` counts as ``%s``).

    >>> sorted(specifiers("cannot open %s: %d%% done, %2$lu {name}").elements())
    ['%%', '%d', '%lu', '%s', '{name}']
    """
    return Counter(re.sub(r"^%\d+\$", "%", s) for s in SPECIFIER.findall(text))


def specifiers_kept(source: str, output: str) -> bool:
    """Whether ``output`` has exactly the format specifiers of ``source`` (in any order)."""
    return specifiers(source) == specifiers(output)


def _unmarked(source: str, target: str) -> tuple[str, str]:
    """Menu accelerators taken out (``_Open`` / ``Ö_ffnen``, ``&File``): UI markup, not language.
    A mark counts as one when the source has exactly one, at the start of a word (identifiers such
    as ``POSIXLY_CORRECT`` and entities such as ``&lt;`` stay); the target's single mark goes with it.

    >>> _unmarked("_Open", "Ö_ffnen"), _unmarked("ignoring POSIXLY_CORRECT", "POSIXLY_CORRECT ignoriert")
    (('Open', 'Öffnen'), ('ignoring POSIXLY_CORRECT', 'POSIXLY_CORRECT ignoriert'))
    """
    for mark in "_&":
        if source.count(mark) == 1 and re.search(rf"(?:^|(?<=\s)){re.escape(mark)}[^\W_]", source) \
                and not re.search(r"&\w+;", source):
            source = source.replace(mark, "")
            if target.count(mark) == 1:
                target = target.replace(mark, "")
    return source.strip(), target.strip()


def clean_pairs(entries: list[Entry], lang: str, catalogue: str, max_chars: int = 80) -> list[Pair]:
    """Usable pairs from a catalogue's entries: untranslated or empty entries, multi-line or
    over-long messages (``max_chars``, either side), untranslated copies (target equal to source)
    and translations whose format specifiers differ from the source's are dropped. A plural
    entry gives its singular with the first form and its plural with the second.

    >>> e = [Entry("%d file", ("%d Datei", "%d Dateien"), plural="%d files"), Entry("Bad %s", ("Schlecht",))]
    >>> [(p.source, p.target) for p in clean_pairs(e, "de", "x")]
    [('%d file', '%d Datei'), ('%d files', '%d Dateien')]
    """
    pairs = []
    for e in entries:
        candidates = [(e.msgid, e.forms[0])]
        if e.plural and len(e.forms) > e.plural_form > 0:
            candidates.append((e.plural, e.forms[e.plural_form]))
        for source, target in candidates:
            source, target = _unmarked(source, target)
            if (not source or not target or "\n" in source + target or source == target
                    or max(len(source), len(target)) > max_chars or len(source) < 3
                    or not specifiers_kept(source, target)):
                continue
            pairs.append(Pair(source, target, lang, catalogue, e.context))
    return pairs


def is_test_source(source: str, test_percent: int = 20, salt: str = "") -> bool:
    """Whether an English source message belongs to the test side, in every direction alike: a
    hash of the message (so it does not depend on which catalogues or languages are read), with
    case and any ``_`` or ``&`` left out, so variants of one message fall on the same side. Another
    ``salt`` draws another split by the same rule (a store holds out part of the corpus's training side).

    >>> is_test_source("_Open file") == is_test_source("Open File")
    True
    """
    return _rank(salt + re.sub(r"[_&]", "", source).casefold()) % 100 < test_percent


def _rank(source: str) -> int:
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big")


def read_language(lang: str, catalogues: dict[str, tuple[str, str]] | None = None,
                  root: str | Path = LOCALE_ROOT, max_chars: int = 80) -> list[Pair]:
    """Every clean pair of ``lang`` from the catalogues, one per English source (the first
    catalogue in :data:`CATALOGUES` order wins when two translate the same message)."""
    catalogues = CATALOGUES if catalogues is None else catalogues
    seen: dict[str, Pair] = {}
    for name, (package, _) in catalogues.items():
        path = Path(root) / lang / "LC_MESSAGES" / f"{name}.mo"
        if not path.exists():
            raise CatalogueError(f"{path}: missing; install the Debian package {package} (make data does)")
        for pair in clean_pairs(read_mo(path), lang, name, max_chars):
            seen.setdefault(pair.source, pair)
    return list(seen.values())


@dataclass
class Direction:
    """One translation direction of the stream: its training and test pairs."""

    lang: str
    train: list[Pair]
    test: list[Pair]

    @property
    def name(self) -> str:
        return f"en-{self.lang}"


@dataclass
class Corpus:
    """The stream's directions, in order, and what the corpus is made of (packages, sizes, licences)."""

    directions: list[Direction]
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # catalogue -> package, version, licence
    available: dict[str, int] = field(default_factory=dict)  # lang -> clean pairs before sampling

    def manifest(self) -> dict[str, Any]:
        return {"directions": [{"name": d.name, "train": len(d.train), "test": len(d.test)} for d in self.directions],
                "available_pairs": self.available, "catalogues": self.sources}


def _versions(catalogues: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    out = {}
    for name, (package, licence) in catalogues.items():
        try:
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                                     text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = ""
        out[name] = {"package": package, "version": version or "unknown", "licence": licence}
    return out


def load_corpus(langs: list[str] | None = None, n_train: int = 200, n_test: int = 30, *,
                catalogues: dict[str, tuple[str, str]] | None = None, root: str | Path = LOCALE_ROOT,
                max_chars: int = 80, test_percent: int = 20, seed: int = 0) -> Corpus:
    """The translation stream: one :class:`Direction` per language of ``langs`` (default
    :data:`LANGUAGES`, in order), with ``n_train`` training and ``n_test`` test pairs each
    (fewer when the catalogues have fewer). The test sources are the same in every direction: the
    lowest-hashed test-side sources translated into every language of ``langs``. Training pairs are
    a seeded sample of the train side, so no direction trains on any test-side source."""
    langs = list(LANGUAGES) if langs is None else langs
    unknown = [lang for lang in langs if lang not in LANGUAGES]
    if unknown:
        raise ValueError(f"unknown target language(s) {unknown}; choose from: {', '.join(LANGUAGES)}")
    catalogues = CATALOGUES if catalogues is None else catalogues
    pairs = {lang: {p.source: p for p in read_language(lang, catalogues, root, max_chars)} for lang in langs}
    shared = set.intersection(*(set(by_source) for by_source in pairs.values())) if langs else set()
    test = sorted((s for s in shared if is_test_source(s, test_percent)), key=_rank)[:n_test]
    directions = []
    for lang, by_source in pairs.items():
        train = sorted((p for p in by_source.values() if not is_test_source(p.source, test_percent)),
                       key=lambda p: _rank(f"{seed}:{p.source}"))
        if not train or not test:
            raise CatalogueError(f"{lang}: {len(by_source)} usable pairs in the catalogues, {len(test)} test-side "
                                 f"sources translated into every one of {', '.join(langs)}: too few to split")
        directions.append(Direction(lang, train[:n_train], [by_source[s] for s in test]))
    return Corpus(directions, _versions(catalogues), {lang: len(by_source) for lang, by_source in pairs.items()})


def export_jsonl(corpus: Corpus, folder: str | Path) -> Path:
    """Write the stream as ``NN-en-<lang>/{train,test}.jsonl`` (one ``{"source", "target", "lang",
    "catalogue", "context"}`` object per line) and ``corpus.json`` (sizes, packages, licences)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CatalogueError(f"{folder}: already holds files; export into a new or empty folder")
    for i, d in enumerate(corpus.directions):
        part = folder / f"{i:02d}-{d.name}"
        part.mkdir(parents=True)
        for split, pairs in (("train", d.train), ("test", d.test)):
            with open(part / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs)
    (folder / "corpus.json").write_text(json.dumps(corpus.manifest(), indent=2) + "\n")
    return folder
