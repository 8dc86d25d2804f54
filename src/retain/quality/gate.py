"""The data-quality gate: what an incoming labelled batch is checked for before it may change a model.

Beyond :func:`~retain.quality.checks.check_batch` (shapes, values, labels), the gate looks for
exact duplicates (within the batch, and of rows already held), likely label errors (judged within
the batch: its own cross-validated fit and its classes' centres, so classes the model has never
seen are judged too), outliers, class imbalance, and drift: whether the batch's features differ
from the rows the store keeps (:func:`drift`), a line of the report that never refuses by itself,
so a batch of a new kind of data reads as drift, not as label noise. Its policy decides:
``refuse`` the batch when too many rows are flagged, ``quarantine`` them (dropped from training,
kept for review), or ``warn`` and accept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as validated
from torch import Tensor


@validated(config=ConfigDict(extra="forbid"))
class GatePolicy:
    """What the gate does with a batch (a config's ``gate:`` section).

    Attributes:
        policy: what becomes of a batch with flagged rows: ``refuse`` it, ``quarantine`` the rows, or ``warn``.
        max_flagged: the share of likely label errors (0-1) above which a batch is refused, whatever the policy;
            duplicates are only dropped.
        duplicates: flag exact duplicates and near-duplicates.
        near_duplicate: the feature cosine from which rows are near-duplicates.
        outliers: flag rows far from every other row, known or new.
        outlier_factor: an outlier's nearest neighbour is this many times farther than the 99th percentile
            of the known rows'.
        label_issues: flag likely label errors (cleanlab).
        label_beyond: how far past the midpoint toward another class's centre a likely label error also
            lies (0: past the midpoint, 1: at the centre).
        drift: report whether the batch's features differ from the store's rows (a line of the report;
            never refuses by itself).
        drift_level: the drift test's significance level.
        min_class_share: warn of classes below this share of the batch's rows (0: never).
    """

    policy: Literal["refuse", "quarantine", "warn"] = Field(default="quarantine", description="with flagged rows")
    max_flagged: float = Field(default=0.15, ge=0.0, le=1.0, description="refuse (any policy) above this share "
                               "of likely label errors; duplicates are only dropped")
    duplicates: bool = Field(default=True, description="flag exact duplicates and near-duplicates")
    near_duplicate: float = Field(default=0.999, gt=0.0, le=1.0, description="feature cosine from which rows are "
                                  "near-duplicates")
    outliers: bool = Field(default=True, description="flag rows far from every other row, known or new")
    outlier_factor: float = Field(default=3.0, gt=1.0, description="an outlier's nearest neighbour is this many "
                                  "times farther than the 99th percentile of the known rows'")
    label_issues: bool = Field(default=True, description="flag likely label errors (cleanlab)")
    label_beyond: float = Field(default=0.5, ge=0.0, le=1.0, description="a likely label error also lies this "
                                "far from the midpoint toward another class's centre (0: past the midpoint, 1: at "
                                "the centre)")
    drift: bool = Field(default=True, description="report whether the batch's features differ from the store's "
                        "rows (a line of the report; never refuses by itself)")
    drift_level: float = Field(default=0.01, gt=0.0, lt=1.0, description="the drift test's significance level")
    min_class_share: float = Field(default=0.0, ge=0.0, le=1.0, description="warn of classes below this share")


@dataclass
class Drift:
    """A two-sample test of a batch's features against the rows the store keeps: the squared maximum
    mean discrepancy (MMD², Gretton et al. 2012) under a Gaussian kernel, and the ``1 - level``
    quantile of its values when the two samples' rows are shuffled together (the threshold)."""

    score: float
    threshold: float
    p: float  # the share of shuffles at least as far apart as the batch
    rows: int  # rows compared on each side, at most
    known: Drift | None = None  # the batch's rows of classes the store knows, against the store's of them

    @property
    def found(self) -> bool:
        return self.score > self.threshold

    def describe(self) -> str:
        if self.found:
            return f"the batch differs from the store's data (MMD² {self.score:.3g}, threshold {self.threshold:.3g})"
        return f"none found against the store's data (MMD² {self.score:.3g}, threshold {self.threshold:.3g})"

    def line(self) -> str:
        """The report's drift line; with new classes, whether the known classes' rows drift too."""
        line = f"drift: {self.describe()}"
        if self.known is not None:
            line += (f"; its rows of classes the store knows differ too (MMD² {self.known.score:.3g}, threshold "
                     f"{self.known.threshold:.3g})" if self.known.found else "; its rows of classes the store "
                     f"knows do not (MMD² {self.known.score:.3g}, threshold {self.known.threshold:.3g})")
        return line


@dataclass
class GateReport:
    """What the gate found in a batch and what it decided.

    Attributes:
        rows: the batch's rows.
        duplicates: indices of rows already held or repeated, exactly or nearly.
        label_issues: indices of rows whose label is likely wrong (a kind's broken rows: pairs, clips, images).
        outliers: indices of rows out of distribution: far from every other row.
        rare_classes: classes under the policy's ``min_class_share`` of the rows.
        drift: the batch's features against the store's rows; None: not measured.
        decision: accept, quarantine or refuse.
        reason: what was found and done, as the store's log records it.
    """

    rows: int
    duplicates: list[int] = field(default_factory=list)  # row indices, exact or near
    label_issues: list[int] = field(default_factory=list)
    outliers: list[int] = field(default_factory=list)  # out of distribution: far from every other row
    rare_classes: list[int] = field(default_factory=list)
    drift: Drift | None = None  # the batch's features against the store's rows; None: not measured
    decision: str = "accept"  # accept, quarantine or refuse
    reason: str = ""

    @property
    def flagged(self) -> list[int]:
        """Every flagged row's index, once: duplicates, likely label errors and outliers."""
        return sorted(set(self.duplicates) | set(self.label_issues) | set(self.outliers))


def row_hashes(x: Tensor) -> list[str]:
    """A content hash per row (exact duplicates share one)."""
    flat = x.detach().cpu().contiguous().reshape(len(x), -1).numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


def likely_label_errors(features: Tensor, y: Tensor, seed: int = 0, beyond: float = 0.5) -> list[int]:
    """Rows whose label is likely wrong: both the batch's own fit and its classes' centres say so.

    The fit: cleanlab's ``find_label_issues`` on probabilities from a logistic regression
    cross-validated over the batch (each row predicted by a model that did not see it), so it judges
    classes the model has never seen too. Its L2 penalty is firm (C 0.05 on standardised features):
    a flexible fit learns flipped labels as a class's own variety. Alone it
    calls every row a hard batch gets wrong an error, so classes that overlap (more so under a shift:
    blurred images, another source of text) read as noise. The centres tell the two apart: a
    flipped row lies inside the class it really belongs to, while a row of overlapping classes
    lies near their border. So a row is also required to lie, on the line between its class's
    centre (on unit features, without the row itself) and the nearest other centre, ``beyond`` of
    the way from the midpoint to that other centre (0: anywhere past the midpoint, 1: at the other
    centre). Where a class's rows have no clear centre (new words on a CNN's features) fewer flipped
    rows are found; ``benchmarks/results/lifecycle.json`` holds the figures per stream.
    Classes with fewer than 3 rows cannot be judged and are left alone."""
    from cleanlab import filter as filters
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    y_np = y.cpu().numpy()
    classes, counts = np.unique(y_np, return_counts=True)
    judged = np.isin(y_np, classes[counts >= 3])
    if judged.sum() < 6 or len(np.unique(y_np[judged])) < 2:
        return []
    x = features.detach().cpu().reshape(len(features), -1).double().numpy()[judged]
    labels = np.unique(y_np[judged], return_inverse=True)[1]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    standard = (x - x.mean(0)) / (x.std(0) + 1e-6)
    probs = cross_val_predict(LogisticRegression(max_iter=1000, C=0.05), standard, labels, cv=folds,
                              method="predict_proba")
    # n_jobs=1: cleanlab would otherwise fork a process pool, which can hang a threaded process
    # (retain serve) on a lock held at the fork; its results do not depend on n_jobs
    issues = filters.find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    issues &= toward_other_centre(x, labels) > beyond
    found: list[int] = np.flatnonzero(judged)[issues].tolist()
    return found


def toward_other_centre(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Where each row lies on the line from its class's centre (its class's other rows, on unit
    features) to the nearest other class's centre: -1 at its own, 0 midway, 1 at the other.

    >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.05]])
    >>> toward_other_centre(x, np.array([0, 0, 0, 1, 1, 1])).round(1).tolist()  # the last: a 0 labelled 1
    [-1.0, -0.8, -1.2, -3.1, -2.7, 0.9]
    """
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    counts = np.bincount(labels)
    sums = np.stack([x[labels == c].sum(0) for c in range(len(counts))])
    own = (sums[labels] - x) / np.maximum(counts[labels] - 1, 1)[:, None]
    far = ((x[:, None, :] - (sums / counts[:, None])[None]) ** 2).sum(-1)
    far[np.arange(len(x)), labels] = np.inf
    other = far.argmin(1)
    gap = ((own - sums[other] / counts[other][:, None]) ** 2).sum(1)
    where: np.ndarray = (((x - own) ** 2).sum(1) - far[np.arange(len(x)), other]) / np.maximum(gap, 1e-12)
    return where


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


def mmd_test(a: Tensor, b: Tensor, level: float = 0.01, permutations: int = 200, max_rows: int = 500,
             seed: int = 0) -> Drift:
    """Whether rows ``a`` and ``b`` come from one distribution: MMD² (biased) with a Gaussian kernel
    whose width is the median distance between rows, against ``permutations`` shuffles of the two
    samples together. Each side is a seeded sample of at most ``max_rows`` rows (a 1,000-row kernel:
    0.1 s), so the cost does not grow with the store.

    >>> g = torch.Generator().manual_seed(1)
    >>> same = mmd_test(torch.randn(200, 8, generator=g), torch.randn(300, 8, generator=g))
    >>> moved = mmd_test(torch.randn(200, 8, generator=g) + 0.5, torch.randn(300, 8, generator=g))
    >>> same.found, moved.found
    (False, True)
    """
    g = torch.Generator().manual_seed(seed)

    def sample(x: Tensor) -> Tensor:
        x = x.detach().cpu().reshape(len(x), -1).double()
        return x[torch.randperm(len(x), generator=g)[:max_rows]] if len(x) > max_rows else x

    a, b = sample(a), sample(b)
    z = torch.cat([a, b])
    d2 = torch.cdist(z, z).square()
    width = d2[d2 > 0].median() if (d2 > 0).any() else torch.tensor(1.0, dtype=z.dtype)
    kernel = torch.exp(-d2 / width)
    side = torch.zeros(len(z), permutations + 1, dtype=z.dtype)  # column 0: the samples as they came
    side[: len(a), 0] = 1
    for j in range(1, permutations + 1):
        side[torch.randperm(len(z), generator=g)[: len(a)], j] = 1
    weights = side / len(a) - (1 - side) / len(b)
    mmd = (weights * (kernel @ weights)).sum(0)
    null = mmd[1:]
    return Drift(score=float(mmd[0]), threshold=float(torch.quantile(null, 1 - level)),
                 p=float((1 + (null >= mmd[0]).sum()) / (1 + permutations)), rows=max(len(a), len(b)))


def drift(features: Tensor, y: Tensor, known: Tensor | None, known_y: Tensor | None, level: float,
          seed: int = 0) -> Drift | None:
    """The batch's features against the store's rows (:func:`mmd_test`); when the batch brings new
    classes, its rows of the classes the store knows are also tested against the store's rows of
    them, so a batch whose old classes look as before reads apart from one that moved. None when
    either side has fewer than 10 rows."""
    if known is None or len(known) < 10 or len(features) < 10:
        return None
    found = mmd_test(features, known, level, seed=seed)
    if known_y is not None:
        old = torch.isin(y, torch.unique(known_y))
        theirs = torch.isin(known_y, torch.unique(y[old]))
        if 10 <= int(old.sum()) < len(y) and int(theirs.sum()) >= 10:
            found.known = mmd_test(features[old], known[theirs], level, seed=seed)
    return found


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


def inspect(x: Tensor, y: Tensor, features: Tensor, policy: GatePolicy, known: AbstractSet[str] = frozenset(),
            seed: int = 0, known_features: Tensor | None = None, known_y: Tensor | None = None,
            confirmed: Tensor | None = None) -> GateReport:
    """Check a labelled batch against ``policy``.

    Drift is a line of the report's reason of its own: it never refuses a batch.

    Args:
        x: the batch's inputs, as the store keeps them (their hashes find exact duplicates).
        y: the batch's labels.
        features: what the label, near-duplicate, outlier and drift checks read, e.g. the model's
            backbone features.
        policy: what to check and what to do with flagged rows.
        known: row hashes of data already held.
        seed: the seed of the label check's folds and the drift test's shuffles.
        known_features: the features of the rows already held (None: none).
        known_y: their labels.
        confirmed: marks rows whose label the served model predicts too: they are never called label
            errors (its disagreement is no evidence on data unlike what it learned, its agreement is).

    Returns:
        What was found, with the decision and its reason.
    """
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
        report.label_issues = likely_label_errors(features, y, seed, policy.label_beyond)
        if confirmed is not None:
            report.label_issues = [i for i in report.label_issues if not confirmed[i]]
    if policy.drift:
        report.drift = drift(features, y, known_features, known_y, policy.drift_level, seed)
    counts = torch.bincount(y)
    report.rare_classes = [c for c in torch.unique(y).tolist() if counts[c] < policy.min_class_share * len(y)]
    share = len(report.label_issues) / max(len(y), 1)  # wrong labels say a batch is corrupted; repeats do not
    found = (f"{len(report.label_issues)} likely label errors ({100 * share:.1f}% of {len(y)} rows), "
             f"{len(report.duplicates)} duplicates, {len(report.outliers)} outliers")
    decide(report, share, found, policy)
    if report.rare_classes:
        report.reason += f"; classes under {100 * policy.min_class_share:.0f}% of the rows: {report.rare_classes}"
    if report.drift is not None:
        report.reason += "\n" + report.drift.line()
    return report
