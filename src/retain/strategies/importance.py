"""Shared pieces of the regularization family: parameter anchors, importances, the penalty."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from retain.models import NEG
from retain.strategies.base import Strategy, flatten, unflatten
from retain.util import evaluating

if TYPE_CHECKING:
    from retain.strategies.contract import LearnerView as Learner
    from retain.strategies.contract import Step


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every trainable parameter, by name."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def _objective(kind: str, logits: Tensor, y: Tensor) -> Tensor:
    """Summed per-sample objective whose per-sample gradients the importance is built from."""
    if kind == "fisher":
        return F.cross_entropy(logits, y, reduction="sum")
    # MAS: squared L2 norm of the outputs; the NEG logits of other tasks' classes are not outputs.
    return logits.masked_fill(logits <= NEG / 2, 0.0).pow(2).sum()


def add_penalty_grad(model: nn.Module, anchor: dict[str, Tensor], stiffness: dict[str, Tensor] | float) -> None:
    """Add to the parameters' gradients the gradient of ``1/2 sum_i s_i (theta_i - a_i)^2``, that
    is ``s_i (theta_i - a_i)``, directly: the same update as putting the penalty in the loss,
    without building and back-propagating its graph at every step. A parameter that has grown
    since (a head with new classes) is anchored on its old slice.

    >>> layer = nn.Linear(2, 1)
    >>> layer.zero_grad()
    >>> add_penalty_grad(layer, {k: torch.zeros_like(v) for k, v in layer.named_parameters()}, 2.0)
    >>> bool(torch.allclose(layer.weight.grad, 2 * layer.weight.detach()))
    True
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, a in anchor.items():
            p = params[name]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            s = stiffness if isinstance(stiffness, float) else stiffness[name]
            grad: Tensor
            value: Tensor
            if a.shape == p.shape:
                grad, value = p.grad, p
            else:
                part = tuple(slice(0, n) for n in a.shape)
                grad, value = p.grad[part], p[part]
            if isinstance(s, float):
                grad.add_(value - a, alpha=s)
            else:
                grad.addcmul_(value - a, s)


def grown(old: Tensor | None, like: Tensor) -> Tensor:
    """``old`` zero-padded at the end of dim 0 to the shape of ``like`` (a head may have grown
    since), or zeros when there is no ``old``."""
    if old is None:
        return torch.zeros_like(like)
    if old.shape == like.shape:
        return old
    return F.pad(old, [0, 0] * (old.dim() - 1) + [0, like.shape[0] - old.shape[0]])


def capped(importance: dict[str, Tensor], lr: float, lam: float) -> dict[str, Tensor]:
    """Cap each importance so the penalty ``(lam / 2) * sum_i w_i (theta_i - a_i)^2`` has a
    stiffness ``lam * w_i`` of at most ``1 / lr``. Stiffer than that, SGD overshoots the anchor
    and diverges; at the cap a weight is pulled fully back to its anchor at every step.

    >>> capped({"w": torch.tensor([0.5, 50.0])}, lr=0.1, lam=1.0)["w"].tolist()
    [0.5, 10.0]
    """
    if lam <= 0:
        return importance
    return {k: v.clamp(max=1.0 / (lr * lam)) for k, v in importance.items()}


def importance(learner: Learner, x: Tensor, y: Tensor, t: Tensor, kind: str = "fisher",
               chunk: int = 256) -> dict[str, Tensor]:
    """Per-parameter importance from per-sample gradients, averaged over the samples.

    ``fisher``: the empirical diagonal Fisher, mean of the squared per-sample gradient of the
    log-likelihood of the true label (EWC). ``mas``: mean of the absolute per-sample gradient
    of the squared L2 norm of the outputs (MAS; needs no labels).

    Being means, they do not grow with the data set or depend on the batch size. When every
    trainable parameter sits in an ``nn.Linear`` used once per forward pass, the per-sample
    statistics come from one matrix product per layer (the per-sample gradient of ``W`` is
    ``g x^T``, so ``sum_i (g_i x_i^T)^2 = (g^2)^T x^2`` and ``sum_i |g_i x_i^T| = |g|^T |x|``);
    otherwise from ``torch.func.vmap``.
    """
    if kind not in ("fisher", "mas"):
        raise ValueError(f"importance kind must be 'fisher' or 'mas', got {kind!r}")
    model = learner.model
    stat = (lambda a: a.pow(2)) if kind == "fisher" else torch.abs
    n = len(y)
    x, y, t = (learner.ranks.take(a) for a in (x, y, t))  # across ranks: each its share, summed below
    total: dict[str, Tensor] | None
    with evaluating(model):
        # rows are sequences, or tables a model's own loss reads (a detector's boxes): one exact pass each
        # (the rest assume classes)
        if getattr(model, "generative", False) or hasattr(model, "loss"):
            total = _loop_importance(learner, x, y, t, kind, stat)
        else:
            total = _linear_importance(learner, x, y, t, kind, stat, chunk)
        if total is None and getattr(model.backbone, "takes_tokens", False):
            # Transformers: data-dependent shapes (padding trimmed per batch) defeat vmap; loop instead.
            total = _loop_importance(learner, x, y, t, kind, stat)
        elif total is None:
            total = _vmap_importance(learner, x, y, t, kind, stat, chunk)
    return {k: v / n for k, v in learner.ranks.all_reduce_sum(total).items()}


def fisher_diagonal(learner: Learner, x: Tensor, y: Tensor, t: Tensor) -> dict[str, Tensor]:
    """The empirical diagonal Fisher of :func:`importance`."""
    return importance(learner, x, y, t, "fisher")


def _linear_importance(learner: Learner, x: Tensor, y: Tensor, t: Tensor, kind: str,
                       stat: Callable[[Tensor], Tensor], chunk: int) -> dict[str, Tensor] | None:
    model = learner.model
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    covered = {f"{n}.{p}" for n, m in linears.items() for p, q in m.named_parameters() if q.requires_grad}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    if covered != trainable:
        return None
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            seen.setdefault(name, []).append((inputs[0].detach(), output))
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in linears.items()]
    total = {k: torch.zeros_like(p) for k, p in model.named_parameters() if p.requires_grad}
    try:
        for start in range(0, len(y), chunk):
            seen.clear()
            xb, yb, tb = (a[start:start + chunk].to(learner.device) for a in (x, y, t))
            # A summed objective: the gradient reaching row i of a layer's output is sample i's alone.
            loss = _objective(kind, model(xb, tb), yb)
            if any(len(calls) != 1 for calls in seen.values()):
                return None  # a layer used twice per pass: the product trick does not hold
            names = [n for n in seen if seen[n][0][1].requires_grad]
            grads = torch.autograd.grad(loss, [seen[n][0][1] for n in names], allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                inp = seen[name][0][0]
                if inp.dim() != 2:
                    return None  # a layer applied per token: g x^T sums over tokens, the trick does not hold
                if f"{name}.weight" in total:
                    total[f"{name}.weight"] += stat(g).T @ stat(inp)
                if f"{name}.bias" in total:
                    total[f"{name}.bias"] += stat(g).sum(0)
    finally:
        for h in handles:
            h.remove()
    return total


def _vmap_importance(learner: Learner, x: Tensor, y: Tensor, t: Tensor, kind: str,
                     stat: Callable[[Tensor], Tensor], chunk: int) -> dict[str, Tensor]:
    model = learner.model
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor, task: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0), task))
        return _objective(kind, logits, yi.unsqueeze(0))

    per_sample = vmap(grad(one), in_dims=(None, 0, 0, None))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for task in torch.unique(t).tolist():
        rows = (t == task).nonzero().squeeze(1)
        task_id = torch.tensor([task], device=learner.device)
        for start in range(0, len(rows), chunk):
            idx = rows[start:start + chunk]
            xb, yb = x[idx].to(learner.device), y[idx].to(learner.device)
            for k, g in per_sample(params, xb, yb, task_id).items():
                total[k] += stat(g).sum(0)
    return total


def _loop_importance(learner: Learner, x: Tensor, y: Tensor, t: Tensor, kind: str,
                     stat: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """One backward pass per sample: slow but exact for any model (the trainable weights only)."""
    model = learner.model
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    # A model with a loss of its own (a speech recogniser's CTC) gives the log-likelihood the Fisher needs.
    own: Callable[..., Tensor] | None = getattr(model, "loss", None) if kind == "fisher" else None
    for i in range(len(y)):
        xi, yi, ti = (a[i:i + 1].to(learner.device) for a in (x, y, t))
        logits = model(xi, ti)
        objective = own(logits, yi, reduction="sum") if own is not None else _objective(kind, logits, yi)
        grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                total[k] += stat(g)
    return total


class AnchoredPenalty(Strategy):
    """Base of the methods that penalise ``(lam / 2) * sum_i w_i (theta_i - theta*_i)^2`` with
    one importance ``w`` (``importance_``) and one anchor ``theta*`` (``anchor_``); subclasses
    only say how the importance is learned. Importances are capped (:func:`capped`); the
    penalty's gradient is added after ``backward`` (:func:`add_penalty_grad`)."""

    lam: float
    importance_: dict[str, Tensor]
    anchor_: dict[str, Tensor]
    _stiffness: dict[str, Tensor] | None  # lam times the capped importances, built at the first step

    def set_anchor(self, learner: Learner, importance: dict[str, Tensor]) -> None:
        """Anchor the penalty at the model's weights now, with ``importance`` as its weights.

        Args:
            learner: what the strategy may read of the learner (its model).
            importance: each trainable parameter's importance, by name (uncapped).
        """
        self.importance_, self.anchor_ = importance, snapshot(learner.model)
        self._stiffness = None

    def after_backward(self, learner: Learner, step: Step) -> None:
        if not getattr(self, "anchor_", None):
            return
        stiffness: dict[str, Tensor] | None = getattr(self, "_stiffness", None)
        if stiffness is None:
            stiffness = self._stiffness = {k: self.lam * w
                                           for k, w in capped(self.importance_, learner.lr, self.lam).items()}
        add_penalty_grad(learner.model, self.anchor_, stiffness)

    def state_dict(self) -> dict[str, Any]:
        return flatten("importance", getattr(self, "importance_", {})) | flatten("anchor", getattr(self, "anchor_", {}))

    def load_state_dict(self, state: dict[str, Any], learner: Learner) -> None:
        self.importance_, self.anchor_ = unflatten("importance", state), unflatten("anchor", state)
        self._stiffness = None
