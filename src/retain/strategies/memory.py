"""The one replay memory: a fixed-size store of samples with a selection policy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

POLICIES = ("reservoir", "class_balanced")


class Memory:
    """Holds at most ``size`` samples ``(x, y, t)``.

    Policies: ``reservoir`` keeps a uniform sample of everything ever added (Vitter 1985);
    ``class_balanced`` gives every class seen so far an equal share, keeping a random subset
    of each class.

    >>> mem = Memory(4, "class_balanced")
    >>> mem.add(torch.zeros(10, 2), torch.tensor([0] * 5 + [1] * 5), torch.zeros(10, dtype=torch.long))
    >>> mem.add(torch.ones(10, 2), torch.tensor([2] * 5 + [3] * 5), torch.zeros(10, dtype=torch.long))
    >>> sorted(mem.y.tolist())
    [0, 1, 2, 3]
    """

    def __init__(self, size: int, policy: str = "class_balanced") -> None:
        if size < 1:
            raise ValueError(f"memory size must be at least 1, got {size}")
        if policy not in POLICIES:
            raise ValueError(f"unknown memory policy {policy!r}; choose one of: {', '.join(POLICIES)}")
        self.size, self.policy = size, policy
        self.x: Tensor | None = None
        self.y = torch.empty(0, dtype=torch.long)
        self.t = torch.empty(0, dtype=torch.long)
        self.seen = 0  # samples offered so far (reservoir needs it)

    def __len__(self) -> int:
        return len(self.y)

    def add(self, x: Tensor, y: Tensor, t: Tensor, generator: torch.Generator | None = None) -> None:
        """Offer new samples; the policy decides what stays (random draws from ``generator``)."""
        x, y, t = x.detach().cpu(), y.cpu(), t.cpu()
        if self.x is None:
            self.x = x[:0].clone()
        if self.policy == "reservoir":
            self._reservoir(x, y, t, generator)
        else:
            self._class_balanced(x, y, t, generator)
        self.seen += len(y)

    def _reservoir(self, x: Tensor, y: Tensor, t: Tensor, generator: torch.Generator | None) -> None:
        free = max(0, min(self.size - len(self), len(y)))
        self.x, self.y, self.t = (torch.cat([a, b[:free]]) for a, b in ((self.x, x), (self.y, y), (self.t, t)))
        if free == len(y):
            return
        # Sample i of the rest is the (seen + free + i + 1)-th ever offered: it replaces slot j
        # when j = randint(0, n) lands inside the memory. Later samples win ties, as in sequence.
        n = self.seen + free + torch.arange(len(y) - free) + 1
        j = (torch.rand(len(n), generator=generator, dtype=torch.float64) * n).long()
        keep = j < self.size
        src, slot = torch.arange(free, len(y))[keep], j[keep]
        winner = torch.full((self.size,), -1).scatter_reduce(0, slot, torch.arange(len(slot)), "amax")
        slot = (winner >= 0).nonzero().squeeze(1)
        src = src[winner[slot]]
        self.x[slot], self.y[slot], self.t[slot] = x[src], y[src], t[src]

    def _class_balanced(self, x: Tensor, y: Tensor, t: Tensor, generator: torch.Generator | None) -> None:
        # Old samples first (already a random subset), then the new ones in random order.
        order = torch.randperm(len(y), generator=generator)
        all_x, all_y, all_t = (torch.cat([old, new[order]]) for old, new in ((self.x, x), (self.y, y), (self.t, t)))
        classes = all_y.unique()
        quota = torch.full((len(classes),), self.size // len(classes))
        quota[: self.size % len(classes)] += 1
        keep = torch.cat([(all_y == c).nonzero().squeeze(1)[:q] for c, q in zip(classes, quota, strict=True)])
        self.x, self.y, self.t = all_x[keep], all_y[keep], all_t[keep]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` random samples without replacement (all of them when fewer are stored)."""
        idx = torch.randperm(len(self), generator=generator)[:n]
        return self.x[idx], self.y[idx], self.t[idx]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"y": self.y, "t": self.t, "seen": self.seen}
        if self.x is not None:
            state["x"] = self.x
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = state["x"].cpu() if "x" in state else None
        self.y, self.t = state["y"].cpu().long(), state["t"].cpu().long()
        self.seen = int(state["seen"])
