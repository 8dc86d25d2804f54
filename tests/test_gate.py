"""The gate tells a shift from label noise: a clean batch of a new kind of data is accepted with its
drift reported, a batch with 30% of its labels flipped is refused, a clean batch keeps its rows."""

import pytest
import torch

from retain.quality.gate import GatePolicy, inspect, mmd_test


@pytest.fixture(scope="module")
def store_and_batch(digits):
    """400 digits the store keeps and a batch of 400 others, all ten classes."""
    order = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(0))
    x, y = digits.x_train.flatten(1), digits.y_train
    return x[order[:400]], y[order[:400]], x[order[400:800]], y[order[400:800]]


def blurred(x):
    """The digits as another scanner would give them: blurred twice, half the contrast on a grey
    floor, with noise; the classes overlap more than the store's do."""
    image = x.reshape(-1, 1, 8, 8)
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])[None, None] / 16
    for _ in range(2):
        image = torch.nn.functional.conv2d(image, kernel, padding=1)
    noise = 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    return (0.1 + 0.6 * image + noise).flatten(1)


def flipped(y):
    """Three labels in ten moved to the next class, and which."""
    wrong = torch.arange(len(y)) % 10 < 3
    return torch.where(wrong, (y + 1) % 10, y), wrong


def check(x, y, store_x, store_y):
    return inspect(x, y, x, GatePolicy(), known_features=store_x, known_y=store_y)


def recall_precision(report, wrong):
    found, truth = set(report.label_issues), set(wrong.nonzero().squeeze(1).tolist())
    return len(found & truth) / len(truth), len(found & truth) / max(len(found), 1)


def test_a_clean_batch_like_the_stores_keeps_its_rows_and_shows_no_drift(store_and_batch):
    store_x, store_y, x, y = store_and_batch
    report = check(x, y, store_x, store_y)
    assert len(report.label_issues) <= 0.02 * len(y)  # 2 of 400 measured
    assert report.decision != "refuse" and not report.drift.found
    assert report.reason.splitlines()[1].startswith("drift: none found against the store's data (MMD² ")


def test_a_shifted_clean_batch_is_accepted_with_its_drift_reported(store_and_batch):
    """The gate before it told shift from noise flagged 35% of this batch and refused it."""
    store_x, store_y, x, y = store_and_batch
    report = check(blurred(x), y, store_x, store_y)
    assert report.decision == "quarantine" and len(report.label_issues) <= 0.1 * len(y)  # 36 of 400 measured
    decision, drift = report.reason.splitlines()
    assert decision.startswith("quarantined ") and "likely label errors (9.0% of 400 rows)" in decision
    assert report.drift.found and report.drift.p < 0.01
    assert drift.startswith("drift: the batch differs from the store's data (MMD² ")


@pytest.mark.parametrize("shift", [False, True])
def test_a_batch_with_30_percent_flipped_labels_is_refused_shifted_or_not(store_and_batch, shift):
    store_x, store_y, x, y = store_and_batch
    y, wrong = flipped(y)
    report = check(blurred(x) if shift else x, y, store_x, store_y)
    assert report.decision == "refuse" and "more than 15% allowed" in report.reason
    recall, precision = recall_precision(report, wrong)  # measured: 0.64 and 0.84; shifted 0.55 and 0.58
    assert recall >= (0.5 if shift else 0.6) and precision >= (0.55 if shift else 0.8)


def test_drift_tells_new_classes_from_old_classes_that_moved(store_and_batch):
    """A batch bringing classes the store never saw differs from its data; whether its rows of the
    known classes moved too is said apart."""
    store_x, store_y, x, y = store_and_batch
    old = store_y < 5
    report = check(x, y, store_x[old], store_y[old])  # the store knows 0-4; the batch brings 5-9
    assert report.drift.found and not report.drift.known.found
    assert report.drift.line().startswith("drift: the batch differs from the store's data (MMD² ")
    assert "; its rows of classes the store knows do not (MMD² " in report.drift.line()
    moved = torch.where((y < 5)[:, None], blurred(x), x)
    assert check(moved, y, store_x[old], store_y[old]).drift.known.found


def test_drift_is_only_reported_and_can_be_left_out(store_and_batch):
    store_x, store_y, x, y = store_and_batch
    quiet = inspect(x, y, x, GatePolicy(drift=False), known_features=store_x, known_y=store_y)
    assert quiet.drift is None and len(quiet.reason.splitlines()) == 1
    assert inspect(x, y, x, GatePolicy()).drift is None  # nothing kept to compare with: not measured


def test_the_drift_test_holds_its_level_on_samples_of_one_distribution():
    g = torch.Generator().manual_seed(0)
    found = [mmd_test(torch.randn(100, 16, generator=g), torch.randn(150, 16, generator=g), level=0.05,
                      seed=i).found for i in range(40)]
    assert sum(found) <= 5  # 2 expected of 40 at a 5% level


def test_the_served_models_agreement_clears_a_row_and_its_errors_on_shifted_data_add_nothing(store_and_batch):
    """A model trained on the store's rows (right on 95% of the clean batch, on 24% of the shifted
    one): rows it labels alike are not label errors; rows it gets wrong are not flagged for that."""
    from sklearn.linear_model import LogisticRegression

    store_x, store_y, x, y = store_and_batch
    served = LogisticRegression(max_iter=1000).fit(store_x.numpy(), store_y.numpy())
    bad, wrong = flipped(y)
    alike = torch.from_numpy(served.predict(x.numpy())) == bad
    report = inspect(x, bad, x, GatePolicy(), known_features=store_x, known_y=store_y, confirmed=alike)
    recall, precision = recall_precision(report, wrong)  # 0.64 and 0.96 measured (0.84 without it)
    assert report.decision == "refuse" and recall >= 0.6 and precision >= 0.95
    shifted = blurred(x)
    alike = torch.from_numpy(served.predict(shifted.numpy())) == y
    assert alike.float().mean() < 0.3
    report = inspect(shifted, y, shifted, GatePolicy(), known_features=store_x, known_y=store_y, confirmed=alike)
    assert report.decision == "quarantine" and len(report.label_issues) <= 0.1 * len(y)  # 33 of 400 measured
