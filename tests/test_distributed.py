"""Training across ranks (torchrun, DDP with gloo): the same learner as one process, one memory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from retain.cli import main
from retain.engine import Learner

SCRIPT = Path(__file__).with_name("ranks_script.py")


def ranks_run(out, epochs, model, *names, nproc=1):
    """tests/ranks_script.py in one process, or under torchrun with ``nproc`` ranks; its JSON per rank."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    done = subprocess.run([*launcher, str(SCRIPT), str(out), str(epochs), model, *names], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_two_ranks_take_the_steps_one_process_takes(tmp_path):
    one = ranks_run(tmp_path / "one", 1, "mlp", "finetune")[0]
    two = ranks_run(tmp_path / "two", 1, "mlp", "finetune", nproc=2)
    assert two[0]["weights"] == two[1]["weights"] and two[0]["steps"] == two[1]["steps"] == one["steps"]
    a = Learner.load(tmp_path / "one" / "saved", device="cpu")
    b = Learner.load(tmp_path / "two" / "saved", device="cpu")  # written once, by rank 0; loaded in one process
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-3, rtol=0)  # the same steps, summed in another order
    assert torch.allclose(torch.tensor(two[0]["matrix"]), torch.tensor(one["matrix"]), atol=0.01)


def test_a_batch_that_does_not_divide_evenly_is_shared_out_whole(tmp_path):
    one = ranks_run(tmp_path / "one", 1, "odd", "replay")[0]
    two = ranks_run(tmp_path / "two", 1, "odd", "replay", nproc=2)
    assert two[0]["steps"] == two[1]["steps"] == one["steps"]  # every global batch split, none lost
    assert two[0]["weights"] == two[1]["weights"] and two[0]["memory"] == one["memory"]
    final_one, final_two = one["matrix"][-1], two[0]["matrix"][-1]
    assert sum(final_two) / 5 == pytest.approx(sum(final_one) / 5, abs=0.03)  # rows weigh 1/31 or 1/32 apart


def test_replay_keeps_one_memory_on_every_rank_and_ewc_sums_its_importances(tmp_path):
    one = ranks_run(tmp_path / "one", 3, "mlp", "replay", "ewc")[0]
    two = ranks_run(tmp_path / "two", 3, "mlp", "replay", "ewc", nproc=2)
    assert two[0]["memory"] == two[1]["memory"]  # the same rows, the same order, on both ranks
    assert two[0]["memory"] == one["memory"]  # and the ones one process keeps
    assert two[0]["memory_classes"] == one["memory_classes"] == [[20] * 10]  # class-balanced
    assert two[0]["weights"] == two[1]["weights"]
    final_one, final_two = one["matrix"][-1], two[0]["matrix"][-1]
    assert sum(final_two) / 5 == pytest.approx(sum(final_one) / 5, abs=0.02)


def test_frozen_backbone_features_are_encoded_across_ranks_and_lora_trains_across_them(tmp_path):
    one = ranks_run(tmp_path / "one", 2, "frozen", "replay")[0]
    two = ranks_run(tmp_path / "two", 2, "frozen", "replay", nproc=2)
    assert two[0]["inputs"] == two[1]["inputs"]  # each rank encoded half, both hold all the features
    a, b = (Learner.load(tmp_path / side / "saved", device="cpu") for side in ("one", "two"))
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-3, rtol=0)
    # one memory on both ranks; the rows one process keeps (their features differ in the last bits:
    # a rank encodes its rows in other batches)
    assert two[0]["memory"] == two[1]["memory"] and two[0]["memory_classes"] == one["memory_classes"]
    lora = ranks_run(tmp_path / "lora", 1, "lora", "finetune", nproc=2)
    assert lora[0]["weights"] == lora[1]["weights"] and lora[0]["steps"] > 0


def test_retain_run_nproc_runs_under_torchrun_and_reports_once(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "ddp", "scenario": {"dataset": "digits", "n_experiences": 5},
                                   "model": {"hidden": [64]}, "training": {"epochs": 2, "lr": 0.05},
                                   "strategies": [{"name": "derpp", "memory_size": 100}], "seeds": [0]}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--nproc", "2", "--quiet"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["versions"]["ranks"] == "2 (gloo)"
    assert 0.5 < results["methods"]["derpp"]["summary"]["acc"] <= 1
    assert (tmp_path / "run" / "report.md").exists()


def test_methods_that_cannot_run_across_ranks_are_refused_before_launch(tmp_path, capsys):
    for strategies, mode, message in (([{"name": "agem"}], "offline", "agem does not train across ranks"),
                                      ([{"name": "replay", "update": "stream"}], "offline", "update: stream"),
                                      (["finetune"], "online", "online and hybrid modes")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"scenario": {"dataset": "digits"}, "strategies": strategies, "mode": mode}))
        assert main(["run", str(cfg), "--out", str(tmp_path / "never"), "--nproc", "2", "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "never").exists()
