"""Pretrained backbones, the feature cache, the text and audio data sets, and SLDA."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from retain import Learner
from retain.build import build_stream
from retain.config import ConfigError, RunConfig
from retain.data.audio import keywords, voices
from retain.data.datasets import DatasetNotFound, per_class
from retain.data.features import FeatureCache, LazyEncoder, encode, encode_stream, tensor_digest
from retain.data.text import fortunes_language
from retain.data.tokens import tokenize
from retain.experiment import compare_backbones, run_experiment
from retain.models import Classifier, LinearHead, make_model
from retain.models.pretrained import AudioCNN, ImageEncoder, LogMel, TextEncoder, adapt, count_parameters
from retain.strategies import SLDA, Finetune
from retain.util import TOKEN_BUDGET, batch_bounds, encoder_batches


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("minilm", "frozen").eval()


def test_minilm_loads_offline_and_puts_related_sentences_closer(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = tokenize(["A man is playing a guitar.", "Someone plays an acoustic guitar on stage.",
                    "The central bank raised interest rates again."])
    with torch.no_grad():
        f = minilm(ids)
    sim = f @ f.T
    assert f.shape == (3, 384)
    assert torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


def test_padding_does_not_change_a_sentence_embedding(minilm):
    short = tokenize(["cats purr"], max_tokens=8)
    long = tokenize(["cats purr"], max_tokens=32)
    with torch.no_grad():
        assert torch.allclose(minilm(short), minilm(long), atol=1e-5)


def test_texts_are_encoded_in_token_budgeted_batches_with_the_features_of_one_at_a_time():
    torch.manual_seed(0)
    encoder = TextEncoder("tiny_text", "frozen").eval()
    lengths = torch.cat([torch.randint(1, 5, (200,)), torch.randint(5, 65, (60,))])[torch.randperm(260)]
    ids = torch.randint(1000, 2000, (260, 64)) * (torch.arange(64) < lengths[:, None])
    order, bounds = batch_bounds(ids, batch_size=128, tokens=True)
    assert torch.equal(torch.sort(order).values, torch.arange(260))  # every row once
    assert [s for s, _ in bounds] == [0] + [e for _, e in bounds[:-1]] and bounds[-1][1] == 260
    widths = [int(lengths[order[s:e]].max()) * (e - s) for s, e in bounds]
    assert max(widths) <= TOKEN_BUDGET and len(bounds) > 3  # short texts share a batch, long ones split
    assert max(e - s for s, e in bounds) == 128  # the row cap still holds for the shortest texts
    with torch.no_grad():
        alone = torch.cat([encoder(ids[i:i + 1]) for i in range(260)])
    assert torch.allclose(encode(encoder, ids, progress=False), alone, atol=1e-5)
    learner = Learner(Classifier(encoder, LinearHead(encoder.out_features, 3)), device="cpu")
    assert torch.allclose(learner.features(ids), alone, atol=1e-5)  # the learner batches texts the same way
    assert torch.allclose(learner.predict_logits(ids), learner.model.head(alone), atol=1e-5)


def test_pretrained_efficientnet_separates_garments_better_than_random_weights(fashion_slice):
    x_tr, y_tr, x_te, y_te = fashion_slice

    def nearest_mean_accuracy(encoder):
        with torch.no_grad():
            f_tr, f_te = encoder(x_tr), encoder(x_te)
        means = torch.stack([f_tr[y_tr == c].mean(0) for c in GARMENTS])
        return float((torch.tensor(GARMENTS)[torch.cdist(f_te, means).argmin(1)] == y_te).float().mean())

    torch.manual_seed(0)
    pretrained = nearest_mean_accuracy(ImageEncoder(64, pretrained=True).eval())
    random = nearest_mean_accuracy(ImageEncoder(64, pretrained=False).eval())
    assert pretrained >= 0.55 and pretrained > random + 0.1  # measured: 0.62 against 0.45


GARMENTS = (0, 2, 4, 6)  # t-shirt, pullover, coat, shirt: alike at 28 px, so the task is not trivial


@pytest.fixture(scope="module")
def fashion_slice():
    from retain.data.datasets import fashion_mnist

    data = per_class(fashion_mnist(), 25, 25)
    keep = lambda y: torch.isin(y, torch.tensor(GARMENTS))  # noqa: E731
    return (data.x_train[keep(data.y_train)], data.y_train[keep(data.y_train)],
            data.x_test[keep(data.y_test)], data.y_test[keep(data.y_test)])


def test_logmel_puts_a_tone_in_the_right_band():
    t = torch.arange(16000) / 16000
    low, high = torch.sin(2 * math.pi * 300 * t), torch.sin(2 * math.pi * 3000 * t)
    mel = LogMel()(torch.stack([low, high]))
    assert mel.shape == (2, 1, 40, 101)
    band = mel.mean(-1).squeeze(1).argmax(1)
    assert band[0] < band[1]
    assert AudioCNN()(mel).shape == (2, 128)


def test_lora_trains_only_the_adapters_and_keeps_the_base_weights():
    torch.manual_seed(0)
    encoder = TextEncoder("tiny_text", "lora", lora_rank=2)
    trainable, total = count_parameters(encoder)
    assert 0 < trainable < total / 100
    base = {n: p.detach().clone() for n, p in encoder.named_parameters() if not p.requires_grad}
    model = Classifier(encoder, LinearHead(encoder.out_features, 3))
    learner = Learner(model, [Finetune()], lr=0.1, device="cpu")
    ids = tokenize(["one two", "three four five", "six"] * 4)
    learner.partial_fit(ids, torch.tensor([0, 1, 2] * 4), steps=3)
    after = dict(encoder.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())
    assert any(not torch.equal(p, base.get(n, torch.empty(0))) for n, p in after.items() if "lora_" in n)
    with pytest.raises(ValueError, match="cannot be switched back"):
        adapt(encoder, "frozen")


def test_lora_learner_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = make_model("text", (64,), 3, backbone="tiny_text", adaptation="lora", lora_rank=2)
    learner = Learner(model, [Finetune()], lr=0.1, device="cpu")
    ids = tokenize(["alpha beta", "gamma", "delta epsilon zeta"] * 3)
    learner.partial_fit(ids, torch.tensor([0, 1, 2] * 3), steps=2)
    learner.save(tmp_path / "m")
    again = Learner.load(tmp_path / "m", device="cpu")
    assert torch.equal(learner.predict_logits(ids), again.predict_logits(ids))
    # Dropout masks continue from the learner's own RNG state, whatever else the process draws
    # (without momentum: the optimizer's buffers are not saved, so online steps start them afresh).
    learner.optimizer = again.optimizer = None
    learner.momentum = again.momentum = 0.0
    y = torch.tensor([2, 0, 1] * 3)
    learner.partial_fit(ids, y, steps=2)
    torch.rand(1000)
    again.partial_fit(ids, y, steps=2)
    assert torch.equal(learner.predict_logits(ids), again.predict_logits(ids))
    assert any(m.p > 0 for m in learner.model.modules() if isinstance(m, torch.nn.Dropout))  # masks were drawn


def test_cache_key_changes_with_the_input_and_the_backbone(tmp_path):
    cache = FeatureCache(tmp_path)
    x = torch.rand(4, 3)
    y = x.clone()
    y[0, 0] += 1e-4
    assert cache.key("a", x) == cache.key("a", x.clone())
    assert cache.key("a", x) != cache.key("a", y)
    assert cache.key("a", x) != cache.key("b", x)


class _Doubler(torch.nn.Module):
    backbone_id = "doubler"

    def __init__(self):
        super().__init__()
        self.register_buffer("two", torch.tensor(2.0))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.two


def test_lazy_encoder_is_not_built_when_every_feature_is_cached(tmp_path, split_digits):
    built = []

    def build():
        built.append(1)
        return _Doubler()

    cache = FeatureCache(tmp_path)
    encode_stream(split_digits, LazyEncoder("doubler", build), cache, progress=False)
    encode_stream(split_digits, LazyEncoder("doubler", build), cache, progress=False)
    assert len(built) == 1 and cache.hits == 2 * len(split_digits)


def test_tensor_digest_sees_dtype_and_shape():
    x = torch.zeros(6)
    assert tensor_digest(x) != tensor_digest(x.reshape(2, 3))
    assert tensor_digest(x) != tensor_digest(x.double())


def test_slda_incremental_equals_fitting_on_everything(split_digits):
    def learner():
        torch.manual_seed(0)
        model = make_model("mlp", split_digits.input_shape, 10, hidden=())
        return Learner(model, [SLDA()], epochs=1, device="cpu")

    step_by_step = learner()
    for exp in split_digits:
        step_by_step.fit(exp)
    at_once = learner().fit(split_digits.merged())
    assert step_by_step.steps_ == at_once.steps_ == 0  # closed form: no gradient step to throw away
    x = split_digits.merged().x_test
    assert torch.allclose(step_by_step.predict_logits(x), at_once.predict_logits(x), rtol=1e-4, atol=1e-3)
    assert sum(step_by_step.evaluate(split_digits)) / 5 > 0.9


def test_slda_writes_a_growing_head_as_it_writes_a_fixed_one(split_digits):
    from retain.strategies import GrowingHead

    learners = []
    for head, strategies in (("fixed", [SLDA()]), ("growing", [GrowingHead(), SLDA()])):
        torch.manual_seed(0)
        learner = Learner(make_model("mlp", split_digits.input_shape, 10, head=head, hidden=()), strategies,
                          device="cpu")
        for exp in split_digits:
            learner.fit(exp)
        learners.append(learner)
    x = split_digits.merged().x_test
    assert learners[1].model.head.n_outputs == 10 and len(learners[1].model.head.blocks) == 5
    fixed, growing = (learner.predict_logits(x) for learner in learners)
    assert torch.allclose(fixed, growing, rtol=1e-5, atol=1e-4)  # one matrix product against five: rounding
    assert torch.equal(fixed.argmax(1), growing.argmax(1))


def test_slda_solves_by_cholesky_and_survives_a_singular_covariance(split_digits):
    from retain.strategies.slda import _solve_spd

    torch.manual_seed(0)
    f = torch.randn(50, 8, dtype=torch.float64)
    spd, b = f.T @ f / 50 + 0.01 * torch.eye(8, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    assert torch.allclose(_solve_spd(spd, b), torch.linalg.inv(spd) @ b, atol=1e-10)
    singular = f[:5].T @ f[:5]  # rank 5 of 8
    assert torch.allclose(_solve_spd(singular, b), torch.linalg.pinv(singular) @ b, atol=1e-8)
    # digits have pixels that are always 0: without shrinkage the covariance is singular
    learner = Learner(make_model("mlp", split_digits.input_shape, 10, hidden=()), [SLDA(shrinkage=0.0)],
                      epochs=1, device="cpu")
    for exp in split_digits:
        learner.fit(exp)
    assert torch.isfinite(learner.model.head.fc.weight).all() and sum(learner.evaluate(split_digits)) / 5 > 0.9


def test_slda_state_survives_save_and_load(tmp_path, split_digits):
    torch.manual_seed(0)
    learner = Learner(make_model("mlp", split_digits.input_shape, 10, hidden=()), [SLDA()], epochs=1, device="cpu")
    learner.fit(split_digits[0])
    learner.save(tmp_path / "m")
    again = Learner.load(tmp_path / "m", device="cpu")
    for a in (learner, again):
        a.fit(split_digits[1])
    x = split_digits[1].x_test
    assert torch.equal(learner.predict_logits(x), again.predict_logits(x))


def test_fortunes_language_is_seeded_and_names_missing_packages(tmp_path):
    a, b = fortunes_language(n_per_class=10, seed=3), fortunes_language(n_per_class=10, seed=3)
    assert a.texts_train == b.texts_train and a.texts_test == b.texts_test
    assert not set(a.texts_train) & set(a.texts_test)
    with pytest.raises(DatasetNotFound, match="apt-get install fortunes"):
        fortunes_language(root=tmp_path)


def test_keywords_hold_out_voices_and_are_deterministic(tmp_path, monkeypatch):
    speakers = [v for v in voices() if v.endswith(("+m1", "kal", "slt"))] + ["festival:kal_diphone"]
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "a"))
    d = keywords(words=("yes", "no"), copies=2, seed=1, progress=False, speakers=speakers)
    assert d.x_train.shape[1] == 16000 and len(d.y_test) > 0
    assert not set(d.metadata["voice_train"]) & set(d.metadata["voice_test"])
    assert set(d.metadata["voice_train"]) | set(d.metadata["voice_test"]) == set(speakers)
    assert d.x_train.abs().max() > 0.05  # real audio, not silence
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "b"))
    again = keywords(words=("yes", "no"), copies=2, seed=1, progress=False, speakers=speakers)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)


def text_config(tmp_path, **model):
    return RunConfig.model_validate({
        "name": "tiny", "scenario": {"dataset": "fortunes_language", "n_experiences": 4, "max_train_per_class": 6,
                                     "max_test_per_class": 4},
        "model": {"backbone": "tiny_text", "hidden": [], "feature_cache": str(tmp_path)} | model,
        "training": {"epochs": 1, "lr": 0.1}, "strategies": ["slda"], "seeds": [0], "output": str(tmp_path),
    })


def test_frozen_text_run_caches_features_and_reports_backbone_fields(tmp_path):
    cfg = text_config(tmp_path)
    results = run_experiment(cfg, progress=False)
    st = results.stream
    assert (st.modality, st.backbone, st.adaptation, st.cache_misses) == ("text", "tiny_text", "frozen", 8)
    again = build_stream(cfg)
    assert again.metadata["cache_hits"] == 8 and again.metadata["cache_misses"] == 0
    assert again[0].x_train.shape == (12, 32)


def test_model_selection_compares_adaptations(tmp_path):
    cfg = text_config(tmp_path)
    cfg.strategies = RunConfig.model_validate(cfg.model_dump() | {"strategies": ["finetune"]}).strategies
    rows = compare_backbones(cfg, [("tiny_text", "frozen"), ("tiny_text", "lora")], progress=False)
    assert [(r["backbone"], r["adaptation"]) for r in rows] == [("tiny_text", "frozen"), ("tiny_text", "lora")]
    frozen, lora = rows
    assert frozen["trainable_parameters"] < lora["trainable_parameters"]
    assert frozen["feature_seconds"] > 0 and lora["feature_seconds"] == 0
    assert all(0 <= r["acc"] <= 1 and r["update_seconds"] > 0 for r in rows)


@pytest.mark.parametrize(
    ("model", "scenario", "expected"),
    [
        ({}, {"dataset": "fortunes_topics"}, "data set fortunes_topics is text; set backbone: minilm"),
        ({"backbone": "logmel", "adaptation": "lora", "name": "audio_cnn"}, {"dataset": "keywords"},
         "backbone logmel has no weights to adapt"),
        ({"backbone": "minilm"}, {"dataset": "keywords"}, "model.backbone: minilm reads text, but data set keywords"),
        ({"name": "audio_cnn"}, {"dataset": "mnist5k"}, "name audio_cnn needs backbone: logmel"),
        ({"backbone": "minilm", "strategies": ["lora_experts"]}, {"dataset": "fortunes_language"},
         "lora_experts needs model.backbone minilm"),
    ],
)
def test_inconsistent_backbone_configs_are_refused(tmp_path, model, scenario, expected):
    import yaml

    from retain.config import load_config

    path = tmp_path / "c.yaml"
    strategies = model.pop("strategies", ["finetune"])
    path.write_text(yaml.safe_dump({"scenario": scenario, "model": model, "strategies": strategies}))
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def _two_experience_text_stream(task_incremental):
    from retain.data import Experience, Stream

    groups = [(["apple pie", "banana bread", "cherry tart"], ["red car", "blue truck", "green bus"]),
              (["кошка спит", "собака лает", "мышь бежит"], ["один два", "три четыре", "пять шесть"])]
    experiences = []
    for k, (a, b) in enumerate(groups):
        ids = tokenize(a * 3 + b * 3, max_tokens=8)
        y = torch.tensor([2 * k] * 9 + [2 * k + 1] * 9)
        kind = "task_incremental" if task_incremental else "class_incremental"
        experiences.append(Experience(ids, y, ids, y, id=k, task=k if task_incremental else 0,
                                      classes=(2 * k, 2 * k + 1), scenario=kind))
    return Stream(experiences, n_classes=4, scenario=experiences[0].scenario)


@pytest.mark.parametrize("task_ids", [False, True])
def test_lora_experts_keep_old_adapters_and_pick_the_right_one(tmp_path, task_ids):
    from retain.strategies import LoRAExperts

    stream = _two_experience_text_stream(task_ids)
    torch.manual_seed(0)
    model = make_model("text", (8,), 4, backbone="tiny_text", adaptation="lora", lora_rank=2)
    learner = Learner(model, [LoRAExperts()], lr=0.2, epochs=10, batch_size=6, device="cpu")
    learner.fit(stream[0])
    first = {n: p.detach().clone() for n, p in model.named_parameters() if ".default." in n or "heads.0" in n}
    before = learner.predict_logits(stream[0].x_test, stream[0].test_tasks())
    learner.fit(stream[1])
    after = dict(model.named_parameters())
    assert first and all(torch.equal(after[n], p) for n, p in first.items())
    accs = learner.evaluate(stream)
    assert min(accs) >= 0.9, accs
    if task_ids:  # the old task's predictions are bit-for-bit those before the new experience
        assert torch.equal(before, learner.predict_logits(stream[0].x_test, stream[0].test_tasks())[:, :2])
    else:  # routing by prototypes picks each sample's own expert
        _, chosen = model.backbone.route(torch.cat([e.x_test for e in stream]))
        assert (chosen == torch.tensor([0] * 18 + [1] * 18)).float().mean() >= 0.9
    learner.save(tmp_path / "m")
    again = Learner.load(tmp_path / "m", device="cpu")
    x = torch.cat([e.x_test for e in stream])
    t = torch.cat([e.test_tasks() for e in stream]) if task_ids else None
    assert torch.equal(learner.predict_logits(x, t), again.predict_logits(x, t))


def test_lora_experts_refuse_a_backbone_without_lora(split_digits):
    from retain.strategies import LoRAExperts

    learner = Learner(make_model("mlp", split_digits.input_shape, 10, hidden=(8,)), [LoRAExperts()], device="cpu")
    with pytest.raises(ValueError, match="needs a text backbone with adaptation: lora"):
        learner.fit(split_digits[0])


def test_slda_refuses_features_that_train(split_digits):
    learner = Learner(make_model("mlp", split_digits.input_shape, 10, hidden=(16,)), [SLDA()], device="cpu")
    with pytest.raises(ValueError, match="slda needs fixed features"):
        learner.fit(split_digits[0])


def test_image_lora_starts_as_the_pretrained_model_and_trains_only_adapters():
    x = torch.rand(4, 1, 28, 28)
    frozen = ImageEncoder(32, pretrained=True).eval()
    lora = ImageEncoder(32, pretrained=True, adaptation="lora", lora_rank=4).eval()
    with torch.no_grad():
        assert torch.allclose(frozen(x), lora(x), atol=1e-5)  # LoRA's B starts at zero
    trainable, total = count_parameters(lora)
    assert 0 < trainable < total * 0.05
    lora.train()
    lora(x).sum().backward()
    assert all(p.grad is not None for p in lora.parameters() if p.requires_grad)


def test_images_are_encoded_channels_last_in_small_cpu_batches_with_unchanged_features():
    torch.manual_seed(0)
    encoder = ImageEncoder(64, pretrained=False).eval()
    x = torch.rand(70, 1, 28, 28)
    order, bounds = encoder_batches(encoder, x, batch_size=128)
    assert torch.equal(order, torch.arange(70)) and [e - s for s, e in bounds] == [32, 32, 6]
    assert max(e - s for s, e in encoder_batches(ImageEncoder(128, pretrained=False), x, 128)[1]) == 8
    plain = copy.deepcopy(encoder.net).to(memory_format=torch.contiguous_format)
    with torch.no_grad():  # the same numbers as the contiguous network on the whole batch
        expected = plain((F.interpolate(x.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear") * 255 - 127) / 128)
    assert torch.allclose(encode(encoder, x, progress=False), expected, atol=1e-4)


def test_per_sample_loop_importance_matches_the_matrix_trick(split_digits):
    from retain.strategies.importance import _loop_importance, importance

    torch.manual_seed(0)
    learner = Learner(make_model("mlp", split_digits.input_shape, 10, hidden=(16,)), [], device="cpu")
    exp = split_digits[0]
    x, y, t = exp.x_train[:40], exp.y_train[:40], exp.train_tasks()[:40]
    fast = importance(learner, x, y, t, "fisher")
    slow = _loop_importance(learner, x, y, t, "fisher", lambda g: g.pow(2))
    assert all(torch.allclose(fast[k], slow[k] / 40, atol=1e-7) for k in fast)


def test_ewc_runs_on_a_lora_text_encoder():
    from retain.strategies import EWC

    stream = _two_experience_text_stream(False)
    torch.manual_seed(0)
    model = make_model("text", (8,), 4, backbone="tiny_text", adaptation="lora", lora_rank=2)
    learner = Learner(model, [EWC()], lr=0.1, epochs=1, batch_size=6, device="cpu")
    learner.fit(stream[0])
    fisher = learner.strategies[0].fishers_[-1]
    assert fisher and all("lora_" in k or k.startswith("head.") for k in fisher)
    assert sum(float(v.sum()) for v in fisher.values()) > 0
    learner.fit(stream[1])
