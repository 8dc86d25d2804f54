"""retain: keep a deployed model learning from new data without forgetting what it knew."""

from retain.data import Experience, Stream
from retain.engine import Learner

__version__ = "0.1.0"
__all__ = ["Experience", "Learner", "Stream", "__version__"]
