"""The promotion rule: when a candidate version may replace the promoted one, and why not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as validated


@validated(config=ConfigDict(extra="forbid"))
class PromotionRule:
    """A candidate is promoted when its accuracy on the new batch's held-out rows is at least
    ``min_new_accuracy``, no earlier batch's held-out accuracy falls more than ``max_drop`` below
    the promoted version's (``compared_to: best``: below the best any version of the promoted line
    had, so that small drops cannot add up), and no class it knows scores below ``min_class_accuracy``.

    >>> rule = PromotionRule(max_drop=0.05)
    >>> rule.decide({"batch-0": 0.90, "batch-1": 0.80}, {"batch-0": 0.91}, "batch-1", {}).promote
    True
    >>> rule.decide({"batch-0": 0.70, "batch-1": 0.95}, {"batch-0": 0.91}, "batch-1", {}).reason
    'batch-0: accuracy 70.0% fell 21.0 points below the promoted version (91.0%), more than 5.0 allowed'

    Two drops of 4 points pass one by one, but not against the best the line had:

    >>> new, best = {"batch-0": 0.82, "batch-2": 0.9}, {"batch-0": 0.90}
    >>> rule.decide(new, {"batch-0": 0.86}, "batch-2", {}, best).promote
    True
    >>> PromotionRule(max_drop=0.05, compared_to="best").decide(new, {"batch-0": 0.86}, "batch-2", {}, best).reason
    'batch-0: accuracy 82.0% fell 8.0 points below its best on the promoted line (90.0%), more than 5.0 allowed'

    What a candidate learns counts too: with ``gain`` (its mean gain over the promoted version on the
    new batch), a drop may reach ``max_drop + gain_weight * gain``, at most twice ``max_drop`` (a batch
    of new classes, which the promoted version cannot answer, costs earlier batches a little accuracy):

    >>> rule.decide({"batch-0": 0.84, "batch-1": 0.80}, {"batch-0": 0.91}, "batch-1", {}, gain=0.8).reason
    'batch-1: accuracy 80.0%; largest drop on an earlier batch 7.0 points (9.0 allowed with its gain of 80.0)'
    """

    min_new_accuracy: float = Field(default=0.0, ge=0.0, le=1.0)
    max_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    min_class_accuracy: float = Field(default=0.0, ge=0.0, le=1.0)
    compared_to: Literal["promoted", "best"] = "promoted"
    confidence: float | None = Field(default=0.9, gt=0.5, lt=1.0, description="judge drops by the lower bound of a "
                                     "paired bootstrap at this confidence (a drop refuses only if surely over "
                                     "max_drop; null: by the drop itself)")
    min_held_out: int = Field(default=10, ge=1, le=10_000, description="held-out rows a batch needs to be judged on "
                              "its own; smaller batches are judged together (on 9 rows one row is 11 points)")
    gain_weight: float = Field(default=0.05, ge=0.0, le=1.0, description="each point the candidate gains on the new "
                               "batch over the promoted version allows this much more drop on earlier ones (at most "
                               "max_drop more)")
    kept: Literal["carry", "hold", "drop"] = Field(
        default="carry", description="the rows of a batch whose candidate is kept: carried into the next update on the "
        "promoted line, held until `retain update --retry`, or dropped (recorded)")

    def decide(self, candidate: dict[str, float], promoted: dict[str, float], new: str | list[str],
               per_class: dict[str, float], best: dict[str, float] | None = None,
               metric: str = "accuracy", bounds: dict[str, float] | None = None, gain: float = 0.0) -> Decision:
        """``candidate`` and ``promoted``: held-out scores (0-1) by batch (or by batch and
        direction); ``new``: the new batch's key or keys; ``per_class``: the candidate's score by
        class name; ``best``: each key's best score on the promoted line (used with ``compared_to:
        best``); ``metric``: what the scores are, named in the reasons (accuracy reads as a percentage);
        ``bounds``: with ``confidence``, each earlier key's lower bound of its drop from the promoted
        version (:func:`retain.metrics.bootstrap.drop_bound`), which then decides instead of the drop;
        ``gain``: the candidate's mean gain over the promoted version on the new keys.

        >>> PromotionRule(max_drop=0.02).decide({"b0 en-de": 0.30, "b1 en-fr": 0.4}, {"b0 en-de": 0.35},
        ...                                     ["b1 en-fr"], {}, metric="chrF++").reason
        'b0 en-de: chrF++ 30.0 fell 5.0 points below the promoted version (35.0), more than 2.0 allowed'
        """
        news = [new] if isinstance(new, str) else list(new)

        def shown(value: float) -> str:
            return f"{100 * value:.1f}%" if metric == "accuracy" else f"{100 * value:.1f}"

        against = "the promoted version"
        if self.compared_to == "best" and best:
            promoted = {b: max(a, best.get(b, a)) for b, a in promoted.items()}
            against = "its best on the promoted line"
        for key in news:
            if candidate[key] < self.min_new_accuracy:
                return Decision(False, f"{key}: {metric} {shown(candidate[key])} is below the "
                                       f"{shown(self.min_new_accuracy)} required of new data")
        allowed = self.max_drop + min(self.max_drop, self.gain_weight * max(0.0, gain))
        with_gain = (f" ({100 * allowed:.1f} allowed with its gain of {100 * gain:.1f})"
                     if allowed > self.max_drop else "")
        for batch, before in promoted.items():
            if batch not in candidate:
                continue
            bound = (bounds or {}).get(batch) if self.confidence else None
            if (bound if bound is not None else before - candidate[batch]) > allowed:
                sure = (f", at least {100 * bound:.1f} with {100 * self.confidence:.0f}% confidence"
                        if bound and self.confidence else "")
                return Decision(False, f"{batch}: {metric} {shown(candidate[batch])} fell "
                                       f"{100 * (before - candidate[batch]):.1f} points below {against} "
                                       f"({shown(before)}){sure}, more than {100 * allowed:.1f} allowed")
        weak = {c: a for c, a in per_class.items() if a < self.min_class_accuracy}
        if weak:
            worst = min(weak, key=weak.__getitem__)
            return Decision(False, f"class {worst}: {metric} {shown(weak[worst])} is below the "
                                   f"{shown(self.min_class_accuracy)} required of every class")
        drops = [promoted[b] - candidate[b] for b in promoted if b in candidate]
        worst = f"; largest drop on an earlier batch {100 * max(drops):.1f} points{with_gain}" if drops else ""
        return Decision(True, ", ".join(f"{key}: {metric} {shown(candidate[key])}" for key in news) + worst)


@dataclass
class Decision:
    promote: bool
    reason: str
