"""Uniformly random legal actions: the floor of every learning curve."""

from __future__ import annotations

import numpy as np

from vlmrl.policies import register_policy
from vlmrl.policies.base import Decision, Observation


class RandomPolicy:
    """Uniformly random legal actions, seeded."""

    name = "random"
    history = 1
    model_name = "random"

    def __init__(self, actions: list[str], seed: int = 0) -> None:
        self.actions = actions
        self.rng = np.random.default_rng(seed)

    def act(self, observations: list[Observation]) -> list[Decision]:
        # Each episode's own stream where the rollout gives one (the same play however episodes are batched).
        picks = [int((o.rng or self.rng).integers(len(self.actions))) for o in observations]
        return [Decision(self.actions[i]) for i in picks]


@register_policy("random")
def _build(args, game, actions: list[str], seed: int) -> RandomPolicy:
    return RandomPolicy(actions, seed=seed)
