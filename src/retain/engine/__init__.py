"""Engine layer: the Learner that trains a model with strategies, saves and reloads it."""

from retain.engine.learner import Learner, resolve_device

__all__ = ["Learner", "resolve_device"]
