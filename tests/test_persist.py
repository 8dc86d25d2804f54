"""Saving survives a crash at any point, and loading refuses damaged or tampered files with a clear error."""

import hashlib
import json
import multiprocessing
import os
import signal

import pytest
import torch

from retain import Learner
from retain.engine import persist
from retain.strategies import EWC, Replay

from .conftest import make_learner

# Where a save can be killed: before each of its four writes (model, state, learner, manifest), in the
# middle of writing the model, and after the manifest switch but before the old generation is removed.
POINTS = ["before-1", "before-2", "before-3", "before-4", "mid-1", "after-switch"]


def _save_and_die(learner, directory, point):
    writes = []
    real_write, real_replace = persist.durable_write, os.replace

    def write(path, data):
        writes.append(path)
        if point == f"before-{len(writes)}":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == f"mid-{len(writes)}":
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)

    def replace(src, dst):
        real_replace(src, dst)
        if point == "after-switch":
            os.kill(os.getpid(), signal.SIGKILL)

    persist.durable_write, persist.os.replace = write, replace
    learner.save(directory)
    os._exit(0)  # not reached for a kill point


@pytest.mark.parametrize("point", POINTS)
def test_a_save_killed_at_any_point_leaves_the_old_model_or_the_new_one(split_digits, tmp_path, point):
    folder = tmp_path / "model"
    fresh = make_learner(split_digits, [Replay(40), EWC()], epochs=1)
    fresh.fit(split_digits[0])
    fresh.save(folder)  # the old model, saved whole
    old = fresh.predict_logits(split_digits[0].x_test)
    fresh.fit(split_digits[1])  # the new one, whose save gets killed
    new = fresh.predict_logits(split_digits[0].x_test)
    child = multiprocessing.get_context("fork").Process(target=_save_and_die, args=(fresh, folder, point))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    loaded = Learner.load(folder, device="cpu").predict_logits(split_digits[0].x_test)
    expected = new if point == "after-switch" else old
    assert torch.equal(loaded, expected) and not torch.equal(old, new)
    fresh.save(folder)  # the next save completes and clears what the killed one left
    n = 3 if point == "after-switch" else 2
    assert sorted(p.name for p in folder.iterdir()) == [".lock", f"learner-{n}.json", "manifest.json",
                                                        f"model-{n}.safetensors", f"state-{n}.safetensors"]


def _saved(split_digits, tmp_path):
    learner = make_learner(split_digits, [Replay(40)], epochs=1)
    learner.fit(split_digits[0])
    return learner, learner.save(tmp_path / "model")


def _resign(folder, edit):
    """Edit learner-1.json and update the manifest to match, as a consistent tampering would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    meta = json.loads((folder / "learner-1.json").read_text())
    edit(meta)
    data = json.dumps(meta).encode()
    (folder / "learner-1.json").write_bytes(data)
    manifest["sha256"]["learner"], manifest["sizes"]["learner"] = hashlib.sha256(data).hexdigest(), len(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: f.joinpath("model-1.safetensors").write_bytes(f.joinpath("model-1.safetensors").read_bytes()[:-9]),
         r"model-1.safetensors has \d+ bytes, the manifest says \d+: it is truncated"),
        (lambda f: f.joinpath("state-1.safetensors").write_bytes(f.joinpath("state-1.safetensors").read_bytes()[:-1]
                                                                 + b"x"),
         "state-1.safetensors does not match its checksum"),
        (lambda f: f.joinpath("learner-1.json").unlink(), "learner-1.json is missing"),
        (lambda f: f.joinpath("manifest.json").write_text("{"), "manifest.json is damaged"),
        (lambda f: f.joinpath("manifest.json").write_text(json.dumps({"format": 2, "generation": 1, "files": {
            "model": "../../etc/passwd", "state": "state-1.safetensors", "learner": "learner-1.json"},
            "sha256": {}, "sizes": {}})), "files.model must name this folder's model file"),
    ],
    ids=["truncated", "flipped-byte", "missing-file", "bad-manifest", "path-escape"],
)
def test_damaged_files_are_refused_naming_the_file(split_digits, tmp_path, damage, message):
    _, folder = _saved(split_digits, tmp_path)
    damage(folder)
    with pytest.raises(persist.LoadError, match=message):
        Learner.load(folder, device="cpu")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["model"]["backbone"].update(hidden=[128, 10**9]), r"model.backbone.hidden.1: 1000000000 is over"),
        (lambda m: m["model"]["backbone"].update(hidden=[4096]), "the model config does not describe the saved"),
        (lambda m: m["strategies"][0].update(name="rehearsal"), "unknown strategy 'rehearsal'"),
        (lambda m: m["strategies"][0]["params"].update(memory_size=-3), "a saved strategy's settings are invalid"),
        (lambda m: m["learner"].update(lr=-1), "learner.lr: Input should be greater than 0"),
        (lambda m: m.pop("steps"), "steps: Field required"),
        (lambda m: m["strategies"][0]["state"].pop("seen"), "the saved strategy state does not fit"),
    ],
    ids=["huge-layer", "wrong-shape", "unknown-strategy", "bad-param", "bad-lr", "missing-field", "missing-state"],
)
def test_a_tampered_learner_json_is_refused_before_anything_is_built(split_digits, tmp_path, edit, message):
    _, folder = _saved(split_digits, tmp_path)
    _resign(folder, edit)
    with pytest.raises(persist.LoadError, match=message):
        Learner.load(folder, device="cpu")


def test_a_save_of_the_first_format_still_loads_and_is_replaced_on_the_next_save(split_digits, tmp_path):
    learner, folder = _saved(split_digits, tmp_path)
    for part, suffix in (("model", "safetensors"), ("state", "safetensors"), ("learner", "json")):
        (folder / f"{part}-1.{suffix}").rename(folder / f"{part}.{suffix}")
    (folder / "manifest.json").unlink()
    meta = json.loads((folder / "learner.json").read_text())
    (folder / "learner.json").write_text(json.dumps(meta | {"format": 1}))
    loaded = Learner.load(folder, device="cpu")
    x = split_digits[0].x_test
    assert torch.equal(loaded.predict_logits(x), learner.predict_logits(x))
    loaded.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "learner-1.json", "manifest.json",
                                                        "model-1.safetensors", "state-1.safetensors"]
