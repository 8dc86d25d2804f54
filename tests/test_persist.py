"""Saving survives a crash at any point, and loading refuses damaged or tampered files with a clear error."""

import copy
import hashlib
import json
import multiprocessing
import os
import shutil
import signal

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from retain import Learner
from retain.cli import main
from retain.data import Experience
from retain.engine import persist
from retain.engine.generative import GenerativeLearner
from retain.engine.persist import load_learner
from retain.loop import Project
from retain.models.generative import LanguageModel
from retain.strategies import DER, EWC, Replay, make_strategy

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



# -- a save edited with its checksums recomputed: its state is checked against its strategies and model -----


@pytest.fixture(scope="module")
def replayed(split_digits, tmp_path_factory):
    """A learner with EWC and DER (30 samples with their logits) saved after two experiences."""
    learner = make_learner(split_digits, [EWC(), DER(memory_size=30)], epochs=1)
    for exp in split_digits[:2]:
        learner.fit(exp)
    return learner, learner.save(tmp_path_factory.mktemp("replayed") / "model")


def _resign_tensors(folder, part, edit, metadata=True):
    """Edit the tensors of ``part`` (model or state) and update the manifest to match; ``metadata=False``
    writes the file without the names of the strategies it belongs to, as a tool rewriting it would."""
    file = folder / f"{part}-1.safetensors"
    tensors = dict(safetensors_load(file.read_bytes()))
    edit(tensors)
    with safe_open(file, "pt") as saved:
        kept = saved.metadata() if metadata else None
    data = safetensors_bytes(tensors, metadata=kept)
    file.write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"][part], manifest["sizes"][part] = hashlib.sha256(data).hexdigest(), len(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _more_rows(state, n=1):
    """Each DER memory tensor with its first ``n`` rows repeated at the end."""
    for key in [k for k in state if k.startswith("1.data.")]:
        state[key] = torch.cat([state[key], state[key][:n]])


def _wider(key, dtype=None):
    def edit(state):
        v = state[key]
        state[key] = torch.cat([v, v[..., :1]], -1) if dtype is None else v.to(dtype)
    return edit


def _reversed(meta):
    meta["strategies"].reverse()


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda f: _resign(f, _reversed), r"learner.json lists the strategies \['der', 'ewc'\], but the state file "
                                          r"holds the state of \['ewc', 'der'\]: the list was edited"),
        (lambda f: (_resign(f, _reversed), _resign_tensors(f, "state", lambda s: None, metadata=False)),
         r"does not fit strategies.0 \(der\): memory: it holds 0 rows after \d+ offered"),
        (lambda f: _resign_tensors(f, "state", lambda s: s.update({"1.data.y": s["1.data.y"][:-1]})),
         r"strategies.1 \(der\): memory: its tensors disagree on the row count \(.*y 29"),
        (lambda f: _resign_tensors(f, "state", _more_rows), r"memory: it holds 31 rows, more than its size of 30"),
        (lambda f: _resign_tensors(f, "state", lambda s: s.update({k: v[:0] for k, v in s.items()
                                                                   if k.startswith("1.data.")})),
         r"memory: it holds 0 rows after \d+ offered, which its class_balanced policy never leaves"),
        (lambda f: _resign_tensors(f, "state", lambda s: s.pop("1.data.logits")), "its samples have no logits"),
        (lambda f: _resign_tensors(f, "state", lambda s: s.update({"2.data.x": s["1.data.x"].clone()})),
         "the state file holds 2.data.x, which belongs to none of the 2 saved strategies"),
        (lambda f: _resign_tensors(f, "state", _wider("1.data.x")),
         r"strategies.1 \(der\) memory: its inputs \(torch.float32, \(1, 8, 9\) a row\) do not fit the model"),
        (lambda f: _resign_tensors(f, "state", _wider("1.data.x", torch.float64)),
         r"its inputs \(torch.float64, \(1, 8, 8\) a row\) do not fit the model"),
        (lambda f: _resign_tensors(f, "state", _wider("1.data.logits")),
         "memory: its logits have 11 columns, the model 10 outputs"),
        (lambda f: _resign_tensors(f, "state", lambda s: s["1.data.y"].__setitem__(0, 12)),
         r"memory: label 12 is outside the model's classes 0..9"),
        (lambda f: _resign_tensors(f, "state", _wider("1.data.y", torch.float32)),
         "memory: y holds torch.float32 values, not integers"),
        (lambda f: _resign_tensors(f, "model", lambda w: w["head.fc.weight"].__setitem__((0, 0), float("nan"))),
         "the model file's head.fc.weight holds nan values: a save holds finite numbers"),
        (lambda f: _resign_tensors(f, "state", lambda s: next(v for k, v in sorted(s.items())
                                                              if k.startswith("0.")).fill_(float("inf"))),
         r"the state file's 0\.\S+ holds inf values"),
        (lambda f: _resign_tensors(f, "state", lambda s: s["1.data.x"].__setitem__((0, 0), float("nan"))),
         "the state file's 1.data.x holds nan values"),
    ],
    ids=["reordered", "reordered-state-rewritten", "rows-disagree", "over-memory-size", "emptied", "no-logits",
         "stray-tensor", "wrong-width", "wrong-dtype", "wider-logits", "unknown-label", "float-labels", "nan-weight",
         "inf-state", "nan-memory"],
)
def test_an_edited_save_with_checksums_recomputed_is_refused_naming_the_part(replayed, tmp_path, edit, message):
    folder = shutil.copytree(replayed[1], tmp_path / "model")
    edit(folder)
    with pytest.raises(persist.LoadError, match=message) as err:
        load_learner(folder, device="cpu")
    assert str(err.value).startswith(str(folder))


def test_an_unedited_save_loads_bit_exactly_and_trains_on_alike(replayed, split_digits, tmp_path):
    learner, saved = replayed
    folder = shutil.copytree(saved, tmp_path / "model")
    loaded = Learner.load(folder, device="cpu")
    pairs = zip([learner.model, *learner.strategies], [loaded.model, *loaded.strategies], strict=True)
    for one, other in ((a.state_dict(), b.state_dict()) for a, b in pairs):
        assert one.keys() == other.keys()
        assert all(torch.equal(v, other[k]) if isinstance(v, torch.Tensor) else v == other[k]
                   for k, v in one.items())
    assert len(loaded.strategies[1].memory()) == 30
    before = copy.deepcopy(learner)  # the module fixture stays as saved
    for one in (before, loaded):
        one.fit(split_digits[2])
    x = split_digits[2].x_test
    assert torch.equal(before.predict_logits(x), loaded.predict_logits(x))


# -- one set of bounds: a config over what a save may hold is refused before anything trains -------------


def _init(tmp_path, batches, training=None, memory_size=200):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hidden": [32]}, "training": {"lr": 0.05, "epochs": 2} | (training or {}),
                                   "strategies": [{"name": "replay", "memory_size": memory_size}]}))
    return main(["init", str(cfg), "--data", str(batches / "00" / "train.csv"), "--store", str(tmp_path / "store")])


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"training": {"batch_size": 2_000_000}}, "training.batch_size: Input should be less than or equal to 1048576"),
        ({"training": {"epochs": 2_000_000}}, "training.epochs: Input should be less than or equal to 1048576"),
        ({"training": {"lr": 1e7}}, "training.lr: Input should be less than or equal to 1000000"),
        ({"memory_size": 20_000_000}, "strategies.0.memory_size: 20000000 is over the limit of 16777216"),
    ],
    ids=["batch_size", "epochs", "lr", "memory_size"],
)
def test_a_config_over_the_bounds_a_save_holds_is_refused_before_training(tmp_path, batches, capsys, setting,
                                                                          message):
    assert _init(tmp_path, batches, **setting) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_config_at_the_bounds_trains_and_its_version_loads(tmp_path, batches):
    assert persist.MAX_SIZE == 1 << 20 and persist.MAX_STRATEGY_INT == 1 << 24  # the bounds the messages name
    assert _init(tmp_path, batches, {"batch_size": persist.MAX_SIZE}, memory_size=persist.MAX_STRATEGY_INT) == 0
    learner = Project(tmp_path / "store").store.load(device="cpu")
    assert learner.batch_size == persist.MAX_SIZE and learner.strategies[-1].memory_size == persist.MAX_STRATEGY_INT
    assert len(learner.strategies[-1].memory()) > 0


def test_a_learner_over_the_bounds_is_not_saved(split_digits, tmp_path):
    learner = make_learner(split_digits, [Replay(40)], epochs=1)
    learner.batch_size = 2_000_000
    with pytest.raises(ValueError, match=r"cannot save to .*: it could not be loaded back \(.*learner.batch_size: "
                                         "Input should be less than or equal to 1048576"):
        learner.save(tmp_path / "model")
    assert not (tmp_path / "model" / "manifest.json").exists()


# -- the generative learner: the same guarantees, and its own kind in the manifest --------------------

PAIRS = [("red", "rot"), ("blue", "blau"), ("green", "gruen"), ("black", "schwarz")]


def _tiny(strategies):
    torch.manual_seed(0)
    return GenerativeLearner(LanguageModel("tiny", "lora"), strategies, lr=1e-2, epochs=3, batch_size=4, max_tokens=24)


def _pairs(learner, direction):
    """The colours prompted for ``direction``, answered with the words of the list rotated by it."""
    targets = [t for _, t in PAIRS[direction:] + PAIRS[:direction]]
    x, y = learner.encode([f"{s}>{direction}:" for s, _ in PAIRS], targets)
    empty = torch.empty(0, x.shape[1], dtype=torch.long)
    return Experience(x, y, empty, empty, id=direction, task=direction, classes=(direction,),
                      t_train=torch.full((len(x),), direction))


def _weights(learner):
    return {k: v.clone() for k, v in learner.model.state_dict().items() if "lora_" in k}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def generative(tmp_path_factory):
    """A tiny LoRA learner with replay saved after one direction (``old``), then trained on a second."""
    learner = _tiny([make_strategy("replay", memory_size=3, policy="reservoir")])
    learner.fit(_pairs(learner, 0))
    folder = learner.save(tmp_path_factory.mktemp("generative") / "model")
    old = (_weights(learner), learner.steps_)
    learner.fit(_pairs(learner, 1))
    return learner, folder, old, (_weights(learner), learner.steps_)


@pytest.mark.parametrize("point", POINTS)
def test_a_generative_save_killed_at_any_point_leaves_the_old_model_or_the_new_one(generative, tmp_path, point):
    learner, saved, old, new = generative
    folder = shutil.copytree(saved, tmp_path / "model")
    child = multiprocessing.get_context("fork").Process(target=_save_and_die, args=(learner, folder, point))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    loaded = load_learner(folder, device="cpu")
    weights, steps = new if point == "after-switch" else old
    assert isinstance(loaded, GenerativeLearner) and loaded.steps_ == steps and _equal(_weights(loaded), weights)
    learner.save(folder)  # the next save completes and clears what the killed one left
    n = 3 if point == "after-switch" else 2
    assert sorted(p.name for p in folder.iterdir()) == [".lock", f"learner-{n}.json", "manifest.json",
                                                        f"model-{n}.safetensors", f"state-{n}.safetensors"]


def test_each_save_records_its_kind_and_load_learner_reads_it(split_digits, generative, tmp_path):
    learner, folder, _, _ = generative
    assert json.loads((folder / "manifest.json").read_text())["kind"] == "generative"
    assert isinstance(load_learner(folder), GenerativeLearner)
    _, classifier = _saved(split_digits, tmp_path)
    assert json.loads((classifier / "manifest.json").read_text())["kind"] == "classifier"
    assert isinstance(load_learner(classifier, device="cpu"), Learner)
    with pytest.raises(persist.LoadError, match="holds a generative learner, not a classifier one"):
        Learner.load(folder, device="cpu")
    with pytest.raises(persist.LoadError, match="holds a classifier learner, not a generative one"):
        GenerativeLearner.load(classifier)
    with pytest.raises(FileNotFoundError, match="holds no saved learner"):
        load_learner(tmp_path)


def test_a_classifier_save_whose_manifest_has_no_kind_still_loads(split_digits, tmp_path):
    learner, folder = _saved(split_digits, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["kind"]  # as retain wrote it before manifests named the kind
    (folder / "manifest.json").write_text(json.dumps(manifest | {"format": 2}))
    x = split_digits[0].x_test
    assert torch.equal(load_learner(folder, device="cpu").predict_logits(x), learner.predict_logits(x))


def _save_first_format(learner, folder):
    """A generative learner saved as retain wrote it before its saves went through persist."""
    folder.mkdir()
    names = {k for k in learner.model.state_dict() if "lora_" in k}
    save_file({k: v.contiguous() for k, v in learner.model.state_dict().items() if k in names},
              folder / "weights.safetensors")
    state, meta = {"generator": learner.generator.get_state()}, {}
    for i, s in enumerate(learner.strategies):
        for k, v in s.state_dict().items():
            if isinstance(v, torch.Tensor):
                state[f"{i}.{k}"] = v.contiguous()
            else:
                meta[f"{i}.{k}"] = v
    save_file(state, folder / "strategies.safetensors")
    config = {"model": learner.model.get_config(), "strategies": [{"name": s.name, **s.get_config()}
                                                                  for s in learner.strategies],
              "training": {"lr": learner.lr, "epochs": learner.epochs, "batch_size": learner.batch_size,
                           "max_tokens": learner.max_tokens, "clip": learner.clip, "seed": learner.seed},
              "state": meta, "seen": learner.seen_classes_, "directions": learner.directions, "steps": learner.steps_,
              "tokens": learner.tokens_}
    (folder / "learner.json").write_text(json.dumps(config, indent=1))


def test_a_generative_save_of_the_first_format_loads_trains_on_alike_and_is_replaced(tmp_path):
    learner = _tiny([make_strategy("replay", memory_size=3, policy="reservoir")])
    learner.fit(_pairs(learner, 0))
    learner.directions = {"de": 0}
    _save_first_format(learner, tmp_path / "old")
    loaded = load_learner(tmp_path / "old")
    assert isinstance(loaded, GenerativeLearner) and loaded.directions == {"de": 0}
    assert _equal(_weights(loaded), _weights(learner)) and loaded.strategies[0].state_dict()["seen"] == 4
    assert torch.equal(loaded.strategies[0].memory().x, learner.strategies[0].memory().x)
    for each in (learner, loaded):  # the same batches, replayed rows and updates after the load
        each.fit(_pairs(each, 1))
    assert _equal(_weights(loaded), _weights(learner)) and (loaded.steps_, loaded.tokens_) == (6, learner.tokens_)
    loaded.save(tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [".lock", "learner-1.json", "manifest.json",
                                                                   "model-1.safetensors", "state-1.safetensors"]
    assert _equal(_weights(GenerativeLearner.load(tmp_path / "old")), _weights(learner))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["model"].update(lora_rank=10**9), "model.lora_rank: Input should be less than or equal to 1024"),
        (lambda m: m["model"].update(experts=list(range(2000))), "model.experts: List should have at most 1024"),
        (lambda m: m["model"].update(name="gpt-5"), "model.name: Input should be 'smollm2' or 'tiny'"),
        (lambda m: m["model"].update(lora_rank=4), r"does not describe the saved weights \(first difference: "),
        (lambda m: m["model"].update(adaptation="full"), "does not describe the saved weights"),
        (lambda m: m["strategies"][0].update(name="rehearsal"), "unknown strategy 'rehearsal'"),
        (lambda m: m["strategies"][0]["params"].update(policy="class_balanced"), "saved strategies do not fit"),
        (lambda m: m["training"].update(max_tokens=0), "training.max_tokens: Input should be greater than"),
        (lambda m: m.pop("tokens"), "tokens: Field required"),
    ],
    ids=["huge-rank", "many-experts", "unknown-model", "wrong-rank", "wrong-adaptation", "unknown-strategy",
         "unfit-strategy", "bad-setting", "missing-field"],
)
def test_a_tampered_generative_save_is_refused_before_the_model_is_built(generative, tmp_path, edit, message):
    folder = shutil.copytree(generative[1], tmp_path / "model")
    _resign(folder, edit)
    with pytest.raises(persist.LoadError, match=message):
        GenerativeLearner.load(folder)


def test_a_damaged_generative_save_is_refused_naming_the_file(generative, tmp_path):
    folder = shutil.copytree(generative[1], tmp_path / "model")
    data = (folder / "model-1.safetensors").read_bytes()
    (folder / "model-1.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(persist.LoadError, match="model-1.safetensors does not match its checksum"):
        load_learner(folder)
