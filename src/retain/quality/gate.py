"""The data-quality gate: what an incoming labelled batch is checked for before it may change a model.

Beyond :func:`~retain.quality.checks.check_batch` (shapes, values, labels), the gate looks for
exact duplicates (within the batch, and of rows already held), likely label errors (cleanlab's
``find_label_issues`` on out-of-sample probabilities: a cross-validated logistic regression on the
rows' features, so it judges classes the model has never seen too) and class imbalance. Its policy
decides: ``refuse`` the batch when too many rows are flagged, ``quarantine`` them (dropped from
training, kept for review), or ``warn`` and accept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as validated
from torch import Tensor


@validated(config=ConfigDict(extra="forbid"))
class GatePolicy:
    """What the gate does with a batch (a config's ``gate:`` section)."""

    policy: Literal["refuse", "quarantine", "warn"] = Field("quarantine", description="with flagged rows")
    max_flagged: float = Field(0.15, ge=0.0, le=1.0, description="refuse (any policy) above this share of "
                               "likely label errors; duplicates are only dropped")
    duplicates: bool = Field(True, description="flag exact duplicates and near-duplicates")
    near_duplicate: float = Field(0.999, gt=0.0, le=1.0, description="feature cosine from which rows are "
                                  "near-duplicates")
    outliers: bool = Field(True, description="flag rows far from every other row, known or new")
    outlier_factor: float = Field(3.0, gt=1.0, description="an outlier's nearest neighbour is this many times "
                                  "farther than the 99th percentile of the known rows'")
    label_issues: bool = Field(True, description="flag likely label errors (cleanlab)")
    min_class_share: float = Field(0.0, ge=0.0, le=1.0, description="warn of classes below this share")


@dataclass
class GateReport:
    """What the gate found in a batch and what it decided."""

    rows: int
    duplicates: list[int] = field(default_factory=list)  # row indices, exact or near
    label_issues: list[int] = field(default_factory=list)
    outliers: list[int] = field(default_factory=list)  # out of distribution: far from every other row
    rare_classes: list[int] = field(default_factory=list)
    decision: str = "accept"  # accept, quarantine or refuse
    reason: str = ""

    @property
    def flagged(self) -> list[int]:
        return sorted(set(self.duplicates) | set(self.label_issues) | set(self.outliers))


def row_hashes(x: Tensor) -> list[str]:
    """A content hash per row (exact duplicates share one)."""
    flat = x.detach().cpu().contiguous().reshape(len(x), -1).numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


def likely_label_errors(features: Tensor, y: Tensor, seed: int = 0) -> list[int]:
    """Rows whose label is likely wrong: cleanlab's ``find_label_issues`` on probabilities from a
    logistic regression cross-validated over the batch (each row predicted by a model that did not
    see it). Classes with fewer than 3 rows cannot be judged and are left alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from retain.util import require

    filters = require("cleanlab.filter", "cleanlab")
    y_np = y.cpu().numpy()
    classes, counts = np.unique(y_np, return_counts=True)
    judged = np.isin(y_np, classes[counts >= 3])
    if judged.sum() < 6 or len(np.unique(y_np[judged])) < 2:
        return []
    x = features.detach().cpu().reshape(len(features), -1).numpy()[judged]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    labels = np.unique(y_np[judged], return_inverse=True)[1]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(max_iter=500, C=0.5), x, labels, cv=folds, method="predict_proba")
    # n_jobs=1: cleanlab would otherwise fork a process pool, which can hang a threaded process
    # (retain serve) on a lock held at the fork; its results do not depend on n_jobs
    issues = filters.find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    return np.flatnonzero(judged)[issues].tolist()


def _unit(features: Tensor) -> Tensor:
    return torch.nn.functional.normalize(features.detach().cpu().reshape(len(features), -1).double(), dim=1)


def near_duplicates(features: Tensor, known: Tensor | None, threshold: float) -> list[int]:
    """Rows whose feature cosine with an earlier row of the batch, or with a known row, reaches
    ``threshold`` (the later of two near-copies is flagged)."""
    f = _unit(features)
    close = torch.zeros(len(f), dtype=torch.bool)
    if len(f) > 1:
        close |= torch.triu(f @ f.T, diagonal=1).max(0).values >= threshold
    if known is not None and len(known):
        close |= (f @ _unit(known).T).max(1).values >= threshold
    return close.nonzero().squeeze(1).tolist()


def outliers(features: Tensor, known: Tensor | None, factor: float) -> list[int]:
    """Rows out of distribution: their nearest neighbour (among the batch and the known rows) is
    ``factor`` times farther than the 99th percentile of the known rows' own nearest-neighbour
    distances. A new class's rows are near each other, so they are not outliers; noise is."""
    if known is None or len(known) < 10:
        return []
    f = features.detach().cpu().reshape(len(features), -1).double()
    k = known.detach().cpu().reshape(len(known), -1).double()
    within = torch.cdist(k, k).fill_diagonal_(float("inf")).min(1).values
    scale = torch.quantile(within, 0.99)
    both = torch.cdist(f, torch.cat([f, k]))
    both[:, :len(f)].fill_diagonal_(float("inf"))
    return (both.min(1).values > factor * scale).nonzero().squeeze(1).tolist()


def decide(report: GateReport, share: float, found: str, policy: GatePolicy) -> GateReport:
    """The policy's decision on a batch whose ``share`` of rows say it is corrupted (likely label
    errors, broken pairs), given what was ``found``: refuse, quarantine the flagged rows, or accept."""
    if share > policy.max_flagged or (report.flagged and policy.policy == "refuse"):
        report.decision, report.reason = "refuse", f"refused: {found}, more than {100 * policy.max_flagged:.0f}% " \
            "allowed" if share > policy.max_flagged else f"refused: {found}"
    elif report.flagged and policy.policy == "quarantine":
        report.decision, report.reason = "quarantine", f"quarantined {len(report.flagged)} rows: {found}"
    else:
        report.decision, report.reason = "accept", f"accepted: {found}" if report.flagged else "accepted: clean"
    return report


def inspect(x: Tensor, y: Tensor, features: Tensor, policy: GatePolicy, known: set[str] = frozenset(),
            seed: int = 0, known_features: Tensor | None = None) -> GateReport:
    """Check a labelled batch (``features``: what the label, near-duplicate and outlier checks read,
    e.g. the model's backbone features) against ``policy``; ``known`` holds row hashes of data
    already held, ``known_features`` those rows' features."""
    report = GateReport(len(y))
    if policy.duplicates:
        seen: set[str] = set(known)
        for i, h in enumerate(row_hashes(x)):
            if h in seen:
                report.duplicates.append(i)
            seen.add(h)
        exact = set(report.duplicates)
        report.duplicates += [i for i in near_duplicates(features, known_features, policy.near_duplicate)
                              if i not in exact]
        report.duplicates.sort()
    if policy.outliers:
        report.outliers = outliers(features, known_features, policy.outlier_factor)
    if policy.label_issues:
        report.label_issues = likely_label_errors(features, y, seed)
    counts = torch.bincount(y)
    report.rare_classes = [c for c in y.unique().tolist() if counts[c] < policy.min_class_share * len(y)]
    share = len(report.label_issues) / max(len(y), 1)  # wrong labels say a batch is corrupted; repeats do not
    found = (f"{len(report.label_issues)} likely label errors ({100 * share:.1f}% of {len(y)} rows), "
             f"{len(report.duplicates)} duplicates, {len(report.outliers)} outliers")
    decide(report, share, found, policy)
    if report.rare_classes:
        report.reason += f"; classes under {100 * policy.min_class_share:.0f}% of the rows: {report.rare_classes}"
    return report
