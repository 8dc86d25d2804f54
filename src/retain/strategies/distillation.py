"""Distillation from a frozen old model: the loss, the old model as strategy state, its cached outputs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.strategies.base import flatten, unflatten

if TYPE_CHECKING:
    from retain.models import Classifier
    from retain.models.detector import Detector
    from retain.strategies.contract import LearnerView, Step

M = TypeVar("M", bound=nn.Module)


def columns(classes: list[int]) -> slice | Tensor:
    """An index for the logit columns of ``classes``: a slice (a view, no copy) when they are
    ``0..k-1``, as in a class-incremental stream, else an index tensor.

    >>> columns([0, 1, 2]), columns([3, 1]).tolist()
    (slice(0, 3, None), [3, 1])
    """
    if list(classes) == list(range(len(classes))):
        return slice(0, len(classes))
    return torch.tensor(list(classes), dtype=torch.long)


def distillation(new_logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """Knowledge distillation (Hinton et al. 2015): ``T^2 KL(softmax(old/T) || softmax(new/T))``,
    averaged over the batch; the ``T^2`` keeps gradient size independent of ``T``.

    >>> z = torch.randn(3, 4)
    >>> float(distillation(z, z, 2.0))
    0.0
    """
    log_new = F.log_softmax(new_logits / temperature, dim=1)
    log_old = F.log_softmax(old_logits / temperature, dim=1)
    return F.kl_div(log_new, log_old, log_target=True, reduction="batchmean") * temperature**2


class OldOutputs:
    """A frozen old model's outputs (``fn(x, t)``) on the rows of each step's batch, for the
    distilling methods. The old model does not change during an experience and the learner
    names the training-set rows a batch starts with (``step.rows`` of ``step.source``), so their outputs are
    computed once, on the first step, over the whole training set in large batches, instead of
    again in every epoch (the 3-epoch protocol paid for each row's old forward three times).
    Rows a ``batch`` hook appended (replayed samples), and every row outside ``fit``, go through
    the old model as before. Build a new one whenever the old model changes.

    Args:
        fn: the old model's outputs on a batch and its task ids.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn
        self._train_set: tuple[Tensor, ...] | None = None  # the training set the cache is for
        self._cache: Tensor | None = None

    @torch.no_grad()
    def __call__(self, learner: LearnerView, step: Step, x: Tensor, t: Tensor) -> Tensor:
        """The old model's outputs on ``x`` (the step's batch, or features of it) with task ids ``t``."""
        rows = step.rows
        if rows is None:  # outside fit
            return self.fn(x, t)
        source = step.source
        assert source is not None  # set with rows, during fit
        train_x, _, train_t = source
        if self._train_set is not source:  # a new experience, or a replaced training set
            self._train_set, dev, size = source, learner.device, learner.bulk_size
            self._cache = torch.cat([self.fn(train_x[i:i + size].to(dev), train_t[i:i + size].to(dev))
                                     for i in range(0, len(train_x), size)])
        cache = self._cache
        assert cache is not None  # built with _train_set
        n = len(rows)
        if not torch.equal(t[:n], train_t.index_select(0, rows.to(train_t.device)).to(t.device)):
            return self.fn(x, t)  # a batch hook re-labelled the tasks: the cached outputs do not apply
        cached = cache.index_select(0, rows.to(cache.device))
        return cached if len(x) == n else torch.cat([cached, self.fn(x[n:], t[n:])])


def frozen_copy(model: M) -> M:
    """A copy of ``model`` in evaluation mode with gradients off: the "old model" to distil from."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def old_model_state(model: Classifier | Detector | None) -> dict[str, Any]:
    """A frozen old model as strategy state: its config (to rebuild it) and its tensors."""
    if model is None:
        return {}
    return {"old_config": model.get_config()} | flatten("old", model.state_dict())


def load_old_model(state: dict[str, Any], learner: LearnerView, build: Callable[[dict[str, Any]], M]) -> M | None:
    """The old model saved by :func:`old_model_state`, rebuilt from its config by ``build`` (a
    classifier's: ``Classifier.from_config``) and frozen (``None`` if none)."""
    if "old_config" not in state:
        return None
    old = build(state["old_config"]).to(learner.device)
    old.load_state_dict(unflatten("old", state))
    return frozen_copy(old)
