"""Saving a learner atomically with checksums, and reading it back only once every file and its JSON are verified.

A saved learner is a folder holding generations of three files (``model-N.safetensors``,
``state-N.safetensors``, ``learner-N.json``) and ``manifest.json``, which names the current
generation, the SHA-256 of each of its files and the kind of learner saved (``classifier``:
``retain.engine.Learner``; ``generative``: ``retain.engine.generative.GenerativeLearner``), so
that :func:`load_learner` never guesses from file names. A save writes and fsyncs the new generation's
files, then replaces the manifest in one ``os.replace`` (atomic on POSIX), fsyncs the folder and
only then deletes the older generation. Killed at any point, the folder loads as the old learner
or the new one, never a mix and never nothing. A load reads the manifest, checks every file's
checksum and size, and validates the JSON against a schema with bounds before anything is
allocated from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load as safetensors_load
from torch import Tensor

from retain.models import Classifier, detector, speech
from retain.models.generative import ADAPTATIONS, MODELS
from retain.strategies import STRATEGIES, Strategy, make_strategy
from retain.util import evaluating

if TYPE_CHECKING:
    from retain.engine.detection import DetectionLearner
    from retain.engine.generative import GenerativeLearner
    from retain.engine.learner import Learner

    # mypy reads no Literal built from a constant: it sees the str each of these names holds
    LanguageModelName: TypeAlias = str
    LanguageAdaptation: TypeAlias = str
    SpeechModelName: TypeAlias = str
    SpeechAdaptation: TypeAlias = str
    DetectorBackbone: TypeAlias = str
else:  # pydantic refuses any other value, listing the allowed ones
    LanguageModelName, LanguageAdaptation = Literal[MODELS], Literal[ADAPTATIONS]
    SpeechModelName, SpeechAdaptation = Literal[speech.MODELS], Literal[speech.ADAPTATIONS]
    DetectorBackbone = Literal[detector.BACKBONES]

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 3: the manifest names the kind of learner; 2: a classifier's, with no kind
Kind = Literal["classifier", "generative", "speech", "detection"]
KINDS: tuple[Kind, ...] = get_args(Kind)
PARTS = ("model", "state", "learner")
# Saves written before manifests (each kind's first format), known by their files alone.
LEGACY = {"classifier": {"model": "model.safetensors", "state": "state.safetensors", "learner": "learner.json"},
          "generative": {"model": "weights.safetensors", "state": "strategies.safetensors",
                         "learner": "learner.json"}}
MAX_JSON_BYTES = 64 << 20  # a manifest or learner.json larger than this is not one retain wrote
# The bounds a save's JSON is held to, stated once: the config (``retain.config``) refuses settings
# over them before anything trains, so no command can promote a version that no later one loads.
MAX_SIZE = 1 << 20  # a layer's width, an image's side, a class id; the learner's batch_size and epochs
MAX_ITEMS = 10_000  # entries of a list or mapping (layers of a model, a strategy setting's values)
MAX_STRATEGY_INT = 1 << 24  # an integer setting of a strategy (memory_size, its batch sizes, steps)
MAX_RATE = 1e6  # a learning rate
MAX_LORA_RANK = 1024
STATE_NAMES = "strategies"  # the state file's metadata entry naming the strategies its positions belong to
_NAME = re.compile(r"^(model|state|learner)-([0-9]{1,12})\.(safetensors|json)$")


class LoadError(ValueError):
    """A saved learner that cannot be loaded; the message names the file and what is wrong."""


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int
    generation: int = Field(ge=1, le=10**12)
    kind: Kind = "classifier"  # format 2 saved classifiers only
    files: dict[str, str]
    sha256: dict[str, str]
    sizes: dict[str, int]


@dataclass(frozen=True)
class Generation:
    """A save's current files, verified: ``parts`` maps ``model``, ``state`` and ``learner`` to
    their bytes; ``legacy`` says they are a save of the kind's first format (no manifest)."""

    parts: dict[str, bytes]
    legacy: bool = False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(directory: Path) -> _Manifest | None:
    """The folder's manifest, or None when it has none (a folder never saved to, or an old format)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_JSON_BYTES:
        raise LoadError(f"{path}: {path.stat().st_size} bytes is not a manifest retain wrote")
    try:
        manifest = _Manifest.model_validate(json.loads(path.read_bytes()))
    except (ValueError, ValidationError) as err:
        raise LoadError(f"{path} is damaged: {_first_problem(err)}") from None
    if manifest.format not in (2, FORMAT_VERSION):
        raise LoadError(f"{path}: unsupported format {manifest.format!r} (this retain reads 2 and {FORMAT_VERSION})")
    for part in PARTS:
        name = manifest.files.get(part)
        if name is None or not _NAME.match(name) or not name.startswith(f"{part}-"):
            raise LoadError(f"{path}: files.{part} must name this folder's {part} file, got {name!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", manifest.sha256.get(part, "")):
            raise LoadError(f"{path}: sha256.{part} is not a SHA-256 digest")
    return manifest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One save at a time into a folder (an advisory lock on ``.lock``; none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_generation(directory: str | Path, parts: dict[str, bytes], suffixes: dict[str, str], *, kind: str) -> Path:
    """Write ``parts`` (``model``, ``state``, ``learner`` -> bytes) as the folder's next generation
    of a ``kind`` learner (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        return _write_generation(path, parts, suffixes, kind)


def _write_generation(path: Path, parts: dict[str, bytes], suffixes: dict[str, str], kind: str) -> Path:
    try:
        old = read_manifest(path)
    except LoadError:
        old = None  # a damaged manifest is replaced by this save
    generation = (old.generation if old else 0) + 1
    files = {part: f"{part}-{generation}.{suffixes[part]}" for part in PARTS}
    for part in PARTS:
        durable_write(path / files[part], parts[part])
    manifest = {"format": FORMAT_VERSION, "generation": generation, "kind": kind, "files": files,
                "sha256": {p: hashlib.sha256(parts[p]).hexdigest() for p in PARTS},
                "sizes": {p: len(parts[p]) for p in PARTS}}
    staged = path / f"{MANIFEST}.tmp"
    durable_write(staged, json.dumps(manifest, indent=1).encode())
    _fsync_dir(path)  # the new files' names are on the disk before the manifest can point at them
    os.replace(staged, path / MANIFEST)  # the switch: before it the old generation is current, after it the new
    _fsync_dir(path)
    legacy = {name for files in LEGACY.values() for name in files.values()}
    for entry in path.iterdir():  # older generations, files of interrupted saves, a first-format save
        match = _NAME.match(entry.name)
        if match and int(match.group(2)) != generation or entry.name in legacy:
            entry.unlink(missing_ok=True)
    return path


def _legacy_kind(path: Path) -> str | None:
    """The kind of a save written before manifests, by its files; None if the folder holds none."""
    return next((kind for kind, files in LEGACY.items() if all((path / n).is_file() for n in files.values())), None)


def saved_kind(directory: str | Path) -> str | None:
    """The kind of learner saved in ``directory`` (one of :data:`KINDS`), as its manifest says;
    None when the folder holds no save (a damaged manifest raises ``LoadError``).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     saved_kind(write_generation(folder, {p: b"{}" for p in PARTS}, dict.fromkeys(PARTS, "json"),
    ...                                 kind="generative"))
    'generative'
    """
    path = Path(directory)
    manifest = read_manifest(path)
    return manifest.kind if manifest is not None else _legacy_kind(path)


def read_generation(directory: str | Path, kind: str = "classifier") -> Generation:
    """The current generation's files, each checked against the manifest's size and SHA-256, of
    a saved ``kind`` learner (another kind is refused, naming it)."""
    path = Path(directory)
    manifest = read_manifest(path)
    found = manifest.kind if manifest is not None else _legacy_kind(path)
    if found is None:
        raise FileNotFoundError(f"{path} holds no saved learner ({MANIFEST} is missing)")
    if found != kind:
        raise LoadError(f"{path} holds a {found} learner, not a {kind} one: retain.engine.persist.load_learner "
                        "loads either")
    if manifest is None:  # a save of the kind's first format: no checksums to verify; the schema still applies
        files = LEGACY[kind]
        if (path / files["learner"]).stat().st_size > MAX_JSON_BYTES:
            raise LoadError(f"{path / files['learner']}: too large to be a learner retain saved")
        return Generation({part: (path / name).read_bytes() for part, name in files.items()}, legacy=True)
    parts = {}
    for part in PARTS:
        file = path / manifest.files[part]
        if not file.is_file():
            raise LoadError(f"{file} is missing: the folder was changed after the save")
        size = file.stat().st_size
        if size != manifest.sizes.get(part):
            raise LoadError(f"{file} has {size} bytes, the manifest says {manifest.sizes.get(part)}: it is "
                            "truncated or was changed")
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.sha256[part]:
            raise LoadError(f"{file} does not match its checksum: it was changed or damaged after the save")
        parts[part] = data
    return Generation(parts)


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}"
    return str(err).splitlines()[0]


def bounded(value: Any, where: str, limit: int = MAX_SIZE, items: int = MAX_ITEMS, depth: int = 0) -> None:
    """Refuse a JSON value with an integer over ``limit`` (a layer size, a class id), a list or
    mapping over ``items`` entries, or nesting deeper than 32: what a small edit could turn into
    gigabytes of allocation.

    >>> bounded({"hidden": [256, 10**9]}, "model")
    Traceback (most recent call last):
    ...
    retain.engine.persist.LoadError: model.hidden.1: 1000000000 is over the limit of 1048576
    """
    if depth > 32:
        raise LoadError(f"{where}: nested deeper than 32 levels")
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return
    if isinstance(value, int):
        if abs(value) > limit:
            raise LoadError(f"{where}: {value} is over the limit of {limit}")
        return
    if isinstance(value, list | dict):
        if len(value) > items:
            raise LoadError(f"{where}: {len(value)} entries is over the limit of {items}")
        entries = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in entries:
            bounded(item, f"{where}.{key}", limit, items, depth + 1)
        return
    raise LoadError(f"{where}: unexpected value {value!r}")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(gt=0, le=MAX_RATE)
    momentum: float = Field(ge=0, lt=1)
    batch_size: int = Field(ge=1, le=MAX_SIZE)
    epochs: int = Field(ge=1, le=MAX_SIZE)
    seed: int
    backbone_lr: float | None = Field(None, gt=0, le=MAX_RATE)
    lr_decay: float = Field(1.0, gt=0, le=1)


class _SavedStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any]
    state: dict[str, Any]


class _Saved(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int
    model: dict[str, Any]
    learner: _Settings
    strategies: list[_SavedStrategy] = Field(max_length=64)
    seen_classes: list[int] = Field(max_length=1 << 20)
    class_names: list[str] = Field([], max_length=1 << 20)
    task_classes: dict[str, list[int]] = Field(max_length=1 << 16)
    experiences_seen: int = Field(ge=0)
    steps: int = Field(ge=0)
    samples_seen: int = Field(0, ge=0)
    experience_id: int = Field(0, ge=0)


def saved_learner(data: bytes, path: Path) -> _Saved:
    """A saved ``learner.json``, validated: its schema, the strategies it names, and bounds on every
    size in the model's config and the strategies' settings."""
    where = f"{path}/learner.json"
    try:
        meta = _Saved.model_validate(json.loads(data))
    except ValueError as err:
        raise LoadError(f"{where}: {_first_problem(err)}") from None
    if meta.format not in (1, 2, FORMAT_VERSION):  # 1: saved before checksums, read all the same
        raise LoadError(f"{where}: unsupported learner format {meta.format!r}")
    bounded(meta.model, f"{where}: model")
    _check_strategies(meta.strategies, where)
    return meta


def _check_strategies(strategies: list[_SavedStrategy], where: str) -> None:
    for i, s in enumerate(strategies):
        if s.name not in STRATEGIES:
            raise LoadError(f"{where}: strategies.{i}.name: unknown strategy {s.name!r} (a newer retain, "
                                    "or a method whose file is gone)")
        bounded(s.params, f"{where}: strategies.{i}.params", limit=MAX_STRATEGY_INT)


class _GenerativeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(gt=0, le=MAX_RATE)
    epochs: int = Field(ge=1, le=MAX_SIZE)
    batch_size: int = Field(ge=1, le=MAX_SIZE)
    max_tokens: int = Field(ge=1, le=MAX_SIZE)
    clip: float = Field(ge=0, le=1e6)
    seed: int = Field(ge=-(1 << 63), lt=1 << 64)


class _LanguageModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: LanguageModelName
    adaptation: LanguageAdaptation
    lora_rank: int = Field(ge=1, le=MAX_LORA_RANK)
    seed: int = Field(ge=0, lt=1 << 62)
    experts: list[int] = Field(max_length=1024)


class _SavedGenerative(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int
    model: _LanguageModelConfig
    training: _GenerativeSettings
    strategies: list[_SavedStrategy] = Field(max_length=64)
    seen_classes: list[int] = Field(max_length=1 << 16)
    directions: dict[str, int] = Field(max_length=1 << 16)
    steps: int = Field(ge=0)
    tokens: int = Field(ge=0)


def saved_generative(data: bytes, path: Path) -> _SavedGenerative:
    """A generative learner's saved JSON, validated: its schema, the strategies it names, and
    bounds on every size (adapters' rank and count, the strategies' settings)."""
    where = f"{path}/learner.json"
    try:
        meta = _SavedGenerative.model_validate(json.loads(data))
    except ValueError as err:
        raise LoadError(f"{where}: {_first_problem(err)}") from None
    if meta.format != FORMAT_VERSION:
        raise LoadError(f"{where}: unsupported generative learner format {meta.format!r}")
    bounded(meta.model.experts, f"{where}: model.experts", limit=1 << 16)
    bounded(meta.seen_classes, f"{where}: seen_classes", limit=1 << 16)
    bounded(meta.directions, f"{where}: directions", limit=1 << 16)
    _check_strategies(meta.strategies, where)
    return meta


class _RowSettings(BaseModel):  # a row learner's (speech, detection)
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(gt=0, le=MAX_RATE)
    epochs: int = Field(ge=1, le=MAX_SIZE)
    batch_size: int = Field(ge=1, le=MAX_SIZE)
    clip: float = Field(ge=0, le=1e6)
    seed: int = Field(ge=-(1 << 63), lt=1 << 64)


class _SpeechModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SpeechModelName
    adaptation: SpeechAdaptation
    lora_rank: int = Field(ge=1, le=MAX_LORA_RANK)
    max_seconds: float = Field(gt=0, le=30)
    max_tokens: int = Field(ge=4, le=448)  # Whisper's decoder has 448 positions
    seed: int = Field(ge=0, lt=1 << 62)
    experts: list[int] = Field(default_factory=list, max_length=1024)


class _SavedRows(BaseModel):  # what every row learner's save holds beside its model
    model_config = ConfigDict(extra="forbid")

    format: int
    training: _RowSettings
    strategies: list[_SavedStrategy] = Field(max_length=64)
    seen_classes: list[int] = Field(max_length=1 << 16)
    steps: int = Field(ge=0)


class _SavedSpeech(_SavedRows):
    model: _SpeechModelConfig
    tokens: int = Field(ge=0)


class _DetectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: DetectorBackbone
    n_classes: int = Field(ge=0, le=MAX_SIZE)
    width: int = Field(ge=1, le=4096)
    pretrained: bool
    train_backbone: bool


class _DetectionSettings(_RowSettings):
    max_boxes: int = Field(ge=1, le=4096)


class _SavedDetection(_SavedRows):
    model: _DetectorConfig
    training: _DetectionSettings


SAVED_ROWS: dict[str, type[_SavedRows]] = {"speech": _SavedSpeech, "detection": _SavedDetection}


def saved_rows(data: bytes, path: Path, kind: str) -> Any:
    """A row learner's saved JSON (a ``kind`` of :data:`SAVED_ROWS`), validated: its schema, the
    strategies it names, bounds on sizes."""
    where = f"{path}/learner.json"
    try:
        meta = SAVED_ROWS[kind].model_validate(json.loads(data))
    except ValueError as err:
        raise LoadError(f"{where}: {_first_problem(err)}") from None
    if meta.format != FORMAT_VERSION:
        raise LoadError(f"{where}: unsupported {kind} learner format {meta.format!r}")
    bounded(meta.seen_classes, f"{where}: seen_classes", limit=1 << 16)
    _check_strategies(meta.strategies, where)
    return meta


def state_metadata(strategies: Sequence[Strategy]) -> dict[str, str]:
    """The state file's metadata: the strategies its ``<position>.`` tensors belong to, in order. A
    learner.json whose list was edited (reordered, a strategy swapped) is then refused on load instead
    of handing each strategy another's state (a replay memory that loads empty)."""
    return {STATE_NAMES: json.dumps([s.name for s in strategies])}


def state_names(data: bytes, path: Path) -> list[str] | None:
    """The strategies a state file (read by :func:`read_tensors` already) says its positions belong
    to, as :func:`state_metadata` recorded them; None for a save written before it did."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    names = (header.get("__metadata__") or {}).get(STATE_NAMES)
    if names is None:
        return None
    try:
        names = json.loads(names)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LoadError(f"{path}: the state file's metadata does not list its strategies' names")
    return names


def strategies_to_save(strategies: Sequence[Strategy], tensors: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Each strategy's name, settings and JSON state, as the saved JSON lists them; its tensors are
    added to ``tensors`` (the state file) under ``<position>.<key>``."""
    saved = []
    for i, s in enumerate(strategies):
        extra = {}
        for key, value in s.state_dict().items():
            if isinstance(value, Tensor):
                tensors[f"{i}.{key}"] = value.detach().cpu().contiguous()
            else:
                extra[key] = value
        saved.append({"name": s.name, "params": s.get_config(), "state": extra})
    return saved


def make_strategies(saved: list[_SavedStrategy], path: Path) -> list[Strategy]:
    """The strategies a validated save lists, built from their saved settings."""
    try:
        return [make_strategy(s.name, **s.params) for s in saved]
    except ValidationError as err:
        raise LoadError(f"{path}: a saved strategy's settings are invalid: {err.errors()[0]['loc']} "
                        f"{err.errors()[0]['msg']}") from None


def set_generator(generator: torch.Generator, tensors: dict[str, Tensor], path: Path) -> None:
    """Put ``generator`` in the state saved as ``learner.rng``: training goes on drawing what it would have."""
    if "learner.rng" not in tensors:
        raise LoadError(f"{path}: the state file has no learner.rng")
    try:
        generator.set_state(tensors["learner.rng"])
    except (RuntimeError, TypeError) as err:
        raise LoadError(f"{path}: the saved learner.rng is not a generator state ({err})") from None


LEARNER_STATE = ("learner.rng", "learner.torch_rng")  # the state file's tensors that are no strategy's


def load_states(strategies: Sequence[Strategy], saved: list[_SavedStrategy], tensors: dict[str, Tensor],
                learner: Any, path: Path, order: list[str] | None = None) -> None:
    """Give each strategy the state :func:`strategies_to_save` wrote (its tensors on the learner's
    device), once it is the state of that strategy: the state file was written for these strategies in
    this order (``order``, from :func:`state_names`, when the save recorded it), every tensor belongs to
    a strategy, and each strategy keeps exactly the state it is given (its own ``load_state_dict``
    refuses what its hooks could not run on, e.g. a memory over its size)."""
    names = [s.name for s in saved]
    if order is not None and order != names:
        raise LoadError(f"{path}: learner.json lists the strategies {names}, but the state file holds the "
                        f"state of {order}: the list was edited after the save")
    positions = {str(i) for i in range(len(strategies))}
    stray = sorted(k for k in tensors if k not in LEARNER_STATE and k.split(".", 1)[0] not in positions)
    if stray:
        raise LoadError(f"{path}: the state file holds {stray[0]}, which belongs to none of the {len(names)} "
                        "saved strategies")
    for i, (s, entry) in enumerate(zip(strategies, saved, strict=True)):
        where = f"{path}: the saved strategy state does not fit strategies.{i} ({s.name})"
        prefix = f"{i}."
        state = dict(entry.state) | {
            k[len(prefix):]: v.to(learner.device) for k, v in tensors.items() if k.startswith(prefix)
        }
        try:
            s.load_state_dict(state, learner)
            kept = set(s.state_dict())
        except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as err:
            raise LoadError(f"{where}: {err}") from None
        if kept != set(state):
            key = sorted(kept ^ set(state))[0]
            what = (f"{s.name} keeps {key!r}, which the state lacks" if key in kept else
                    f"the state holds {key!r}, which {s.name} does not keep")
            raise LoadError(f"{where}: {what} (the strategies were reordered or the state edited)")


def check_memories(strategies: Sequence[Strategy], learner: Learner, path: Path) -> None:
    """Refuse a loaded memory the classifier cannot train on: inputs its model does not read (their
    width or dtype, tried on one row), labels outside its outputs, stored outputs (DER's logits)
    wider than them. Each would load, then fail the next update."""
    model = learner.model
    for i, s in enumerate(strategies):
        for name, memory in s.memories().items():
            if not len(memory):
                continue
            where = f"{path}: strategies.{i} ({s.name}) {name}"
            x, t = memory.x[:1].to(learner.device), memory.t[:1].to(learner.device)
            try:
                with torch.no_grad(), evaluating(model):
                    width = model(x, t).shape[-1]
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                raise LoadError(f"{where}: its inputs ({memory.x.dtype}, {tuple(memory.x.shape[1:])} a row) do "
                                f"not fit the model ({str(err).splitlines()[0]})") from None
            y = memory.y
            wrong = y[(y < 0) | (y >= width)]
            if len(wrong):
                raise LoadError(f"{where}: label {int(wrong[0])} is outside the model's classes 0..{width - 1}")
            for key, v in memory.data.items():
                if key not in ("x", "y", "t", "e") and v.dim() == 2 and v.shape[1] > width:
                    raise LoadError(f"{where}: its {key} have {v.shape[1]} columns, the model {width} outputs")


def load_learner(directory: str | Path, device: str = "auto") -> Learner | GenerativeLearner[Any] | DetectionLearner:
    """The learner saved in ``directory``, of the kind its manifest records (a save of a kind's
    first format, with no manifest, by its files): a classifier :class:`~retain.engine.Learner` on
    ``device``, or a :class:`~retain.engine.generative.GenerativeLearner` (a speech learner among
    them) or detector's learner, which load on the CPU unless ``device`` names one (their config
    names the device they train on). Verified as each kind's ``load`` does; ``LoadError`` names what is wrong.

    Args:
        directory: the folder a learner's ``save`` wrote.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The learner, as it was saved.

    Raises:
        FileNotFoundError: when the folder holds no saved learner.
        LoadError: when a file is damaged or does not fit the others.

    >>> from retain.engine import Learner
    >>> from retain.models import make_model
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = Learner(make_model("mlp", (4,), 3, hidden=(8,)), device="cpu").save(folder)
    ...     type(load_learner(folder, device="cpu")).__name__
    'Learner'
    """
    # Imported here: both learners import this module to save themselves.
    from retain.engine.generative import GenerativeLearner
    from retain.engine.learner import Learner

    kind = saved_kind(directory)
    if kind is None:
        raise FileNotFoundError(f"{directory} holds no saved learner ({MANIFEST} is missing)")
    if kind == "generative":
        return GenerativeLearner.load(directory, device="cpu" if device == "auto" else device)
    if kind == "speech":
        from retain.engine.speech import SpeechLearner

        return SpeechLearner.load(directory, device="cpu" if device == "auto" else device)
    if kind == "detection":
        from retain.engine.detection import DetectionLearner

        return DetectionLearner.load(directory, device="cpu" if device == "auto" else device)
    return Learner.load(directory, device=device)


# A memory's extra per-sample values (DER's logits): NaN marks output units added after a sample was stored.
_PADDED = re.compile(r"(^|\.)data\.(?!(x|y|t|e)$)[^.]+$")


def read_tensors(data: bytes, path: Path, part: str) -> dict[str, Tensor]:
    """The tensors of a ``part`` file, each finite: training never keeps a NaN or infinite weight
    (the learner refuses a fit that diverges), so one is an edit or damage. Only a memory's padded
    per-sample values may hold NaN."""
    try:
        tensors = safetensors_load(data)
    except Exception as err:  # noqa: BLE001 - whatever safetensors says of bytes that passed their checksum
        raise LoadError(f"{path}: the {part} file is not readable safetensors ({err})") from None
    for key, value in tensors.items():
        # A finite sum says every value is finite in one reduction (an element-wise isfinite took 3 of
        # a DER + EWC learner's 10 ms load); a sum that overflows or meets NaN padding is looked at closely.
        if not value.is_floating_point() or torch.isfinite(value.sum()):
            continue
        bad = value.isinf() if _PADDED.search(key) else ~value.isfinite()
        if bad.any():
            raise LoadError(f"{path}: the {part} file's {key} holds {value[bad].flatten()[0].item()} values: a "
                            "save holds finite numbers (this one was edited or damaged)")
    return tensors


def build_model(config: dict[str, Any], weights: dict[str, Tensor], path: Path) -> Classifier:
    """The model ``config`` describes, holding ``weights``, once the shapes the config implies (built
    on the meta device, allocating nothing) match the weights actually saved."""
    backbone = config.get("backbone", {}) if isinstance(config, dict) else {}
    if backbone.get("name") in ("text", "image"):
        # Their sizes are the pretrained network's, which loads its weights (no meta build): only
        # the adapters' rank is the config's to choose.
        if not 1 <= backbone.get("lora_rank", 8) <= MAX_LORA_RANK:
            raise LoadError(f"{path}: the saved model config's lora_rank must be 1..{MAX_LORA_RANK}")
        skeleton = None
    else:
        try:
            with torch.device("meta"):
                skeleton = Classifier.from_config(config)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise LoadError(f"{path}: the saved model config is invalid ({err})") from None
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()} if skeleton is not None else None
    saved = {k: tuple(v.shape) for k, v in weights.items()}
    if shapes is not None and shapes != saved:
        diff = sorted(set(shapes.items()) ^ set(saved.items()))[:1]
        raise LoadError(f"{path}: the model config does not describe the saved weights (first difference: "
                                f"{diff[0][0]} {diff[0][1]})")
    try:
        model = Classifier.from_config(config)
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise LoadError(f"{path}: the saved model does not load ({str(err).splitlines()[0]})") from None
    return model
