"""A classifier is a backbone plus a head; it can be rebuilt from its config."""

from __future__ import annotations

from typing import Any, Protocol, cast

from torch import Tensor, nn

from retain.models.backbones import BACKBONES
from retain.models.heads import HEADS, _build_head
from retain.models.pretrained import AudioCNN, ImageEncoder, TextEncoder, make_backbone


class _Part(Protocol):
    """What a classifier reads of its backbone and head beyond a module's call: its config."""

    def get_config(self) -> dict[str, Any]: ...


class Classifier(nn.Module):
    """``backbone`` features followed by ``head`` logits over the global classes.

    Args:
        backbone: maps a batch of inputs to features (``out_features`` wide).
        head: maps features and task ids to logits over the global classes.

    >>> import torch
    >>> model = make_model("mlp", (1, 8, 8), n_classes=10, hidden=(32,))
    >>> model(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """The backbone's features of ``x``.

        Args:
            x: a batch of inputs.
            t: each row's task id; only a backbone that picks a column per task reads it.

        Returns:
            The features, ``(N, out_features)``.
        """
        # Progressive networks pick a column per task; other backbones ignore task ids.
        h: Tensor = self.backbone(x, t) if getattr(self.backbone, "uses_task", False) else self.backbone(x)
        return h

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if not self.training and getattr(self.backbone, "routes_tasks", False):
            # per-experience experts pick their own task id (only a text encoder routes)
            h, t = cast(TextEncoder, self.backbone).route(x)
            logits: Tensor = self.head(h, t)
            return logits
        logits = self.head(self.features(x, t), t)
        return logits

    def get_config(self) -> dict[str, Any]:
        """What :meth:`from_config` rebuilds the classifier from, its head's current size included.

        Returns:
            The backbone's and the head's own configs, under ``backbone`` and ``head``.
        """
        return {"backbone": cast(_Part, self.backbone).get_config(), "head": cast(_Part, self.head).get_config()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Classifier:
        """Rebuild a classifier (with its current head sizes) from ``get_config()``.

        Args:
            config: what :meth:`get_config` returned.

        Returns:
            The classifier, with freshly built weights (a saved state dict fits them).
        """
        backbone_cfg = dict(config["backbone"])
        name = backbone_cfg.pop("name")
        if name == "text":
            backbone_cfg["name"] = backbone_cfg.pop("model")
        return cls(MODELS[name](**backbone_cfg), _build_head(config["head"]))


MODELS = BACKBONES | {"text": TextEncoder, "image": ImageEncoder, "audio_cnn": AudioCNN}


def make_model(
    name: str, input_shape: tuple[int, ...], n_classes: int, head: str = "fixed", *, backbone: str | None = None,
    adaptation: str = "frozen", image_size: int = 64, lora_rank: int = 8, **options: Any,
) -> Classifier:
    """Build a fresh classifier for inputs of ``input_shape`` (without the batch axis): the one
    model builder (a config's model is built here too).

    ``name`` is ``mlp`` (option ``hidden``), ``cnn``, ``audio_cnn`` (log-mel inputs), ``text``
    (token ids; ``backbone`` minilm|tiny_text) or ``image`` (option ``pretrained``). With a
    pretrained ``backbone`` that trains (``adaptation`` ``lora`` or ``full``) the head sits
    directly on it and ``name`` is not used; a frozen backbone's features are the inputs of the
    ``name`` network instead (see ``retain.build``).
    ``head`` is ``fixed`` (all ``n_classes`` units from the start), ``growing`` (units appear
    with the classes) or ``per_task`` (one head per task); the last two start empty.

    Args:
        name: the network: ``mlp``, ``cnn``, ``audio_cnn``, ``text`` or ``image``.
        input_shape: one input's shape, without the batch axis.
        n_classes: the classes a ``fixed`` head has from the start.
        head: ``fixed``, ``growing`` or ``per_task``.
        backbone: a pretrained backbone's name (``minilm``, ``efficientnet_lite0``, ...), or None.
        adaptation: how a pretrained backbone learns: ``frozen``, ``lora`` or ``full``.
        image_size: the side images are resized to for an image backbone, in pixels.
        lora_rank: the rank of the LoRA adapters.
        **options: the network's own (``hidden`` for ``mlp``, ``pretrained`` for ``image``, ...).

    Returns:
        A classifier with fresh weights.

    Raises:
        ValueError: an unknown ``name`` or ``head``.
    """
    if backbone is not None and adaptation != "frozen":
        net = make_backbone(backbone, adaptation, image_size, lora_rank)
    elif name == "mlp":
        in_features = 1
        for d in input_shape:
            in_features *= d
        net = BACKBONES["mlp"](in_features, **options)
    elif name == "cnn":
        net = BACKBONES["cnn"](input_shape[0], input_shape[-1], **options)
    elif name == "text":
        net = TextEncoder(backbone or "minilm", adaptation, lora_rank, **options)
    elif name == "image":
        net = ImageEncoder(image_size, adaptation=adaptation, lora_rank=lora_rank, **options)
    elif name == "audio_cnn":
        net = AudioCNN(**options)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of: mlp, cnn, audio_cnn, text, image")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    n_out = n_classes if head == "fixed" else 0
    return Classifier(net, HEADS[head](net.out_features, n_out))
