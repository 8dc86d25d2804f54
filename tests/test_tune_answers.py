"""retain tune on a store whose model writes its answers: a transcription store's lr and replay knobs, tuned
on the clips it holds, applied only when they beat its own; what each kind searches and how it cuts its rows."""

import json

import numpy as np
import pytest
import torch
import yaml

from retain.cli import main
from retain.loop import Project
from retain.tasks.transcription import Clips, Transcription, TranscriptionConfig
from retain.tasks.translation import Translation
from retain.tuning.answers import answer_knobs

from .speech_clips import batch_folder
from .test_tasks import TINY_ASR, TINY_MT

# 80% of each batch held out: the tuner cuts the held-out clips into training, validation and test clips
ASR = TINY_ASR | {"model": {"name": "ctc-tiny", "max_seconds": 1}, "training": {"lr": 3e-3, "epochs": 15}}


def _store(folder, cfg=ASR, n=40):
    """A transcription store that learned two batches of ``n`` clips each."""
    batch_folder(folder / "first", n, 0, ("go", "stop"))
    batch_folder(folder / "second", n, 1, ("up", "down", "go"))
    project, _ = Project.init(TranscriptionConfig.model_validate(cfg), folder / "first", folder / "store",
                              held_out=0.8)
    assert project.update(folder / "second").promoted
    return folder / "store"


def test_retain_tune_on_a_transcription_store_searches_lr_and_replay_and_applies_only_a_gain(tmp_path, capsys):
    store, out = _store(tmp_path), tmp_path / "tune"
    assert main(["tune", str(store), "--trials", "3", "--out", str(out), "--quiet", "--apply"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    # the CTC model trains fully: no LoRA rank to search
    assert set(results["best_params"]) == {"training.lr", "replay.ratio", "replay.weight"}
    assert results["metric"] == "1 - WER" and "validation 1 - WER" in printed
    assert results["best_validation"]["accuracy"] > 0  # the tiny model learns the tones on the store's clips
    assert len((out / "trials.csv").read_text().splitlines()) == 4
    assert "| knobs | test 1 - WER (mean over batches) |" in (out / "report.md").read_text()
    best = TranscriptionConfig.model_validate(yaml.safe_load((out / "best.yaml").read_text()))
    assert best.training.lr == pytest.approx(results["best_params"]["training.lr"])
    config = Project(store).config
    if results["test_tuned"]["acc"] > results["test_default"]["acc"]:  # applied: the store's next update uses it
        assert "applied: the next update" in printed
        assert config.training.lr == pytest.approx(results["best_params"]["training.lr"])
        assert config.methods[0].compose[0]["ratio"] == pytest.approx(results["best_params"]["replay.ratio"])
    else:
        assert "not applied: the tuned knobs scored 1 - WER" in printed
        assert config.training.lr == 3e-3 and "ratio" not in config.methods[0].compose[0]
    assert main(["tune", str(store), "--workers", "2", "--out", str(out)]) == 2
    assert "a transcription store is tuned by one process" in capsys.readouterr().err


def test_tuned_knobs_apply_only_when_they_beat_the_stores_own_and_the_model_stays(tmp_path, capsys):
    from retain.cli.tune import _apply_answers

    cfg = ASR | {"training": {"lr": 3e-3, "epochs": 2}}
    store, out = _store(tmp_path, cfg, n=20), tmp_path / "tune"
    project = Project(store)
    # a tuned rank too: a store's model keeps the one its versions were made with
    tuned = project.kind.tuned({"training.lr": 0.01, "model.lora_rank": 16, "replay.ratio": 2.0, "replay.weight": 1.0})
    out.mkdir()
    (out / "best.yaml").write_text(yaml.safe_dump(tuned.model_dump(mode="json")))
    row = {"metric": "1 - WER", "best_params": {"training.lr": 0.01}, "best_config": "best.yaml",
           "test_default": {"acc": 0.5}, "test_tuned": {"acc": 0.5}}
    _apply_answers(str(store), row, out)
    assert "not applied" in capsys.readouterr().out and Project(store).config == project.config
    _apply_answers(str(store), row | {"test_tuned": {"acc": 0.6}}, out)
    assert capsys.readouterr().out.startswith("applied: the next update")
    now = Project(store).config
    assert now.model == project.config.model and now.training.lr == 0.01 and now.training.epochs == 2
    assert now.methods[0].compose == [{"name": "replay", "memory_size": 10, "policy": "reservoir", "ratio": 2.0,
                                       "weight": 1.0}]
    batch_folder(tmp_path / "third", 20, 2)
    result = Project(store).update(tmp_path / "third")
    assert Project(store).store.load(result.version, device="cpu").lr == 0.01  # the next update trains with it


def test_each_kind_says_what_is_searched_and_where_a_trial_sets_the_learning_rate():
    whisper = Transcription(None, {"model": {"adaptation": "lora"}, "training": {"lr": 1e-4},
                                   "methods": [{"label": "l2", "compose": [{"name": "l2"}]}]})
    assert whisper.tuning_values() == {"training.lr": 1e-4, "model.lora_rank": 8, "l2.lam": 0.1}
    knobs = {k.key: k for k in answer_knobs(whisper)}
    assert (knobs["training.lr"].space.low, knobs["training.lr"].space.high) == pytest.approx((1e-5, 1e-3))
    assert knobs["model.lora_rank"].space.choices == [4, 8, 16] and knobs["l2.lam"].space.log
    tuned = whisper.tuned({"training.lr": 3e-4, "l2.lam": 0.5})
    assert tuned.training.lr == 3e-4 and tuned.methods[0].compose == [{"name": "l2", "lam": 0.5}]
    assert "model.lora_rank" not in Transcription(None, {"model": {"adaptation": "decoder"}}).tuning_values()
    translation = Translation(None, TINY_MT)
    tuned = translation.tuned({"training.lr": 3e-3, "model.lora_rank": 4})
    assert tuned.methods[0].lr == 3e-3 and tuned.training.lr == 1e-3 and tuned.model.lora_rank == 4


def test_a_clip_falls_on_one_side_of_the_tuning_cut_whatever_its_transcript():
    kind = Transcription(None, ASR)
    audio = [np.random.default_rng(i).normal(size=400).astype(np.float32) for i in range(300)]
    clips = Clips(audio, ["go"] * 300, [str(i) for i in range(300)])
    share = kind.tuning_share(clips, 30, "tune-test")
    assert 75 <= int(share.sum()) <= 105  # about 30%
    retold = kind.tuning_share(Clips(audio, ["stop up"] * 300, clips.origin), 30, "tune-test")
    assert torch.equal(share, retold) and not torch.equal(share, kind.tuning_share(clips, 30, "tune-validation"))
