"""Model layer: heads that grow or route by task, and rebuilding from a config."""

import pytest
import torch

from retain.models import NEG, Classifier, IncrementalHead, MultiHead, make_model


def test_growing_head_keeps_old_logits_exactly():
    torch.manual_seed(0)
    head = IncrementalHead(16, 2)
    h = torch.randn(8, 16)
    before = head(h).clone()
    assert head.grow(6) and head.n_outputs == 6
    after = head(h)
    assert torch.equal(after[:, :2], before)
    assert not head.grow(4)  # never shrinks


def test_per_task_head_scores_only_its_task_classes():
    torch.manual_seed(0)
    head = MultiHead(16, 0)
    head.add_task(0, [0, 1])
    head.add_task(1, [2, 3, 4])
    out = head(torch.randn(6, 16), torch.tensor([0, 1, 0, 1, 1, 0]))
    assert out.shape == (6, 5)
    assert (out[[0, 2, 5]][:, 2:] == NEG).all() and (out[[1, 3, 4]][:, :2] == NEG).all()
    assert set(out[[1, 3, 4]].argmax(1).tolist()) <= {2, 3, 4}


def test_per_task_head_needs_task_ids():
    head = MultiHead(4, 0)
    head.add_task(0, [0, 1])
    with pytest.raises(ValueError, match="task id"):
        head(torch.randn(2, 4))


@pytest.mark.parametrize("name,head", [("mlp", "fixed"), ("cnn", "growing"), ("mlp", "per_task")])
def test_model_rebuilds_from_its_config(name, head):
    torch.manual_seed(0)
    model = make_model(name, (1, 8, 8), 10, head=head)
    if head == "growing":
        model.head.grow(4)
    if head == "per_task":
        model.head.add_task(0, [0, 1])
    copy = Classifier.from_config(model.get_config())
    copy.load_state_dict(model.state_dict())
    x, t = torch.randn(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    assert torch.equal(copy(x, t), model(x, t))


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="choose one of: mlp, cnn"):
        make_model("resnet", (1, 8, 8), 10)
