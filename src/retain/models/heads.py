"""Classifier heads: fixed, growing with new classes, or one per task.

Every head maps features ``(B, F)`` and task ids ``(B,)`` to logits over the global classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

# Logit given to classes a per-task head cannot output: finite, so softmax and KL stay NaN-free.
NEG = -1e9
"""The logit of a class a head cannot output (another task's, one without a mean): finite, so softmax stays NaN-free."""


class _Head(Protocol):
    """What a wrapping head reads of the head it wraps (every head below has it)."""

    n_outputs: int

    def __call__(self, h: Tensor, t: Tensor | None = None) -> Tensor: ...

    def get_config(self) -> dict[str, Any]: ...


class LinearHead(nn.Module):
    """A plain linear layer with a fixed number of classes; ignores task ids.

    Args:
        in_features: width of the features it reads.
        n_outputs: number of classes.
    """

    def __init__(self, in_features: int, n_outputs: int) -> None:
        super().__init__()
        self.in_features, self.n_outputs = in_features, n_outputs
        self.fc = nn.Linear(in_features, n_outputs)

    def forward(self, h: Tensor, t: Tensor | None = None) -> Tensor:
        out: Tensor = self.fc(h)
        return out

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this head.

        Returns:
            Its ``kind`` (``fixed``), ``in_features`` and ``n_outputs``.
        """
        return {"kind": "fixed", "in_features": self.in_features, "n_outputs": self.n_outputs}


class IncrementalHead(nn.Module):
    """A linear head that gains output units when new classes appear.

    Each growth appends a separate block of units; the old blocks and their weights are left
    as they are, so the logits of known classes stay bit-for-bit the same.

    Args:
        in_features: width of the features it reads.
        n_outputs: units to start with (0: none until the first growth).
        blocks: the size of each block to build, in order (a saved head's); given, ``n_outputs`` is not used.

    >>> head = IncrementalHead(4, 2)
    >>> h = torch.randn(3, 4)
    >>> before = head(h)
    >>> head.grow(5)
    True
    >>> head(h).shape, bool(torch.equal(head(h)[:, :2], before))
    (torch.Size([3, 5]), True)
    """

    def __init__(self, in_features: int, n_outputs: int = 0, blocks: Sequence[int] | None = None) -> None:
        super().__init__()
        self.in_features, self.n_outputs = in_features, 0
        self.blocks = nn.ModuleList()
        for size in blocks if blocks is not None else ([n_outputs] if n_outputs else []):
            self.grow(self.n_outputs + size)

    def grow(self, n_outputs: int) -> bool:
        """Widen to ``n_outputs`` units; returns whether anything changed.

        Args:
            n_outputs: the number of units wanted in all.

        Returns:
            True when a block was added; False when the head has that many units already.
        """
        if n_outputs <= self.n_outputs:
            return False
        device = self.blocks[0].weight.device if len(self.blocks) else None
        self.blocks.append(nn.Linear(self.in_features, n_outputs - self.n_outputs, device=device))
        self.n_outputs = n_outputs
        return True

    def forward(self, h: Tensor, t: Tensor | None = None) -> Tensor:
        if not len(self.blocks):
            return h.new_zeros((len(h), 0))
        return torch.cat([block(h) for block in self.blocks], dim=1)

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this head, its blocks included.

        Returns:
            Its ``kind`` (``growing``), ``in_features`` and the size of each block (``blocks``).
        """
        return {"kind": "growing", "in_features": self.in_features,
                "blocks": [b.out_features for b in self.blocks]}


class MultiHead(nn.Module):
    """One linear head per task; each sample is scored by its task's head only.

    The other classes get the logit ``NEG`` so predictions stay inside the task's classes.

    Args:
        in_features: width of the features it reads.
        n_outputs: width of the logits over the global classes (it grows with the tasks' classes).
        task_classes: each task's global class ids, to build their heads at once (a saved head's).

    >>> head = MultiHead(4, n_outputs=4)
    >>> head.add_task(0, [0, 1]); head.add_task(1, [2, 3])
    >>> out = head(torch.randn(2, 4), torch.tensor([0, 1]))
    >>> out.argmax(1).tolist()[1] in (2, 3), bool(out[0, 2] == NEG)
    (True, True)
    """

    def __init__(self, in_features: int, n_outputs: int = 0,
                 task_classes: dict[int, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.in_features, self.n_outputs = in_features, n_outputs
        self.heads = nn.ModuleDict()
        self.task_classes: dict[int, list[int]] = {}
        self._places: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor]] = {}
        for task, classes in (task_classes or {}).items():
            self.add_task(int(task), classes)

    def add_task(self, task: int, classes: Sequence[int]) -> None:
        """Create the head of ``task`` for ``classes`` (no-op when it exists).

        Args:
            task: the task id.
            classes: the global class ids the task's head scores.
        """
        if task in self.task_classes:
            return
        device = next(self.parameters(), torch.empty(0)).device
        self.heads[str(task)] = nn.Linear(self.in_features, len(classes)).to(device)
        self.task_classes[task] = sorted(int(c) for c in classes)
        self.n_outputs = max(self.n_outputs, max(classes) + 1)

    def forward(self, h: Tensor, t: Tensor | None = None) -> Tensor:
        if t is None:
            raise ValueError("a per-task head needs the task id of every sample")
        # Written without in-place writes so torch.func (per-sample gradients) can trace it.
        out = h.new_zeros((len(h), self.n_outputs))  # an unknown task keeps uniform logits
        for task in torch.unique(t).tolist():
            if task not in self.task_classes:
                continue
            place, fill = self._placement(task, h.device)
            scores = self.heads[str(task)](h) @ place + fill
            out = torch.where((t == task).unsqueeze(1), scores, out)
        return out

    def _placement(self, task: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The 0/1 matrix putting task logits in their global columns, and NEG elsewhere."""
        key = (task, self.n_outputs, device)
        if key not in self._places:
            classes = self.task_classes[task]
            place = torch.zeros(len(classes), self.n_outputs, device=device)
            place[range(len(classes)), classes] = 1.0
            self._places[key] = (place, NEG * (1.0 - place.sum(0)))
        return self._places[key]

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this head, every task's included.

        Returns:
            Its ``kind`` (``per_task``), ``in_features``, ``n_outputs`` and ``task_classes``.
        """
        return {"kind": "per_task", "in_features": self.in_features, "n_outputs": self.n_outputs,
                "task_classes": {str(k): v for k, v in self.task_classes.items()}}


class NMEHead(nn.Module):
    """Nearest-mean-of-exemplars classifier (iCaRL, Rebuffi et al. 2017) around a trained head.

    In training mode it is the wrapped head; in evaluation mode each sample goes to the class
    whose mean L2-normalised feature is nearest (classes without a mean get ``NEG``). With unit
    features, ``argmin ||f - mu_c||^2 = argmax 2 f.mu_c - ||mu_c||^2``: a linear layer.

    Args:
        in_features: width of the features it reads.
        inner: the trained head it wraps, or that head's config (``get_config()``).
    """

    means: Tensor  # buffers: each class's mean feature, and whether it has one
    has_mean: Tensor

    def __init__(self, in_features: int, inner: dict[str, Any] | nn.Module) -> None:
        super().__init__()
        self.inner = cast(_Head, inner if isinstance(inner, nn.Module) else _build_head(inner))
        self.in_features = in_features
        self.register_buffer("means", torch.zeros(self.inner.n_outputs, in_features))
        self.register_buffer("has_mean", torch.zeros(self.inner.n_outputs, dtype=torch.bool))

    @property
    def n_outputs(self) -> int:
        return self.inner.n_outputs

    def set_means(self, means: Tensor, has_mean: Tensor) -> None:
        """Set the class means evaluation compares features with.

        Args:
            means: each class's mean L2-normalised feature, ``(n_outputs, in_features)``.
            has_mean: which classes have one, ``(n_outputs,)`` bool; the others get ``NEG``.
        """
        self.means, self.has_mean = means.to(self.means.device), has_mean.to(self.means.device)

    def forward(self, h: Tensor, t: Tensor | None = None) -> Tensor:
        if self.training or not bool(self.has_mean.any()):
            return self.inner(h, t)
        f = torch.nn.functional.normalize(h, dim=1)
        scores = 2 * f @ self.means.T - (self.means**2).sum(1)
        return scores.masked_fill(~self.has_mean, NEG)

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this head (the means are state, not config).

        Returns:
            Its ``kind`` (``nme``), ``in_features`` and the wrapped head's config (``inner``).
        """
        return {"kind": "nme", "in_features": self.in_features, "inner": self.inner.get_config()}


class BiasCorrectedHead(nn.Module):
    """Per-class affine correction ``scale * z + shift`` of a head's logits (BiC, Wu et al. 2019).

    Scales start at 1 and shifts at 0; BiC fits them for the newest classes only.

    Args:
        in_features: width of the features it reads.
        inner: the trained head it wraps, or that head's config (``get_config()``).
    """

    scale: Tensor  # buffers: the per-class correction
    shift: Tensor

    def __init__(self, in_features: int, inner: dict[str, Any] | nn.Module) -> None:
        super().__init__()
        self.inner = cast(_Head, inner if isinstance(inner, nn.Module) else _build_head(inner))
        self.in_features = in_features
        self.register_buffer("scale", torch.ones(self.inner.n_outputs))
        self.register_buffer("shift", torch.zeros(self.inner.n_outputs))

    @property
    def n_outputs(self) -> int:
        return self.inner.n_outputs

    def forward(self, h: Tensor, t: Tensor | None = None) -> Tensor:
        return self.inner(h, t) * self.scale + self.shift

    def get_config(self) -> dict[str, Any]:
        """What rebuilds this head (the scales and shifts are state, not config).

        Returns:
            Its ``kind`` (``bias_corrected``), ``in_features`` and the wrapped head's config (``inner``).
        """
        return {"kind": "bias_corrected", "in_features": self.in_features, "inner": self.inner.get_config()}


def _build_head(config: dict[str, Any]) -> nn.Module:
    config = dict(config)
    head: nn.Module = HEADS[config.pop("kind")](**config)
    return head


HEADS = {
    "fixed": LinearHead, "growing": IncrementalHead, "per_task": MultiHead,
    "nme": NMEHead, "bias_corrected": BiasCorrectedHead,
}
