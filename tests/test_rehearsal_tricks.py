"""The rehearsal tricks (augmented replay, balanced and loss-aware reservoirs, learning-rate decay within an
experience, weight aligning) and X-DER."""

import pytest
import torch

from retain.config import RunConfig
from retain.engine.learner import Learner
from retain.metrics import average_accuracy
from retain.models import make_model
from retain.models.augment import augment, masked_spectrograms
from retain.strategies import Memory, Replay, make_strategy
from retain.strategies.weight_aligning import class_rows

from .conftest import incoming, make_learner, train_matrix


def test_replayed_images_are_shown_shifted_views_and_labels_stay(split_digits):
    plain, shifted = (make_learner(split_digits, [Replay(40, augment=on)], epochs=1) for on in (False, True))
    for learner in (plain, shifted):
        learner.fit(split_digits[0])
    a = plain.step_batch(incoming(split_digits[1], 8))
    b = shifted.step_batch(incoming(split_digits[1], 8))
    assert torch.equal(a.y, b.y) and torch.equal(a.x[:8], b.x[:8])  # the same draw; new rows untouched
    assert not torch.equal(a.x[8:], b.x[8:])
    # a shift moves pixels, it does not invent them: every augmented row's values come from its image
    for original, view in zip(a.x[8:], b.x[8:], strict=True):
        assert set(view.unique().tolist()) <= set(original.unique().tolist())


def test_spectrograms_are_masked_and_token_ids_are_left_alone():
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(4, 1, 40, 101)
    out = masked_spectrograms(mel, gen)
    assert out.shape == mel.shape and not torch.equal(out, mel)
    audio = make_model("audio_cnn", (1, 40, 101), 3)
    assert not torch.equal(augment(audio, mel, gen), mel)
    tokens = torch.randint(1, 100, (4, 12))
    assert torch.equal(augment(make_model("mlp", (12,), 3), tokens, gen), tokens)


def test_balanced_reservoir_evens_out_a_skewed_stream():
    gen = torch.Generator().manual_seed(0)
    plain, balanced = Memory(60, "reservoir"), Memory(60, "balanced_reservoir")
    for _ in range(20):  # 90% of the stream is class 0
        y = torch.tensor([0] * 45 + [1] * 5)
        for mem in (plain, balanced):
            mem.add(torch.randn(50, 2), y, generator=gen)
    rare_plain, rare_balanced = (int(torch.bincount(m.y, minlength=2)[1]) for m in (plain, balanced))
    # a reservoir admits about 23 of the 100 rare samples; plain keeps about 6 of them, the balanced one keeps
    # every one it admitted (it evicts from the larger class) up to half the memory
    assert rare_plain < 12 and 3 * rare_plain < rare_balanced <= 30


def test_loss_aware_reservoir_keeps_the_hard_samples_and_needs_their_scores():
    gen = torch.Generator().manual_seed(0)
    mem, plain = Memory(400, "loss_aware"), Memory(400, "reservoir")
    for _ in range(10):
        score = torch.rand(400, generator=gen)
        for m in (mem, plain):
            m.add(score[:, None], torch.zeros(400, dtype=torch.long), generator=gen, score=score)
    # one class: half of each eviction is by ease (a uniform reservoir keeps a mean of about 0.5, std 0.015)
    assert float(mem.score.mean()) > 0.56 and abs(float(plain.x.mean()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="needs each sample's score"):
        Memory(5, "loss_aware").add(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


def test_cls_er_scores_its_loss_aware_memory_by_each_rows_loss(split_digits):
    learner = make_learner(split_digits, [make_strategy("cls_er", memory_size=30, policy="loss_aware")], epochs=1)
    learner.fit(split_digits[0])
    memory = learner.strategies[0].memory_
    assert len(memory) == 30 and memory.score.shape == (30,) and bool((memory.score > 0).all())


def test_learning_rate_decays_to_its_share_by_an_experiences_last_step(split_digits, tmp_path):
    learner = make_learner(split_digits, epochs=2, lr=0.05)
    learner.lr_decay = 0.1
    rates = []
    original = learner._step
    learner._step = lambda step: (rates.append(learner.optimizer.groups[0][1]), original(step))
    learner.fit(split_digits[0])
    first = len(rates)
    learner.fit(split_digits[1])  # each experience starts again from lr
    for run in (rates[:first], rates[first:]):
        assert run[0] == pytest.approx(0.05) and run[-1] == pytest.approx(0.005)
        assert all(b < a for a, b in zip(run, run[1:], strict=False))
    assert learner.optimizer.groups[0][1] == pytest.approx(0.05)  # an online update after the fit steps at lr
    assert Learner.load(learner.save(tmp_path / "saved")).lr_decay == 0.1
    with pytest.raises(ValueError, match="lr_decay must be a number in"):
        Learner(make_model("mlp", (4,), 2), lr_decay=0.0)
    with pytest.raises(ValueError, match="lr_decay"):
        RunConfig.model_validate({"name": "x", "training": {"lr_decay": 1.5}})


@pytest.mark.parametrize("head", ["fixed", "growing"])
def test_weight_aligning_gives_new_classes_the_old_classes_weight_norm(split_digits, head):
    strategies = ([make_strategy("growing_head")] if head == "growing" else []) + [
        Replay(40), make_strategy("weight_aligning")]
    learner = make_learner(split_digits, strategies, epochs=2)
    for exp in list(split_digits)[:2]:
        learner.fit(exp)
    norms = torch.cat([layer.weight.detach().norm(dim=1) for layer, _ in class_rows(learner.model.head)])
    assert float(norms[[2, 3]].mean()) == pytest.approx(float(norms[[0, 1]].mean()), rel=1e-5)


def test_xder_teaches_its_stored_logits_the_classes_that_came_later(split_digits):
    strategy = make_strategy("xder", memory_size=40)
    learner = make_learner(split_digits, [strategy], epochs=2)
    learner.fit(split_digits[0])
    stored = {row.numpy().tobytes(): logits for row, logits in zip(strategy.memory_.x, strategy.memory_.logits.clone(),
                                                                     strict=True)}
    learner.fit(split_digits[1])
    mem = strategy.memory_
    old = mem.e == 0
    after = mem.logits[old]
    kept = torch.stack([stored[row.numpy().tobytes()] for row in mem.x[old]])
    own = after.gather(1, mem.y[old, None]).squeeze(1)
    later = after[:, [2, 3]]
    assert not torch.equal(kept[:, [2, 3]], later)  # the new classes' columns moved
    assert torch.equal(kept[:, [0, 1]], after[:, [0, 1]])  # the stored answers of their own classes did not
    # a later class never beats the stored own-class logit: where the model's present one did, it was scaled
    # to gamma (0.85) times it
    positive = own > 0
    best = later[positive].max(1).values
    assert bool((best <= own[positive] + 1e-4).all())
    # the scaling itself, on two stored samples of class 0 whose present logits for class 2 are 5 and 20
    strategy.memory_.data["logits"][:2] = 0.0
    strategy.memory_.data["logits"][:2, 0] = 10.0
    strategy.memory_.data["y"][:2] = 0
    strategy.current_ = [2, 3]
    outputs = torch.zeros(2, 10)
    outputs[:, 2] = torch.tensor([5.0, 20.0])
    strategy._update_logits(torch.tensor([0, 1]), outputs)
    assert strategy.memory_.logits[:2, 2].tolist() == pytest.approx([5.0, 0.85 * 10])
    assert strategy.memory_.logits[:2, 0].tolist() == [10.0, 10.0]
    _, xder = train_matrix(split_digits, [make_strategy("xder", memory_size=100)])
    _, finetune = train_matrix(split_digits, [])
    assert average_accuracy(xder) > average_accuracy(finetune) + 0.3


@pytest.mark.parametrize("strategy", [{"name": "er_ace", "policy": "balanced_reservoir"},
                                      {"name": "replay", "policy": "balanced_reservoir", "update": "stream"}],
                         ids=["er_ace", "replay"])
def test_stream_memories_can_balance_their_reservoir(split_digits, strategy):
    learner = make_learner(split_digits, [make_strategy(memory_size=40, **strategy)], epochs=1)
    for exp in list(split_digits)[:3]:
        learner.fit(exp)
    memory = learner.strategies[0].memory_
    counts = torch.bincount(memory.y, minlength=6)
    # the policy reaches the memory (its eviction is tested on a skewed stream above); every class seen is kept
    assert memory.policy == "balanced_reservoir" and counts.sum() == 40 and bool((counts[:6] > 0).all())


def test_xder_never_lets_a_later_class_beat_a_negative_stored_answer():
    strategy = make_strategy("xder", memory_size=4)
    strategy.memory_.add(torch.zeros(2, 3), torch.tensor([0, 0]), logits=torch.tensor([[-2.0, 0.0, 0.0, 0.0]] * 2))
    strategy.current_ = [2, 3]
    strategy._update_logits(torch.tensor([0, 1]), torch.tensor([[0.0, 0.0, 1.0, -3.0], [0.0, 0.0, -4.0, -5.0]]))
    logits = strategy.memory_.logits
    assert logits[0, 2:].tolist() == pytest.approx([-2.3, -6.3])  # both shifted by 3.3: the highest 0.3 under -2
    assert logits[1, 2:].tolist() == [-4.0, -5.0]  # already below: kept


def test_xder_learns_later_classes_with_a_growing_head(split_digits):
    strategy = make_strategy("xder", memory_size=40)
    learner = make_learner(split_digits, [make_strategy("growing_head"), strategy], epochs=1)
    for exp in list(split_digits)[:3]:
        learner.fit(exp)
    mem = strategy.memory_
    old = mem.logits[mem.e == 0]
    assert old.shape[1] == 6 and bool(torch.isfinite(old).all())  # the later classes' columns are filled


def test_weight_aligning_leaves_a_class_an_experience_brings_back_alone(split_digits):
    from retain.data import Experience

    strategy = make_strategy("weight_aligning")
    learner = make_learner(split_digits, [Replay(40), strategy], epochs=1)
    learner.fit(split_digits[0])
    first = split_digits[0]
    mixed = Experience(torch.cat([first.x_train, split_digits[1].x_train]),
                       torch.cat([first.y_train, split_digits[1].y_train]), first.x_test, first.y_test, id=1)
    learner.fit(mixed)
    norms = torch.cat([layer.weight.detach().norm(dim=1) for layer, _ in class_rows(learner.model.head)])
    assert float(norms[[2, 3]].mean()) == pytest.approx(float(norms[[0, 1]].mean()), rel=1e-5)
