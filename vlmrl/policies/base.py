"""What every policy shares: the observation it is given, the decision it returns, and its interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Observation:
    """What a policy may look at for one env: the last K frames (oldest first) and the RAM.

    ``rng`` is the episode's own random stream (seeded from the episode's seed): a policy that samples
    draws from it, so an episode plays the same whichever envs it shares a batch with, and a resumed
    collection equals an uninterrupted one.
    """

    frames: list[np.ndarray]
    ram: np.ndarray
    prev_ram: np.ndarray | None = None
    rng: np.random.Generator | None = None


@dataclass
class Decision:
    """One step's action with what the policy said about it."""

    action: str
    reasoning: str = ""
    raw_output: str = ""
    valid: bool = True


class Policy(Protocol):
    """Acts on a batch of observations, one decision each.

    ``history`` is how many of the last frames each observation must hold (a model that sees two
    frames needs 2); rollouts keep that many. ``model_name`` is what the episodes record as the player.
    """

    name: str
    history: int
    model_name: str

    def act(self, observations: list[Observation]) -> list[Decision]: ...
