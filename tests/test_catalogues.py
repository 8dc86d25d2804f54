"""The parallel corpus from Debian's .mo catalogues: reading, cleaning, the split by source, export."""

import json
import subprocess

import pytest

from retain.cli import main
from retain.data.catalogues import (
    CATALOGUES,
    CatalogueError,
    Entry,
    clean_pairs,
    export_jsonl,
    is_test_source,
    load_corpus,
    read_mo,
    specifiers_kept,
    write_mo,
)

PO = r'''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

msgid "cannot open %s"
msgstr "kann %s nicht öffnen"

msgid "%d file removed"
msgid_plural "%d files removed"
msgstr[0] "%d Datei entfernt"
msgstr[1] "%d Dateien entfernt"

msgctxt "menu"
msgid "_Open"
msgstr "Ö_ffnen"

msgid "untranslated"
msgstr ""
'''


def test_a_catalogue_compiled_by_msgfmt_is_read_with_plurals_and_context(tmp_path):
    (tmp_path / "x.po").write_text(PO)
    subprocess.run(["msgfmt", "-o", str(tmp_path / "x.mo"), str(tmp_path / "x.po")], check=True)
    entries = {e.msgid: e for e in read_mo(tmp_path / "x.mo")}
    assert entries["cannot open %s"].forms == ("kann %s nicht öffnen",)
    assert entries["%d file removed"].plural == "%d files removed"
    assert entries["%d file removed"].forms == ("%d Datei entfernt", "%d Dateien entfernt")
    assert entries["_Open"].context == "menu"
    assert "untranslated" not in entries  # msgfmt leaves out what has no translation
    pairs = {p.source: p.target for p in clean_pairs(list(entries.values()), "de", "x")}
    assert pairs == {"cannot open %s": "kann %s nicht öffnen", "%d file removed": "%d Datei entfernt",
                     "%d files removed": "%d Dateien entfernt", "Open": "Öffnen"}


def test_written_catalogues_read_back_and_big_endian_ones_too(tmp_path):
    entries = [Entry("Open", ("Öffnen",), context="menu"), Entry("%d file", ("%d Datei", "%d Dateien"), "%d files")]
    write_mo(tmp_path / "x.mo", entries)
    assert sorted(read_mo(tmp_path / "x.mo"), key=lambda e: e.msgid) == sorted(entries, key=lambda e: e.msgid)
    data = bytearray((tmp_path / "x.mo").read_bytes())
    # the same file in big-endian byte order: every 32-bit word of the header and tables swapped
    words = 7 + 4 * (len(entries) + 1)
    for i in range(0, 4 * words, 4):
        data[i:i + 4] = data[i:i + 4][::-1]
    (tmp_path / "big.mo").write_bytes(bytes(data))
    assert sorted(read_mo(tmp_path / "big.mo"), key=lambda e: e.msgid) == sorted(entries, key=lambda e: e.msgid)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:20], "only 20 bytes"),
    (lambda b: b"\x00\x01\x02\x03" + b[4:], "magic number"),
    (lambda b: b[:len(b) // 2], "truncated or corrupt"),
])
def test_a_corrupt_catalogue_is_refused_with_a_clear_error(tmp_path, damage, message):
    write_mo(tmp_path / "x.mo", [Entry(f"message number {i}", (f"Nachricht {i}",)) for i in range(20)])
    (tmp_path / "bad.mo").write_bytes(damage((tmp_path / "x.mo").read_bytes()))
    with pytest.raises(CatalogueError, match=message) as err:
        read_mo(tmp_path / "bad.mo")
    assert "bad.mo" in str(err.value)


def test_cleaning_drops_what_cannot_be_trained_on():
    entries = [Entry("Bad %s here", ("Schlecht hier",)),  # a specifier lost
               Entry("two\nlines", ("zwei\nZeilen",)), Entry("Same", ("Same",)), Entry("x" * 90, ("y" * 90,)),
               Entry("Good %1$s and %2$d", ("Gut %2$d und %1$s",)), Entry("ok", ("",))]
    assert [(p.source, p.target) for p in clean_pairs(entries, "de", "x")] == [
        ("Good %1$s and %2$d", "Gut %2$d und %1$s")]
    assert specifiers_kept("%s: %d%%", "%d%% : %s") and not specifiers_kept("%s", "%d")


def _locale(root, texts):
    for lang, pairs in texts.items():
        folder = root / lang / "LC_MESSAGES"
        folder.mkdir(parents=True)
        write_mo(folder / "coreutils.mo", [Entry(s, (t,)) for s, t in pairs])


def test_every_direction_is_tested_on_the_same_sources_and_none_is_trained_on(tmp_path):
    sources = [f"message {i} is here" for i in range(200)]
    _locale(tmp_path, {"de": [(s, s.upper()) for s in sources], "fr": [(s, s.title()) for s in sources[50:]]})
    one = {"coreutils": CATALOGUES["coreutils"]}
    corpus = load_corpus(["de", "fr"], n_train=1000, n_test=1000, root=tmp_path, catalogues=one)
    de, fr = ([p.source for p in d.test] for d in corpus.directions)
    assert de == fr and set(de) <= set(sources[50:])  # the same sources, in the same order, in both
    assert {p.target for p in corpus.directions[0].test} == {s.upper() for s in de}
    assert set(de) == {s for s in sources[50:] if is_test_source(s)}
    train = {p.source for d in corpus.directions for p in d.train}
    assert train and not any(is_test_source(s) for s in train)  # not even de's test-side sources fr lacks
    assert corpus.available == {"de": 200, "fr": 150}
    assert corpus.sources["coreutils"]["package"] == "coreutils"
    few = load_corpus(["de", "fr"], n_train=5, n_test=3, root=tmp_path, catalogues=one)
    assert [[p.source for p in d.test] for d in few.directions] == [de[:3], de[:3]]


def test_a_missing_catalogue_names_the_package_to_install(tmp_path):
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    with pytest.raises(CatalogueError, match="install the Debian package coreutils"):
        load_corpus(["de"], root=tmp_path, catalogues={"coreutils": CATALOGUES["coreutils"]})
    with pytest.raises(ValueError, match="unknown target language"):
        load_corpus(["xx"], root=tmp_path)


def test_the_debian_corpus_has_thousands_of_pairs_a_direction_and_exports_as_jsonl(tmp_path, capsys):
    corpus = load_corpus(n_train=5, n_test=3)
    assert [d.name for d in corpus.directions] == ["en-de", "en-fr", "en-es", "en-it", "en-pt_BR"]
    assert min(corpus.available.values()) > 3000
    folder = export_jsonl(corpus, tmp_path / "mt")
    rows = [json.loads(line) for line in (folder / "00-en-de" / "train.jsonl").read_text().splitlines()]
    assert [(r["source"], r["target"]) for r in rows] == [(p.source, p.target) for p in corpus.directions[0].train]
    manifest = json.loads((folder / "corpus.json").read_text())
    assert manifest["catalogues"]["coreutils"]["licence"] == "GPL-3+"
    with pytest.raises(CatalogueError, match="already holds files"):
        export_jsonl(corpus, folder)
    assert main(["export", "translations", str(tmp_path / "cli"), "--format", "jsonl", "--max-train-per-class", "4",
                 "--max-test-per-class", "2"]) == 0
    assert len((tmp_path / "cli" / "04-en-pt_BR" / "test.jsonl").read_text().splitlines()) == 2
    assert main(["export", "translations", str(tmp_path / "csv"), "--format", "csv"]) == 2
    assert "written as jsonl" in capsys.readouterr().err


def test_a_latin1_catalogue_and_three_plural_forms_are_read_by_their_header(tmp_path):
    po = PO.replace("charset=UTF-8", "charset=ISO-8859-1").replace(
        "nplurals=2; plural=(n != 1);", "nplurals=3; plural=(n == 1 ? 0 : n == 2 ? 2 : 1);").replace(
        'msgstr[1] "%d Dateien entfernt"', 'msgstr[1] "%d Dateien (viele) entfernt"\nmsgstr[2] "%d Dateien entfernt"')
    (tmp_path / "x.po").write_bytes(po.encode("latin-1"))
    subprocess.run(["msgfmt", "-o", str(tmp_path / "x.mo"), str(tmp_path / "x.po")], check=True)
    pairs = {p.source: p.target for p in clean_pairs(read_mo(tmp_path / "x.mo"), "de", "x")}
    assert pairs["cannot open %s"] == "kann %s nicht öffnen"
    assert pairs["%d files removed"] == "%d Dateien entfernt"  # the form for two items


def test_a_newer_format_revision_is_refused(tmp_path):
    write_mo(tmp_path / "x.mo", [Entry("Open", ("Öffnen",))])
    data = bytearray((tmp_path / "x.mo").read_bytes())
    data[4:8] = (2 << 16).to_bytes(4, "little")
    (tmp_path / "x.mo").write_bytes(bytes(data))
    with pytest.raises(CatalogueError, match="format revision 2"):
        read_mo(tmp_path / "x.mo")
