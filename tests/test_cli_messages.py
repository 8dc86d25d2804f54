"""The command line answers at once and speaks clearly: light start-up, progress lines, what predict and versions
print, and one-line errors (exit code 2) for what a user gets wrong."""

import errno
import json
import sqlite3
import subprocess
import sys

import pytest
import yaml

from retain.cli import main
from retain.store import ModelStore

from .conftest import loop_store

HEAVY = ("torch", "transformers", "sklearn", "pandas", "fastapi", "optuna", "scipy")


def _imported(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint('imported:', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1].split()[1:]


@pytest.fixture(scope="module")
def store(tmp_path_factory, batches):
    """A store of two versions: batch 00, then batch 01 (two new classes) with five rows of batch 00 again, which
    the gate sets aside."""
    folder = tmp_path_factory.mktemp("messages")
    path = loop_store(folder, batches)
    again = (batches / "00" / "train.csv").read_text().splitlines()[1:6]
    mixed = folder / "mixed.csv"
    mixed.write_text((batches / "01" / "train.csv").read_text() + "\n".join(again) + "\n")
    assert main(["update", str(path), "--data", str(mixed), "--json"]) == 0
    return path


def test_version_and_the_parser_import_nothing_heavy():
    assert _imported("import retain\nimport retain.cli.parser\nretain.cli.parser.build_parser()") == []
    assert _imported("from retain.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass") == []


def test_versions_and_rollback_load_no_model(store):
    """They read the store's records: no more than opening the store imports (no task kind, no learner)."""
    both = [["versions", str(store)], ["rollback", str(store), "2"]]
    code = ("import contextlib, io\nfrom retain.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert [main(argv) for argv in {both!r}] == [0, 0]")
    assert _imported(code) == []


def test_third_party_loading_bars_and_warnings_are_silenced():
    code = ("import contextlib, io\nfrom retain.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['strategies', '--json'])\nfrom transformers.utils import logging\n"
            "from huggingface_hub.utils import are_progress_bars_disabled\n"
            "print(logging.is_progress_bar_enabled(), logging.get_verbosity() == logging.ERROR, "
            "are_progress_bars_disabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]


def test_init_and_update_show_progress_with_the_flag_only(tmp_path, batches, capsys):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hidden": [16]}, "training": {"epochs": 1},
                                   "strategies": ["finetune"]}))
    data = str(batches / "00" / "train.csv")
    assert main(["init", str(cfg), "--data", data, "--store", str(tmp_path / "a"), "--progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    for step in (f"reading {data} ... ", "gate: checking 251 rows ... ", "training on 201 rows ... "):
        assert any(line.startswith(step) and line.endswith(" s") for line in err), (step, err)
    assert main(["init", str(cfg), "--data", data, "--store", str(tmp_path / "b")]) == 0  # stderr: no terminal
    assert "gate: checking" not in capsys.readouterr().err
    assert main(["update", str(tmp_path / "a"), "--data", str(batches / "01" / "train.csv"), "--progress",
                 "--json"]) == 0
    out = capsys.readouterr()
    assert "training on" in out.err and json.loads(out.out)["version"] == 2  # stdout stays JSON


def test_versions_show_time_gate_quarantine_and_the_version_served(store, capsys):
    assert main(["versions", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["promoted"]) for r in rows] == [(1, False), (2, True)]
    assert all(r["created"][:2] == "20" and len(r["created"]) == 19 for r in rows)
    assert rows[0]["gate"] == "accepted: clean" and rows[0]["quarantined"] == 0
    set_aside = int(rows[1]["gate"].split()[1])  # "quarantined N rows: ..., 5 duplicates, ..."
    assert rows[1]["gate"].startswith("quarantined ") and "5 duplicates" in rows[1]["gate"]
    assert rows[1]["quarantined"] == set_aside >= 5
    assert main(["versions", str(store)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == ("| version | created | parent | data | gate | quarantined | held-out accuracy by batch "
                        "| decision | reason |")
    assert table[2].startswith("| 1 | 20") and "| accepted |  |" in table[2] and "(served now)" not in table[2]
    assert table[3].startswith("| 2 (served now) | 20") and f"| quarantined {set_aside} rows | {set_aside} |" in \
        table[3]
    assert main(["rollback", str(store)]) == 0
    assert capsys.readouterr().out == "version 1 is promoted: served from now on (version 2 was)\n"
    assert main(["versions", str(store)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| 1 (served now) |") and table[3].startswith("| 2 | ") and "| promoted |" in table[3]
    assert main(["rollback", str(store), "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"promoted": 2, "was": 1}


def test_predict_writes_each_rows_number_and_input_beside_its_labels(store, batches, tmp_path, capsys):
    data = batches / "01" / "test.csv"
    lines = data.read_text().splitlines()
    assert main(["predict", str(store), "--data", str(data), "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split(",")
    assert header[:5] == ["row", "label", "probability", "label_2", "probability_2"]
    assert header[5:] == [c if c != "label" else "input_label" for c in lines[0].split(",")]  # the input's own
    assert [line.split(",")[0] for line in out[1:]] == [str(n) for n in range(2, len(lines) + 1)]
    assert [line.split(",")[5:] for line in out[1:]] == [line.split(",") for line in lines[1:]]
    assert main(["predict", str(store), "--data", str(data), "--out", str(tmp_path / "p.jsonl")]) == 0
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert first["row"] == 2 and first["input"] == dict(zip(lines[0].split(","), lines[1].split(","), strict=True))


@pytest.mark.parametrize("argv", [["rollback", "STORE", "12345678901234567890"],
                                  ["diff", "STORE", "1", "12345678901234567890"],
                                  ["predict", "STORE", "--data", "x.csv", "--version", "99999999999999999999"],
                                  ["rollback", "STORE", "0"]])
def test_a_version_number_out_of_range_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "is not a version number: versions run from 1 to 2147483647" in capsys.readouterr().err


def test_held_out_must_leave_rows_to_train_on_and_shows_its_default(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["init", "c.yaml", "--data", "d.csv", "--store", "s", "--held-out", "0.99"])
    assert stop.value.code == 2
    assert "0.99 would leave too few rows to train on: give a share of each batch above 0 and at most 0.5" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["init", "--help"])
    assert "(default: 0.2)" in " ".join(capsys.readouterr().out.split())


def _error(capsys, argv):
    """The one line a command that a user got wrong prints (exit code 2)."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("retain: ") and err.count("\n") == 1, err
    return err


def _one_line(capsys, argv, expected):
    assert expected in _error(capsys, argv)


def test_data_that_is_not_one_batch_says_what_to_point_at(tmp_path, batches, store, capsys):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"strategies": ["finetune"]}))
    new = str(tmp_path / "new")
    _one_line(capsys, ["init", str(cfg), "--data", str(batches / "00"), "--store", new],
              f"--data {batches / '00'}: a batch folder (train and test, the layout retain run reads); give one "
              f"batch's rows, its train part: --data {batches / '00' / 'train.csv'}")
    _one_line(capsys, ["update", str(store), "--data", str(batches)],
              f"a folder of 5 batch folders (00, 01, 02, 03, ...); give one batch's rows at a time, e.g. --data "
              f"{batches / '00' / 'train.csv'}")
    _one_line(capsys, ["evaluate", str(store), "--data", str(batches / "01")], f"its test part: --data "
              f"{batches / '01' / 'test.csv'}")
    _one_line(capsys, ["init", str(cfg), "--data", str(tmp_path / "missing.csv"), "--store", new],
              "missing.csv: no such file or folder")
    doubled = tmp_path / "doubled.csv"
    lines = (batches / "00" / "train.csv").read_text().splitlines()
    doubled.write_text("\n".join([lines[0].replace("f01", "f00", 1), *lines[1:]]) + "\n")
    _one_line(capsys, ["init", str(cfg), "--data", str(doubled), "--store", new],
              "the header names column 'f00' twice (columns 1 and 2); give each column its own name")
    assert not (tmp_path / "new").exists()


def test_a_full_disk_is_named_not_shown_as_database_text(store, batches, monkeypatch, capsys):
    from sqlalchemy.exc import OperationalError

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ModelStore, "put_data", no_space)  # the held-out rows are the update's first write
    assert (f"no space left on the device holding {store}: free some space and run the command again"
            in _error(capsys, ["update", str(store), "--data", str(batches / "02" / "train.csv")]))

    def database_full(*args, **kwargs):
        raise OperationalError("UPDATE meta SET value=?", ("1",), sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(ModelStore, "rollback", database_full)
    assert f"no space left on the device holding {store}" in _error(capsys, ["rollback", str(store)])

    def locked(*args, **kwargs):
        raise OperationalError("SELECT versions.id FROM versions", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(ModelStore, "versions", locked)
    assert f"the store's database of {store}: database is locked" in _error(capsys, ["versions", str(store)])


def test_a_full_disk_ends_any_command_in_one_line(tmp_path, monkeypatch, capsys):
    import retain.monitor

    def no_space(results, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.md"))

    monkeypatch.setattr(retain.monitor, "write_report", no_space)  # the run's last write
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"scenario": {"dataset": "digits", "n_experiences": 2}, "model": {"hidden": [16]},
                                   "training": {"epochs": 1}, "strategies": ["finetune"]}))
    assert (f"no space left on the device holding {tmp_path / 'run' / 'report.md'}: free some space"
            in _error(capsys, ["run", str(cfg), "--quiet", "--out", str(tmp_path / "run")]))


def test_an_init_left_unfinished_can_run_again(tmp_path, batches, capsys):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hidden": [16]}, "training": {"epochs": 1},
                                   "strategies": ["finetune"]}))
    data = str(batches / "00" / "train.csv")
    ModelStore.create(tmp_path / "killed", config={"run": {}})  # what an init killed while training leaves
    argv = ["init", str(cfg), "--data", data, "--store", str(tmp_path / "killed")]
    _one_line(capsys, argv, f"{tmp_path / 'killed'} holds a store an earlier retain init left without any version "
              "(it was interrupted or failed); if no init is running on it, add --restart")
    assert main([*argv, "--restart", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    _one_line(capsys, [*argv, "--restart"], "already holds files")  # a store with a version is never removed
    # a failed init with --database leaves the store's tables in that database
    url = f"sqlite:///{tmp_path / 'records.db'}"
    bad = tmp_path / "bad.csv"
    bad.write_text((batches / "00" / "train.csv").read_text().replace("\n0,", "\nx,", 1))
    argv = ["init", str(cfg), "--store", str(tmp_path / "shared"), "--database", url]
    assert main([*argv, "--data", str(bad)]) == 2 and "is not a number" in capsys.readouterr().err
    _one_line(capsys, [*argv, "--data", data], f"the database {url} holds a store an earlier retain init left")
    assert main([*argv, "--data", data, "--restart", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1 and ModelStore(tmp_path / "shared").promoted() == 1


def test_select_checks_its_variants_and_out_before_training(tmp_path, monkeypatch, capsys):
    import retain.experiment

    trained = []
    monkeypatch.setattr(retain.experiment, "run_experiment", lambda *a, **k: trained.append(a))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"scenario": {"dataset": "digits", "n_experiences": 2}, "model": {"hidden": [16]},
                                   "strategies": ["finetune"]}))
    _one_line(capsys, ["select", str(cfg), "--adaptation", "frozen,bogus"], "--backbone none (raw inputs) "
              "--adaptation bogus: model.adaptation: Input should be 'frozen', 'lora' or 'full' (got 'bogus')")
    _one_line(capsys, ["select", str(cfg), "--adaptation", "frozen", "--out", str(cfg / "rows.json")],
              f"--out {cfg / 'rows.json'}: cannot be written (Not a directory)")
    assert trained == []


def test_run_refuses_a_device_or_output_it_cannot_use(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA
    cfg = {"scenario": {"dataset": "digits", "n_experiences": 2}, "model": {"hidden": [16]},
           "strategies": ["finetune"], "output": str(tmp_path / "runs")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg | {"training": {"device": "cuda"}}))
    assert ("training.device: device 'cuda' was asked for but no CUDA GPU is available; set device: auto (a GPU "
            "when there is one) or cpu") in _error(capsys, ["run", str(path)])
    path.write_text(yaml.safe_dump(cfg | {"output": str(path / "x")}))  # under a file, as /proc/x is unwritable
    assert (f"output {path / 'x'}: cannot make the folder runs are written to (Not a directory); set output: to a "
            "folder you can write") in _error(capsys, ["run", str(path)])


def test_select_writes_no_forgetting_for_a_method_that_sees_the_stream_once(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"scenario": {"dataset": "digits", "n_experiences": 2}, "model": {"hidden": [16]},
                                   "training": {"epochs": 1}, "strategies": ["joint", "finetune"]}))
    assert main(["select", str(cfg), "--adaptation", "frozen"]) == 0
    rows = {line.split(" | ")[2]: line.split(" | ")[4] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| mlp ")}
    assert rows["joint"] == "n/a"  # one pass over the whole stream: a single row, nothing to forget
    assert float(rows["finetune"]) >= 0
