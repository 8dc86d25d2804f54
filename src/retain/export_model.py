"""A version to take away: one file that predicts from raw inputs with only torch (TorchScript) or only
onnxruntime (ONNX), holding the reader's preprocessing, the frozen encoder, the model and the label names.

``retain export-model STORE --format torchscript|onnx --out FILE`` writes it. What the file takes, by the
store's kind of inputs (``retain.json`` inside a TorchScript file, the ``retain`` metadata entry of an ONNX
file, say the same):

- tables: ``features``, float ``(N, columns)`` in the store's column order (the file names them);
- text (TorchScript only): a list of strings, tokenised inside the file by :class:`WordPiece`; ONNX has no
  operator for a WordPiece tokenizer, so a text store is refused for ONNX rather than given token ids;
- images: ``pixels``, uint8 ``(N, height, width, channels)`` as an image decoder gives them (TorchScript also
  takes another size, resized as the reader does, RGB for a grey store and the reader's float ``(N, C, H, W)``);
- audio: ``waveform``, float ``(N, samples)`` in [-1, 1], mono, at the store's sample rate (TorchScript also
  takes another length: cut or zero-padded as the reader does).

It returns class probabilities ``(N, classes)``, whose columns are the label names kept in the file.
A version predicts as :meth:`retain.loop.Project.predict` does: the model in evaluation mode, every row of
task 0. What a strategy changes in that forward pass is exported with it (a head that grew, SLDA's and BiC's
heads, iCaRL's nearest-mean scores); what needs more than an input row (a task id choosing a head, a column or
an adapter) is refused, naming the strategy.
"""

# No `from __future__ import annotations`: TorchScript reads the modules' attribute annotations as types.
import functools
import json
import logging
import unicodedata
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.extras import require

if TYPE_CHECKING:
    from retain.models.pretrained import LogMel

FORMATS = ("torchscript", "onnx")
SCHEMA = "retain-export/1"


class ExportError(ValueError):
    """A version that cannot be exported as asked; the message says why and what can be."""


# -- text: BERT's uncased WordPiece, in TorchScript ---------------------------------------------------------------
# Hugging Face's BertNormalizer (clean text, space out CJK ideographs, strip accents, lower-case) and
# BertPreTokenizer (split on whitespace, isolate punctuation) act character by character: their effect on every
# character that changes is tabulated once, here, with Python's unicodedata, which TorchScript lacks.
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_WHITE = {0x20, 0x09, 0x0A, 0x0D, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}
_HANGUL, _HANGUL_END = 0xAC00, 0xAC00 + 11172  # syllables, decomposed to their letters by arithmetic
_PRIVATE = ((0xE000, 0xF8FF), (0xF0000, 0x10FFFF))  # private use: dropped, as any "other" character


def _punctuation(c: str) -> bool:
    return (c.isascii() and not c.isalnum() and 33 <= ord(c) <= 126) or unicodedata.category(c).startswith("P")


def _bert_form(c: str) -> str:
    """What BERT's uncased normaliser and pre-tokenizer make of the character ``c``: words end at ``" "``."""
    if c in ("\0", "\ufffd") or (unicodedata.category(c).startswith("C") and c not in "\t\n\r"):
        return ""
    if ord(c) in _WHITE:
        return " "
    stripped = "".join(ch for ch in unicodedata.normalize("NFD", c) if unicodedata.category(ch) != "Mn").lower()
    spaced = "".join(f" {ch} " if _punctuation(ch) else ch for ch in stripped)
    return f" {spaced} " if any(lo <= ord(c) <= hi for lo, hi in _CJK) else spaced


@functools.cache
def bert_forms() -> dict[int, str]:
    """Every code point whose BERT form is not itself, with its form; but for CJK ideographs, Hangul syllables
    and private use, which :class:`WordPiece` handles by range, and the planes 4 to 13, where nothing is assigned.

    >>> forms = bert_forms()
    >>> forms[ord("É")], forms[ord(",")], forms[0x3000], forms[0x200B], ord("é") in forms, ord("a") in forms
    ('e', ' , ', ' ', '', True, False)
    """
    skip = sorted([*_CJK[:6], *_PRIVATE, (0xD800, 0xDFFF), (_HANGUL, _HANGUL_END - 1), (0x40000, 0xDFFFF)])
    forms, cp = {}, 0
    for lo, hi in [*skip, (0x110000, 0x110000)]:
        for point in range(cp, lo):
            c = chr(point)
            if point >= 0x10000 and unicodedata.category(c) == "Cn":
                continue  # unassigned outside the basic plane: kept (Hugging Face drops them)
            form = _bert_form(c)
            if form != c:
                forms[point] = form
        cp = max(cp, hi + 1)
    return forms


def _utf8(cp: int) -> str:
    """The UTF-8 bytes of code point ``cp`` as a TorchScript string (its strings are bytes; ``chr`` makes one)."""
    if cp < 0x80:
        return chr(cp)
    if cp < 0x800:
        return chr(0xC0 | (cp >> 6)) + chr(0x80 | (cp & 0x3F))
    if cp < 0x10000:
        return chr(0xE0 | (cp >> 12)) + chr(0x80 | ((cp >> 6) & 0x3F)) + chr(0x80 | (cp & 0x3F))
    return (chr(0xF0 | (cp >> 18)) + chr(0x80 | ((cp >> 12) & 0x3F)) + chr(0x80 | ((cp >> 6) & 0x3F))
            + chr(0x80 | (cp & 0x3F)))


class WordPiece(nn.Module):
    """BERT's uncased WordPiece tokenizer, as ``transformers`` runs MiniLM's, written in TorchScript: texts ->
    token ids ``(N, max_tokens)`` (``[CLS]`` first, ``[SEP]`` last, cut to ``max_tokens``, padded with 0).

    It cleans the text (control characters dropped, whitespace made spaces), spaces out CJK ideographs,
    strips accents and lower-cases (from a table made with Python's ``unicodedata``: TorchScript has no
    Unicode database), splits on whitespace and punctuation, and matches the longest piece of the vocabulary
    first, then ``##`` continuations; a word with a part no piece matches, or of more than 100 characters,
    is ``[UNK]``. Special tokens written in the text (``[MASK]``) are read as such.

    Where it differs from ``transformers``: characters outside the basic plane that Unicode had not assigned
    when this Python was built are kept (``transformers`` drops them: they become ``[UNK]`` or part of one);
    combining marks that are not nonspacing (Mc, Me) keep their place rather than being reordered by NFD.
    """

    def __init__(self, vocab: dict[str, int], max_tokens: int, forms: dict[int, str]) -> None:
        super().__init__()
        self.vocab = vocab
        self.forms = forms
        self.max_tokens = max_tokens
        self.specials = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]") if t in vocab]
        self.cls, self.sep, self.unk = vocab["[CLS]"], vocab["[SEP]"], vocab["[UNK]"]

    def forward(self, texts: list[str]) -> Tensor:
        ids = torch.zeros(len(texts), self.max_tokens, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.cls] + self.tokens(text, self.max_tokens - 2) + [self.sep]
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def tokens(self, text: str, limit: int) -> list[int]:
        """The ids of ``text``'s pieces, at most ``limit``."""
        out: list[int] = []
        start = 0
        while start < len(text) and len(out) < limit:
            found, special = len(text), ""
            for token in self.specials:  # the earliest special token written in the text
                at = text.find(token, start)
                if at >= 0 and at < found:
                    found, special = at, token
            for word in self.normalise(text[start:found]).split(" "):  # str.split() also splits UTF-8 bytes
                if word != "":
                    out += self.word(word)
            if special != "":
                out.append(self.vocab[special])
            start = found + len(special)
        return out[:limit]

    def normalise(self, text: str) -> str:
        """``text`` cleaned, accents stripped, lower-cased and punctuation spaced out (bytes in, bytes out)."""
        parts: list[str] = []
        i = 0
        while i < len(text):
            first = ord(text[i])
            width = 1 if first < 0x80 else 2 if first < 0xE0 else 3 if first < 0xF0 else 4
            cp = first if width == 1 else first & (0x1F if width == 2 else 0x0F if width == 3 else 0x07)
            for k in range(1, width):
                cp = (cp << 6) | (ord(text[i + k]) & 0x3F)
            if cp in self.forms:
                parts.append(self.forms[cp])
            elif 0xAC00 <= cp < 0xAC00 + 11172:  # a Hangul syllable: its letters (NFD)
                s = cp - 0xAC00
                parts.append(_utf8(0x1100 + s // 588) + _utf8(0x1161 + (s % 588) // 28))
                if s % 28:
                    parts.append(_utf8(0x11A7 + s % 28))
            elif (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                  or 0x2A700 <= cp <= 0x2CEAF):  # CJK ideographs: a word each
                parts.append(" " + text[i:i + width] + " ")
            elif not (0xE000 <= cp <= 0xF8FF or cp >= 0xF0000):  # private use is dropped
                parts.append(text[i:i + width])
            i += width
        return "".join(parts)

    def word(self, word: str) -> list[int]:
        """The ids of one word's pieces: longest first, then ``##`` continuations; ``[UNK]`` if a part has none."""
        bounds: list[int] = []  # where each character starts (continuation bytes are 0b10xxxxxx)
        for i in range(len(word)):
            if ord(word[i]) & 0xC0 != 0x80:
                bounds.append(i)
        if len(bounds) > 100:
            return [self.unk]
        bounds.append(len(word))
        out: list[int] = []
        start = 0
        while start < len(bounds) - 1:
            end = len(bounds) - 1
            piece = -1
            while end > start:
                sub = word[bounds[start]:bounds[end]]
                if start > 0:
                    sub = "##" + sub
                if sub in self.vocab:
                    piece = self.vocab[sub]
                    break
                end -= 1
            if piece < 0:
                return [self.unk]
            out.append(piece)
            start = end
        return out


# -- what the file does before the model: the reader's preprocessing -----------------------------------------------
class Table(nn.Module):
    """Feature rows ``(N, *shape)`` as the model reads them (float32)."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        if list(x.shape[1:]) != self.shape:
            raise ValueError("features of shape (N, {}) are expected, got {}".format(
                ", ".join([str(d) for d in self.shape]), list(x.shape)))
        return x.float()


class Pixels(nn.Module):
    """Decoded images -> ``(N, channels, size, size)`` in [0, 1], as the store's reader makes them: uint8
    ``(N, H, W, C)`` (C 1, 3 or 4; ``(N, H, W)`` is grey) made grey (PIL's ITU-R 601-2 luma, in its integer
    arithmetic) or RGB (alpha dropped) as the store's images are, resized (bilinear, antialiased, rounded to
    whole levels: as PIL's resize, within a level) when not of the store's size; or the reader's float
    ``(N, C, H, W)`` as they are. ``fixed``: only uint8 of the store's size and channels (ONNX)."""

    def __init__(self, size: int, channels: int, fixed: bool = False) -> None:
        super().__init__()
        self.size, self.channels, self.fixed = size, channels, fixed

    def forward(self, x: Tensor) -> Tensor:
        if self.fixed:
            return x.permute(0, 3, 1, 2).float() / 255.0
        if x.is_floating_point():
            if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] != self.size or x.shape[3] != self.size:
                raise ValueError(f"float images (N, {self.channels}, {self.size}, {self.size}) in [0, 1] are "
                                 f"expected, got {list(x.shape)}")
            return x.float()
        if x.dtype != torch.uint8:
            raise ValueError(f"images are uint8 (N, height, width, channels) or float (N, C, H, W), got {x.dtype}")
        if x.dim() == 3:
            x = x.unsqueeze(3)
        if x.dim() != 4 or x.shape[3] not in (1, 3, 4):
            raise ValueError(f"uint8 images (N, height, width, 1, 3 or 4 channels) are expected, got {list(x.shape)}")
        if x.shape[3] == 4:
            x = x[:, :, :, :3]
        if self.channels == 1 and x.shape[3] == 3:
            rgb = x.to(torch.int32)
            x = ((rgb[:, :, :, 0] * 19595 + rgb[:, :, :, 1] * 38470 + rgb[:, :, :, 2] * 7471 + 0x8000) >> 16
                 ).to(torch.uint8).unsqueeze(3)
        elif self.channels == 3 and x.shape[3] == 1:
            x = x.expand(-1, -1, -1, 3)
        images = x.permute(0, 3, 1, 2).float()
        if images.shape[2] != self.size or images.shape[3] != self.size:
            images = F.interpolate(images, size=[self.size, self.size], mode="bilinear", align_corners=False,
                                   antialias=True).round().clamp(0.0, 255.0)
        return images / 255.0


class Waveform(nn.Module):
    """Mono waveforms ``(N, samples)`` (or one ``(samples,)``) cut or zero-padded to the store's length.
    ``fixed``: only that length (ONNX)."""

    def __init__(self, samples: int, fixed: bool = False) -> None:
        super().__init__()
        self.samples, self.fixed = samples, fixed

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.fixed:
            return x
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise ValueError(f"mono waveforms (N, samples) are expected, got {list(x.shape)}")
        if x.shape[1] < self.samples:
            x = F.pad(x, [0, self.samples - x.shape[1]])
        return x[:, :self.samples]


# -- the model: frozen encoder, backbone and head, as Learner.predict_proba runs them ------------------------------
class TextFeatures(nn.Module):
    """A BERT encoder's mean-pooled, L2-normalised token states, as :class:`TextEncoder` computes them (without
    its trimming of padding columns, which the attention mask makes no difference to)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).to(torch.float32)
        states = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)


class SpectrumLogMel(nn.Module):
    """:class:`LogMel` with the short-time Fourier transform as a convolution by cosines and sines (ONNX has no
    complex numbers): the same centred, reflect-padded, Hann-windowed frames and power spectrum."""

    basis: Tensor
    filters: Tensor

    def __init__(self, logmel: "LogMel") -> None:
        super().__init__()
        n_fft = logmel.n_fft
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * torch.pi * k[:, None] * t[None, :] / n_fft
        window = logmel.window.double()
        self.register_buffer("basis", torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
                             .float().unsqueeze(1))
        self.register_buffer("filters", logmel.filters.clone())
        self.n_fft, self.hop, self.bins = n_fft, logmel.hop, n_fft // 2 + 1

    def forward(self, wave: Tensor) -> Tensor:
        half = self.n_fft // 2
        padded = F.pad(wave.unsqueeze(1), [half, half], mode="reflect")
        parts = F.conv1d(padded, self.basis, stride=self.hop)
        power = parts[:, :self.bins] ** 2 + parts[:, self.bins:] ** 2
        return torch.log(self.filters @ power + 1e-6).unsqueeze(1)


class Predictor(nn.Module):
    """Model inputs -> class probabilities: the frozen encoder (or none), the backbone, the head on task 0."""

    def __init__(self, frozen: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.frozen, self.backbone, self.head = frozen, backbone, head

    def forward(self, x: Tensor) -> Tensor:
        h = self.backbone(self.frozen(x))
        probs: Tensor = self.head(h, torch.zeros(h.shape[0], dtype=torch.long)).softmax(1)
        return probs


class TensorModel(nn.Module):
    """The exported TorchScript module of a store with tensor inputs: ``model(x)`` -> probabilities; ``labels``
    names their columns, ``columns`` a table's feature columns."""

    labels: list[str]
    columns: list[str]

    def __init__(self, prepare: nn.Module, predictor: nn.Module, labels: list[str], columns: list[str]) -> None:
        super().__init__()
        self.prepare, self.predictor = prepare, predictor
        self.labels, self.columns = labels, columns

    def forward(self, x: Tensor) -> Tensor:
        probs: Tensor = self.predictor(self.prepare(x))
        return probs


class TextModel(nn.Module):
    """The exported TorchScript module of a text store: ``model(["a text", ...])`` -> probabilities; ``labels``
    names their columns; ``tokenize(texts)`` gives the token ids the encoder reads."""

    labels: list[str]
    columns: list[str]

    def __init__(self, tokenizer: nn.Module, predictor: nn.Module, labels: list[str], columns: list[str]) -> None:
        super().__init__()
        self.tokenizer, self.predictor = tokenizer, predictor
        self.labels, self.columns = labels, columns

    def forward(self, texts: list[str]) -> Tensor:
        probs: Tensor = self.predictor(self.tokenizer(texts))
        return probs

    @torch.jit.export
    def tokenize(self, texts: list[str]) -> Tensor:
        ids: Tensor = self.tokenizer(texts)
        return ids


# -- what a version is made of, and whether a file can hold it ----------------------------------------------------
def _parts(learner: Any, version: int) -> tuple[nn.Module, nn.Module]:
    """The backbone and head that predict as ``learner`` does, or :class:`ExportError` naming what a file cannot
    hold and the strategies that made it so."""
    from retain.models import BiasCorrectedHead, IncrementalHead, LinearHead, MultiHead, NMEHead
    from retain.models.backbones import MLP, SmallCNN
    from retain.models.pretrained import AudioCNN, ImageEncoder, TextEncoder

    model = learner.model
    names = [s.name for s in learner.strategies]

    def refuse(what: str, by: str = "") -> ExportError:
        strategy = f"strategy {by}" if by in names else f"strategies: {', '.join(names) or 'none'}"
        return ExportError(f"version {version} cannot be exported: {what} ({strategy}); retain predict and retain "
                           "serve predict with it")

    backbone, head = model.backbone, model.head
    if getattr(backbone, "experts", None):
        raise refuse("its per-experience LoRA adapters are chosen per row (by task id or by routing), switching "
                     "adapters in Python, which a file does not reproduce", "lora_experts")
    if getattr(backbone, "uses_task", False):
        raise refuse("its progressive columns are chosen by each row's task id, which the file's input does not "
                     "carry", "pnn")
    if not isinstance(backbone, MLP | SmallCNN | TextEncoder | ImageEncoder | AudioCNN):
        raise refuse(f"its backbone {type(backbone).__name__} is not one an exported file holds")
    inner = head
    while isinstance(inner, NMEHead | BiasCorrectedHead):
        inner = inner.inner
    if isinstance(inner, MultiHead):
        raise refuse("its per-task heads are chosen by each row's task id, which the file's input does not carry",
                     "task_heads")
    if not isinstance(inner, LinearHead | IncrementalHead):
        raise refuse(f"its head {type(inner).__name__} is not one an exported file holds")
    if head.n_outputs == 0:
        raise refuse("it has no class yet")
    if isinstance(backbone, TextEncoder):
        backbone = TextFeatures(backbone.encoder)
    return backbone.eval(), head.eval()


def _frozen(config: Any, fmt: str) -> nn.Module:
    """The frozen encoder whose features the model reads (``retain.build.model_inputs``), or an identity."""
    from retain.build import frozen_backbone
    from retain.models.pretrained import LogMel, TextEncoder

    m = config.model
    if m.backbone is None or m.adaptation != "frozen":
        return nn.Identity()
    encoder = frozen_backbone(m.backbone, m.image_size)
    if isinstance(encoder, TextEncoder):
        return TextFeatures(encoder.encoder).eval()
    if isinstance(encoder, LogMel) and fmt == "onnx":
        return SpectrumLogMel(encoder).eval()
    return encoder.eval()


def _columns(project: Any, described: dict[str, Any]) -> list[str]:
    """A table store's feature columns, in the order the model reads them ([] when the store did not keep them)."""
    return list(described.get("features") or project.config.scenario.files.features or [])


def _describe(modality: str, shape: list[int], columns: list[str], options: dict[str, Any], fmt: str) -> str:
    """What the file takes, in words (kept in it)."""
    if modality == "text":
        return (f"a list of strings; tokenised inside as the store does (BERT uncased WordPiece, {shape[0]} tokens "
                "at most with [CLS] and [SEP]; only code points Unicode had not assigned may differ)")
    if modality == "vision":
        size, channels = shape[-1], shape[0]
        more = "" if fmt == "onnx" else (" (or another size, resized; RGB or RGBA for a grey store; or the reader's "
                                         f"float (N, {channels}, {size}, {size}) in [0, 1])")
        return f"pixels: uint8 (N, {size}, {size}, {channels}) as an image decoder gives them{more}"
    if modality == "audio":
        rate = options.get("sample_rate") or 16_000
        more = "" if fmt == "onnx" else " (or another length: cut or zero-padded)"
        return f"waveform: float32 (N, {shape[0]}), mono, in [-1, 1], at {rate} Hz{more}"
    if len(shape) > 1:
        return f"features: float32 (N, {', '.join(map(str, shape))}) as the store's arrays (x) held them"
    shown = ", ".join(columns[:8]) + (f", ... ({len(columns)} in all: the file's columns lists them)"
                                      if len(columns) > 8 else "")
    named = f": {shown}" if columns else " (the store did not keep their names)"
    return f"features: float32 (N, {', '.join(map(str, shape))}) in the store's column order{named}"


def _prepare(modality: str, shape: list[int], fmt: str, arrays: bool) -> tuple[nn.Module, Any, str]:
    """What turns the file's input into the model's, an example input (seeded noise), and the input's name.
    ``arrays``: the store learned arrays (``.npz``, ``x.npy``), which are its raw inputs as they are."""
    noise = torch.Generator().manual_seed(0)
    fixed = fmt == "onnx"
    if modality == "vision" and not arrays:
        size, channels = shape[-1], shape[0]
        pixels = torch.randint(0, 256, (2, size, size, channels), generator=noise, dtype=torch.uint8)
        return Pixels(size, channels, fixed), pixels, "pixels"
    if modality == "audio":
        return Waveform(shape[0], fixed), 0.1 * torch.randn(2, shape[0], generator=noise), "waveform"
    if modality == "text":
        from retain.data.tokens import tokenizer

        return (WordPiece(tokenizer().get_vocab(), shape[0], bert_forms()), ["An example, to trace.", "another one"],
                "texts")
    return Table(list(shape)), torch.randn(2, *shape, generator=noise), "features"


def _learned_arrays(project: Any) -> bool:
    """Whether the store's first batch was arrays (an ``.npz`` file or a folder of ``x.npy``), not files to decode."""
    first = min(project.store.versions(), key=lambda v: v.id)
    source = Path(next((b.source for b in first.batches if b.role == "train"), ""))
    return source.suffix.lower() == ".npz" or (source / "x.npy").is_file()


def export_model(store: str | Path, out: str | Path, fmt: str = "torchscript", version: int | None = None) -> Path:
    """Write ``version`` (default: the promoted one) of the classification store ``store`` to ``out`` as one
    ``fmt`` file (``torchscript`` or ``onnx``) that predicts from raw inputs (see the module's docstring); the
    file is checked against the version before it is kept, and written whole or not at all."""
    from retain.loop import Project

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":  # before any work: what writing and checking an ONNX file needs
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "export")
    project = Project(store)
    if project.kind.name != "classification":
        raise ExportError(f"{store}: a {project.kind.name} store; only classification stores are exported")
    version = project.store.promoted() if version is None else version
    learner = project.store.load(version, device="cpu")
    assert version is not None  # load refused a store with none promoted
    described = project.store.meta("inputs") or {}
    modality = described.get("modality")
    if modality is None:
        raise ExportError(f"{store}: the store did not record what its inputs look like; it cannot be exported")
    shape: list[int] = described["shape"]  # recorded with the modality
    if modality == "text" and fmt == "onnx":
        raise ExportError("a text store cannot be exported to ONNX: ONNX has no operator for its WordPiece "
                          "tokenizer, so the file could not take raw text; use --format torchscript, whose file "
                          "tokenises inside")
    backbone, head = _parts(learner, version)
    names = project.label_names(learner)
    n_outputs = cast(int, head.n_outputs)  # every head keeps its class count there
    labels = [names[c] if c < len(names) else str(c) for c in range(n_outputs)]
    options = project.config.scenario.files.options()
    columns = _columns(project, described) if modality == "tabular" else []
    predictor = Predictor(_frozen(project.config, fmt), backbone, head).eval()
    # what the version computes, to check the file against: the frozen encoder as retain predict runs it
    reference = Predictor(_frozen(project.config, "torchscript"), backbone, head).eval()
    arrays = modality in ("vision", "audio") and _learned_arrays(project)
    prepare, example, input_name = _prepare(modality, shape, fmt, arrays)
    meta = {"schema": SCHEMA, "store": str(Path(store).resolve()), "version": version, "modality": modality,
            "input": _describe("tabular" if arrays and modality == "vision" else modality, shape, columns, options,
                               fmt),
            "input_name": input_name,
            "output": "probabilities: float32 (N, classes), a column per label", "labels": labels,
            "columns": columns, "strategies": [s.name for s in learner.strategies]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shapes taken as constants: each is fixed (TracerWarning is public in torch.jit, missing from its stubs)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's: still the one torch-only format
            expected = reference(prepare(example))
            if fmt == "torchscript":
                _torchscript(prepare, predictor, example, labels, columns, meta, partial)
            else:
                _onnx(prepare, predictor, example, input_name, meta, partial)
            _check(partial, fmt, example, expected)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _torchscript(prepare: nn.Module, predictor: nn.Module, example: Any, labels: list[str], columns: list[str],
                 meta: dict[str, Any], path: Path) -> None:
    traced = torch.jit.trace(  # type: ignore[no-untyped-call]  # torch leaves jit.trace unannotated
        predictor, prepare(example), check_trace=False)
    wrapper = TextModel if isinstance(prepare, WordPiece) else TensorModel
    module = torch.jit.script(wrapper(torch.jit.script(prepare), traced, labels, columns))
    torch.jit.save(module, str(path), _extra_files={"retain.json": json.dumps(meta, indent=1)})


def _onnx(prepare: nn.Module, predictor: nn.Module, example: Tensor, input_name: str, meta: dict[str, Any],
          path: Path) -> None:
    import onnx

    model = nn.Sequential(prepare, predictor).eval()
    quiet = logging.getLogger("torch.onnx")  # its notes (torchvision's operators skipped) are not the user's
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # optimize=False: onnxruntime folds and fuses the graph itself when it loads it; the exporter's own
            # pass added a third to the export's time (EfficientNet-Lite0: 15 against 20 s on 2 cores)
            program = torch.onnx.export(model, (example,), input_names=[input_name], output_names=["probabilities"],
                                        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), dynamo=True, verbose=False,
                                        optimize=False)
    except Exception as err:  # noqa: BLE001 - an operator the exporter lacks: its first line says which
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"torch could not export this version to ONNX ({first}); --format torchscript holds "
                          "any model torch runs") from err
    finally:
        quiet.setLevel(level)
    assert program is not None  # dynamo=True returns the exported program
    proto = program.model_proto
    for key, value in (("retain", json.dumps(meta)), ("labels", json.dumps(meta["labels"])),
                       ("columns", json.dumps(meta["columns"]))):
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(path))


def _check(path: Path, fmt: str, example: Any, expected: Tensor) -> None:
    """The written file's probabilities on ``example`` against the version's own (float32 rounding apart)."""
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]  # torch leaves jit.load unannotated
        got = loaded(example)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: example.numpy()})[0])
    gap = float((got - expected).abs().max())
    if not gap <= 1e-4:
        raise ExportError(f"the exported {fmt} file predicts other probabilities than the version (by up to "
                          f"{gap:.2g}); it was not written")


def exported_meta(path: str | Path) -> dict[str, Any]:
    """What an exported file says of itself: its store and version, what it takes and returns, its labels (read
    without loading the model: ``retain.json`` in a TorchScript archive, the ``retain`` entry of ONNX metadata)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/extra/retain.json")), None)
            if name is None:
                raise ExportError(f"{path}: a TorchScript file retain did not export (no retain.json inside)")
            meta: dict[str, Any] = json.loads(archive.read(name))
            return meta
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "retain" not in props:
        raise ExportError(f"{path}: an ONNX file retain did not export (no 'retain' metadata)")
    meta = json.loads(props["retain"])
    return meta
