"""Shared pieces of the regularization family: parameter anchors, importances, the penalty."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

if TYPE_CHECKING:
    from retain.engine import Learner


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every trainable parameter, by name."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def quadratic_penalty(model: nn.Module, anchor: dict[str, Tensor], importance: dict[str, Tensor] | None) -> Tensor:
    """``sum_i w_i (theta_i - anchor_i)^2`` over the anchored parameters (``w = 1`` without importance).

    A parameter that has grown since (a head with new classes) is compared on its old slice.

    >>> layer = nn.Linear(2, 1)
    >>> anchor = {k: torch.zeros_like(v) for k, v in layer.named_parameters()}
    >>> bool(torch.isclose(quadratic_penalty(layer, anchor, None), sum((p ** 2).sum() for p in layer.parameters())))
    True
    """
    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(iter(anchor.values())).device)
    for name, old in anchor.items():
        p = params[name][tuple(slice(0, s) for s in old.shape)]
        sq = (p - old).pow(2)
        total = total + (sq * importance[name] if importance is not None else sq).sum()
    return total


def fisher_diagonal(learner: Learner, x: Tensor, y: Tensor, t: Tensor, chunk: int = 256) -> dict[str, Tensor]:
    """Empirical diagonal Fisher: the mean over samples of the squared per-sample gradient of
    the log-likelihood of the true label.

    It is a mean, not a sum, so it does not grow with the data set or depend on the batch size.
    When every trainable parameter sits in an ``nn.Linear`` used once per forward pass, the
    per-sample squares come from one matrix product per layer (the per-sample gradient of
    ``W`` is ``g x^T``, so its square summed over samples is ``(g^2)^T x^2``); otherwise they
    come from ``torch.func.vmap``.
    """
    model = learner.model
    was_training = model.training
    model.eval()
    fisher = _linear_fisher(learner, x, y, t, chunk)
    if fisher is None:
        fisher = _vmap_fisher(learner, x, y, t, chunk)
    model.train(was_training)
    return {k: f / len(y) for k, f in fisher.items()}


def _linear_fisher(learner: Learner, x: Tensor, y: Tensor, t: Tensor, chunk: int) -> dict[str, Tensor] | None:
    model = learner.model
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    covered = {f"{n}.{p}" for n, m in linears.items() for p, q in m.named_parameters() if q.requires_grad}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    if covered != trainable:
        return None
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            seen.setdefault(name, []).append((inputs[0].detach(), output))
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in linears.items()]
    fisher = {k: torch.zeros_like(p) for k, p in model.named_parameters() if p.requires_grad}
    try:
        for start in range(0, len(y), chunk):
            seen.clear()
            xb, yb, tb = (a[start:start + chunk].to(learner.device) for a in (x, y, t))
            # Summed loss: the gradient reaching row i of a layer's output is that of sample i alone.
            loss = F.cross_entropy(model(xb, tb), yb, reduction="sum")
            if any(len(calls) != 1 for calls in seen.values()):
                return None  # a layer used twice per pass: the product trick does not hold
            names = list(seen)
            grads = torch.autograd.grad(loss, [seen[n][0][1] for n in names], allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                inp, g2 = seen[name][0][0], g.pow(2)
                if f"{name}.weight" in fisher:
                    fisher[f"{name}.weight"] += g2.T @ inp.pow(2)
                if f"{name}.bias" in fisher:
                    fisher[f"{name}.bias"] += g2.sum(0)
    finally:
        for h in handles:
            h.remove()
    return fisher


def _vmap_fisher(learner: Learner, x: Tensor, y: Tensor, t: Tensor, chunk: int) -> dict[str, Tensor]:
    model = learner.model
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def nll(p: dict[str, Tensor], xi: Tensor, yi: Tensor, task: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0), task))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0, None))
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    for task in t.unique().tolist():
        rows = (t == task).nonzero().squeeze(1)
        task_id = torch.tensor([task], device=learner.device)
        for start in range(0, len(rows), chunk):
            idx = rows[start:start + chunk]
            xb, yb = x[idx].to(learner.device), y[idx].to(learner.device)
            for k, g in per_sample(params, xb, yb, task_id).items():
                fisher[k] += g.pow(2).sum(0)
    return fisher


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
