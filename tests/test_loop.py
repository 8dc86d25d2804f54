"""The loop on a model store, from the command line: init, update, versions, rollback, predict."""

import json

import pytest
import torch
import yaml

from retain.cli import main
from retain.loop import Project
from retain.store import ModelStore, StoreError


def _config(tmp_path, promotion=None):
    cfg = {"model": {"hidden": [64]}, "training": {"lr": 0.05, "epochs": 5},
           "strategies": [{"name": "replay", "memory_size": 200}]}
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(cfg | ({"promotion": promotion} if promotion else {})))
    return path


def test_init_update_versions_predict_and_rollback(tmp_path, batches, capsys):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    assert "version 1: promoted (the first version)" in capsys.readouterr().out
    assert main(["update", str(store), "--data", str(batches / "01" / "train.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == 2 and result["promoted"] and result["new_classes"] == ["2", "3"]
    assert result["accuracy"]["batch-0000"] > 0.9 and result["accuracy"]["batch-0001"] > 0.8
    assert ModelStore(store).labels()[:4] == ["0", "1", "2", "3"]  # ids stay as the first batches gave them
    assert main(["versions", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["parent"], r["promoted"]) for r in rows] == [(1, None, False), (2, 1, True)]
    assert main(["predict", str(store), "--data", str(batches / "01" / "test.csv"), "--json"]) == 0
    predicted = [r["label"] for r in json.loads(capsys.readouterr().out)]
    truth = [str(int(y)) for y in Project(store).store.get_data("batch-0001")["y"]]
    assert set(predicted) <= {"0", "1", "2", "3"} and len(predicted) > len(truth)
    assert main(["diff", str(store), "1", "2", "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["batch-0001"]["1"] == 0.0 and diff["batch-0001"]["change"] > 0.8  # v1 knows no 2 or 3
    assert diff["class 2"]["change"] == pytest.approx(diff["class 2"]["2"])
    assert main(["rollback", str(store)]) == 0 and "version 1 is promoted" in capsys.readouterr().out
    assert main(["predict", str(store), "--data", str(batches / "01" / "test.csv"), "--json"]) == 0
    assert {r["label"] for r in json.loads(capsys.readouterr().out)} <= {"0", "1"}  # version 1 knows two classes
    assert main(["versions", str(store)]) == 0
    assert "\n| 1 (served now) | " in capsys.readouterr().out


def test_a_candidate_the_rule_refuses_is_kept_and_the_promoted_version_untouched(tmp_path, batches, capsys):
    store = tmp_path / "store"
    cfg = _config(tmp_path, promotion={"min_new_accuracy": 0.99})  # more than this batch gives
    assert main(["init", str(cfg), "--data", str(batches / "00" / "train.csv"), "--store", str(store)]) == 0
    project = Project(store)
    x = project.store.get_data("batch-0000")["x"]
    before = project.store.load(device="cpu").predict_logits(x)
    result = project.update(batches / "01" / "train.csv")
    assert not result.promoted and "is below the 99.0% required of new data" in result.reason
    assert project.store.promoted() == 1
    assert torch.equal(project.store.load(device="cpu").predict_logits(x), before)
    assert [v["decision"] for v in project.versions()] == ["promoted", "kept"]


def test_a_bad_batch_is_refused_before_anything_changes(tmp_path, batches, capsys):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    bad = tmp_path / "bad.csv"
    lines = (batches / "01" / "train.csv").read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], lines[2].replace(",", ",x", 1)]) + "\n")
    assert main(["update", str(store), "--data", str(bad)]) == 2
    assert "bad.csv: row 3: field 'f01'" in capsys.readouterr().err
    assert [v["version"] for v in Project(store).versions()] == [1] and ModelStore(store).held_out_names() == [
        "batch-0000"]


def _flipped(batches, tmp_path, share):
    """Batch 01 of the export with ``share`` of its labels swapped between its two classes."""
    lines = (batches / "01" / "train.csv").read_text().splitlines()
    g = torch.Generator().manual_seed(0)
    flip = set(torch.randperm(len(lines) - 1, generator=g)[: int(share * (len(lines) - 1))].tolist())
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        features, label = line.rsplit(",", 1)
        out.append(f"{features},{({'2': '3', '3': '2'}[label]) if i in flip else label}")
    path = tmp_path / f"flipped-{share}.csv"
    path.write_text("\n".join(out) + "\n")
    return path, flip


def test_the_gate_refuses_a_batch_with_30_percent_flipped_labels_and_passes_a_clean_one(tmp_path, batches, capsys):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    flipped, _ = _flipped(batches, tmp_path, 0.3)
    assert main(["update", str(store), "--data", str(flipped)]) == 1
    out = capsys.readouterr().out
    assert "the batch was not learned: refused:" in out and "likely label errors" in out
    project = Project(store)
    assert [v["version"] for v in project.versions()] == [1] and project.store.labels() == ["0", "1"]
    assert any(kind == "gate" and "refused" in detail for _, _, kind, detail in project.store.events())
    assert main(["update", str(store), "--data", str(batches / "01" / "train.csv")]) == 0
    assert "gate: accepted: clean" in capsys.readouterr().out


def test_duplicates_are_quarantined_and_kept_for_review(tmp_path, batches):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    lines = (batches / "01" / "train.csv").read_text().splitlines()
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("\n".join(lines + lines[1:6]) + "\n")  # five rows twice
    result = Project(store).update(doubled)
    assert result.version == 2 and "quarantined 5 rows" in result.gate
    (name,) = ModelStore(store).data_names("quarantine")
    kept = ModelStore(store).get_data(name, "quarantine")
    assert len(kept["y"]) == 5 and set(kept["y"].tolist()) <= {2, 3}


def test_the_main_job_runs_the_loop_end_to_end(tmp_path, capsys):
    """`make run`'s demo on a small export: the flipped batch is refused, every clean one promoted."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "loop_demo.py"
    spec = importlib.util.spec_from_file_location("loop_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = sys.argv
    sys.argv = ["loop_demo", "--out", str(tmp_path / "loop"), "--per-class", "60"]  # 9 s: the main job, small
    try:
        demo.main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "retain update 02-flipped: not learned, refused:" in out
    assert out.count(" promoted (") == 4 and (tmp_path / "loop" / "report.md").is_file()
    assert [v["promoted"] for v in Project(tmp_path / "loop" / "store").versions()] == [False] * 4 + [True]


def _update_and_die(store, data, point):
    import os
    import signal

    from retain import Learner
    from retain.store.store import ModelStore as Store

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(Learner if point == "save" else Store, point, die)
    Project(store).update(data)
    os._exit(0)


@pytest.mark.parametrize("point", ["put_data", "add_version", "save"])
def test_an_update_killed_at_any_step_loses_nothing_and_can_be_run_again(tmp_path, batches, point):
    import multiprocessing
    import signal

    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    x = ModelStore(store).get_data("batch-0000")["x"]
    before = ModelStore(store).load(device="cpu").predict_logits(x)
    child = multiprocessing.get_context("fork").Process(target=_update_and_die,
                                                         args=(store, batches / "01" / "train.csv", point))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    again = Project(store)
    assert again.store.promoted() == 1 and torch.equal(again.store.load(device="cpu").predict_logits(x), before)
    assert again.store.held_out_names() == ["batch-0000"]  # the killed update's held-out rows are not read
    result = again.update(batches / "01" / "train.csv")  # run again: the same rows are not taken as duplicates
    decision, drift = result.gate.splitlines()  # batch 01 brings classes 2 and 3: its features moved
    assert result.promoted and decision == "accepted: clean" and drift.startswith("drift: the batch differs")
    assert again.store.held_out_names() == ["batch-0000", "batch-0001"]


def test_the_gate_finds_near_duplicates_and_outliers_but_not_new_classes(split_digits):
    from retain.quality.gate import GatePolicy, inspect

    known, new = split_digits[0].x_train.flatten(1), split_digits[1].x_train.flatten(1)  # new: two new classes
    g = torch.Generator().manual_seed(0)
    near = new[:5] + 1e-4 * torch.rand(5, 64, generator=g)  # copies a scanner would make
    noise = 4 * torch.rand(3, 64, generator=g)  # not digits at all
    x = torch.cat([new, near, noise])
    y = torch.cat([split_digits[1].y_train, split_digits[1].y_train[:5], torch.tensor([2, 3, 2])])
    report = inspect(x, y, x, GatePolicy(label_issues=False), known_features=known)
    n = len(new)
    assert report.duplicates == list(range(n, n + 5))
    assert report.outliers == [n + 5, n + 6, n + 7]  # the new classes' rows are near each other: kept
    assert report.decision == "quarantine" and "5 duplicates, 3 outliers" in report.reason


def test_an_init_whose_first_batch_is_refused_leaves_no_store(tmp_path, batches, capsys):
    flipped, _ = _flipped(batches, tmp_path, 0.45)
    store = tmp_path / "store"
    cfg = _config(tmp_path)
    assert main(["init", str(cfg), "--data", str(flipped), "--store", str(store)]) == 1
    assert "the batch was not learned: refused" in capsys.readouterr().out and not store.exists()
    assert main(["init", str(cfg), "--data", str(batches / "01" / "train.csv"), "--store", str(store)]) == 0


def test_a_batch_learned_before_is_not_learned_again_and_a_kept_batch_waits_for_the_next_update(tmp_path, batches):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    project = Project(store)
    again = project.update(batches / "00" / "train.csv")  # its training rows and held-out rows are known
    assert again.version is None and "every row was flagged or already learned" in again.reason
    project.config.promotion.min_new_accuracy = 0.99  # the next candidate is kept, not promoted
    kept = project.update(batches / "01" / "train.csv")
    assert kept.version == 2 and not kept.promoted and "rows wait as batch-0001 for the next update" in kept.reason
    [waiting] = project.store.pending()
    rows = len((batches / "01" / "train.csv").read_text().splitlines()) - 1  # every row: to train on and held out
    assert (waiting.name, waiting.status, waiting.version, waiting.rows) == ("batch-0001", "pending", 2, rows)
    assert project.update(batches / "01" / "train.csv").version is None  # rows that wait are not taken twice
    project.config.promotion.min_new_accuracy = 0.0
    later = project.update(batches / "02" / "train.csv")  # learns batch 1's rows too, judged on all three
    assert later.promoted and sorted(later.accuracy) == ["batch-0000", "batch-0001", "batch-0002"]
    assert "learned batch-0001, which waited" in later.reason and not project.store.pending()
    [learned] = project.store.pending("learned")
    assert learned.learned_by == later.version
    served = project.versions()[-1]
    assert str(batches / "01" / "train.csv") in served["data"]  # the served line learned it


def test_a_held_batch_is_not_learned_until_retried(tmp_path, batches):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store)]) == 0
    project = Project(store)
    project.config.promotion.kept = "hold"
    project.config.promotion.min_new_accuracy = 0.99
    assert not project.update(batches / "01" / "train.csv").promoted
    project.config.promotion.min_new_accuracy = 0.0
    later = project.update(batches / "02" / "train.csv")  # judged on batches 0 and 2, not on the held 1
    assert later.promoted and sorted(later.accuracy) == ["batch-0000", "batch-0002"]
    assert [(p.name, p.status) for p in project.store.pending()] == [("batch-0001", "held")]
    with pytest.raises(StoreError, match="batch-0009 is not a batch waiting to be learned; those waiting: batch-0001"):
        project.retry(["batch-0009"])
    retried = project.retry(["batch-0001"])
    assert retried.promoted and sorted(retried.accuracy) == ["batch-0000", "batch-0001", "batch-0002"]
    assert not project.store.pending()


def test_predict_on_unlabelled_rows_gives_top_k_probabilities_as_csv_or_jsonl(tmp_path, batches, capsys):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(store), "--json"]) == 0
    assert main(["update", str(store), "--data", str(batches / "01" / "train.csv"), "--json"]) == 0
    capsys.readouterr()
    lines = (batches / "01" / "test.csv").read_text().splitlines()
    column = lines[0].split(",").index("label")
    unlabelled = tmp_path / "new.csv"  # the same rows without their labels
    unlabelled.write_text("\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != column)
                                    for line in lines))
    truth = [line.split(",")[column] for line in lines[1:]]
    assert main(["predict", str(store), "--data", str(unlabelled), "--top-k", "3", "--out",
                 str(tmp_path / "p.jsonl")]) == 0
    assert f"{len(truth)} predictions of version 2" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(2, len(truth) + 2))
    assert all(len(r["top"]) == 3 and r["top"][0]["label"] == r["label"] for r in rows)
    assert all(1 >= r["top"][0]["probability"] >= r["top"][1]["probability"] >= r["top"][2]["probability"] > 0
               for r in rows)
    assert sum(r["label"] == y for r, y in zip(rows, truth, strict=True)) / len(truth) > 0.85
    assert main(["predict", str(store), "--data", str(unlabelled), "--top-k", "2", "--version", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("row,label,probability,label_2,probability_2,f00,") and len(table) == len(truth) + 1
    assert {line.split(",")[1] for line in table[1:]} <= {"0", "1"}  # version 1 knows two classes
    assert main(["evaluate", str(store), "--data", str(batches / "02" / "test.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 2 and report["accuracy"] == 0.0 and report["unknown_classes"] == ["4", "5"]
    assert main(["evaluate", str(store), "--data", str(batches / "01" / "test.csv")]) == 0
    assert "version 2: accuracy" in capsys.readouterr().out
    for bad, message in ((["--top-k", "0"], "top_k must be 1 or more"),
                         (["--out", "p.txt"], "written as .csv or .jsonl"),
                         (["--version", "7"], "version 7 is not a ready version")):
        assert main(["predict", str(store), "--data", str(unlabelled), *bad]) == 2
        assert message in capsys.readouterr().err


def test_predict_on_a_folder_of_unlabelled_images_names_each_file(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "first"
    for label, shade in (("dark", 40), ("light", 215)):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(shade, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    cfg = tmp_path / "images.yaml"
    cfg.write_text(yaml.safe_dump({"scenario": {"dataset": "files"}, "model": {"hidden": [16]},
                                   "training": {"epochs": 20, "lr": 0.1}, "strategies": ["finetune"]}))
    assert main(["init", str(cfg), "--data", str(folder), "--store", str(tmp_path / "store"), "--json"]) == 0
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(np.full((8, 8), 30, np.uint8)).save(new / "night.png")
    Image.fromarray(np.full((8, 8), 225, np.uint8)).save(new / "snow.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "store"), "--data", str(new), "--json"]) == 0
    assert [(r["file"], r["label"]) for r in json.loads(capsys.readouterr().out)] == [("night.png", "dark"),
                                                                                    ("snow.png", "light")]
    assert main(["predict", str(tmp_path / "store"), "--data", str(new / "snow.png"), "--json"]) == 0
    assert [r["label"] for r in json.loads(capsys.readouterr().out)] == ["light"]


def test_the_loop_keeps_its_records_in_postgresql_when_given_a_url(tmp_path, batches, postgres, capsys):
    store, url = tmp_path / "store", postgres.database()
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store", str(store),
                 "--database", url, "--json"]) == 0
    assert not (store / "store.db").exists() and (store / "database.url").read_text().strip().startswith("postgresql")
    capsys.readouterr()
    assert main(["update", str(store), "--data", str(batches / "01" / "train.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["promoted"]
    assert [v["version"] for v in Project(store).versions()] == [1, 2] and ModelStore(store).promoted() == 2
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(tmp_path / "other"), "--database", url]) == 2  # one store per database
    assert "already holds a model store" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
                 str(tmp_path / "third"), "--database", "mysql://nobody@localhost/x"]) == 2
    assert "'mysql' databases are not supported" in capsys.readouterr().err


def test_data_the_model_cannot_read_is_refused_with_the_setting_to_change(tmp_path, capsys):
    table = tmp_path / "notes.csv"
    table.write_text("text,label\n" + "\n".join(f"note number {i},{'ab'[i % 2]}" for i in range(20)))
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"strategies": ["finetune"]}))  # no backbone: numbers and images only
    assert main(["init", str(cfg), "--data", str(table), "--store", str(tmp_path / "store")]) == 2
    assert f"{table} is text; set backbone: minilm" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_user_errors_of_the_loop_are_one_line_messages(tmp_path, batches, capsys):
    store = tmp_path / "store"
    assert main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store", str(store),
                 "--json"]) == 0
    capsys.readouterr()
    narrow = tmp_path / "narrow.csv"  # one feature column fewer than the model reads
    narrow.write_text("\n".join(",".join(line.split(",")[1:]) for line in
                                (batches / "01" / "train.csv").read_text().splitlines()))
    cases = [
        (["update", str(store), "--data", str(narrow)], "narrow.csv: no column 'f00'"),
        (["evaluate", str(store), "--data", str(narrow)], f"{narrow}: no column 'f00'"),
        (["predict", str(store), "--data", str(tmp_path / "nowhere.csv")], "no such file or folder"),
        (["export", "digits", str(narrow), "--format", "csv"], "narrow.csv"),
        (["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
          str(tmp_path / "mem"), "--database", "sqlite://"], "must be a file, not in memory"),
        (["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store",
          str(tmp_path / "pw"), "--database", "postgresql://me:secret@localhost/db"], "leave the password out"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("retain: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "mem").exists() and not (tmp_path / "pw").exists()
    (tmp_path / "notdb").mkdir()
    (tmp_path / "notdb" / "store.db").write_text("not a database at all")
    assert main(["versions", str(tmp_path / "notdb")]) == 2
    err = capsys.readouterr().err
    assert "cannot be read: file is not a database" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["export", "digits", str(tmp_path / "e"), "--format", "csv", "--max-train-per-class", "-3"])
    assert "must be 1 or more" in capsys.readouterr().err


def test_whole_number_labels_make_no_classes_that_never_came(tmp_path, batches):
    store = tmp_path / "store"
    main(["init", str(_config(tmp_path)), "--data", str(batches / "00" / "train.csv"), "--store", str(store),
          "--json"])
    result = Project(store).update(batches / "03" / "train.csv")  # classes 6 and 7 only
    assert result.new_classes == ["6", "7"] and ModelStore(store).labels() == ["0", "1", "6", "7"]
    predicted = {p.label for p in Project(store).predict(batches / "01" / "test.csv")}
    assert predicted <= {"0", "1", "6", "7"}
