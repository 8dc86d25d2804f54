"""Engine layer: the Learner that trains a model with strategies, saves and reloads it."""

from retain.engine.learner import Learner, resolve_device
from retain.engine.online import Hybrid, run_online

__all__ = ["Hybrid", "Learner", "resolve_device", "run_online"]
