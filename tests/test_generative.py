"""Continual fine-tuning of a generative language model: the learner, its strategies, translation runs."""

import json
import random

import pytest
import torch
import yaml

from retain.cli import main
from retain.data import Experience
from retain.engine.generative import GenerativeLearner
from retain.engine.learner import Diverged
from retain.models.generative import LanguageModel
from retain.store import ModelStore
from retain.strategies import Strategy, make_strategy
from retain.translation import TranslationConfig, score, translate

A = [("red", "rot"), ("blue", "blau"), ("green", "gruen"), ("black", "schwarz")]
B = [("red", "rouge"), ("blue", "bleu"), ("green", "vert"), ("black", "noir")]


def _learner(adaptation="full", strategies=(), lr=3e-3, epochs=60, **kw):
    torch.manual_seed(0)
    return GenerativeLearner(LanguageModel("tiny", adaptation), list(strategies), lr=lr, epochs=epochs,
                             batch_size=4, max_tokens=24, **kw)


def _experience(learner, pairs, direction):
    x, y = learner.encode([f"{s}>{direction}:" for s, _ in pairs], [t for _, t in pairs])
    empty = torch.empty(0, x.shape[1], dtype=torch.long)
    return Experience(x, y, empty, empty, id=direction, task=direction, classes=(direction,),
                      t_train=torch.full((len(x),), direction))


def _loss(learner, pairs, direction):
    """Mean target-token loss of ``pairs`` prompted for ``direction``."""
    exp = _experience(learner, pairs, direction)
    with torch.no_grad():
        learner.model.eval()
        return float(torch.nn.functional.cross_entropy(learner.model(exp.x_train, exp.train_tasks()), exp.y_train))


def _translations(learner, pairs, direction):
    return learner.generate([f"{s}>{direction}:" for s, _ in pairs], direction, max_new_tokens=10)


def test_labels_are_the_next_target_token_and_a_long_prompt_is_refused():
    learner = _learner()
    x, y = learner.encode(["ab"], ["cd"])
    assert x[0, :5].tolist() == [97, 98, 99, 100, 256] and (x[0, 5:] == -1).all()
    assert y[0, :5].tolist() == [-100, 99, 100, 256, -100]
    with pytest.raises(ValueError, match="max_tokens is 24"):
        learner.encode(["x" * 30], ["y"])


def test_the_model_learns_a_direction_and_generates_it():
    learner = _learner()
    before = _loss(learner, A, 0)
    learner.fit(_experience(learner, A, 0))
    assert _loss(learner, A, 0) < before / 5
    assert _translations(learner, A, 0) == [t for _, t in A]


def test_sequential_fine_tuning_forgets_and_replay_keeps_the_old_direction():
    results = {}
    for name, strategies in (("finetune", []), ("replay", [make_strategy("replay", memory_size=8, policy="reservoir",
                                                                         weight=1.0)])):
        learner = _learner(strategies=strategies)
        learner.fit(_experience(learner, A, 0))
        learned = _loss(learner, A, 0)
        learner.fit(_experience(learner, B, 1))
        results[name] = (learned, _loss(learner, A, 0), _loss(learner, B, 1))
    (learned, after_ft, new_ft), (_, after_replay, new_replay) = results["finetune"], results["replay"]
    assert after_ft > 3 * learned  # forgetting
    assert after_replay < after_ft / 3  # replay keeps the old direction
    assert new_replay < 0.5 and new_ft < 0.5  # both learned the new one


def test_replay_refuses_a_class_balanced_memory_on_sequences():
    with pytest.raises(ValueError, match="use policy: reservoir"):
        _learner(strategies=[make_strategy("replay")])
    with pytest.raises(ValueError, match="does not apply to a generative language model"):
        _learner(strategies=[make_strategy("icarl")])


def test_experts_leave_old_directions_and_plain_text_exactly_as_they_were():
    learner = _learner("experts", lr=3e-2)
    base = learner.perplexity(["plain english text"])
    learner.fit(_experience(learner, A, 0))
    first = _translations(learner, A, 0)
    old_loss, new_before = _loss(learner, A, 0), _loss(learner, B, 1)
    learner.fit(_experience(learner, B, 1))
    assert _translations(learner, A, 0) == first
    assert _loss(learner, A, 0) == pytest.approx(old_loss, abs=1e-6)
    # rank-8 adapters on a random 2-layer model: the right tokens come first, though not yet confidently
    assert _loss(learner, B, 1) < new_before
    assert all(out.startswith(t) for out, (_, t) in zip(_translations(learner, B, 1), B, strict=True))
    assert learner.perplexity(["plain english text"]) == pytest.approx(base, rel=1e-6)
    assert learner.model.experts == [0, 1]


@pytest.mark.parametrize("name, params", [("l2", {"lam": 100.0}), ("ewc", {"lam": 1e4, "fisher_samples": 4})])
def test_penalties_on_the_adapter_weights_keep_them_near_the_old_ones(name, params):
    drift = {}
    for label, strategies in (("plain", []), (name, [make_strategy(name, **params)])):
        learner = _learner("lora", strategies, lr=1e-2, epochs=20)
        learner.fit(_experience(learner, A, 0))
        anchor = {k: p.detach().clone() for k, p in learner.model.named_parameters() if p.requires_grad}
        learner.fit(_experience(learner, B, 1))
        drift[label] = sum(float((p.detach() - anchor[k]).norm()) for k, p in learner.model.named_parameters()
                           if p.requires_grad)
    assert drift[name] < 0.7 * drift["plain"]


def test_a_saved_learner_loads_translates_and_goes_on_learning_alike(tmp_path):
    learner = _learner("lora", [make_strategy("replay", memory_size=6, policy="reservoir")], lr=1e-2, epochs=30)
    learner.fit(_experience(learner, A, 0))
    learner.directions = {"de": 0}
    learner.save(tmp_path / "m")
    loaded = GenerativeLearner.load(tmp_path / "m")
    assert _translations(loaded, A, 0) == _translations(learner, A, 0)
    assert len(loaded.strategies[0].memory()) == 4 and loaded.directions == {"de": 0}
    assert loaded.steps_ == learner.steps_
    for each in (learner, loaded):  # the same batches, replayed rows and updates after the load
        each.epochs = 2
        each.fit(_experience(each, B, 1))
    assert _loss(loaded, B, 1) == pytest.approx(_loss(learner, B, 1), abs=1e-5)


def test_saved_experts_keep_every_direction_s_adapter(tmp_path):
    learner = _learner("experts", lr=3e-2, epochs=20)
    learner.fit(_experience(learner, A, 0))
    learner.fit(_experience(learner, B, 1))
    loaded = GenerativeLearner.load(learner.save(tmp_path / "m"))
    assert loaded.model.experts == [0, 1]
    for pairs, d in ((A, 0), (B, 1)):
        assert _translations(loaded, pairs, d) == _translations(learner, pairs, d)
    assert loaded.model.adapted_parameters() == learner.model.adapted_parameters() > 0
    with pytest.raises(FileNotFoundError, match="holds no saved learner"):
        GenerativeLearner.load(tmp_path)


def _state(learner):
    """Everything a failed fit must put back: weights, the memory, the generator, counters."""
    tensors = {f"weights.{k}": v.clone() for k, v in learner.model.state_dict().items()}
    tensors |= {"memory": learner.strategies[0].memory().x.clone(), "generator": learner.generator.get_state()}
    return tensors, (learner.steps_, learner.tokens_, list(learner.seen_classes_))


def _same(a, b):
    return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1] == b[1]


def test_a_diverging_fit_says_so_and_restores_the_weights_and_the_strategies():
    learner = _learner("full", [make_strategy("replay", memory_size=3, policy="reservoir")], lr=1e-2, epochs=3)
    learner.fit(_experience(learner, A, 0))
    before = _state(learner)
    learner.lr = 1e8  # an absurd step: the loss turns NaN within a few steps
    with pytest.raises(Diverged, match=r"fit: training diverged at step \d+ \(experience 1\): the loss is (nan|inf).*"
                                       "the learner is as it was before this experience"):
        learner.fit(_experience(learner, B, 1))
    assert _same(_state(learner), before)
    learner.lr = 1e-2  # and it trains on from there
    learner.fit(_experience(learner, B, 1))
    assert learner.seen_classes_ == [0, 1] and all(torch.isfinite(p).all() for p in learner.model.parameters())


class _Broken(Strategy):
    name = "broken_for_a_test"
    generative = True

    def after_experience(self, learner, ctx):
        raise RuntimeError("a hook failed")


def test_a_fit_that_fails_midway_leaves_the_adapters_and_the_memory_as_they_were():
    learner = _learner("lora", [make_strategy("replay", memory_size=3, policy="reservoir")], lr=1e-2, epochs=3)
    learner.fit(_experience(learner, A, 0))
    before, model = _state(learner), learner.model
    learner.strategies.append(_Broken())
    learner._bind()
    with pytest.raises(RuntimeError, match="a hook failed"):
        learner.fit(_experience(learner, B, 1))  # steps are taken and the memory fills before the hook fails
    assert _same(_state(learner), before)
    # the restored copy shares the frozen base weights instead of holding a second copy of them
    assert learner.model is not model
    assert learner.model.net.get_input_embeddings().weight is model.net.get_input_embeddings().weight


def test_perplexity_is_lower_for_text_the_model_has_learned():
    learner = _learner(epochs=40)
    text = "the cat sat on the mat"
    learner.fit(_experience(learner, [("", text)], 0))
    words = text.split()
    random.Random(0).shuffle(words)
    assert learner.perplexity([">0:" + text]) < learner.perplexity([">0:" + " ".join(words)])


def test_scores_count_chrf_bleu_and_broken_format_specifiers():
    perfect = score(["Datei %s fehlt", "Fehler %d"], ["File %s missing", "Error %d"], ["Datei %s fehlt", "Fehler %d"])
    assert perfect == {"chrf": pytest.approx(100), "bleu": pytest.approx(100), "broken": 0.0}
    worse = score(["Datei fehlt", "Fehler %d"], ["File %s missing", "Error %d"], ["Datei %s fehlt", "Fehler %d"])
    assert worse["broken"] == 0.5 and worse["chrf"] < 100


def test_a_translation_config_names_the_bad_field():
    with pytest.raises(ValueError, match="does not apply to a generative language model.*choose from: finetune"):
        TranslationConfig.model_validate({"methods": [{"label": "x", "compose": ["icarl"]}]})
    with pytest.raises(ValueError, match="distinct target languages"):
        TranslationConfig.model_validate({"corpus": {"languages": ["de", "klingon"]}})
    with pytest.raises(ValueError, match="model.adaptation\n  Input should be 'lora', 'experts' or 'full'"):
        TranslationConfig.model_validate({"model": {"adaptation": "prefix"}})
    with pytest.raises(ValueError, match="methods.0.adaptation"):
        TranslationConfig.model_validate({"methods": [{"label": "x", "adaptation": "prefix"}]})
    with pytest.raises(ValueError, match="methods.0 .x.: experts keep each direction in an adapter of its own"):
        TranslationConfig.model_validate({"methods": [{"label": "x", "adaptation": "experts", "compose": ["joint"]}]})
    with pytest.raises(ValueError, match="training.threads"):
        TranslationConfig.model_validate({"training": {"threads": "four"}})


def test_a_prompt_longer_than_the_rows_names_the_config_field(tmp_path, capsys):
    config = {"task": "translation", "model": {"name": "tiny"}, "corpus": {"languages": ["de"], "n_train": 4,
                                                                          "n_test": 2},
              "training": {"max_tokens": 16}, "generation": {"perplexity_texts": 0}}
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "mt.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "training.max_tokens: en-de: prompt 0 has" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("task: translation\ntraining: {device: gpu}\n")
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r2")]) == 2
    assert "training.device" in capsys.readouterr().err


def test_retain_run_translates_the_stream_reports_it_and_predict_reads_the_model(tmp_path, capsys):
    config = {"task": "translation", "name": "tiny-mt", "model": {"name": "tiny", "adaptation": "lora"},
              "corpus": {"languages": ["de", "fr"], "n_train": 8, "n_test": 3},
              "training": {"lr": 1e-3, "batch_size": 4, "max_tokens": 200, "threads": 1},
              "generation": {"max_new_tokens": 8, "perplexity_texts": 4},
              "methods": [{"label": "finetune"}, {"label": "replay", "compose": [
                  {"name": "replay", "memory_size": 4, "policy": "reservoir"}]},
                          {"label": "experts", "adaptation": "experts"}, {"label": "joint", "compose": ["joint"]}]}
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "mt.yaml"), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [len(r) for r in results["methods"]["finetune"]["summary"]["matrix"]] == [2, 2]
    assert len(results["methods"]["joint"]["summary"]["matrix"]) == 1
    extras = json.loads((out / "translation.json").read_text())
    assert extras["methods"]["experts"]["perplexity_after"] == pytest.approx(
        extras["methods"]["experts"]["perplexity_before"])
    assert extras["methods"]["replay"]["tokens_trained"] > extras["methods"]["finetune"]["tokens_trained"]
    report = (out / "report.md").read_text()
    assert "chrF++" in report and "heatmap_replay.png" in report and (out / "heatmap_replay.png").exists()
    (tmp_path / "src.jsonl").write_text('{"source": "File not found", "lang": "fr"}\n{"source": "Open"}\n')
    capsys.readouterr()
    assert main(["predict", str(out / "models" / "experts"), "--data", str(tmp_path / "src.jsonl"),
                 "--lang", "de"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in rows] == ["File not found", "Open"]
    saved = GenerativeLearner.load(out / "models" / "experts")
    assert saved.directions == {"de": 0, "fr": 1}  # each row went through its language's adapter
    assert rows[0]["translation"] == translate(saved, ["File not found"], "fr", 1, max_new_tokens=40)[0]
    assert rows[1]["translation"] == translate(saved, ["Open"], "de", 0, max_new_tokens=40)[0]
    assert main(["predict", str(out / "models" / "experts"), "--data", str(tmp_path / "src.jsonl"),
                 "--out", str(tmp_path / "t.csv")]) == 2
    assert "written as .jsonl" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    assert main(["predict", str(out / "models" / "experts"), "--data", str(tmp_path / "bad.jsonl")]) == 2
    assert 'line 1: give an object with a "source" string' in capsys.readouterr().err
    assert main(["run", str(tmp_path / "mt.yaml"), "--out", str(tmp_path / "r2"), "--seeds", "1"]) == 2
    assert "seed: in its config" in capsys.readouterr().err


def test_smollm2_loads_offline_and_prefers_a_sentence_to_its_words_shuffled():
    learner = GenerativeLearner(LanguageModel("smollm2", "lora"), max_tokens=40)
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    words = sentence.split()
    random.Random(1).shuffle(words)
    assert learner.perplexity([sentence]) < 0.5 * learner.perplexity([" ".join(words)])


def test_a_translation_store_versions_gates_and_rolls_back_a_generative_model(tmp_path, capsys):
    config = {"task": "translation", "name": "tiny-store", "model": {"name": "tiny", "adaptation": "lora"},
              "training": {"lr": 1e-3, "batch_size": 4, "max_tokens": 200, "threads": 1},
              "generation": {"max_new_tokens": 8}, "min_held_out": 1}
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(config))
    assert main(["export", "translations", str(tmp_path / "corpus"), "--format", "jsonl",
                 "--max-train-per-class", "12", "--max-test-per-class", "1"]) == 0
    de, fr = (tmp_path / "corpus" / part / "train.jsonl" for part in ("00-en-de", "01-en-fr"))
    store = str(tmp_path / "store")
    capsys.readouterr()
    assert main(["init", str(tmp_path / "mt.yaml"), "--data", str(de), "--store", store, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["promoted"] and first["new_classes"] == ["en-de"]
    assert list(first["accuracy"]) == ["batch-0000 en-de"]
    rows = {b.role: b.rows for b in ModelStore(store).version(1).batches}
    assert rows["train"] + rows["held_out"] == 12 and 0 < rows["held_out"] < 12  # a share judges the versions
    assert main(["update", store, "--data", str(fr), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert list(second["accuracy"]) == ["batch-0000 en-de", "batch-0001 en-fr"]
    assert main(["versions", store, "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["parent"] == 1
    # the rule: version 2 is promoted exactly when en-de kept its chrF++ within 2 points
    drop = 100 * (first["accuracy"]["batch-0000 en-de"] - second["accuracy"]["batch-0000 en-de"])
    assert second["promoted"] == (drop <= 2.0) and versions[1]["promoted"] == second["promoted"]
    (tmp_path / "src.jsonl").write_text('{"source": "File not found", "lang": "fr"}\n')
    assert main(["predict", store, "--data", str(tmp_path / "src.jsonl"), "--version", "2"]) == 0
    assert "translation" in json.loads(capsys.readouterr().out)
    assert main(["rollback", store, "1"]) == 0
    assert "version 1 is promoted" in capsys.readouterr().out
    assert main(["versions", store, "--json"]) == 0
    assert [v["promoted"] for v in json.loads(capsys.readouterr().out)] == [True, False]
    assert main(["diff", store, "1", "2"]) == 0
    assert "| direction en-fr |" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text('{"source": "x", "lang": "de"}\n')
    assert main(["update", store, "--data", str(tmp_path / "bad.jsonl")]) == 2
    assert 'line 1: give an object with "source", "target" and "lang"' in capsys.readouterr().err
