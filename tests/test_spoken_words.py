"""KTuberling's spoken words: the class- and domain-incremental streams built from them, on a few words."""

from __future__ import annotations

import pytest
import torch

from retain.data import class_incremental
from retain.data.datasets import DATASETS
from retain.data.spoken_words import (
    CLIP_SAMPLES,
    LANGUAGES,
    by_language,
    language_groups,
    shared_concepts,
    spoken_words,
)

WORDS = shared_concepts(LANGUAGES)[:4]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path))


def test_english_words_arrive_a_class_group_at_a_time():
    data = spoken_words(concepts=WORDS, copies=4, progress=False)
    assert data.x_train.shape == (4 * 3, CLIP_SAMPLES) and data.x_test.shape == (4 * 1, CLIP_SAMPLES)
    stream = class_incremental(data, 2)
    assert [e.classes for e in stream] == [(0, 1), (2, 3)]
    assert [sorted(set(e.y_train.tolist())) for e in stream] == [[0, 1], [2, 3]]
    assert set(data.metadata["language_test"]) == {"en"}


def test_test_copies_are_never_training_copies():
    data = spoken_words(concepts=WORDS, copies=6, test_fraction=0.5, progress=False)
    assert len(data.y_test) == 4 * 3
    same = (data.x_test[:, None, :] == data.x_train[None, :, :]).all(-1)
    assert not same.any()


def test_generation_is_deterministic_for_a_seed(tmp_path, monkeypatch):
    first = spoken_words(concepts=WORDS[:2], copies=3, seed=1, progress=False)
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "again"))  # generated anew, not read back
    again = spoken_words(concepts=WORDS[:2], copies=3, seed=1, progress=False)
    other = spoken_words(concepts=WORDS[:2], copies=3, seed=2, progress=False)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    assert not torch.equal(first.x_test, other.x_test)


def test_domain_stream_brings_the_same_concepts_in_other_languages():
    data = spoken_words(("de", "en", "fr"), WORDS, copies=3, progress=False)
    groups, held_out = language_groups(["de", "en", "fr"], 2, held_out=1, seed=0)
    stream = by_language(data, groups)
    assert len(stream) == 2 and stream.scenario == "domain_incremental"
    assert all(sorted(set(e.y_train.tolist())) == [0, 1, 2, 3] for e in stream)
    assert [e.metadata["languages"] for e in stream] == groups
    assert sorted(sum(groups, []) + held_out) == ["de", "en", "fr"]
    # each experience holds its own languages' recordings: no clip of one is in another
    a, b = stream[0].x_train, stream[1].x_train
    assert not (a[:, None, :] == b[None, :, :]).all(-1).any()


def test_bad_inputs_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="languages: \\['xx'\\] not in .*allowed: ca"):
        spoken_words(("xx",), progress=False)
    with pytest.raises(ValueError, match="copies must be at least 2"):
        spoken_words(concepts=WORDS, copies=1, progress=False)
    with pytest.raises(ValueError, match="concepts: no recording of 'tux-zzz' in language 'en'"):
        spoken_words(concepts=["tux-zzz"], progress=False)
    data = spoken_words(("de",), WORDS[:1], copies=2, progress=False)
    with pytest.raises(ValueError, match="groups.0: \\['en'\\] must name languages of the data: de"):
        by_language(data, [["en"]])


def test_registered_class_counts_match_the_recordings():
    assert DATASETS["spoken_words"].n_classes == len(shared_concepts(["en"]))
    assert DATASETS["spoken_languages"].n_classes == len(shared_concepts(LANGUAGES))
