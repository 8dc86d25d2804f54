"""Config validation and the `retain run` command end to end."""

import json

import pytest
import yaml

from retain.cli import main
from retain.config import ConfigError, load_config

BASE = {
    "name": "tiny",
    "scenario": {"dataset": "digits", "kind": "class_incremental", "n_experiences": 2},
    "model": {"hidden": [32]},
    "training": {"epochs": 1},
    "strategies": ["finetune", {"name": "replay", "memory_size": 30}, "joint"],
    "seeds": [0, 1],
}


def write(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def with_change(path, value):
    cfg = json.loads(json.dumps(BASE))
    *parents, last = path
    node = cfg
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg


@pytest.mark.parametrize(
    "path,value,expected",
    [
        (["scenario", "n_experiences"], 11, "scenario: n_experiences is 11 but digits has only 10 classes"),
        (["scenario", "dataset"], "cifar", "scenario.dataset: Input should be 'digits', 'mnist5k', 'mnist', "
         "'fashion_mnist', 'fortunes_language', 'fortunes_topics', 'keywords', 'spoken_words', 'spoken_languages' "
         "or 'files' (got 'cifar')"),
        (["training", "lr"], "fast", "training.lr: Input should be a valid number"),
        (["training", "epochs"], 0, "training.epochs: Input should be greater than or equal to 1"),
        (["training", "learning_rate"], 0.1, "training.learning_rate: unknown key"),
        (["strategies"], [{"name": "replay", "memory_size": 0}],
         "strategies.0.memory_size: Input should be greater than 0"),
        (["strategies"], [{"name": "ewc", "lam": -1}], "strategies.0.lam: Input should be greater than or equal to 0"),
        (["strategies"], [{"name": "ewc", "lamda": 5}], "strategies.0.lamda: Unexpected keyword argument"),
        (["strategies"], ["rehearsal"], "strategies.0.name: unknown strategy 'rehearsal'"),
        (["strategies"], [], "strategies: List should have at least 1 item"),
        (["strategies"], [{"compose": [{"name": "replay"}, {"name": "lwf", "temperature": 0}]}],
         "strategies.0.compose.1.temperature: Input should be greater than 0"),
        (["model", "head"], "per_task", "model.head: per_task needs scenario.kind: task_incremental"),
        (["model", "hidden"], [100000000], "model.hidden.0: Input should be less than or equal to 1048576"),
        (["model", "hidden"], [4096, 1048576], "model.hidden: layers 0 and 1 (4096 and 1048576 units) would hold "
         "4,294,967,296 weights between them; at most 268,435,456 (1 GiB of float32)"),
        (["training", "threads"], 100000, "training.threads: give auto or a number of threads from 1 to 1024, got "
         "100000"),
        (["training", "epochs"], True, "training.epochs: true is a yes/no, not a number (YAML reads true, false, "
         "yes, no, on and off so): give a number"),
        (["strategies"], [{"name": "replay", "memory_size": True}], "strategies.0.memory_size: true is a yes/no"),
        (["model", "hidden"], [32, False], "model.hidden: [32, false] holds a yes/no, not a number"),
        (["promotion"], {"max_drop": True}, "promotion.max_drop: true is a yes/no, not a number"),
        (["tune"], {"search": {"lr": {"low": 0.01, "high": float("inf")}}},
         "tune.search.lr: high must be a finite number, got inf"),
        (["strategies"], [{"name": "ewc", "search": {"lam": {"low": 1, "high": float("inf")}}}],
         "strategies.0.search.lam: high must be a finite number, got inf"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path, path, value, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, with_change(path, value)))
    assert expected in str(err.value)


def test_unreadable_configs_say_why(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("scenario: {dataset: digits\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("scenario: {dataset: digits}\ntraining:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n"
                    "strategies: [finetune]\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: line 5: key 'lr' is given twice \(first on line 3\); keep one"):
        load_config(path)
    path.write_text("scenario: {dataset: digits, dataset: mnist5k}\nstrategies: [finetune]\n")
    with pytest.raises(ConfigError, match="line 1: key 'dataset' is given twice"):
        load_config(path)


def test_aliases_are_read_but_an_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "shared.yaml"  # anchors, aliases and merge keys a person writes still work
    path.write_text("base: &fast {epochs: 1, lr: 0.05}\nscenario: {dataset: digits, n_experiences: 2}\n"
                    "training: {<<: *fast, lr: 0.1}\nstrategies: [finetune]\n")
    raw = yaml.safe_load(path.read_text())
    raw.pop("base")
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert (cfg.training.epochs, cfg.training.lr) == (1, 0.1)
    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    path.write_text("\n".join(levels) + "\nstrategies: *i\n")  # 9^9 strings: a "billion laughs"
    with pytest.raises(ConfigError, match=r"its aliases \(\*name\) expand to [0-9,]{11} values, more than the "
                                          "100,000 a config may hold"):
        load_config(path)


def test_a_huge_value_is_shown_by_its_start(tmp_path):
    path = write(tmp_path, with_change(["strategies"], [{"name": "replay", "memory_size": list(range(5000))}]))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "strategies.0.memory_size" in str(err.value) and "[0, 1, 2, 3, 4, 5, 6, 7, ...]" in str(err.value)
    assert len(str(err.value)) < 400


def test_run_writes_results_report_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, BASE)), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_curve.png", "heatmap_finetune.png", "heatmap_joint.png", "heatmap_replay.png",
        "report.md", "results.json",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and "torch" in results["versions"]
    fine = results["methods"]["finetune"]
    assert len(fine["runs"]) == 2 and len(fine["runs"][0]["matrix"]) == 2
    assert fine["runs"][0]["metrics"]["acc"] == pytest.approx(sum(fine["runs"][0]["matrix"][-1]) / 2)
    assert results["methods"]["joint"]["summary"]["forgetting"] is None
    report = (out / "report.md").read_text()
    assert "| replay |" in report and "![accuracy curve](accuracy_curve.png)" in report
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.md'}"


def test_run_with_a_bad_config_exits_2_with_the_message(tmp_path, capsys):
    code = main(["run", str(write(tmp_path, with_change(["training", "lr"], -1)))])
    err = capsys.readouterr().err
    assert code == 2 and "training.lr: Input should be greater than 0" in err and "Traceback" not in err


def test_run_with_missing_data_gives_the_install_hint(tmp_path, capsys):
    cfg = with_change(["scenario"], {"dataset": "fashion_mnist", "path": str(tmp_path / "nowhere")})
    assert main(["run", str(write(tmp_path, cfg))]) == 2
    assert "pass a directory holding the four standard Fashion-MNIST IDX .gz files" in capsys.readouterr().err


@pytest.mark.parametrize("example", ["split_fashion_mnist", "digits_quick", "permuted_mnist5k", "task_il_mnist5k"])
def test_examples_are_valid_configs(example):
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "examples" / f"{example}.yaml")
    assert cfg.strategies


def test_a_loop_config_needs_no_scenario_but_a_run_config_does(tmp_path, capsys):
    from pathlib import Path

    loop = Path(__file__).parent.parent / "examples" / "loop_fashion.yaml"
    assert load_config(loop, loop=True).scenario.dataset == "files"
    with pytest.raises(ConfigError, match="scenario: Field required: the data to run on"):
        load_config(loop)
    assert main(["run", str(loop)]) == 2 and "scenario: Field required" in capsys.readouterr().err


def test_run_compares_offline_online_and_hybrid(tmp_path):
    cfg = with_change(["strategies"], [{"name": "replay", "memory_size": 60, "policy": "reservoir",
                                        "update": "stream", "ratio": 1.0}])
    cfg |= {"mode": ["offline", "online", "hybrid"], "seeds": [0],
            "online": {"batch_size": 10, "eval_every": 200},
            "hybrid": {"every": 300, "on_new_class": False, "drift": None, "epochs": 1}}
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    modes = {label: m["mode"] for label, m in results["methods"].items()}
    assert modes == {"replay [offline]": "offline", "replay [online]": "online", "replay [hybrid]": "hybrid"}
    hybrid = results["methods"]["replay [hybrid]"]["summary"]
    assert [c["at_sample"] for c in hybrid["consolidations"]] == [300, 600, 900, 1200]
    assert 0 < hybrid["prequential_acc"] < 1 and hybrid["gradient_steps"] > 0
    assert (out / "online_curves.png").is_file() and "| replay [online] | online |" in (out / "report.md").read_text()


def test_online_mode_refuses_strategies_that_need_experience_ends(tmp_path):
    cfg = with_change(["strategies"], ["ewc"]) | {"mode": "online"}
    with pytest.raises(ConfigError, match="strategies.0: ewc learns only at experience ends"):
        load_config(write(tmp_path, cfg))


def test_a_run_name_cannot_lead_outside_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = BASE | {"name": "../../escape", "output": "runs", "strategies": ["finetune"], "seeds": [0]}
    assert main(["run", str(write(tmp_path, cfg)), "--quiet"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("escape-") and (folder / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "runs"]


@pytest.mark.parametrize("kind", ["not-empty", "a-file"])
def test_an_unusable_output_folder_is_refused_before_training(tmp_path, capsys, monkeypatch, kind):
    import retain.experiment

    monkeypatch.setattr(retain.experiment, "run_method", lambda *a, **k: pytest.fail("trained before the check"))
    out = tmp_path / "out"
    if kind == "not-empty":
        out.mkdir()
        (out / "old.txt").write_text("an earlier run")
        expected = "already holds files; choose another --out, or pass --resume"
    else:
        out.write_text("a file, not a folder")
        expected = "cannot write the run's results to"
    assert main(["run", str(write(tmp_path, BASE)), "--out", str(out), "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert (out / "old.txt").read_text() == "an earlier run" if kind == "not-empty" else out.is_file()


def test_an_interrupted_run_keeps_finished_methods_and_resumes(tmp_path, monkeypatch):
    import retain.experiment

    out, cfg = tmp_path / "run", write(tmp_path, BASE)
    real, calls = retain.experiment.run_method, []

    def interrupted(stream, cfg, method, seed, tick=lambda: None):
        calls.append(method.label)
        if method.label == "replay" and seed == 1:
            raise KeyboardInterrupt  # Ctrl-C in the second method's second seed
        return real(stream, cfg, method, seed, tick)

    monkeypatch.setattr(retain.experiment, "run_method", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["run", str(cfg), "--out", str(out), "--quiet"])
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["finetune"]
    calls.clear()
    monkeypatch.setattr(retain.experiment, "run_method", lambda *a, **k: calls.append(a[2].label) or real(*a, **k))
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0
    assert calls == ["replay", "replay", "joint", "joint"]  # finetune was not run again
    resumed = json.loads((out / "results.json").read_text())
    fresh = tmp_path / "fresh"
    assert main(["run", str(cfg), "--out", str(fresh), "--quiet"]) == 0
    again = json.loads((fresh / "results.json").read_text())
    for label in ("finetune", "replay", "joint"):
        assert resumed["methods"][label]["summary"]["matrix"] == again["methods"][label]["summary"]["matrix"]
    (tmp_path / "other").mkdir()
    other = write(tmp_path / "other", with_change(["training", "epochs"], 2))
    assert main(["run", str(other), "--out", str(out), "--quiet", "--resume"]) == 2  # another config: refused


def test_labels_that_name_files_alike_get_their_own_heat_maps(tmp_path):
    cfg = BASE | {"strategies": [{"compose": [{"name": "finetune"}], "label": "a/b"},
                                 {"compose": [{"name": "finetune"}], "label": "a_b"}], "seeds": [0]}
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 0
    assert {"heatmap_a_b.png", "heatmap_a_b-2.png"} <= {p.name for p in out.iterdir()}


def test_a_config_with_only_data_and_strategies_gets_the_benchmark_protocol(tmp_path):
    cfg = {"scenario": {"dataset": "digits", "n_experiences": 5}, "strategies": ["finetune", "replay"], "seeds": [0],
           "output": str(tmp_path)}
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 0
    summary = {k: m["summary"] for k, m in json.loads((out / "results.json").read_text())["methods"].items()}
    assert summary["replay"]["acc"] > summary["finetune"]["acc"] + 0.4
    assert json.loads((out / "results.json").read_text())["config"]["training"]["epochs"] == 3


def test_a_diverging_run_stops_with_a_message_and_keeps_what_finished(tmp_path, capsys):
    cfg = BASE | {"strategies": ["finetune", {"name": "l2", "lam": 1e30}], "seeds": [0]}
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, cfg)), "--out", str(out), "--quiet"]) == 2
    assert "training diverged" in capsys.readouterr().err
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["finetune"]


def test_resume_finds_its_own_run_and_refuses_a_folder_that_is_not_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path, BASE | {"name": "tiny", "output": "runs", "strategies": ["finetune"], "seeds": [0]})
    (tmp_path / "runs" / "tiny-extra-20990101-000000").mkdir(parents=True)  # another run's name, newer
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert main(["run", str(cfg), "--quiet", "--resume"]) == 0  # its own folder: all done already
    assert "already done" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    assert main(["run", str(cfg), "--out", str(other), "--quiet", "--resume"]) == 2
    assert "holds files but no results.json" in capsys.readouterr().err
