"""retain tune: Optuna studies over the knobs, honest to the continual protocol, shared by processes."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml

from retain.cli import main
from retain.config import ConfigError, RunConfig, load_config
from retain.data import split_held_out
from retain.tuning import Source, knobs, tune
from retain.tuning.study import open_storage, storage_url, validation_stream

from .conftest import loop_store

QUICK = {"name": "quick", "scenario": {"dataset": "digits", "n_experiences": 5}, "model": {"hidden": [32]},
         "training": {"epochs": 2, "lr": 0.05}, "seeds": [0]}


def config(folder, **sections):
    raw = QUICK | sections
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_best_config_is_yaml_that_retain_run_takes_and_the_report_compares_on_the_test_sets(tmp_path):
    path = config(tmp_path, strategies=[{"name": "replay", "memory_size": 100,
                                         "search": {"weight": {"low": 0.5, "high": 4, "log": True}}}],
                  tune={"trials": 4, "final_seeds": [0, 1], "search": {"lr": {"low": 0.01, "high": 0.2, "log": True}}})
    out = tmp_path / "tuned"
    assert main(["tune", str(path), "--out", str(out), "--quiet"]) == 0
    best = load_config(out / "best.yaml")  # valid YAML, a valid run config
    method = best.strategies[0]
    assert method.search == {} and "\ntune:" not in (out / "best.yaml").read_text()
    rows = yaml.safe_load((out / "tune.json").read_text())
    row = rows[0]
    assert row["trials"]["complete"] + row["trials"]["pruned"] == 4
    assert set(row["best_params"]) == {"replay.weight", "training.lr"}
    assert method.compose[0]["weight"] == pytest.approx(row["best_params"]["replay.weight"])
    assert best.training.lr == pytest.approx(row["best_params"]["training.lr"])
    assert row["default_params"] == {"replay.weight": 2.0, "training.lr": 0.05}
    for side in ("test_default", "test_tuned"):
        assert len(row[side]["accs"]) == 2 and 0.5 < row[side]["acc"] <= 1
    assert {"replay/history.png", "replay/importance.png"} <= set(row["plots"])
    assert (out / "replay" / "trials.csv").read_text().count("\n") == 5
    assert "test ACC % tuned" in (out / "report.md").read_text()
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "rerun"), "--quiet"]) == 0


def test_trials_never_read_the_test_sets(tmp_path):
    cfg = RunConfig.model_validate(QUICK | {"strategies": ["ewc"], "tune": {"trials": 3, "final_seeds": [0]}})
    source = Source.config(cfg, tmp_path)
    stream = source.stream()
    for e in stream:  # poisoned: a model reading a test set now refuses it (NaN inputs)
        e.x_test = torch.full_like(e.x_test, float("nan"))
    rows = tune(source, tmp_path / "out", progress=False, final=False)
    assert rows[0]["trials"]["complete"] == 3
    with pytest.raises(ValueError, match="NaN"):  # the final report is what reads them
        tune(source, tmp_path / "out", progress=False, final=True)


def test_validation_slices_come_from_the_training_rows_by_class(split_digits):
    kept, held = split_held_out(split_digits[0].y_train, 0.2, seed=3)
    assert len(set(kept.tolist()) & set(held.tolist())) == 0 and len(kept) + len(held) == split_digits[0].n_train
    stream = validation_stream(split_digits, 0.2, seed=3)
    for original, e in zip(split_digits, stream, strict=True):
        assert e.n_train + e.n_test == original.n_train
        assert sorted(set(e.y_test.tolist())) == sorted(set(original.y_train.tolist()))
        assert e.n_test == pytest.approx(0.2 * original.n_train, abs=2)


def test_pruning_stops_a_trial_that_trails(tmp_path):
    cfg = RunConfig.model_validate(QUICK | {"strategies": ["finetune"], "tune": {
        "trials": 8, "sampler": "random", "pruner": "median", "search": {"lr": {"choices": [0.05, 0.0001]}}}})
    rows = tune(Source.config(cfg, tmp_path), tmp_path / "out", progress=False, final=False)
    study = optuna.load_study(study_name="quick.finetune", storage=open_storage(storage_url(None, tmp_path / "out")))
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned and rows[0]["trials"]["pruned"] == len(pruned)
    for t in pruned:  # a slow learning rate, stopped before the last experience
        assert t.params["training.lr"] == 0.0001 and max(t.intermediate_values) < 4
    assert rows[0]["best_params"]["training.lr"] == 0.05


def test_default_spaces_and_several_objectives_give_a_pareto_front(tmp_path):
    cfg = RunConfig.model_validate(QUICK | {"strategies": ["derpp"], "tune": {
        "trials": 5, "objectives": ["accuracy", "train_seconds"], "search": {}, "trial_seeds": [0, 1]}})
    assert [k.key for k in knobs(cfg, cfg.strategies[0])] == ["derpp.alpha", "derpp.beta"]
    rows = tune(Source.config(cfg, tmp_path), tmp_path / "out", progress=False, final=False)
    front = rows[0]["pareto"]
    assert front and all(len(p["values"]) == 2 for p in front)
    accs = [p["values"][0] for p in front]
    assert accs == sorted(accs, reverse=True)  # the most accurate first: the best config
    assert "derpp/pareto.png" in rows[0]["plots"]


def test_a_study_made_by_another_config_is_not_mixed_in_and_online_modes_are_refused(tmp_path, capsys):
    path = config(tmp_path, strategies=["finetune"], tune={"trials": 2, "search": {"lr": {"low": 0.01, "high": 0.1}}})
    out = tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--quiet", "--no-final"]) == 0
    other = config(tmp_path, strategies=["finetune"], tune={"trials": 2, "validation_fraction": 0.3,
                                                            "search": {"lr": {"low": 0.01, "high": 0.1}}})
    assert main(["tune", str(other), "--out", str(out), "--quiet", "--no-final"]) == 2
    assert "made by another config" in capsys.readouterr().err
    online = config(tmp_path, strategies=[{"name": "replay", "update": "stream"}], mode="online")
    assert main(["tune", str(online), "--out", str(tmp_path / "online"), "--quiet"]) == 2
    assert "tune with mode: offline" in capsys.readouterr().err


def test_bad_search_spaces_are_refused_with_their_field(tmp_path):
    for strategies, tune_section, message in (
        ([{"name": "ewc", "search": {"lamda": {"low": 1, "high": 2}}}], {}, "ewc has no knob 'lamda'"),
        ([{"name": "ewc", "search": {"lam": {"low": -1, "high": 2}}}], {}, "strategies.0.search.lam"),
        ([{"name": "ewc", "search": {"lam": {"low": 5, "high": 2}}}], {}, "low .* must be below high"),
        (["ewc"], {"search": {"dropout": {"low": 0, "high": 1}}}, "dropout is not a training knob"),
        (["ewc"], {"search": {"epochs": {"low": 0, "high": 3}}}, "search.epochs: 0 is not a valid epochs"),
        (["ewc"], {"objectives": ["train_seconds"]}, "objectives must include accuracy"),
    ):
        path = config(tmp_path, strategies=strategies, tune=tune_section)
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def _tune_process(path, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "retain", "tune", str(path), "--out", str(out), "--quiet",
                             "--no-final", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished(db) -> int:
    """Trials a study database records as complete (0 while it has no tables yet)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet, or busy
        return 0


def test_a_killed_study_resumes_where_it_stopped(tmp_path):
    path = config(tmp_path, training={"epochs": 12, "lr": 0.05}, strategies=["finetune"],
                  tune={"trials": 8, "pruner": "none", "search": {"lr": {"low": 0.01, "high": 0.1}}})
    out = tmp_path / "out"
    proc = _tune_process(path, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _finished(out / "study.db") < 2:
        time.sleep(0.2)  # read with sqlite3 alone: opening optuna's storage here would make its tables beside the tuner
    assert proc.poll() is None, f"the tuner stopped before it was killed: {proc.stdout.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    storage = open_storage(storage_url(None, out))
    study = optuna.load_study(study_name="quick.finetune", storage=storage)
    before = {t.number: t.params for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert 2 <= len(before) < 8
    rerun = _tune_process(path, out)
    assert rerun.wait(timeout=300) == 0, rerun.stdout.read()
    study = optuna.load_study(study_name="quick.finetune", storage=storage)
    after = {t.number: t.params for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert len(after) == 8 and all(after[n] == p for n, p in before.items())  # the finished ones were kept


def test_workers_share_one_study(tmp_path):
    path = config(tmp_path, training={"epochs": 15, "lr": 0.05}, strategies=["finetune"],  # trials of ~1 s
                  tune={"trials": 6, "pruner": "none", "search": {"lr": {"low": 0.01, "high": 0.1}}})
    out = tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--workers", "2", "--quiet", "--no-final"]) == 0
    study = optuna.load_study(study_name="quick.finetune", storage=open_storage(storage_url(None, out)))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 6 <= len(done) <= 7  # a worker may start its last trial as the other finishes the budget
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert study.trials[0].params == {"training.lr": 0.05}  # the config's own values come first
    assert (out / "best.yaml").exists()


def test_two_processes_share_a_study_on_postgresql(tmp_path, postgres):
    url = postgres.database()
    # trials of ~1 s each: the second process joins while the first still has trials to run
    path = config(tmp_path, training={"epochs": 15, "lr": 0.05}, strategies=["finetune"],
                  tune={"trials": 8, "pruner": "none", "search": {"lr": {"low": 0.01, "high": 0.1}}})
    procs = [_tune_process(path, tmp_path / f"host{i}", "--storage", url) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read()
    study = optuna.load_study(study_name="quick.finetune", storage=open_storage(storage_url(url, tmp_path)))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) >= 8
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes contributed trials


def test_a_store_tunes_on_the_batches_it_holds_and_its_next_update_uses_the_knobs(tmp_path, batches):
    # the store learned with a learning rate far too small: the search range lies well above it
    store = loop_store(tmp_path, batches, training={"lr": 0.0002, "epochs": 5},
                       tune={"trials": 3, "final_seeds": [0], "search": {"lr": {"low": 0.02, "high": 0.2}}})
    assert main(["update", str(store), "--data", str(batches / "01" / "train.csv")]) == 0
    out = tmp_path / "tuned"
    assert main(["tune", str(store), "--out", str(out), "--quiet", "--apply"]) == 0
    rows = yaml.safe_load((out / "tune.json").read_text())
    assert rows[0]["method"] == "replay" and rows[0]["trials"]["complete"] == 3
    assert rows[0]["test_tuned"]["acc"] > rows[0]["test_default"]["acc"]
    best_lr = rows[0]["best_params"]["training.lr"]
    assert load_config(out / "best.yaml", loop=True).training.lr == pytest.approx(best_lr)
    from retain.loop import Project

    project = Project(store)
    assert project.config.training.lr == pytest.approx(best_lr)
    assert any(kind == "config" for _, _, kind, _ in project.store.events())
    assert main(["update", str(store), "--data", str(batches / "02" / "train.csv")]) == 0
    newest = max(v.id for v in project.store.versions())
    assert project.store.load(newest, device="cpu").lr == pytest.approx(best_lr)


def test_a_store_with_one_batch_is_refused(tmp_path, batches, capsys):
    store = loop_store(tmp_path, batches)
    assert main(["tune", str(store), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "needs two or more" in capsys.readouterr().err


def test_every_declared_default_space_is_a_valid_range_of_a_real_knob():
    from retain.config import SearchRange
    from retain.strategies import STRATEGIES, make_strategy

    declared = {name: cls.tunable for name, cls in STRATEGIES.items() if cls.tunable}
    assert {"replay", "der", "derpp", "ewc", "si", "mas", "l2", "lwf"} <= set(declared)
    for name, space in declared.items():
        for knob, raw in space.items():
            for value in SearchRange.model_validate(raw).bounds():
                assert getattr(make_strategy(name, **{knob: value}), knob) == value
