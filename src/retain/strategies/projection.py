"""Shared pieces of gradient projection (GEM, A-GEM): flat gradients and memory gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import Tensor, nn

if TYPE_CHECKING:
    from retain.engine import Learner


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def grads(model: nn.Module) -> list[Tensor]:
    """Every trainable parameter's gradient (a zero tensor is stored where one is missing)."""
    for p in _params(model):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in _params(model)]


def flat_grad(model: nn.Module) -> Tensor:
    """All trainable parameters' gradients as one vector (zeros where a gradient is missing)."""
    return torch.cat([g.flatten() for g in grads(model)])


def set_flat_grad(model: nn.Module, g: Tensor) -> None:
    """Write a vector from :func:`flat_grad` back into the parameters' gradients."""
    start = 0
    for p in _params(model):
        p.grad = g[start:start + p.numel()].view_as(p).clone()
        start += p.numel()


def memory_grads(learner: Learner, x: Tensor, y: Tensor, t: Tensor) -> list[Tensor]:
    """Per-parameter gradients of the cross-entropy on memory samples, leaving the parameters'
    gradients as they were."""
    params = _params(learner.model)
    dev = learner.device
    loss = F.cross_entropy(learner.model(x.to(dev), t.to(dev)), y.to(dev))
    found = torch.autograd.grad(loss, params, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(found, params, strict=True)]


def memory_grad(learner: Learner, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """:func:`memory_grads` as one vector, in :func:`flat_grad`'s order."""
    return torch.cat([g.flatten() for g in memory_grads(learner, x, y, t)])


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
