"""Shared pieces of gradient projection (GEM, A-GEM): flat gradients and memory gradients."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import Tensor, nn

from retain.strategies.memory import weighted_cross_entropy

if TYPE_CHECKING:
    from retain.strategies.contract import LearnerView as Learner


def grads(learner: Learner) -> list[Tensor]:
    """Every trainable parameter's gradient (a zero tensor is stored where one is missing), in
    the order of ``learner.trainable``."""
    out = []
    for p in learner.trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append(p.grad)
    return out


def flat_grad(learner: Learner) -> Tensor:
    """All trainable parameters' gradients as one vector (zeros where a gradient is missing)."""
    return torch.cat([g.flatten() for g in grads(learner)])


def set_flat_grad(learner: Learner, g: Tensor) -> None:
    """Write a vector from :func:`flat_grad` back into the parameters' gradients."""
    start = 0
    for p in learner.trainable:
        p.grad = g[start:start + p.numel()].view_as(p).clone()
        start += p.numel()


def memory_grads(learner: Learner, x: Tensor, y: Tensor, t: Tensor) -> list[Tensor]:
    """Per-parameter gradients of the cross-entropy on memory samples, leaving the parameters'
    gradients as they were."""
    params = learner.trainable
    dev = learner.device
    loss = F.cross_entropy(learner.model(x.to(dev), t.to(dev)), y.to(dev))
    found = torch.autograd.grad(loss, params, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(found, params, strict=True)]


def memory_grad(learner: Learner, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """:func:`memory_grads` as one vector, in :func:`flat_grad`'s order."""
    return torch.cat([g.flatten() for g in memory_grads(learner, x, y, t)])


class GroupGrads:
    """Gradients of the mean cross-entropy of consecutive groups of samples (GEM: one group per
    earlier experience), as the rows of a ``(groups, parameters)`` matrix in :func:`flat_grad`'s
    order.

    When every trainable parameter belongs to an ``nn.Linear`` that the forward pass applies once
    to the whole batch (MLPs; linear, growing and per-task heads), one forward and one backward
    serve all the groups: the backward pass to each layer's outputs gives every row's error, which
    depends on that row alone, and a group's weight gradient is its rows' errors times their
    inputs, written straight into its row of the matrix. Other models (convolutions, a layer
    applied to part of the batch or twice, batch normalisation in training) take one forward and
    backward pass per group.
    """

    def __init__(self) -> None:
        self._key: tuple[int, ...] = ()
        self._layout: list[tuple[nn.Linear, str, int, torch.Size]] | None = None
        self._buffer = torch.empty(0)

    def __call__(self, learner: Learner, x: Tensor, y: Tensor, t: Tensor, sizes: list[int]) -> Tensor:
        key = tuple(id(p) for p in learner.trainable)
        if key != self._key:  # a head grew or the model changed: inspect it again
            self._key, self._layout = key, _linear_layout(learner.model, learner.trainable)
        if self._layout is not None:
            G = self._one_pass(learner, x, y, t, sizes)
            if G is not None:
                return G
            self._layout = None  # a layer saw part of the batch, or saw it twice: one pass per group
        return torch.stack([memory_grad(learner, x[a:b], y[a:b], t[a:b]) for a, b in spans(sizes)])

    def _one_pass(self, learner: Learner, x: Tensor, y: Tensor, t: Tensor, sizes: list[int]) -> Tensor | None:
        layout = self._layout
        assert layout is not None  # the caller checked
        model, dev, n = learner.model, learner.device, len(y)
        seen: dict[nn.Linear, list[tuple[Tensor, Tensor]]] = {}
        handles = [m.register_forward_hook(lambda m, i, o: seen.setdefault(m, []).append((i[0], o)))
                   for m in dict.fromkeys(m for m, *_ in layout)]
        try:
            logits = model(x.to(dev), t.to(dev))
        finally:
            for h in handles:
                h.remove()
        if any(len(v) != 1 or v[0][0].dim() != 2 or len(v[0][0]) != n for v in seen.values()):
            return None
        # the groups' mean losses, summed
        loss = weighted_cross_entropy(logits, y.to(dev), tuple(sizes), tuple(1.0 / k for k in sizes))
        layers = list(seen)
        errors = dict(zip(layers, torch.autograd.grad(loss, [seen[m][0][1] for m in layers], allow_unused=True),
                          strict=True))
        size = sum(shape.numel() for _, _, _, shape in layout)
        if self._buffer.shape[1:] != (size,) or len(self._buffer) < len(sizes) or self._buffer.device != dev:
            self._buffer = torch.empty(len(sizes), size, device=dev)
        G = self._buffer[:len(sizes)]
        with torch.no_grad():
            for m, kind, start, shape in layout:
                part = G[:, start:start + shape.numel()]
                d = errors.get(m)
                if d is None:  # a layer the batch did not reach: no gradient
                    part.zero_()
                    continue
                a = seen[m][0][0]
                for k, (lo, hi) in enumerate(spans(sizes)):
                    if kind == "weight":
                        torch.mm(d[lo:hi].T, a[lo:hi], out=part[k].view(shape))
                    else:
                        torch.sum(d[lo:hi], 0, out=part[k])
        return G


def spans(sizes: list[int]) -> list[tuple[int, int]]:
    """Consecutive row ranges of groups of the given sizes."""
    return list(itertools.pairwise(np.cumsum([0, *sizes]).tolist()))


def _linear_layout(model: nn.Module, params: list[Tensor]) -> list[tuple[nn.Linear, str, int, torch.Size]] | None:
    """Where each of ``params`` (the trainable ones) has its gradient in a flat vector, when all
    belong to ``nn.Linear`` layers and nothing mixes the rows of a batch; ``None`` otherwise."""
    owner: dict[int, tuple[nn.Linear, str]] = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return None
        if isinstance(m, nn.Linear):
            owner[id(m.weight)] = (m, "weight")
            if m.bias is not None:
                owner[id(m.bias)] = (m, "bias")
    layout, start = [], 0
    for p in params:
        if id(p) not in owner:
            return None
        m, kind = owner[id(p)]
        layout.append((m, kind, start, p.shape))
        start += p.numel()
    return layout


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """Dot product of two gradients given per parameter."""
    return torch.stack([torch.vdot(u.flatten(), v.flatten()) for u, v in zip(a, b, strict=True)]).sum()


def project_to_cone(g: Tensor, G: Tensor, margin: float = 0.0, eps: float = 1e-6) -> Tensor:
    """GEM's projection: the gradient closest to ``g`` whose dot product with every row of
    ``G`` is non-negative, solving the quadratic program exactly through its dual.

    The dual ``min_{v >= margin} 1/2 v^T G G^T v + (G g)^T v`` has one variable per constraint;
    with ``G G^T + eps I = L L^T`` it is the non-negative least-squares problem
    ``min_{u >= 0} ||L^T u + L^{-1} G (g + margin G^T 1)||`` (``v = u + margin``), solved by
    SciPy's active-set NNLS; the projection is ``g + G^T v``.

    >>> g = torch.tensor([1.0, -1.0]); G = torch.tensor([[0.0, 1.0]])
    >>> [round(v, 4) + 0.0 for v in project_to_cone(g, G).tolist()]
    [1.0, 0.0]
    """
    # The products over all parameters run in the gradients' precision; the small k x k problem in float64.
    gram = G @ G.T
    A = gram.double() + eps * torch.eye(len(G), dtype=torch.float64, device=G.device)
    L = torch.linalg.cholesky(A)
    Gs = (G @ g).double() + margin * gram.double().sum(1)  # G (g + margin G^T 1)
    rhs = -torch.linalg.solve_triangular(L, Gs.unsqueeze(1), upper=False).squeeze(1)
    u, _ = nnls(L.T.cpu().numpy(), rhs.cpu().numpy())
    v = torch.from_numpy(np.asarray(u)).to(G) + margin
    return g + G.T @ v
