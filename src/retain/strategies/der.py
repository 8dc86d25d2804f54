"""Dark Experience Replay: replay old samples together with the logits the model gave them."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from retain.strategies.base import params
from retain.strategies.memory import Memory, MemoryStrategy


@params
class DER(MemoryStrategy):
    """Dark Experience Replay (Buzzega et al. 2020, NeurIPS).

    The memory keeps training samples with the logits the model gives them: with
    ``store="stream"`` (the paper) a reservoir records them as samples stream in; with
    ``store="end"`` (default, as Avalanche) a class-balanced memory records them when the
    experience is learned, which suits short offline runs where early logits are still poor
    (Split MNIST-5k, 3 epochs: 88% against 67%). Each step adds
    ``alpha * MSE(model(x_m), logits_m)`` on a memory batch (matching old responses, a form of
    distillation), and with ``beta > 0`` (DER++) also ``beta * CE(model(x_m'), y_m')`` on a
    second memory batch. Memory batches hold ``ratio`` times the training batch
    (``batch_size`` when set). Output units added after a sample was stored (growing or
    per-task heads) are left out of its MSE. The gradient norm is clipped at ``max_grad_norm``:
    matching large logits can otherwise make SGD diverge (it did on Split Fashion-MNIST).
    Defaults were tuned on Split MNIST-5k (3 epochs, SGD 0.01).
    """

    memory_size: PositiveInt = 200
    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 0.0
    batch_size: PositiveInt | None = None
    ratio: PositiveFloat = 2.0
    store: Literal["end", "stream"] = "end"
    max_grad_norm: PositiveFloat | None = 10.0

    name = "der"
    paper = 'Buzzega et al. 2020, "Dark Experience for General Continual Learning", NeurIPS'
    family = "replay"

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "reservoir" if self.store == "stream" else "class_balanced")

    def loss(self, learner, x, y, t, logits):
        extra = logits.new_zeros(())
        n = self.batch_size or round(self.ratio * len(y))
        if len(self.memory_):
            m = self.memory_.sample(n, learner.generator, ("x", "t", "logits"))
            xs, ts = [m["x"]], [m["t"]]
            if self.beta > 0:  # a second, independent memory batch for the label term: one forward for both
                m2 = self.memory_.sample(n, learner.generator, ("x", "y", "t"))
                xs.append(m2["x"])
                ts.append(m2["t"])
            out = learner.model(torch.cat(xs).to(x.device), torch.cat(ts).to(x.device))
            k, target = len(m["x"]), m["logits"].to(x.device)
            diff = out[:k, :target.shape[1]] - target
            if torch.isnan(target).any():
                # Units that did not exist when a sample was stored (a head grew) are left out.
                diff = diff[torch.isfinite(target)]
            extra = extra + self.alpha * diff.pow(2).mean()
            if self.beta > 0:
                extra = extra + self.beta * F.cross_entropy(out[k:], m2["y"].to(x.device))
        if self.store == "stream":
            self.offer(learner, x, y, t, logits=logits.detach())
        return extra

    def after_backward(self, learner) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(learner.model.parameters(), self.max_grad_norm)

    def supports_online(self) -> bool:
        return self.store == "stream"

    def after_experience(self, learner, exp) -> None:
        if self.store == "end":
            logits = learner.predict_logits(exp.x_train, exp.train_tasks())
            self.memory_.add(exp.x_train, exp.y_train, exp.train_tasks(), exp.id,
                             generator=learner.generator, logits=logits)



@params
class DERPP(DER):
    """DER++ (Buzzega et al. 2020): DER plus cross-entropy on replayed labels (``beta``)."""

    alpha: NonNegativeFloat = 0.5
    beta: NonNegativeFloat = 1.0

    name = "derpp"
    paper = "Buzzega et al. 2020, NeurIPS (DER++)"
