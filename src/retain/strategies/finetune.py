"""Fine-tuning: train on each new experience with nothing to protect the old ones."""

from __future__ import annotations

from retain.strategies.base import Strategy, params


@params
class Finetune(Strategy):
    """Plain sequential training, the lower bound every method must beat.

    It shows catastrophic forgetting (McCloskey & Cohen 1989; French 1999): with no hooks the
    learner just keeps minimising the loss of the newest data.
    """

    online = True
    name = "finetune"
    generative = True
    paper = 'McCloskey & Cohen 1989, "Catastrophic interference in connectionist networks"'
