"""Model layer: backbones, heads that grow with new classes or tasks, and the classifier."""

from retain.models.backbones import MLP, SmallCNN
from retain.models.classifier import Classifier, build_model, make_model
from retain.models.heads import NEG, IncrementalHead, LinearHead, MultiHead

__all__ = [
    "MLP",
    "NEG",
    "Classifier",
    "IncrementalHead",
    "LinearHead",
    "MultiHead",
    "SmallCNN",
    "build_model",
    "make_model",
]
