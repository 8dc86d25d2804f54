"""Nothing learned is lost without a word: a kept candidate's rows wait (pending), labels keep their
ids under concurrent updates, a prediction is labelled once, and the rule knows its sample size."""

import csv
import json
import threading
import time

import pytest
import torch

from retain.loop import Project
from retain.store import ModelStore
from retain.store.promotion import PromotionRule

from .conftest import loop_store
from .served import WRITE, killed_in_an_update
from .test_service import client, ready, rows_of


def _truth(path):
    with open(path) as handle:
        return [row["label"] for row in csv.DictReader(handle)]


def test_new_label_ids_are_given_under_the_writer_lock(tmp_path, batches):
    store = loop_store(tmp_path, batches)
    late, early = Project(store), Project(store)
    rows, names = late.kind.read_batch(batches / "02" / "train.csv", False)  # ids given now: 4 and 5 as 2 and 3
    assert names == ["0", "1", "4", "5"]
    early.update(batches / "01" / "train.csv")  # meanwhile another update gives 2 and 3 to its classes
    result = late.learn_rows(rows, names, source="02")
    assert ModelStore(store).labels() == ["0", "1", "2", "3", "4", "5"]
    predicted = [p.label for p in late.predict(batches / "02" / "test.csv", version=result.version)]
    truth = _truth(batches / "02" / "test.csv")
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth) > 0.8  # 4 is 4, not 2


def test_the_default_rule_promotes_clean_class_arrivals_and_keeps_a_candidate_that_forgets(tmp_path, batches):
    store = loop_store(tmp_path, batches)  # default promotion rule, replay
    project = Project(store)
    assert [project.update(batches / b / "train.csv").promoted for b in ("01", "02")] == [True, True]
    (tmp_path / "forgets").mkdir()
    forgets = loop_store(tmp_path / "forgets", batches, training={"lr": 0.5, "epochs": 30},
                         strategies=["finetune"])
    result = Project(forgets).update(batches / "01" / "train.csv")
    assert result.accuracy["batch-0000"] < 0.5 and not result.promoted
    assert "batch-0000: accuracy" in result.reason and "with 90% confidence" in result.reason


def test_small_held_out_batches_are_judged_together():
    rule = PromotionRule(min_held_out=10)
    before = {"a": torch.ones(5), "b": torch.ones(5), "c": torch.ones(50)}
    after = {"a": torch.tensor([1.0, 1, 1, 1, 0]), "b": torch.ones(5), "c": torch.ones(50)}
    candidate, promoted, bounds = Project._pooled({"a": 0.8, "b": 1.0, "c": 1.0, "new": 0.9},
                                                  {"a": 1.0, "b": 1.0, "c": 1.0}, before, after, rule)
    assert promoted == {"c": 1.0, "a+b (10 rows)": 1.0}
    assert candidate == {"c": 1.0, "new": 0.9, "a+b (10 rows)": pytest.approx(0.9)}
    assert set(bounds) == {"c", "a+b (10 rows)"} and bounds["a+b (10 rows)"] <= 0.0  # one row of ten: chance
    assert rule.decide(candidate, promoted, "new", {}, bounds=bounds).promote


def test_a_prediction_is_labelled_once_even_by_concurrent_posts(tmp_path, batches):
    store = loop_store(tmp_path, batches)
    with client(store, min_rows=10_000, new_class_rows=10_000) as api:
        test = rows_of(batches / "00" / "test.csv", 20)
        api.post("/predict", json={"inputs": [{"features": x, "id": f"p{i}"} for i, (x, _) in enumerate(test)]})
        codes = []

        def label(i):
            codes.append((i, api.post("/feedback", json={"rows": [{"id": f"p{i}", "label": "0"}]},
                                      headers=WRITE).status_code))

        threads = [threading.Thread(target=label, args=(i,)) for i in range(20) for _ in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(c for i, c in codes if i == 0) == [200, 409, 409]
        assert sum(c == 200 for _, c in codes) == 20 and api.get("/state").json()["feedback"] == {"queued": 20}


def _strict(store, min_new_accuracy):
    """The store's rule made to keep (0.99) or promote (0) the next candidate, as a retune would."""
    config = ModelStore(store).config
    config["run"]["promotion"]["min_new_accuracy"] = min_new_accuracy
    ModelStore(store).set_config(config, "test")


def test_feedback_a_kept_version_learned_is_pending_until_a_promoted_one_learns_it(tmp_path, batches):
    store = loop_store(tmp_path, batches)
    _strict(store, 0.99)
    with client(store, min_rows=10_000, new_class_rows=10_000) as api:
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 60)]
        assert api.post("/feedback", json={"rows": rows}, headers=WRITE).json()["accepted"] == 60
        kept = api.post("/update", headers=WRITE).json()
        assert not kept["promoted"] and kept["version"] == 2
        assert api.get("/state").json()["feedback"] == {"pending": 60}
        [waiting] = ModelStore(store).pending()
        assert waiting.version == 2 and len(waiting.feedback) == 60 and waiting.status == "pending"
        _strict(store, 0.0)
        more = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "02" / "train.csv", 60)]
        api.post("/feedback", json={"rows": more}, headers=WRITE)
        learned = api.post("/update", headers=WRITE).json()
        assert learned["promoted"] and "learned batch-0001, which waited" in learned["reason"]
        assert api.get("/state").json()["feedback"] == {"learned": 120}
        assert {"batch-0001", "batch-0002"} <= set(learned["accuracy"])


def test_a_serve_killed_after_keeping_a_version_leaves_its_rows_pending_not_learned(tmp_path, batches):
    store = loop_store(tmp_path, batches)
    _strict(store, 0.99)
    rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 60)]
    again = killed_in_an_update(store, rows, "after-version")
    try:
        assert ready(again.client) == {"status": "ready", "version": 1}
        state = again.client.get("/state").json()
        assert state["feedback"] == {"pending": 60} and [v["version"] for v in state["versions"]] == [1, 2]
        assert [(p.name, p.version, len(p.feedback)) for p in ModelStore(store).pending()] == [("batch-0001", 2, 60)]
    finally:
        again.stop()


def test_a_dropped_batch_is_recorded_and_can_be_retried(tmp_path, batches):
    store = loop_store(tmp_path, batches, promotion={"min_new_accuracy": 0.99, "kept": "drop"})
    project = Project(store)
    result = project.update(batches / "01" / "train.csv")
    assert "rows were dropped (batch-0001: retain status lists it)" in result.reason
    assert not project.store.pending() and [p.name for p in project.store.pending("dropped")] == ["batch-0001"]
    project.config.promotion.min_new_accuracy = 0.0
    assert project.retry(["batch-0001"]).promoted and project.store.pending("dropped") == []


def _flip(batches, tmp_path, share=0.3, name="flipped.csv"):
    """Batch 01 with ``share`` of its labels swapped between its two classes."""
    lines = (batches / "01" / "train.csv").read_text().splitlines()
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        values = line.split(",")
        if i % 10 < share * 10:
            values[-1] = {"2": "3", "3": "2"}[values[-1]]
        out.append(",".join(values))
    path = tmp_path / name
    path.write_text("\n".join(out) + "\n")
    return path


def test_quarantined_rows_are_kept_as_they_came_and_can_be_released_or_dropped(tmp_path, batches):
    store = loop_store(tmp_path, batches, gate={"policy": "quarantine", "max_flagged": 0.5})
    project = Project(store)
    flipped = _flip(batches, tmp_path)
    result = project.update(flipped)
    assert result.gate_decision == "quarantine"
    [batch] = project.quarantined()
    header = flipped.read_text().splitlines()[0].split(",")
    first = batch["review"][0]
    assert batch["rows"] == len(batch["review"]) > 0 and first["source"] == str(flipped.resolve())
    assert first["row"].startswith("row ") and list(first["record"]) == header  # the row as the file held it
    assert first["label"] == first["record"]["label"] and first["why"] in ("likely label error", "duplicate", "outlier")
    waiting = project.release(batch["name"])
    assert project.quarantined() == [] and [p.name for p in project.store.pending()] == [waiting]
    later = project.update(batches / "02" / "train.csv")
    assert f"{waiting}" in later.reason and not project.store.pending()
    again = project.update(_flip(batches, tmp_path, 0.4, "flipped-again.csv"))
    names = [q["name"] for q in project.quarantined()]
    project.drop(names[0])
    assert project.quarantined() == [] and (store / "review" / f"{names[0]}.dropped.jsonl").is_file()
    assert again.gate_decision in ("quarantine", "refuse")


def test_a_kept_candidate_the_live_rows_favour_in_shadow_is_promoted_and_its_rows_learned(tmp_path, batches):
    store = loop_store(tmp_path, batches, promotion={"min_new_accuracy": 0.99})
    project = Project(store)
    kept = project.update(batches / "01" / "train.csv")
    assert not kept.promoted and project.shadow() == kept.version
    test = batches / "01" / "test.csv"
    served, shadow = project.predict(test), project.predict(test, version=kept.version)
    truth = _truth(test)
    intake = project.store.intake
    intake.add_predictions([{"id": f"r{i}", "version": 1, "inputs": "{}", "label": p.label}
                            for i, p in enumerate(served)])
    intake.add_shadow([{"id": f"r{i}", "version": kept.version, "label": p.label} for i, p in enumerate(shadow)])
    assert project.shadow_verdict(kept.version, min_rows=20) is None  # nothing labelled yet
    intake.add_feedback([{"request_id": f"r{i}", "inputs": "{}", "label": y} for i, y in enumerate(truth[:30])])
    better, why = project.shadow_verdict(kept.version, min_rows=20)
    assert better and why.startswith("in shadow, ") and "on 30 live rows" in why
    project.promote(kept.version, why)
    assert project.store.promoted() == kept.version and not project.store.pending()
    assert project.store.pending("learned")[0].learned_by == kept.version


def test_status_quarantine_and_retry_from_the_command_line(tmp_path, batches, capsys):
    from retain.cli import main

    store = loop_store(tmp_path, batches, promotion={"min_new_accuracy": 0.99, "kept": "hold"},
                       gate={"policy": "quarantine", "max_flagged": 0.5})
    assert main(["update", str(store), "--data", str(batches / "01" / "train.csv")]) == 0
    assert "rows are held as batch-0001 (retain update --retry batch-0001)" in capsys.readouterr().out
    assert main(["update", str(store), "--data", str(_flip(batches, tmp_path, 0.3, "flipped-02.csv"))]) in (0, 1)
    capsys.readouterr()
    assert main(["status", str(store), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["promoted"] == 1 and [w["name"] for w in state["waiting"]][:1] == ["batch-0001"]
    assert state["waiting"][0]["status"] == "held" and state["quarantined"]
    name = state["quarantined"][0]["name"]
    assert main(["quarantine", "list", str(store)]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(f"{name}: {state['quarantined'][0]['rows']} rows") and "label '" in listed
    assert main(["versions", str(store)]) == 0 and "kept (rows of batch-0001 held)" in capsys.readouterr().out
    assert main(["quarantine", "drop", str(store), name]) == 0
    assert main(["quarantine", "drop", str(store), name]) == 2
    assert f"no quarantined rows are named {name!r}" in capsys.readouterr().err
    _strict(store, 0.0)
    assert main(["update", str(store), "--retry", "batch-0001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"]
    assert main(["status", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "batch-0001" not in shown and "batch-0002: " in shown  # the flipped batch's kept rows, still held


def test_the_service_serves_a_kept_candidate_in_shadow_and_promotes_it_when_live_rows_favour_it(tmp_path, batches):
    store = loop_store(tmp_path, batches, promotion={"min_new_accuracy": 0.99})
    assert not Project(store).update(batches / "01" / "train.csv").promoted  # version 2, kept
    with client(store, min_rows=10_000, new_class_rows=10_000, shadow_rows=30) as api:
        ready(api)
        test = rows_of(batches / "01" / "test.csv", 40)
        answer = api.post("/predict", json={"inputs": [{"features": x, "id": f"s{i}"}
                                                       for i, (x, _) in enumerate(test)]}).json()
        assert answer["version"] == 1  # the served version answers; the candidate only in shadow
        deadline = time.time() + 30
        while api.get("/state").json()["shadow"] is None and time.time() < deadline:  # the updater's next round
            time.sleep(0.05)
        assert api.get("/state").json()["shadow"] | {"accuracy": None} == {
            "version": 2, "rows": 0, "needed": 30, "accuracy": None, "promoted_accuracy": None}
        labels = [{"id": f"s{i}", "label": y} for i, (_, y) in enumerate(test)]
        assert api.post("/feedback", json={"rows": labels}, headers=WRITE).status_code == 200
        deadline = time.time() + 30
        while api.get("/ready").json()["version"] != 2 and time.time() < deadline:
            time.sleep(0.1)
        assert api.get("/ready").json()["version"] == 2
    [event] = [d for _, v, kind, d in ModelStore(store).events() if kind == "promote" and v == 2]
    assert event.startswith("in shadow, ") and "on 40 live rows" in event
    assert not ModelStore(store).pending() and ModelStore(store).pending("learned")[0].learned_by == 2


def test_quarantined_rows_are_listed_released_and_dropped_over_http(tmp_path, batches):
    store = loop_store(tmp_path, batches, gate={"policy": "quarantine", "max_flagged": 0.5})
    assert Project(store).update(_flip(batches, tmp_path)).gate_decision == "quarantine"
    assert Project(store).update(_flip(batches, tmp_path, 0.4, "again.csv")).gate_decision == "quarantine"
    with client(store, min_rows=10_000, new_class_rows=10_000) as api:
        listed = api.get("/quarantine").json()
        first, second = (q["name"] for q in listed)
        assert listed[0]["rows"] == len(listed[0]["review"]) and listed[0]["review"][0]["row"].startswith("row ")
        assert api.post(f"/quarantine/{first}/release").status_code == 401  # a change needs the token
        assert api.post(f"/quarantine/{first}/release", headers=WRITE).json() == {
            "released": first, "waiting_as": f"{first}-released"}
        assert api.post(f"/quarantine/{second}/drop", headers=WRITE).json() == {"dropped": second}
        missing = api.post(f"/quarantine/{second}/drop", headers=WRITE)
        assert missing.status_code == 404 and "no quarantined rows are named" in missing.text
        state = api.get("/state").json()
        assert state["quarantine"] == [] and [w["name"] for w in state["waiting"]] == [f"{first}-released"]
