"""Every task kind through the one loop: a tiny store loop (init, update, a refused batch, rollback),
versions that reload and keep training alike, and what each kind's gate refuses."""

import json

import pytest
import torch
import yaml

from retain.engine import load_learner
from retain.loop import Project
from retain.quality import GatePolicy
from retain.store import ModelStore
from retain.tasks import TASKS, open_kind, stored_run
from retain.tasks.classification import Classification
from retain.tasks.detection import Detection, DetectionConfig
from retain.tasks.transcription import Transcription, TranscriptionConfig
from retain.tasks.translation import Pairs, Translation, TranslationConfig, build_translator, read_pairs

TINY_MT = {"name": "tiny-store", "model": {"name": "tiny", "adaptation": "lora"},
           "training": {"lr": 1e-3, "batch_size": 4, "max_tokens": 120, "threads": 1},
           "generation": {"max_new_tokens": 6}, "min_held_out": 1}
TINY_ASR = {"model": {"name": "ctc-tiny", "max_seconds": 2}, "training": {"lr": 3e-3, "epochs": 3},
            "methods": [{"label": "replay", "compose": [{"name": "replay", "memory_size": 10, "policy": "reservoir"}]}],
            "min_held_out": 4}
TINY_DETECTOR = {"model": {"backbone": "tiny", "image_size": 64, "width": 16}, "training": {"epochs": 2},
                 "methods": [{"label": "pseudo-labels", "compose": ["pseudo_labels"]}], "min_held_out": 4}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Two directions of Debian's catalogues as the user's JSON Lines batches, and a broken one."""
    from retain.data.catalogues import load_corpus

    folder = tmp_path_factory.mktemp("pairs")
    corpus = load_corpus(["de", "fr"], 30, 1, seed=0)
    for d in corpus.directions:
        (folder / f"{d.lang}.jsonl").write_text("".join(
            json.dumps({"source": p.source, "target": p.target, "lang": d.lang}) + "\n" for p in d.train))
    broken = [{"source": f"{p.source} %s", "target": p.target, "lang": "de"} for p in corpus.directions[0].train[:8]]
    broken += [{"source": "Open the file", "target": "Открыть файл", "lang": "de"},
               {"source": "Quit", "target": "Beenden " * 30, "lang": "de"}]
    (folder / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in broken))
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two batches of spoken words (tones) with transcripts, and one whose transcripts are far too long."""
    from .speech_clips import batch_folder

    folder = tmp_path_factory.mktemp("clips")
    batch_folder(folder / "first", 30, 0, ("go", "stop"))
    batch_folder(folder / "second", 30, 1, ("up", "down", "go"))
    batch_folder(folder / "bad", 30, 2, text=lambda i, spoken: spoken if i % 2 else " ".join([spoken] * 12))
    return folder


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    """Two batches of images with boxes (the second brings a class), and one whose every object is labelled twice."""
    from retain.data.box_files import write_box_table
    from retain.data.scenes import Scene, detection_stream

    folder = tmp_path_factory.mktemp("boxes")
    stream = detection_stream([(0, 1), (2,)], train_per_experience=30, test=1, size=64, cache=False)
    first, second = (e.train for e in stream.experiences)
    write_box_table(first, folder / "first", stream.class_names)
    write_box_table(second, folder / "second", stream.class_names)
    twice = [Scene(s.image, s.boxes.repeat(2, 1), s.labels.repeat(2)) for s in second]
    write_box_table(twice, folder / "bad", stream.class_names)
    return folder


def _kind_batches(kind, tmp_path, batches, pairs, clips, boxes):
    """A kind's config (as Project.init takes it) and its first, second and refused batch."""
    if kind is Classification:
        from retain.config import RunConfig

        cfg = RunConfig.for_loop({"model": {"hidden": [32]}, "training": {"lr": 0.05, "epochs": 3},
                                  "strategies": [{"name": "replay", "memory_size": 100}]})
        flipped = tmp_path / "flipped.csv"  # 40% of labels wrong: the gate's label check refuses it
        lines = (batches / "01" / "train.csv").read_text().splitlines()
        rows = [line.rsplit(",", 1) for line in lines[1:]]
        flip = {"2": "3", "3": "2"}
        flipped.write_text("\n".join([lines[0]] + [f"{x},{flip[y] if i % 5 < 2 else y}" for i, (x, y) in
                                                   enumerate(rows)]) + "\n")
        return cfg, batches / "00" / "train.csv", batches / "01" / "train.csv", flipped
    if kind is Detection:
        cfg = DetectionConfig.model_validate(TINY_DETECTOR)
        return cfg, boxes / "first" / "boxes.csv", boxes / "second" / "boxes.csv", boxes / "bad" / "boxes.csv"
    if kind is Transcription:
        cfg = TranscriptionConfig.model_validate(TINY_ASR)
        return cfg, clips / "first", clips / "second", clips / "bad"
    cfg = TranslationConfig.model_validate(TINY_MT)
    return cfg, pairs / "de.jsonl", pairs / "fr.jsonl", pairs / "broken.jsonl"


@pytest.mark.parametrize("kind", sorted(TASKS.values(), key=lambda k: k.name), ids=lambda k: k.name)
def test_every_kind_runs_the_store_loop(kind, tmp_path, batches, pairs, clips, boxes):
    cfg, first, second, bad = _kind_batches(kind, tmp_path, batches, pairs, clips, boxes)
    project, result = Project.init(cfg, first, tmp_path / "store")
    assert result.version == 1 and result.promoted
    assert stored_run(project.store.config)[0] == kind.name  # the store records its kind
    result = project.update(second)
    assert result.version == 2 and list(result.accuracy) == sorted(result.accuracy)
    assert len(project.held_out()) == 2  # both batches' held-out rows judge every later version
    refused = project.update(bad)
    assert refused.version is None and refused.gate_decision == "refuse", refused.reason
    assert len(ModelStore(tmp_path / "store").versions()) == 2  # nothing recorded for it
    assert project.rollback(1) == 1 and project.store.promoted() == 1
    assert [v["decision"] for v in project.versions()][0] == "promoted"
    again = Project(tmp_path / "store")  # a second process opening the store reads the same kind
    assert type(again.kind) is kind and again.versions() == project.versions()


@pytest.mark.parametrize("kind", sorted(TASKS.values(), key=lambda k: k.name), ids=lambda k: k.name)
def test_a_version_reloaded_keeps_training_bit_exactly(kind, tmp_path, batches, pairs, clips, boxes):
    cfg, first, second, _ = _kind_batches(kind, tmp_path, batches, pairs, clips, boxes)
    project, _ = Project.init(cfg, first, tmp_path / "store")
    if kind is Classification:
        labels = project.labels()  # the batch's new label names join the store's
        loaded = project.kind.load(second, labels)
        rows, names = project.kind.rows_of({"x": project.kind.model_inputs(loaded.x), "y": loaded.y,
                                            "t": loaded.t}), labels.names
    else:
        rows, names = project.kind.read(second), []
    trained = project.store.load(1, device="cpu")
    project.kind.fit(trained, rows, rows, 1, names)  # trained on in memory: a memory, a step count, a generator
    saved = tmp_path / "saved"
    trained.save(saved)
    learners = [trained, load_learner(saved, device="cpu")]  # in memory, and saved then reloaded
    held = rows.take(torch.arange(0))
    for learner in learners:
        project.kind.fit(learner, rows, held, 1, names)
    a, b = (dict(learner.model.named_parameters()) for learner in learners)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_translation_gate_refuses_broken_pairs_and_drops_repeats(pairs):
    good = read_pairs(pairs / "de.jsonl")
    kind_config = TranslationConfig.model_validate(TINY_MT | {"gate": {"max_flagged": 0.2}})
    from retain.quality.pairs import inspect_pairs

    report = inspect_pairs(good.sources, good.targets, good.langs, kind_config.gate, set(good.hashes()[:5]))
    assert report.decision == "quarantine" and report.duplicates == [0, 1, 2, 3, 4] and not report.label_issues
    broken = read_pairs(pairs / "broken.jsonl")
    report = inspect_pairs(broken.sources, broken.targets, broken.langs, GatePolicy())
    assert report.decision == "refuse" and len(report.label_issues) == 10
    for problem in ("format specifiers differ", "no Latin letter", "longer than 200 characters"):
        assert problem in report.reason
    copies = inspect_pairs(good.sources[:5], good.sources[:5], good.langs[:5], GatePolicy())
    assert copies.decision == "accept" and "5 targets copy their source (kept)" in copies.reason


def test_pairs_kept_as_tensors_read_back_unchanged(tmp_path):
    rows = Pairs(["Open %s", "Ünïcödé ✓", ""], ["Öffnen %s", "x", "leer"], ["de", "fr", "de"])
    store = ModelStore.create(tmp_path / "s", {"task": "translation", "run": TINY_MT, "held_out": 0.2, "seed": 0})
    store.put_data("batch-0000", rows.tensors())
    kind, held_out, seed = open_kind(store)
    assert kind.held_rows("batch-0000") == rows and held_out == 0.2 and seed == 0


def test_a_translation_store_made_before_kinds_were_recorded_still_opens_and_updates(tmp_path, pairs):
    """The layout the translation store had: its run config at the top level, held-out pairs as
    JSON in the store's meta, batches named batch-N, decisions 'rejected'."""
    cfg = TranslationConfig.model_validate(TINY_MT)
    store = ModelStore.create(tmp_path / "old", cfg.model_dump(mode="json"))
    learner = build_translator(cfg, cfg.methods[0])
    learner.directions = {"de": 0}
    de = read_pairs(pairs / "de.jsonl")
    held = [{"source": s, "target": t, "lang": "de"} for s, t in zip(de.sources[:6], de.targets[:6], strict=True)]
    store.set_meta("held_out", {"batch-1": held})
    from retain.store import Batch

    store.add_version(learner, metrics={"accuracy": {"batch-1 en-de": 0.1}, "score": "chrF++ / 100"},
                      batches=[Batch("0" * 64, 24, "de.jsonl"), Batch("0" * 64, 6, "batch-1", "held_out")],
                      decision="promoted", reason="old", promote=True)
    project = Project(tmp_path / "old")
    assert isinstance(project.kind, Translation) and project.held_out()["batch-1"].sources == de.sources[:6]
    result = project.update(pairs / "fr.jsonl")
    assert result.version == 2 and set(result.accuracy) == {"batch-1 en-de", "batch-0001 en-fr"}
    assert yaml.safe_dump(project.versions())  # the old version reads alike


def test_serve_translates_takes_post_edits_and_learns_them(tmp_path, pairs):
    from fastapi.testclient import TestClient

    from retain.config import ServiceConfig
    from retain.service.app import create_app

    from .served import TOKEN, WRITE

    Project.init(TranslationConfig.model_validate(TINY_MT), pairs / "de.jsonl", tmp_path / "store")
    settings = ServiceConfig(poll=0.05, update_wait=3600, min_rows=10, update_rows=10_000)
    fr = read_pairs(pairs / "fr.jsonl")
    with TestClient(create_app(tmp_path / "store", settings, token=TOKEN)) as api:
        answer = api.post("/predict", json={"inputs": [{"text": s, "lang": "fr", "id": f"p{i}"}
                                                       for i, s in enumerate(fr.sources)]}).json()
        assert answer["version"] == 1 and [p["lang"] for p in answer["predictions"]] == ["fr"] * len(fr)
        assert all(isinstance(p["label"], str) for p in answer["predictions"])
        bad = api.post("/predict", json={"inputs": [{"text": "Open", "lang": "xx"}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "inputs", 0, "lang"]
        assert api.post("/predict", json={"inputs": [{"features": [1.0]}]}).status_code == 422
        # post-edits: the corrected translation of each prediction, by its id
        acked = api.post("/feedback", json={"rows": [{"id": f"p{i}", "label": t} for i, t in enumerate(fr.targets)]},
                         headers=WRITE).json()
        assert acked["accepted"] == len(fr) and acked["new_classes"] == ["en-fr"]
        result = api.post("/update", headers=WRITE).json()
        assert result["version"] == 2 and set(result["accuracy"]) == {"batch-0000 en-de", "batch-0001 en-fr"}
        state = api.get("/state").json()
        assert state["metric"] == "chrF++" and state["answers"] == "direction"
        assert set(state["per_class"]) == ({"en-de", "en-fr"} if result["promoted"] else {"en-de"})
    store = ModelStore(tmp_path / "store")
    assert store.intake.feedback_counts() == {"learned": len(fr)}


def test_retain_tune_on_a_translation_store_searches_lr_rank_and_replay_and_applies_a_gain(tmp_path, capsys):
    from retain.cli import main
    from retain.data.catalogues import load_corpus

    corpus = load_corpus(["de", "fr"], 60, 1, seed=0)
    for d in corpus.directions:
        (tmp_path / f"{d.lang}.jsonl").write_text("".join(
            json.dumps({"source": p.source, "target": p.target, "lang": d.lang}) + "\n" for p in d.train))
    replay = {"label": "replay", "compose": [{"name": "replay", "memory_size": 20, "policy": "reservoir"}]}
    cfg = TranslationConfig.model_validate(TINY_MT | {"methods": [replay]})
    project, _ = Project.init(cfg, tmp_path / "de.jsonl", tmp_path / "store", held_out=0.5)
    project.update(tmp_path / "fr.jsonl")
    out = tmp_path / "tune"
    assert main(["tune", str(tmp_path / "store"), "--trials", "3", "--out", str(out), "--quiet", "--apply"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["best_params"]) == {"training.lr", "model.lora_rank", "replay.ratio", "replay.weight"}
    assert len((out / "trials.csv").read_text().splitlines()) == 4 and "test chrF++" in (out / "report.md").read_text()
    lr = Project(tmp_path / "store").config.methods[0].lr
    if results["test_tuned"]["acc"] > results["test_default"]["acc"]:  # applied: the store's next update uses it
        assert "applied" in printed and lr == results["best_params"]["training.lr"]
    else:
        assert "not applied" in printed and lr is None
    assert main(["tune", str(tmp_path / "store"), "--workers", "2", "--out", str(out)]) == 2
    assert "one process" in capsys.readouterr().err


def test_a_translation_batch_too_small_to_judge_a_direction_is_refused_naming_the_setting(tmp_path, pairs):
    cfg = TranslationConfig.model_validate(TINY_MT | {"min_held_out": 20})
    with pytest.raises(ValueError, match="en-de: .* would be held out, min_held_out is 20"):
        Project.init(cfg, pairs / "de.jsonl", tmp_path / "store")
    assert not (tmp_path / "store").exists()  # nothing was made
    project, result = Project.init(cfg, pairs / "de.jsonl", tmp_path / "store", held_out=0.9)
    assert result.promoted and len(project.held_out()["batch-0000"]) >= 20


def test_the_service_learns_the_directions_it_can_judge_and_keeps_the_others_queued(tmp_path, pairs):
    from fastapi.testclient import TestClient

    from retain.config import ServiceConfig
    from retain.service.app import create_app

    from .served import TOKEN, WRITE

    cfg = TranslationConfig.model_validate(TINY_MT | {"min_held_out": 3})
    Project.init(cfg, pairs / "de.jsonl", tmp_path / "store", held_out=0.5)
    fr, de = read_pairs(pairs / "fr.jsonl"), read_pairs(pairs / "de.jsonl")
    rows = [{"input": {"text": s, "lang": "fr"}, "label": t} for s, t in zip(fr.sources, fr.targets, strict=True)]
    rows += [{"input": {"text": s + " now", "lang": "de"}, "label": t + " jetzt"}  # two: too few to judge
             for s, t in zip(de.sources[:2], de.targets[:2], strict=True)]
    settings = ServiceConfig(poll=0.05, update_wait=3600, min_rows=10, update_rows=10_000)
    with TestClient(create_app(tmp_path / "store", settings, token=TOKEN)) as api:
        assert api.post("/feedback", json={"rows": rows}, headers=WRITE).json()["accepted"] == len(rows)
        result = api.post("/update", headers=WRITE).json()
        assert result["version"] == 2 and result["rows"] == len(fr)
        assert api.post("/update", headers=WRITE).json()["version"] is None  # en-de waits for more
    assert ModelStore(tmp_path / "store").intake.feedback_counts() == {"learned": len(fr), "queued": 2}


def test_with_confidence_a_drop_of_one_held_out_row_in_fifty_is_not_taken_for_forgetting(tmp_path, batches):
    from retain.config import RunConfig

    results = {}
    for confidence in (None, 0.9):
        promotion = {"max_drop": 0.0, "confidence": confidence, "gain_weight": 0.0}
        cfg = RunConfig.for_loop({"model": {"hidden": [32]}, "training": {"lr": 0.05, "epochs": 5},
                                  "strategies": [{"name": "replay", "memory_size": 200}], "promotion": promotion})
        project, _ = Project.init(cfg, batches / "00" / "train.csv", tmp_path / f"store-{confidence}")
        results[confidence] = project.update(batches / "01" / "train.csv")
    plain, bounded = results[None], results[0.9]
    assert plain.accuracy == bounded.accuracy and 0 < 1 - plain.accuracy["batch-0000"] <= 0.05  # same small drop
    assert not plain.promoted and "fell 2.0 points" in plain.reason
    assert bounded.promoted  # one row of fifty: the paired bootstrap's bound is not above zero


def test_serve_transcribes_wav_and_ogg_takes_corrected_transcripts_and_learns_them(tmp_path, clips):
    import base64
    import io

    import numpy as np
    import soundfile
    from fastapi.testclient import TestClient

    from retain.config import ServiceConfig
    from retain.service.app import create_app

    from .served import TOKEN, WRITE
    from .speech_clips import clip

    Project.init(TranscriptionConfig.model_validate(TINY_ASR), clips / "first", tmp_path / "store")
    settings = ServiceConfig(poll=0.05, update_wait=3600, min_rows=10, update_rows=10_000)
    rng = np.random.default_rng(5)
    spoken = [" ".join(rng.choice(["up", "down"], 2)) for _ in range(24)]

    def encoded(text: str, fmt: str) -> str:
        out = io.BytesIO()
        soundfile.write(out, clip(text, rng), 16_000, format=fmt)
        return base64.b64encode(out.getvalue()).decode()

    with TestClient(create_app(tmp_path / "store", settings, token=TOKEN)) as api:
        inputs = [{"audio": encoded(t, "WAV" if i % 2 else "OGG"), "id": f"c{i}"} for i, t in enumerate(spoken)]
        answer = api.post("/predict", json={"inputs": inputs}).json()
        assert answer["version"] == 1 and len(answer["predictions"]) == len(spoken)
        assert all(isinstance(p["label"], str) for p in answer["predictions"])
        bad = api.post("/predict", json={"inputs": [{"audio": base64.b64encode(b"not audio").decode()}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "inputs", 0, "audio"]
        text = api.post("/predict", json={"inputs": [{"text": "hello"}]})
        assert text.status_code == 422 and "transcribes speech" in text.json()["detail"][0]["msg"]
        acked = api.post("/feedback", json={"rows": [{"id": f"c{i}", "label": t} for i, t in enumerate(spoken)]},
                         headers=WRITE).json()
        assert acked["accepted"] == len(spoken)
        result = api.post("/update", headers=WRITE).json()
        assert result["version"] == 2 and set(result["accuracy"]) == {"batch-0000", "batch-0001"}
        state = api.get("/state").json()
        assert state["metric"] == "1 - WER" and state["answers"] == "transcript"
    assert result["promoted"], result["reason"]  # the corrections taught it words the first batch lacked
    assert ModelStore(tmp_path / "store").intake.feedback_counts() == {"learned": len(spoken)}
