"""Weight averaging: the weights after an experience are the stated mix of old and adapted, and it forgets less."""

from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from retain.metrics import average_accuracy, forgetting
from retain.strategies import Finetune, WeightAverage

from .conftest import make_learner, train_matrix


def tiny(weight, bias):
    layer = nn.Linear(2, len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def set_weights(layer, weight, bias):
    """What training on an experience would leave: the adapted weights."""
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


def test_the_old_models_share_follows_the_experiences_it_learned():
    layer = tiny([[1.0, 2.0]], [0.0])
    learner, strategy = SimpleNamespace(model=layer), WeightAverage()
    strategy.after_experience(learner, None)  # the first experience is kept whole
    assert layer.weight.tolist() == [[1.0, 2.0]]
    set_weights(layer, [[3.0, 6.0]], [4.0])
    strategy.after_experience(learner, None)  # one experience learned: 1/2 old, 1/2 adapted
    assert torch.allclose(layer.weight, torch.tensor([[2.0, 4.0]])) and torch.allclose(layer.bias, torch.tensor([2.0]))
    set_weights(layer, [[5.0, 1.0]], [-1.0])
    strategy.after_experience(learner, None)  # two learned: 2/3 old, 1/3 adapted
    assert torch.allclose(layer.weight, torch.tensor([[3.0, 3.0]]))
    assert torch.allclose(layer.bias, torch.tensor([1.0]))
    assert strategy.learned_ == 3


def test_a_fixed_share_and_a_pretrained_start():
    layer = tiny([[1.0, 2.0]], [0.0])
    learner, strategy = SimpleNamespace(model=layer), WeightAverage(weight=0.25, pretrained=True)
    strategy.before_experience(learner, None)  # the pretrained model is the old one already
    set_weights(layer, [[5.0, 6.0]], [4.0])
    strategy.after_experience(learner, None)
    assert torch.allclose(layer.weight, torch.tensor([[4.0, 5.0]])) and torch.allclose(layer.bias, torch.tensor([3.0]))


def test_grown_weights_mix_their_old_slice_and_new_parameters_keep_their_value():
    model = nn.Module()
    model.head = tiny([[1.0, 1.0], [2.0, 2.0]], [0.0, 0.0])
    learner, strategy = SimpleNamespace(model=model), WeightAverage()
    strategy.after_experience(learner, None)
    # the head grows a third unit, and a new layer appears
    model.head.weight = nn.Parameter(torch.tensor([[3.0, 3.0], [4.0, 4.0], [9.0, 9.0]]))
    model.head.bias = nn.Parameter(torch.tensor([2.0, 2.0, 9.0]))
    model.extra = tiny([[7.0, 7.0]], [7.0])
    strategy.after_experience(learner, None)
    assert model.head.weight.tolist() == [[2.0, 2.0], [3.0, 3.0], [9.0, 9.0]]
    assert model.head.bias.tolist() == [1.0, 1.0, 9.0]
    assert model.extra.weight.tolist() == [[7.0, 7.0]]


def test_after_training_the_weights_are_the_mix_of_before_and_adapted(split_digits):
    """A twin learner fine-tunes the same experiences with the same seed: its weights are the adapted ones."""
    averaged = make_learner(split_digits, [WeightAverage(weight=0.25)], epochs=1)
    adapted = make_learner(split_digits, [Finetune()], epochs=1)
    for learner in (averaged, adapted):
        learner.fit(split_digits[0])
    old = {k: v.clone() for k, v in averaged.model.named_parameters()}
    assert all(torch.equal(v, dict(adapted.model.named_parameters())[k]) for k, v in old.items())  # kept whole
    for learner in (averaged, adapted):
        learner.fit(split_digits[1])
    new = dict(adapted.model.named_parameters())
    for k, p in averaged.model.named_parameters():
        assert not torch.equal(new[k], old[k])
        assert torch.allclose(p, 0.25 * old[k] + 0.75 * new[k], atol=1e-6), k


def test_it_forgets_less_than_finetune_when_the_outputs_stay_the_same(permuted_digits):
    _, fine = train_matrix(permuted_digits, [Finetune()])
    _, averaged = train_matrix(permuted_digits, [WeightAverage()])
    assert forgetting(averaged) < forgetting(fine) - 0.3  # 0.18 against 0.66
    assert average_accuracy(averaged) > average_accuracy(fine) + 0.1  # 0.63 against 0.46


@pytest.mark.parametrize("bad", [1.5, -0.1, "auto"])
def test_a_share_outside_0_to_1_is_refused_naming_the_field(bad):
    with pytest.raises(ValidationError, match="weight"):
        WeightAverage(weight=bad)
