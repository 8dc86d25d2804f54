"""Joint training: one model trained once on the whole stream, the offline upper bound."""

from __future__ import annotations

from retain.strategies.base import Strategy, params


@params
class Joint(Strategy):
    """Train once on all experiences merged, as if the data had never arrived in pieces.

    Not an incremental method: the reference that forgetting is measured against
    (e.g. Lopez-Paz & Ranzato 2017, van de Ven et al. 2022). Runners call
    ``learner.fit(stream.merged())`` once when a strategy sets ``whole_stream``.
    """

    name = "joint"
    generative = True
    paper = 'Lopez-Paz & Ranzato 2017 (joint/multi-task upper bound)'
    whole_stream = True
