"""The one replay memory: a fixed-size store of samples with a selection policy."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from retain.models.augment import augment
from retain.strategies.base import Strategy
from retain.strategies.contract import LearnerView, Step

POLICIES = ("reservoir", "class_balanced", "herding", "balanced_reservoir", "loss_aware")
STREAMED = ("reservoir", "balanced_reservoir", "loss_aware")  # policies that admit samples as reservoir sampling does


class Memory:
    """Holds at most ``size`` samples: ``x``, ``y``, ``t`` (task ids), ``e`` (experience ids)
    and any extra per-sample tensors a method needs (e.g. DER's logits).

    Policies: ``reservoir`` keeps a uniform sample of everything ever offered (Vitter 1985);
    ``balanced_reservoir`` admits samples as reservoir does but evicts a random sample of the class
    holding the most slots, and ``loss_aware`` evicts with a probability that grows with the share of
    the sample's class and falls with its ``score`` (the loss it had when it came; given to
    :meth:`add`): the class-balanced and loss-aware reservoirs of Buzzega et al. 2020 ("Rethinking
    Experience Replay: a Bag of Tricks"), here half balance and half ease of each slot;
    ``class_balanced`` gives every class seen so far an equal share (every experience, with
    ``balance="e"``; at most ``cap`` each when set), keeping a random subset of each;
    ``herding`` shares slots the same way but picks, per class, the samples whose running
    feature mean best tracks the class mean (Welling 2009, as in iCaRL). When a class's share
    shrinks, its first samples stay: a random subset, or the best herding prefix.

    Args:
        size: the most samples it holds.
        policy: one of ``POLICIES``: what stays when more are offered than fit.
        balance: what ``class_balanced`` and ``herding`` share the slots among: ``"y"``, the classes; ``"e"``,
            the experiences.
        cap: the most samples a class (or experience) keeps, even while there is room; None: no cap.

    Raises:
        ValueError: ``size`` or ``cap`` below 1, or an unknown ``policy`` or ``balance``.

    Attributes:
        data: the held tensors by name, one row per sample (``x``, ``y``, ``t``, ``e`` also read as ``memory.x``...).
        seen: the samples offered so far.

    >>> mem = Memory(4, "class_balanced")
    >>> mem.add(torch.zeros(10, 2), torch.tensor([0] * 5 + [1] * 5))
    >>> mem.add(torch.ones(10, 2), torch.tensor([2] * 5 + [3] * 5))
    >>> sorted(mem.y.tolist())
    [0, 1, 2, 3]
    """

    def __init__(self, size: int, policy: str = "class_balanced", balance: str = "y", cap: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"memory size must be at least 1, got {size}")
        if cap is not None and cap < 1:
            raise ValueError(f"memory cap must be at least 1 sample per group, got {cap}")
        if policy not in POLICIES:
            raise ValueError(f"unknown memory policy {policy!r}; choose one of: {', '.join(POLICIES)}")
        if balance not in ("y", "e"):
            raise ValueError(f"balance must be 'y' (per class) or 'e' (per experience), got {balance!r}")
        self.size, self.policy, self.balance, self.cap = size, policy, balance, cap
        self.data: dict[str, Tensor] = {}
        self.seen = 0  # samples offered so far (reservoir needs it)

    def __len__(self) -> int:
        return len(self.data["y"]) if self.data else 0

    def __getattr__(self, name: str) -> Tensor:
        data: dict[str, Tensor] = self.__dict__.get("data", {})
        if name in data:
            return data[name]
        if name in ("x", "y", "t", "e"):
            return torch.empty(0, dtype=torch.long)
        raise AttributeError(name)

    def add(self, x: Tensor, y: Tensor, t: Tensor | None = None, e: Tensor | int = 0, *,
            generator: torch.Generator | None = None, features: Tensor | None = None,
            **extra: Tensor) -> None:
        """Offer new samples; the policy decides what stays (random draws from ``generator``).
        ``features`` are needed by ``herding`` only.

        Args:
            x: the samples' inputs.
            y: their labels.
            t: their task ids; None: task 0.
            e: their experience ids, or one for all.
            generator: the source of the policy's random choices.
            features: the samples' features (``herding`` picks by them).
            **extra: any other per-sample tensor to keep beside them (DER's ``logits``; ``loss_aware``'s
                ``score``, each sample's loss).

        Raises:
            ValueError: ``loss_aware`` without ``score``, ``herding`` without ``features``, or samples with other
                tensors than the memory holds.
        """
        n = len(y)
        if t is None:
            t = torch.zeros(n, dtype=torch.long)
        if isinstance(e, int):
            e = torch.full((n,), e, dtype=torch.long)
        if self.policy == "loss_aware" and "score" not in extra:
            raise ValueError("the loss_aware policy needs each sample's score (its loss)")
        new = {"x": x, "y": y, "t": t, "e": e, **extra}
        new = {k: (v.detach() if v.requires_grad else v).cpu() for k, v in new.items()}
        if not self.data:
            self.data = {k: v[:0].clone() for k, v in new.items()}
        for k in extra:  # logits of a head that grew since: pad the narrower side with NaN
            v, old = new[k], self.data.get(k)
            if old is not None and v.dim() == 2 and old.shape[1] != v.shape[1]:
                width = max(old.shape[1], v.shape[1])
                self.data[k] = F.pad(old, (0, width - old.shape[1]), value=float("nan"))
                new[k] = F.pad(v, (0, width - v.shape[1]), value=float("nan"))
        if set(new) != set(self.data):
            raise ValueError(f"memory holds {sorted(self.data)}, got samples with {sorted(new)}")
        if self.policy in STREAMED:
            self._reservoir(new, generator)
        else:
            if self.policy == "herding":
                if features is None:
                    raise ValueError("the herding policy needs the samples' features")
                # A class keeps at most its share of the memory (rounded up): herding stops there.
                limit = self.size
                if self.balance == "y":
                    classes = torch.unique(torch.cat([self.data["y"], new["y"]]))
                    limit = -(-self.size // len(classes))
                order = herding_order(features.detach().cpu(), new["y"], limit=limit)
            else:
                order = torch.randperm(n, generator=generator)
            self._balanced({k: v[order] for k, v in new.items()})
        self.seen += n

    def _reservoir(self, new: dict[str, Tensor], generator: torch.Generator | None) -> None:
        n = len(new["y"])
        free = max(0, min(self.size - len(self), n))
        if free:
            self.data = {k: torch.cat([v, new[k][:free]]) for k, v in self.data.items()}
        if free == n:
            return
        # Sample i of the rest is the (seen + free + i + 1)-th ever offered: it replaces slot j
        # when j = randint(0, count) lands inside the memory. Later samples win ties, as in
        # sequence. The index arithmetic is on a handful of numbers: numpy does it cheaper.
        count = self.seen + free + np.arange(n - free) + 1
        j = (torch.rand(len(count), generator=generator, dtype=torch.float64).numpy() * count).astype(np.int64)
        hit = j < self.size
        if not hit.any():
            return
        src, slot = np.arange(free, n)[hit], j[hit]
        if self.policy != "reservoir":  # the admitted replace slots their policy picks, one by one
            for i in src.tolist():
                victim = self._victim(generator)
                for k, v in self.data.items():
                    v[victim] = new[k][i]
            return
        last = len(slot) - 1 - np.unique(slot[::-1], return_index=True)[1]  # last offer per slot wins
        if len(last):
            slots, rows = torch.from_numpy(slot[last]), torch.from_numpy(src[last])
            for k, v in self.data.items():
                v[slots] = new[k][rows]

    def _victim(self, generator: torch.Generator | None) -> int:
        """The slot a sample admitted to a full ``balanced_reservoir`` or ``loss_aware`` memory replaces."""
        y = self.data["y"]
        found: tuple[Tensor, Tensor, Tensor] = torch.unique(y, return_inverse=True, return_counts=True)
        _, inverse, counts = found
        if self.policy == "balanced_reservoir":
            largest = (counts[inverse] == counts.max()).nonzero().squeeze(1)
            return int(largest[torch.randint(len(largest), (1,), generator=generator)])
        share = counts[inverse].double()
        score = self.data["score"].double()
        ease = score.max() - score
        weight = share / share.sum() + (ease / ease.sum() if ease.sum() > 0 else 1 / len(ease))
        return int(torch.multinomial(weight, 1, generator=generator))

    def _balanced(self, new: dict[str, Tensor]) -> None:
        merged = {k: torch.cat([v, new[k]]) for k, v in self.data.items()}
        y = merged[self.balance]
        classes: Tensor = torch.unique(y)
        quota = torch.full((len(classes),), self.size // len(classes))
        quota[: self.size % len(classes)] += 1
        if self.cap is not None:  # at most cap per group, even while the memory has room for more
            quota.clamp_(max=self.cap)
        keep = torch.cat([(y == c).nonzero().squeeze(1)[:q] for c, q in zip(classes, quota, strict=True)])
        self.data = {k: v[keep] for k, v in merged.items()}

    def sample(self, n: int, generator: torch.Generator | None = None,
               keys: tuple[str, ...] | None = None, shard: tuple[int, int] = (0, 1)) -> dict[str, Tensor]:
        """``n`` random samples without replacement (all of them when fewer are stored). With
        ``shard`` (rank, world), ``n`` is this rank's share: ``n * world`` are drawn (the same on
        every rank) and the rank keeps every ``world``-th from ``rank``. The key ``"slot"`` gives
        the samples' places in the memory (to write a sample's values back).

        Args:
            n: how many samples (this rank's share).
            generator: the source of the draw.
            keys: the tensors to return (``"slot"`` among them to get the places); None: every one held.
            shard: ``(rank, world)`` of the process drawing.

        Returns:
            Each key's rows for the drawn samples, in the same order.
        """
        rank, world = shard
        idx = torch.randperm(len(self), generator=generator)[:n * world][rank::world]
        return {k: idx if k == "slot" else self.data[k].index_select(0, idx.to(self.data[k].device))
                for k in keys or self.data}

    def replay_into(self, step: Step, n: int, generator: torch.Generator | None = None) -> Step:
        """``step`` with ``n`` random memory samples appended to its batch (as is when empty).

        Args:
            step: the step to extend (its ``shard`` says this rank's share).
            n: how many samples to append.
            generator: the source of the draw.

        Returns:
            ``step``, extended.
        """
        if not len(self):
            return step
        m = self.sample(n, generator, ("x", "y", "t"), step.shard)
        return step.append(m["x"], m["y"], m["t"])

    def state_dict(self) -> dict[str, Any]:
        """What the memory holds, to save.

        Returns:
            ``seen`` (samples offered so far) and each held tensor under ``data.``.
        """
        return {"seen": self.seen} | {f"data.{k}": v for k, v in self.data.items()}

    def load_state_dict(self, state: dict[str, Any], name: str = "memory") -> None:
        """Restore what :meth:`state_dict` returned; a state :meth:`add` could not have left (``name``
        says which memory in the error) raises ``ValueError``.

        Args:
            state: what :meth:`state_dict` returned.
            name: the memory's name in the error message.

        Raises:
            ValueError: a state this memory could not hold (missing tensors, rows that disagree, more than
                ``size``, a count its policy never leaves).
        """
        data = {k[5:]: v.cpu() for k, v in state.items() if k.startswith("data.")}
        seen = int(state["seen"])
        problem = self._problem(data, seen)
        if problem:
            raise ValueError(f"{name}: {problem}")
        self.data, self.seen = data, seen

    def _problem(self, data: dict[str, Tensor], seen: int) -> str | None:
        """Why ``data``, after ``seen`` samples offered, is not a state of this memory, or None."""
        n = 0
        if data:
            needed = {"x", "y", "t", "e"} | ({"score"} if self.policy == "loss_aware" else set())
            missing = sorted(needed - set(data))
            if missing:
                return f"its samples have no {', '.join(missing)}"
            if any(v.dim() == 0 for v in data.values()):
                return "its samples are single values, not rows"
            rows = {k: v.shape[0] for k, v in data.items()}
            if len(set(rows.values())) > 1:
                return "its tensors disagree on the row count (" + ", ".join(f"{k} {r}" for k, r in rows.items()) + ")"
            n = rows["y"]
            # labels are class ids or token ids; a detector's are tables of boxes (label and corners, 3-D)
            for k in ("y", "t", "e") if data["y"].dim() < 3 else ("t", "e"):
                if data[k].is_floating_point() or data[k].is_complex() or data[k].dtype == torch.bool:
                    return f"{k} holds {data[k].dtype} values, not integers"
            if data["t"].dim() != 1 or data["e"].dim() != 1:
                return "its task and experience ids are not one per row"
        if n > self.size:
            return f"it holds {n} rows, more than its size of {self.size}"
        full = min(seen, self.size)
        if n > full or (seen > 0) != (n > 0) or (self.policy in STREAMED and n != full):
            return f"it holds {n} rows after {seen} offered, which its {self.policy} policy never leaves"
        return None


@functools.lru_cache(maxsize=64)
def row_weights(sizes: tuple[int, ...], values: tuple[float, ...], device: torch.device) -> Tensor:
    """A vector of ``sizes[k]`` rows of ``values[k]`` for each k (cached: a step's batches repeat shapes)."""
    return torch.cat([torch.full((n,), float(v), device=device) for n, v in zip(sizes, values, strict=True)])


def weighted_cross_entropy(logits: Tensor, y: Tensor, sizes: tuple[int, ...], values: tuple[float, ...]) -> Tensor:
    """``sum_i w_i CE_i`` over consecutive groups of rows, the rows of group k weighing ``values[k]``.
    For sequences (``logits`` ``[rows, classes, positions]``, labels ``-100`` where there is nothing
    to predict), every labelled token of row i weighs ``w_i`` and the sum is divided by the tokens'
    total weight: equal weights give the token mean that ``F.cross_entropy`` gives.

    >>> logits, y = torch.randn(2, 5, 3), torch.tensor([[1, 2, -100], [0, -100, -100]])
    >>> bool(torch.isclose(weighted_cross_entropy(logits, y, (1, 1), (0.5, 0.5)), F.cross_entropy(logits, y)))
    True
    """
    losses = F.cross_entropy(logits, y, reduction="none")
    w = row_weights(sizes, values, y.device)
    if losses.dim() > 1:
        return (losses.sum(1) @ w) / ((y != -100).sum(1).to(w.dtype) @ w).clamp_min(1e-12)
    return losses @ w


def herding_order(features: Tensor, y: Tensor, limit: int | None = None) -> Tensor:
    """Indices sorted class by class in herding order: each next sample is the one that brings
    the running mean of the (L2-normalised) chosen features closest to the class mean. With
    ``limit``, only the first ``limit`` of each class (the cost is ``limit x class size``).

    >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    >>> herding_order(f, torch.tensor([0, 0, 0])).tolist()[0]  # nearest to the mean comes first
    2
    """
    f = torch.nn.functional.normalize(features.float(), dim=1)
    order = []
    for c in torch.unique(y):
        idx = (y == c).nonzero().squeeze(1)
        fc = f[idx]
        mu = fc.mean(0)
        # ||mu - (S + f_i) / k||^2 = (||f_i||^2 - 2 f_i . r + ||r||^2) / k^2 with r = k mu - S (S: the
        # sum of the k - 1 chosen): the argmin needs one matrix-vector product per pick.
        sq = (fc * fc).sum(1)
        r = mu.clone()
        taken = torch.zeros(len(idx), dtype=torch.bool)
        chosen: list[int] = []
        for _ in range(min(len(idx), limit or len(idx))):
            best = int(torch.addmv(sq, fc, r, alpha=-2.0).masked_fill_(taken, float("inf")).argmin())
            chosen.append(best)
            taken[best] = True
            r.add_(mu).sub_(fc[best])
        order.append(idx[torch.tensor(chosen)])
    return torch.cat(order)


class MemoryStrategy(Strategy):
    """Base of the methods whose learned state is their ``memory_``."""

    memory_: Memory

    def memory(self) -> Memory:
        return self.memory_

    def state_dict(self) -> dict[str, Any]:
        return self.memory_.state_dict()

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.memory_.load_state_dict(state)

    def replay_loss(self, learner: LearnerView, step: Step, logits: Tensor, weight: float) -> Tensor:
        """Cross-entropy over a batch whose rows after the step's incoming ones were replayed, a
        replayed row weighing ``weight`` times a new one (at 1: the learner's own loss over every row).

        Args:
            learner: what the strategy may read of the learner.
            step: the step's batch, replayed rows after the incoming ones.
            logits: the model's outputs on ``step.x``.
            weight: a replayed row's weight relative to a new one's.

        Returns:
            The weighted mean loss.
        """
        y = step.y
        new, replayed = step.incoming, len(y) - step.incoming
        if weight == 1 or not replayed:
            return learner.row_loss(step, logits)
        total = new + weight * replayed
        if hasattr(learner.model, "loss"):  # a loss of the model's own (CTC): the mean of each part, weighed
            parts = [learner.row_loss(dataclasses.replace(step, y=y[rows]), logits[rows])
                     for rows in (slice(0, new), slice(new, None))]
            return (new * parts[0] + weight * replayed * parts[1]) / total
        return weighted_cross_entropy(logits, y, (new, replayed), (1 / total, weight / total))

    def draw(self, learner: LearnerView, step: Step, n: int,
             keys: tuple[str, ...] = ("x", "y", "t")) -> dict[str, Tensor]:
        """``n`` random memory samples (this rank's share of the step), their inputs augmented as the
        model's modality allows when the method's ``augment`` is on (``retain.models.augment``).

        Args:
            learner: what the strategy may read of the learner.
            step: the step they are drawn for.
            n: how many.
            keys: the tensors to return (see :meth:`Memory.sample`).

        Returns:
            Each key's rows for the drawn samples.
        """
        m = self.memory_.sample(n, learner.generator, keys, step.shard)
        if getattr(self, "augment", False):
            m["x"] = augment(learner.model, m["x"].to(step.x.device), learner.generator)
        return m

    def replay(self, learner: LearnerView, step: Step, n: int) -> Step:
        """``step`` with ``n`` memory samples (:meth:`draw`) appended to its batch (as is while the memory is empty).

        Args:
            learner: what the strategy may read of the learner.
            step: the step to extend.
            n: how many samples to append.

        Returns:
            ``step``, extended.
        """
        if not len(self.memory_):
            return step
        m = self.draw(learner, step, n)
        return step.append(m["x"], m["y"], m["t"])

    def offer(self, learner: LearnerView, step: Step, scored_by: Tensor | None = None, **extra: Tensor) -> None:
        """Offer the step's incoming rows to the memory once: on the first step taken on them
        (``step.fresh``), not again on later steps or epochs over the same samples. A ``loss_aware``
        memory scores them by their cross-entropy under ``scored_by`` (the step's logits).

        Args:
            learner: what the strategy may read of the learner.
            step: the step whose incoming rows are offered.
            scored_by: the step's logits (needed by a ``loss_aware`` memory).
            **extra: other per-sample tensors to keep with them (see :meth:`Memory.add`).

        Raises:
            ValueError: a ``loss_aware`` memory without ``scored_by``.
        """
        if not step.fresh:
            return
        if self.memory_.policy == "loss_aware":
            if scored_by is None:
                raise ValueError(f"{self.name}: its memory's loss_aware policy needs the step's logits")
            new = step.incoming
            extra["score"] = F.cross_entropy(scored_by[:new].detach(), step.y[:new], reduction="none")
        self.memory_.add(*step.new(), step.experience_id, generator=learner.generator, **extra)
